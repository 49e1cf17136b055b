"""SimpleViT with multiway attention residuals (Attention Residuals, Kimi, 2026; DeepCrossAttention, Heddes et al.,
2025), mirroring vit_pytorch/attn_residual_with_dca_simple_vit.py.

Every block reads the whole history of depth outputs (the embedded patches, `initial_ff` of them, then each block's
output). `AttentionResidual` mixes the history per token by a softmax over depth, its logits the RMSNormed entries
against learned pseudo-queries (zero at init: a uniform mix); the attention's queries, keys and values come from
three separate mixes, and the value mix is also the block's residual. Options of vit-pytorch's (its improvisations):
`per_head` gives each head its own q / k / v mix and its own slice of grouped projections (`GroupedLinear`, a
block-diagonal linear); `ffn_heads > 1` gives each feed-forward head its own depth mix (over the history and the
post-attention state) and input slice; `gate` multiplies each head's output by a sigmoid of a projection of the
query stream.

Numerics: the norms are torch.nn.RMSNorm (`x * rsqrt(mean(x^2) + eps)`, `layers.TorchRMSNorm`), not vit-pytorch's
normalize-based RMSNorm; the patch embedding's LayerNorms have no bias. The sin-cos embedding takes `temperature`.
vit-pytorch computes its frequencies as `temperature ** -omega`, `layers.posemb_sincos_2d` as
`1 / temperature ** omega`: the two float32 roundings differ by an ulp at most, far inside the parity tolerance.

Fix: with `per_head=True` and `heads=1` vit-pytorch's forward fails (its projections are then plain Linears, which
keep the depth mix's head axis, and splitting heads expects three axes). Here one head's per-head mix is merged as
the shared mix is, which computes what `per_head=False` computes with the same parameters (the tree is the same);
the parity spec builds vit-pytorch's blocks the same way (`torch_construction`).

Quirks of vit-pytorch kept so weights transfer:
- `GroupedLinear` keeps its weight in torch's (out, in) layout as the parameter `weight` (a plain nn.Parameter in
  vit-pytorch), copied as is by the converters; its bias (the grouped feed-forward input's) starts at zeros.
- The position embedding is built for `image_size`; an input must give the same number of patches.
- `num_classes=0` keeps a `linear_head` with no outputs, returning (batch, 0).

Nothing is random in the forward pass; `train` is accepted for a uniform interface. The history grows by one entry
per block, so the blocks cannot share a scanned carry: there is no layer scan, and attention is vit-pytorch's
explicit softmax.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from einops import rearrange

from vit_flax.layers import (
    LayerNorm, Linear, SequentialFeedForward, TorchRMSNorm, add_posemb_sincos_2d, attention_weights,
    check_floating_input, check_keywords, check_sincos_dim, gelu, softmax, torch_uniform,
)
from vit_flax.vit import check_image_config, patchify


class GroupedLinear(nn.Module):
    """Block-diagonal linear: (groups, b, n, dim) -> (b, n, out_dim), group g through rows g * out / groups ... of
    `weight` (out_dim, dim)."""

    dim: int
    out_dim: int
    groups: int
    use_bias: bool = False

    @nn.compact
    def __call__(self, x):
        weight = self.param('weight', torch_uniform(self.dim), (self.out_dim, self.dim))
        weight = rearrange(weight.astype(x.dtype), '(g e) d -> g e d', g=self.groups)
        out = rearrange(jnp.einsum('gbnd,ged->bnge', x, weight), 'b n g e -> b n (g e)')
        if self.use_bias:
            out = out + self.param('bias', nn.initializers.zeros, (self.out_dim,)).astype(out.dtype)
        return out


def linear(dim_in: int, dim_out: int, groups: int = 1, bias: bool = False, name: str | None = None) -> nn.Module:
    if groups > 1:
        return GroupedLinear(dim_in, dim_out, groups, use_bias=bias, name=name)
    return Linear(dim_out, use_bias=bias, name=name)


class GroupedFeedForward(nn.Module):
    """vit-pytorch's FeedForward with `heads > 1`: (heads, b, n, dim) -> (b, n, dim), the first projection grouped."""

    dim: int
    hidden_dim: int
    heads: int

    @nn.compact
    def __call__(self, x):
        x = LayerNorm(name='0')(x)
        x = gelu(GroupedLinear(self.dim, self.hidden_dim, self.heads, use_bias=True, name='1')(x))
        return Linear(self.dim, name='3')(x)


def FeedForward(dim: int, hidden_dim: int, heads: int = 1, name: str | None = None) -> nn.Module:  # noqa: N802
    """vit-pytorch's FeedForward function: nn.Sequential(LayerNorm, linear, GELU, Linear)."""
    if heads > 1:
        return GroupedFeedForward(dim, hidden_dim, heads, name=name)
    return SequentialFeedForward(hidden_dim, name=name)


class AttentionResidual(nn.Module):
    """Softmax over depth with learned pseudo-queries: a list of `l` (b, n, d) entries -> `streams` mixes, each
    (heads, b, n, d), or (b, n, d) with `merge_heads` (one head)."""

    dim: int
    streams: int = 3
    heads: int = 1
    merge_heads: bool = False
    eps: float = 1e-6

    @nn.compact
    def __call__(self, history):
        values = jnp.stack(history)  # l b n d
        keys = TorchRMSNorm(self.eps, name='norm')(values)
        pseudo_queries = self.param('pseudo_queries', nn.initializers.zeros, (self.streams, self.heads, self.dim))
        logits = jnp.einsum('lbnd,shd->shlbn', keys, pseudo_queries.astype(keys.dtype))
        weights = softmax(logits, axis=2)
        out = jnp.einsum('shlbn,lbnd->shbnd', weights, values)
        if self.merge_heads:
            out = rearrange(out, 's 1 b n d -> s b n d')
        return tuple(out)


