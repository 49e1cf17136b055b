"""SimpleViT with value residual learning ("Value Residual Learning For Alleviating Attention Concentration In
Transformers", Zhou et al., 2024), mirroring vit_pytorch/simple_vit_with_value_residual.py.

SimpleViT (fixed 2D sin-cos position embedding, mean pooling, bias-free attention projections) whose every attention
layer after the first mixes its values with the first layer's: `v = v * mix + v_first * (1 - mix)`, the mix a
per-token, per-head gate `sigmoid(Linear(dim, heads))` of the layer's normalised input (`to_residual_mix`).

Quirks of vit-pytorch kept so weights transfer:
- The first layer has no `to_residual_mix` (it supplies the values the others mix in); an Attention built with
  `learned_value_residual_mix=False` that is handed values mixes them half and half.
- The feed-forward is an `nn.Sequential` without a `net` attribute: its layers are `transformer.layers.{i}.1.{0,1,3}`.
- The position embedding is built for `image_size`; an input must give the same number of patches.
- `num_classes=0` keeps a `linear_head` with no outputs, returning (batch, 0).

No random draws (no dropout): `train` is accepted for a uniform interface.

JAX-only options: `attention_impl` ('explicit', the default, forms vit-pytorch's maps, which recorder.Recorder records;
'xla' / 'cudnn' / 'auto' call jax.nn.dot_product_attention). There is no `scan_layers` / `remat_policy`: the first
layer differs from the others (no `to_residual_mix`) and every layer takes the first layer's values, so the stack is
not one repeated layer.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from einops import rearrange

from vit_flax.layers import (
    LayerNorm, Linear, SequentialFeedForward, add_posemb_sincos_2d, check_attention_impl, check_floating_input,
    check_keywords, check_sincos_dim, exists, multi_head_attention, residual_boundary,
)
from vit_flax.vit import check_image_config, embed_patches


class Attention(nn.Module):
    dim: int
    heads: int = 8
    dim_head: int = 64
    learned_value_residual_mix: bool = False
    attention_impl: str = 'explicit'  # JAX-only, see the module docstring

    @nn.compact
    def __call__(self, x, value_residual=None):
        """(output, the values attended over as (batch, heads, n, dim_head), after any mixing)."""
        inner_dim = self.dim_head * self.heads
        x = LayerNorm(name='norm')(x)

        q, k, v = jnp.split(Linear(inner_dim * 3, use_bias=False, name='to_qkv')(x), 3, axis=-1)
        v = rearrange(v, 'b n (h d) -> b h n d', h=self.heads)

        if exists(value_residual):
            if self.learned_value_residual_mix:
                mix = jax.nn.sigmoid(Linear(self.heads, name='to_residual_mix_0')(x))
                mix = rearrange(mix, 'b n h -> b h n 1')
            else:
                mix = 0.5
            v = v * mix + value_residual * (1.0 - mix)

        out = multi_head_attention(self, q, k, rearrange(v, 'b h n d -> b n (h d)'), self.heads, self.dim_head**-0.5,
                                   self.attention_impl)
        return Linear(self.dim, use_bias=False, name='to_out')(out), v


class Transformer(nn.Module):
    dim: int
    depth: int
    heads: int
    dim_head: int
    mlp_dim: int
    attention_impl: str = 'explicit'  # JAX-only

    @nn.compact
    def __call__(self, x):
        value_residual = None
        for i in range(self.depth):
            attention = Attention(self.dim, self.heads, self.dim_head, learned_value_residual_mix=i > 0,
                                  attention_impl=self.attention_impl, name=f'layers_{i}_0')
            attn_out, values = attention(x, value_residual)
            if value_residual is None:
                value_residual = values
            x = residual_boundary(attn_out + x)  # linear, not quadratic, backward work on CPU (layers.py)
            x = residual_boundary(SequentialFeedForward(self.mlp_dim, name=f'layers_{i}_1')(x) + x)
        return LayerNorm(name='norm')(x)


class SimpleViT(nn.Module):
    image_size: int | tuple[int, int]
    patch_size: int | tuple[int, int]
    num_classes: int
    dim: int
    depth: int
    heads: int
    mlp_dim: int
    channels: int = 3
    dim_head: int = 64
    attention_impl: str = 'explicit'  # JAX-only, see the module docstring

    def __post_init__(self):
        check_keywords(self)
        check_image_config(self.image_size, self.patch_size)
        check_sincos_dim(self.dim)
        check_attention_impl(self.attention_impl)
        super().__post_init__()

    @nn.compact
    def __call__(self, img, train: bool = False):  # `train` accepted for a uniform interface; nothing is random
        check_floating_input(self, 'img', img)
        x = embed_patches(img, self.patch_size, self.channels, self.dim)

        x = add_posemb_sincos_2d(x, img.shape[1:3], self.image_size, self.patch_size, self.dim)

        x = Transformer(self.dim, self.depth, self.heads, self.dim_head, self.mlp_dim,
                        attention_impl=self.attention_impl, name='transformer')(x)
        x = x.mean(axis=1)
        return Linear(self.num_classes, name='linear_head')(x)
