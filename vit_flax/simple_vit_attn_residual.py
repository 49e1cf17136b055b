"""SimpleViT with attention residuals, mirroring vit_pytorch/simple_vit_attn_residual.py.

Each block's input is not the running sum of the previous outputs but an attention pool over all of them: the
history (the embedded patches, then every attention and feed-forward output) is stacked per token on a depth axis,
and a cross-attention (`AttentionResidual.attn`) whose single query is a learned vector (`learned_query=True`) or the
latest entry attends over it; the block (`fn`) runs on the pooled vector and its output joins the history. A last
pool feeds a LayerNorm (`transformer.final_pool`), followed by the mean over tokens and the linear head.

`__call__(img, history=None, return_history=False)` mirrors vit-pytorch's forward: `history`, a list of
(batch, n, dim) arrays (a previous call's), is prepended to this call's; with `return_history=True` the call returns
(logits, the history list: the given entries, the embedded patches, then two per layer).

Quirks of vit-pytorch kept so weights transfer:
- The first layer's attention residual is disabled (its block reads the embedded patches directly), so its torch
  module holds only `fn` (`transformer.layers.0.0.fn.*`), no pooling attention or query.
- The position embedding is built for `image_size`; an input must give the same number of patches.
- `num_classes=0` keeps a `linear_head` with no outputs, returning (batch, 0).

Nothing is random in the forward pass; `train` is accepted for a uniform interface. The layers differ (the first is
disabled, the history grows by two per layer), so there is no layer scan; attention is vit-pytorch's explicit
softmax.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from einops import rearrange, repeat

from vit_flax.layers import (
    LayerNorm, Linear, add_posemb_sincos_2d, attention_weights, check_floating_input, check_keywords,
    check_sincos_dim, exists, randn,
)
from vit_flax.simple_vit import FeedForward
from vit_flax.vit import check_image_config, embed_patches


class Attention(nn.Module):
    """Bias-free multi-head attention of `x` over `context` (default: itself), each LayerNormed first."""

    dim: int
    heads: int = 8
    dim_head: int = 64
    cross_attend: bool = False

    @nn.compact
    def __call__(self, x, context=None):
        inner_dim = self.dim_head * self.heads
        x = LayerNorm(name='norm')(x)
        context = LayerNorm(name='norm_context')(context) if exists(context) else x

        q = Linear(inner_dim, use_bias=False, name='to_q')(x)
        k, v = jnp.split(Linear(inner_dim * 2, use_bias=False, name='to_kv')(context), 2, axis=-1)
        q, k, v = (rearrange(t, 'b n (h d) -> b h n d', h=self.heads) for t in (q, k, v))
        attn = attention_weights(q, k, self.dim_head**-0.5)
        out = rearrange(jnp.einsum('bhij,bhjd->bhid', attn, v), 'b h n d -> b n (h d)')
        return Linear(self.dim, use_bias=False, name='to_out')(out)


class AttentionResidual(nn.Module):
    """`fn` applied to an attention pool over the history (a list of (b, n, d)), or to its last entry when
    `disable`."""

    fn: nn.Module
    dim: int
    heads: int = 8
    dim_head: int = 64
    learned_query: bool = True
    disable: bool = False

    @nn.compact
    def __call__(self, history):
        if self.disable:
            return self.fn(history[-1])

        batch, seq_len = history[0].shape[:2]
        context = rearrange(jnp.stack(history, axis=2), 'b n l d -> (b n) l d')
        if self.learned_query:
            learned_query = self.param('learned_query', randn, (self.dim,))
            q = repeat(learned_query.astype(context.dtype), 'd -> (b n) 1 d', b=batch, n=seq_len)
        else:
            q = rearrange(history[-1], 'b n d -> (b n) 1 d')

        pooled = Attention(self.dim, self.heads, self.dim_head, cross_attend=True, name='attn')(q, context=context)
        pooled = rearrange(pooled, '(b n) 1 d -> b n d', b=batch, n=seq_len)
        return self.fn(pooled)


class Transformer(nn.Module):
    dim: int
    depth: int
    heads: int
    dim_head: int
    mlp_dim: int
    learned_query: bool = True

    @nn.compact
    def __call__(self, x, history=None, return_history: bool = False):
        history = [*(history or []), x]
        pool = dict(dim=self.dim, heads=self.heads, dim_head=self.dim_head, learned_query=self.learned_query)

        for i in range(self.depth):
            attention = Attention(self.dim, self.heads, self.dim_head, parent=None)  # adopted as the pool's `fn`
            history.append(AttentionResidual(attention, **pool, disable=i == 0, name=f'layers_{i}_0')(history))
            feed_forward = FeedForward(self.dim, self.mlp_dim, parent=None)
            history.append(AttentionResidual(feed_forward, **pool, name=f'layers_{i}_1')(history))

        out = AttentionResidual(LayerNorm(parent=None), **pool, name='final_pool')(history)
        return (out, history) if return_history else out


class SimpleViTAttnResidual(nn.Module):
    image_size: int | tuple[int, int]
    patch_size: int | tuple[int, int]
    num_classes: int
    dim: int
    depth: int
    heads: int
    mlp_dim: int
    channels: int = 3
    dim_head: int = 64
    learned_query: bool = True

    def __post_init__(self):
        check_keywords(self)
        check_image_config(self.image_size, self.patch_size)
        check_sincos_dim(self.dim)
        super().__post_init__()

    @nn.compact
    def __call__(self, img, history=None, return_history: bool = False, train: bool = False):
        # `train` accepted for a uniform interface; nothing is random
        check_floating_input(self, 'img', img)
        x = embed_patches(img, self.patch_size, self.channels, self.dim)
        x = add_posemb_sincos_2d(x, img.shape[1:3], self.image_size, self.patch_size, self.dim)

        transformer = Transformer(self.dim, self.depth, self.heads, self.dim_head, self.mlp_dim,
                                  learned_query=self.learned_query, name='transformer')
        x = transformer(x, history=history, return_history=return_history)
        if return_history:
            x, history = x

        out = Linear(self.num_classes, name='linear_head')(x.mean(axis=1))
        return (out, history) if return_history else out
