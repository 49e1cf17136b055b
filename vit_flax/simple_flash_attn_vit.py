"""SimpleViT with flash attention ("Better plain ViT baselines for ImageNet-1k", Beyer et al., 2022; "FlashAttention",
Dao et al., 2022), mirroring vit_pytorch/simple_flash_attn_vit.py: simple_vit.py's model whose attention vit-pytorch
computes with F.scaled_dot_product_attention.

Parameter tree = vit-pytorch's module tree. The layers (Attention, FeedForward) are simple_vit.py's: vit-pytorch's
fused `softmax(q k^T / sqrt(dim_head)) v` is the same function as simple_vit's explicit one, and its `attend` has no
parameters. The fused kernels are this port's JAX-only `attention_impl` ('xla' / 'cudnn' / 'auto' call
jax.nn.dot_product_attention, cuDNN's flash attention on GPU); the default 'explicit' forms the maps.

`use_flash` is vit-pytorch's switch between F.scaled_dot_product_attention (True) and its own einsum attention
(False). Both are meant to compute the same function, so here it changes nothing; `attention_impl` picks the kernel.
Fix: vit-pytorch 1.26.11's `use_flash=False` path cannot run (`einsum` is not imported, and its key pattern
`b j d` drops the heads axis); here it computes the attention it was written for (the parity reference patches
vit-pytorch's `Attend.forward` the same way, parity/simple_flash_attn_vit.py).

Quirks of vit-pytorch kept so weights transfer:
- The transformer has no final LayerNorm; `linear_head` is (LayerNorm, Linear), after the mean pooling.
- The position embedding is built from the input's own patch grid, so any input whose sides divide by the patch
  size is taken; `image_size` is only checked against the patch size.
- `num_classes=0` keeps a head with no outputs, returning (batch, 0).

No random draws: `train` is accepted for a uniform interface.

JAX-only options: `scan_layers`, `remat_policy` and `attention_impl`, simple_vit.py's, passed to its layers.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from vit_flax import simple_vit
from vit_flax.layers import (
    LayerNorm, Linear, check_attention_impl, check_floating_input, check_keywords, check_sincos_dim, pair,
    posemb_sincos_2d,
)
from vit_flax.scan import check_remat_policy
from vit_flax.vit import check_image_config, embed_patches


class Transformer(simple_vit.Transformer):
    """simple_vit.py's layers (and its JAX-only options) without the final LayerNorm: the head normalises after
    pooling instead."""

    @nn.compact
    def __call__(self, x):
        return self.run_layers(x)


def check_use_flash(model: nn.Module, name: str, value):
    if not isinstance(value, bool):
        raise ValueError(f'{type(model).__name__}: {name}={value!r} must be True or False')


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
    use_flash: bool = True  # vit-pytorch's kernel switch: no effect here (see the module docstring)
    # JAX-only: simple_vit.py's layer scan, remat and attention switch, passed to its layers
    scan_layers: bool = False
    remat_policy: str | None = None
    attention_impl: str = 'explicit'

    def __post_init__(self):
        check_keywords(self)
        check_image_config(self.image_size, self.patch_size)
        check_sincos_dim(self.dim)
        check_use_flash(self, 'use_flash', self.use_flash)
        check_remat_policy(self.remat_policy)
        check_attention_impl(self.attention_impl)
        super().__post_init__()

    @nn.compact
    def __call__(self, img, train: bool = False):  # `train` accepted for a uniform interface; nothing is random
        check_floating_input(self, 'img', img)
        x = embed_patches(img, self.patch_size, self.channels, self.dim)
        patch_height, patch_width = pair(self.patch_size)
        pe = posemb_sincos_2d(img.shape[1] // patch_height, img.shape[2] // patch_width, self.dim)
        x = x + jnp.asarray(pe, dtype=x.dtype)

        x = Transformer(self.dim, self.depth, self.heads, self.dim_head, self.mlp_dim, self.scan_layers,
                        self.remat_policy, self.attention_impl, name='transformer')(x)
        x = x.mean(axis=1)
        x = LayerNorm(name='linear_head_0')(x)
        return Linear(self.num_classes, name='linear_head_1')(x)
