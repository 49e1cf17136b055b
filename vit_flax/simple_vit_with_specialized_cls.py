"""SimpleViT with a specialized class token (Marouani et al., 2026, arXiv 2602.08626), mirroring
vit_pytorch/simple_vit_with_specialized_cls.py.

SimpleViT (fixed 2D sin-cos position embedding on the patches, bias-free attention projections) with a class token
that has LayerNorms of its own: every norm of the transformer is a pair (`Specialized`, torch's `norm.fns.{0,1}`), the
first for the class token, the second for the patch tokens; in the first `specialize_qkv_depth` layers (default
depth // 3) the class token also has its own q, k, v projection (`to_qkv.fns.0`). The head reads the class token.

Quirks of vit-pytorch kept so weights transfer:
- The class token is a (dim,) parameter drawn N(0, 0.01^2) (randn * 1e-2); the position embedding is added to the
  patches only, before the class token joins them.
- The position embedding is built for `image_size`; an input must give the same number of patches.
- `num_classes=0` keeps a `linear_head` with no outputs, returning (batch, 0).

No random draws (no dropout): `train` is accepted for a uniform interface.

JAX-only options: `attention_impl` ('explicit', the default, forms vit-pytorch's maps, which recorder.Recorder records;
'xla' / 'cudnn' / 'auto' call jax.nn.dot_product_attention). There is no `scan_layers` / `remat_policy`: the first
`specialize_qkv_depth` layers have projections the others lack, so the stack is not one repeated layer.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
from einops import repeat

from vit_flax.layers import (
    LayerNorm, Linear, add_posemb_sincos_2d, check_attention_impl, check_floating_input, check_keywords,
    check_sincos_dim, default, gelu, multi_head_attention, residual_boundary,
)
from vit_flax.vit import check_image_config, embed_patches


class Specialized(nn.Module):
    """vit-pytorch's Specialized: `fns[i]` applied to the i-th run of `token_lens` tokens, the results concatenated.
    `fns` are unbound modules (parent=None), adopted here as `fns_0`, `fns_1`, ... (torch's `fns.0`, `fns.1`)."""

    fns: Sequence[nn.Module]

    def __call__(self, x, token_lens: tuple[int, ...]):
        if len(self.fns) != len(token_lens):
            raise ValueError(f'{len(self.fns)} specialized modules for {len(token_lens)} runs of tokens')
        bounds = [sum(token_lens[:i]) for i in range(len(token_lens) + 1)]
        return jnp.concatenate([fn(x[:, start:end]) for fn, start, end in zip(self.fns, bounds, bounds[1:])], axis=1)


def specialized_norm(name: str) -> Specialized:
    return Specialized((LayerNorm(parent=None), LayerNorm(parent=None)), name=name)


class FeedForward(nn.Module):
    dim: int
    hidden_dim: int

    @nn.compact
    def __call__(self, x, token_lens: tuple[int, ...]):
        x = specialized_norm('norm')(x, token_lens)
        x = gelu(Linear(self.hidden_dim, name='net_0')(x))
        return Linear(self.dim, name='net_2')(x)


class Attention(nn.Module):
    dim: int
    heads: int = 8
    dim_head: int = 64
    specialize_qkv: bool = False
    attention_impl: str = 'explicit'  # JAX-only, see the module docstring

    @nn.compact
    def __call__(self, x, token_lens: tuple[int, ...]):
        inner_dim = self.dim_head * self.heads
        x = specialized_norm('norm')(x, token_lens)
        if self.specialize_qkv:
            projections = tuple(Linear(inner_dim * 3, use_bias=False, parent=None) for _ in range(2))
            qkv = Specialized(projections, name='to_qkv')(x, token_lens)
        else:
            qkv = Linear(inner_dim * 3, use_bias=False, name='to_qkv')(x)
        q, k, v = jnp.split(qkv, 3, axis=-1)
        out = multi_head_attention(self, q, k, v, self.heads, self.dim_head**-0.5, self.attention_impl)
        return Linear(self.dim, use_bias=False, name='to_out')(out)


class Transformer(nn.Module):
    dim: int
    depth: int
    heads: int
    dim_head: int
    mlp_dim: int
    specialize_qkv_depth: int
    attention_impl: str = 'explicit'  # JAX-only

    @nn.compact
    def __call__(self, x, token_lens: tuple[int, ...]):
        for i in range(self.depth):
            attention = Attention(self.dim, self.heads, self.dim_head, specialize_qkv=i < self.specialize_qkv_depth,
                                  attention_impl=self.attention_impl, name=f'layers_{i}_0')
            x = residual_boundary(attention(x, token_lens) + x)  # linear, not quadratic, backward work on CPU
            x = residual_boundary(FeedForward(self.dim, self.mlp_dim, name=f'layers_{i}_1')(x, token_lens) + x)
        return specialized_norm('norm')(x, token_lens)


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
    specialize_qkv_depth: int | None = None
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

        b, n, _ = x.shape
        cls_token = self.param('cls_token', nn.initializers.normal(stddev=1e-2), (self.dim,))
        cls_tokens = repeat(cls_token.astype(x.dtype), 'd -> b 1 d', b=b)
        x = jnp.concatenate((cls_tokens, x), axis=1)

        specialize_qkv_depth = default(self.specialize_qkv_depth, self.depth // 3)
        x = Transformer(self.dim, self.depth, self.heads, self.dim_head, self.mlp_dim, specialize_qkv_depth,
                        attention_impl=self.attention_impl, name='transformer')(x, (1, n))
        return Linear(self.num_classes, name='linear_head')(x[:, 0])
