"""SimpleUViT ("All are Worth Words: A ViT Backbone for Diffusion Models", Bao et al., 2022: U-ViT's long skip
connections in a SimpleViT classifier), mirroring vit_pytorch/simple_uvit.py.

SimpleViT (fixed 2D sin-cos position embedding, bias-free attention projections, mean pooling of the patch tokens)
with `num_register_tokens` learned register tokens appended after the patches, and U-Net-like long skips: each layer
of the first half (layers 1 .. depth / 2, counted from 1) keeps its input, and each layer of the second half
(layers >= depth / 2 + 1) starts by concatenating the most recent kept input with its own and projecting back to
`dim` (`layers.{i}.0`, a Linear(2 * dim, dim)). With an odd depth the middle layer neither keeps nor takes one.

Quirks of vit-pytorch kept so weights transfer:
- The position embedding is built for `image_size`; an input must give the same number of patches.
- The registers take part in the attention but not in the pooling.
- `num_classes=0` keeps a `linear_head` with no outputs, returning (batch, 0).

No random draws (no dropout): `train` is accepted for a uniform interface.

JAX-only options: `attention_impl` ('explicit', the default, forms vit-pytorch's maps, which recorder.Recorder
records; 'xla' / 'cudnn' / 'auto' call jax.nn.dot_product_attention). There is no `scan_layers` / `remat_policy`: the
skip connections make the two halves' layers different modules carrying a stack of kept inputs between them.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from vit_flax.layers import (
    LayerNorm, Linear, SequentialFeedForward, add_posemb_sincos_2d, append_register_tokens, check_attention_impl,
    check_floating_input, check_keywords, check_sincos_dim, drop_register_tokens, residual_boundary,
)
from vit_flax.simple_vit import Attention
from vit_flax.vit import check_image_config, embed_patches


class Transformer(nn.Module):
    dim: int
    depth: int
    heads: int
    dim_head: int
    mlp_dim: int
    attention_impl: str = 'explicit'  # JAX-only

    @nn.compact
    def __call__(self, x):
        skips = []
        for i in range(self.depth):
            layer = i + 1
            if layer <= self.depth / 2:  # first half: keep the input for the mirrored layer
                skips.append(x)
            if layer >= self.depth / 2 + 1:  # latter half: take the mirrored layer's input
                x = Linear(self.dim, name=f'layers_{i}_0')(jnp.concatenate((skips.pop(), x), axis=-1))
            x = Attention(self.dim, self.heads, self.dim_head, self.attention_impl, name=f'layers_{i}_1')(x) + x
            x = residual_boundary(x)  # linear, not quadratic, backward work on CPU (layers.py)
            x = residual_boundary(SequentialFeedForward(self.mlp_dim, name=f'layers_{i}_2')(x) + x)
        assert not skips
        return LayerNorm(name='norm')(x)


class SimpleUViT(nn.Module):
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

        x = append_register_tokens(self, x, self.num_register_tokens)

        x = Transformer(self.dim, self.depth, self.heads, self.dim_head, self.mlp_dim,
                        attention_impl=self.attention_impl, name='transformer')(x)
        x = drop_register_tokens(x, self.num_register_tokens).mean(axis=1)
        return Linear(self.num_classes, name='linear_head')(x)
