"""SimpleViT with sparse attention gating and register tokens, mirroring vit_pytorch/simple_vit_with_sparse_gating.py.

Each attention layer projects, beside q, k and v, low-dimensional (`dim_mask` per head) gate queries and keys; the
sigmoid of their scaled similarity is a gate probability for every (query, patch) pair, whose log (clamped at 1e-20)
is added to the attention logits, so a gate near 0 masks the patch out. The `num_register_tokens` learned registers
are prepended and never gated (log-gate 0): they act as attention sinks. With `return_loss=True` the call returns
(logits, sparsity loss): the gates' mean probability per image, over layers, heads, queries and patches, averaged over
the batch ('l1') or its excess over `sparsity_threshold` ('thresholded_l1', the default).

Quirks of vit-pytorch kept so weights transfer:
- The position embedding is built for `image_size`; an input must give the same number of patches.
- `num_classes=0` keeps a `linear_head` with no outputs, returning (batch, 0).
- The registers' own gate keys are projected and unused (the projection is one Linear for all tokens).

Fixes: an unknown `sparsity_loss_type` is refused at construction (vit-pytorch raises only when a loss is asked
for); `return_loss=True` with `depth=0` (no gates to average, which fails in vit-pytorch) is refused by name.

Nothing is random in the forward pass; `train` is accepted for a uniform interface.

JAX-only options (defaults keep vit-pytorch's behaviour and tree; see vit_flax/scan.py):
- `scan_layers=True` runs the `depth` layers as one `nn.scan` over `Layer`, parameters stacked on a leading axis
  under `params/transformer/layers_scan/{0,1}`, which the converters map to torch's `transformer.layers.{i}.{0,1}`;
  the gate probabilities come out of the scan stacked.
- `remat_policy`: None, or a `jax.checkpoint_policies` name: the backward pass recomputes each scanned layer
  (unscanned: each attention and feed-forward block) instead of keeping its activations.
- `attention_impl`: 'explicit' (default, whose maps recorder.Recorder records) or 'xla' / 'cudnn' / 'auto' for
  jax.nn.dot_product_attention, the log-gates passed as its bias.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from einops import rearrange, repeat

from vit_flax.layers import (
    LayerNorm, Linear, add_posemb_sincos_2d, check_attention_impl, check_floating_input, check_keywords,
    check_sincos_dim, fused_attention, randn, record_attention_map, residual_boundary, softmax,
    uses_fused_attention,
)
from vit_flax.scan import check_remat_policy, layer_scan, remat, scanned_name
from vit_flax.simple_vit import FeedForward
from vit_flax.vit import check_image_config, embed_patches

SPARSITY_LOSS_TYPES = ('l1', 'thresholded_l1')


def log(t, eps: float = 1e-20):
    return jnp.log(jnp.clip(t, min=eps))


class Attention(nn.Module):
    """Attention with sigmoid gates on the patches; returns (output, gate probabilities (b, h, n, num_patches))."""

    dim: int
    heads: int = 8
    dim_head: int = 64
    dim_mask: int = 4
    num_register_tokens: int = 4
    attention_impl: str = 'explicit'  # JAX-only, see the module docstring

    @nn.compact
    def __call__(self, x):
        inner_dim, mask_inner_dim = self.dim_head * self.heads, self.dim_mask * self.heads
        x = LayerNorm(name='norm')(x)

        split_dims = (inner_dim, inner_dim, inner_dim, mask_inner_dim, mask_inner_dim)
        qkv_and_mask = Linear(sum(split_dims), use_bias=False, name='to_qkv_and_mask')(x)
        parts = jnp.split(qkv_and_mask, [sum(split_dims[:i]) for i in range(1, len(split_dims))], axis=-1)
        q, k, v, q_mask, k_mask = (rearrange(t, 'b n (h d) -> b h n d', h=self.heads) for t in parts)

        # gates on the patches only; the registers, padded with log-gate 0 on the left, act as attention sinks
        k_mask_patches = k_mask[:, :, self.num_register_tokens:]
        mask_sim = jnp.einsum('bhid,bhjd->bhij', q_mask, k_mask_patches) * self.dim_mask**-0.5
        mask_prob = nn.sigmoid(mask_sim)
        mask_log = jnp.pad(log(mask_prob), ((0, 0), (0, 0), (0, 0), (self.num_register_tokens, 0)))

        if uses_fused_attention(self.attention_impl, 0.0, False):
            q, k, v = (rearrange(t, 'b h n d -> b n h d') for t in (q, k, v))
            out = fused_attention(q, k, v, self.dim_head**-0.5, self.attention_impl, bias=mask_log)
            out = rearrange(out, 'b n h d -> b n (h d)')
        else:
            sim = jnp.einsum('bhid,bhjd->bhij', q, k) * self.dim_head**-0.5 + mask_log
            attn = softmax(sim, axis=-1)
            record_attention_map(self, attn)
            out = rearrange(jnp.einsum('bhij,bhjd->bhid', attn, v), 'b h n d -> b n (h d)')
        return Linear(self.dim, use_bias=False, name='to_out')(out), mask_prob


class Layer(nn.Module):
    """One of vit-pytorch's `transformer.layers` (gated attention, then feed-forward, each with its residual): the
    body of the layer scan, returning (x, the layer's gate probabilities)."""

    dim: int
    heads: int
    dim_head: int
    mlp_dim: int
    dim_mask: int
    num_register_tokens: int
    attention_impl: str = 'explicit'

    @nn.compact
    def __call__(self, x):
        attn_out, mask_prob = Attention(self.dim, self.heads, self.dim_head, self.dim_mask, self.num_register_tokens,
                                        self.attention_impl, name='0')(x)
        x = attn_out + x
        return FeedForward(self.dim, self.mlp_dim, name='1')(x) + x, mask_prob


class Transformer(nn.Module):
    dim: int
    depth: int
    heads: int
    dim_head: int
    mlp_dim: int
    dim_mask: int
    num_register_tokens: int
    scan_layers: bool = False  # JAX-only, see the module docstring
    remat_policy: str | None = None  # JAX-only
    attention_impl: str = 'explicit'  # JAX-only

    def __post_init__(self):
        check_remat_policy(self.remat_policy)
        check_attention_impl(self.attention_impl)
        super().__post_init__()

    @nn.compact
    def __call__(self, x):
        """(norm(x), the gate probabilities of every layer, stacked: (depth, b, h, n, num_patches))."""
        if self.scan_layers:
            layers = layer_scan(Layer, self.depth, self.remat_policy)
            x, mask_probs = layers(self.dim, self.heads, self.dim_head, self.mlp_dim, self.dim_mask,
                                   self.num_register_tokens, self.attention_impl, name=scanned_name('layers'))(x)
        else:
            attention, feed_forward = remat(Attention, self.remat_policy), remat(FeedForward, self.remat_policy)
            mask_probs = []
            for i in range(self.depth):
                attn_out, mask_prob = attention(self.dim, self.heads, self.dim_head, self.dim_mask,
                                                self.num_register_tokens, self.attention_impl,
                                                name=f'layers_{i}_0')(x)
                x = residual_boundary(attn_out + x)  # linear, not quadratic, backward work on CPU (layers.py)
                x = residual_boundary(feed_forward(self.dim, self.mlp_dim, name=f'layers_{i}_1')(x) + x)
                mask_probs.append(mask_prob)
            mask_probs = jnp.stack(mask_probs) if mask_probs else None
        return LayerNorm(name='norm')(x), mask_probs


class SimpleViTWithSparseGating(nn.Module):
    image_size: int | tuple[int, int]
    patch_size: int | tuple[int, int]
    num_classes: int
    dim: int
    depth: int
    heads: int
    mlp_dim: int
    num_register_tokens: int = 4
    channels: int = 3
    dim_head: int = 64
    dim_mask: int = 4
    sparsity_loss_type: str = 'thresholded_l1'
    sparsity_threshold: float = 0.05
    scan_layers: bool = False  # JAX-only, see the module docstring
    remat_policy: str | None = None  # JAX-only
    attention_impl: str = 'explicit'  # JAX-only

    def __post_init__(self):
        check_keywords(self)
        check_image_config(self.image_size, self.patch_size)
        check_sincos_dim(self.dim)
        check_remat_policy(self.remat_policy)
        check_attention_impl(self.attention_impl)
        if self.sparsity_loss_type not in SPARSITY_LOSS_TYPES:
            raise ValueError(f'Unknown sparsity loss type: sparsity_loss_type={self.sparsity_loss_type!r}; use one of '
                             f'{", ".join(SPARSITY_LOSS_TYPES)}')
        super().__post_init__()

    @nn.compact
    def __call__(self, img, return_loss: bool = False, train: bool = False):
        # `train` accepted for a uniform interface; nothing is random
        check_floating_input(self, 'img', img)
        if return_loss and self.depth == 0:
            raise ValueError('return_loss=True needs gates to average, but depth=0 has no attention layers')
        x = embed_patches(img, self.patch_size, self.channels, self.dim)
        x = add_posemb_sincos_2d(x, img.shape[1:3], self.image_size, self.patch_size, self.dim)

        # registers prepended (vit-pytorch packs [registers, patches])
        register_tokens = self.param('register_tokens', randn, (self.num_register_tokens, self.dim))
        x = jnp.concatenate((repeat(register_tokens.astype(x.dtype), 'n d -> b n d', b=x.shape[0]), x), axis=1)

        x, mask_probs = Transformer(self.dim, self.depth, self.heads, self.dim_head, self.mlp_dim, self.dim_mask,
                                    self.num_register_tokens, scan_layers=self.scan_layers,
                                    remat_policy=self.remat_policy, attention_impl=self.attention_impl,
                                    name='transformer')(x)

        x = x[:, self.num_register_tokens:].mean(axis=1)  # the patches, pooled
        logits = Linear(self.num_classes, name='linear_head')(x)
        if not return_loss:
            return logits

        p_mean = jnp.moveaxis(mask_probs, 1, 0).reshape(mask_probs.shape[1], -1).mean(axis=-1)  # per image
        if self.sparsity_loss_type == 'l1':
            loss = p_mean.mean()
        else:
            loss = jax.nn.relu(p_mean - self.sparsity_threshold).mean()
        return logits, loss