class Attention(nn.Module):
    dim: int
    heads: int = 8
    dim_head: int = 64
    per_head: bool = False
    gate: bool = True
    eps: float = 1e-6

    @nn.compact
    def __call__(self, xq, xk, xv):
        # xq / xk / xv: (b, n, d), or (heads, b, n, d) when per_head
        inner_dim = self.dim_head * self.heads
        groups = self.heads if self.per_head else 1

        xq = TorchRMSNorm(self.eps, name='norm_q')(xq)
        xk = TorchRMSNorm(self.eps, name='norm_k')(xk)
        xv = TorchRMSNorm(self.eps, name='norm_v')(xv)

        q = linear(self.dim, inner_dim, groups, name='to_q')(xq)
        k = linear(self.dim, inner_dim, groups, name='to_k')(xk)
        v = linear(self.dim, inner_dim, groups, name='to_v')(xv)
        q, k, v = (rearrange(t, 'b n (h d) -> b h n d', h=self.heads) for t in (q, k, v))

        attn = attention_weights(q, k, self.dim_head**-0.5)
        out = jnp.einsum('bhnm,bhmd->bhnd', attn, v)

        if self.gate:
            gate = linear(self.dim, self.heads, groups, name='to_gate_0')(xq)
            out = out * nn.sigmoid(rearrange(gate, 'b n h -> b h n 1'))

        out = rearrange(out, 'b h n d -> b n (h d)')
        return Linear(self.dim, use_bias=False, name='to_out')(out)


class TransformerBlock(nn.Module):
    dim: int
    heads: int
    dim_head: int
    mlp_dim: int
    per_head: bool = False
    ffn_heads: int = 1
    gate: bool = True
    eps: float = 1e-6

    @nn.compact
    def __call__(self, history):
        # one head's per-head mix is the shared mix (vit-pytorch fails on it: see the module docstring)
        merge_heads = not self.per_head or self.heads == 1
        attn_res = AttentionResidual(self.dim, streams=3, heads=self.heads if self.per_head else 1,
                                     merge_heads=merge_heads, eps=self.eps, name='attn_res')
        xq, xk, xv = attn_res(history)

        # the value stream doubles as the depth residual
        res = xv if merge_heads else xv.mean(axis=0)
        attention = Attention(self.dim, self.heads, self.dim_head, self.per_head, self.gate, self.eps, name='attn')
        x = attention(xq, xk, xv) + res

        # each feed-forward head mixes the history and the post-attention state
        if self.ffn_heads > 1:
            ffn_res = AttentionResidual(self.dim, streams=1, heads=self.ffn_heads, eps=self.eps, name='ffn_res')
            ffn_in = ffn_res([*history, x])[-1]
        else:
            ffn_in = x
        return x + FeedForward(self.dim, self.mlp_dim, self.ffn_heads, name='ff')(ffn_in)


class Transformer(nn.Module):
    dim: int
    depth: int
    heads: int
    dim_head: int
    mlp_dim: int
    per_head: bool = False
    ffn_heads: int = 1
    gate: bool = True
    eps: float = 1e-6

    @nn.compact
    def __call__(self, history):
        history = list(history)
        for i in range(self.depth):
            block = TransformerBlock(self.dim, self.heads, self.dim_head, self.mlp_dim, self.per_head, self.ffn_heads,
                                     self.gate, self.eps, name=f'layers_{i}')
            history.append(block(history))
        return TorchRMSNorm(self.eps, name='norm')(history[-1])


class SimpleViT(nn.Module):
    image_size: int | tuple[int, int]
    patch_size: int | tuple[int, int]
    num_classes: int
    dim: int
    depth: int
    heads: int
    mlp_dim: int  # after dim_head in vit-pytorch's keyword-only signature; a dataclass needs it before the defaults
    dim_head: int = 64
    channels: int = 3
    per_head: bool = False
    ffn_heads: int = 1
    gate: bool = True
    eps: float = 1e-6
    temperature: int = 10000

    def __post_init__(self):
        check_keywords(self)
        check_image_config(self.image_size, self.patch_size)
        check_sincos_dim(self.dim)
        if self.mlp_dim % self.ffn_heads:
            raise ValueError(
                f'mlp_dim must be divisible by ffn_heads: mlp_dim={self.mlp_dim}, ffn_heads={self.ffn_heads}'
            )
        super().__post_init__()

    @nn.compact
    def __call__(self, img, train: bool = False):  # `train` accepted for a uniform interface; nothing is random
        check_floating_input(self, 'img', img)
        x = patchify(img, self.patch_size, self.channels)
        x = LayerNorm(use_bias=False, name='to_patch_embedding_1')(x)
        x = Linear(self.dim, name='to_patch_embedding_2')(x)
        x = LayerNorm(use_bias=False, name='to_patch_embedding_3')(x)
        x = add_posemb_sincos_2d(x, img.shape[1:3], self.image_size, self.patch_size, self.dim, self.temperature)

        # the embedding and a feed-forward of it: two depth entries for the first block
        history = [x, FeedForward(self.dim, self.mlp_dim, name='initial_ff')(x)]
        x = Transformer(self.dim, self.depth, self.heads, self.dim_head, self.mlp_dim, self.per_head, self.ffn_heads,
                        self.gate, self.eps, name='transformer')(history)
        return Linear(self.num_classes, name='linear_head')(x.mean(axis=1))
