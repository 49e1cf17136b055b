"""JumboViT ("Simpler Fast Vision Transformers with a Jumbo CLS Token", Fuller et al., 2025), mirroring
vit_pytorch/jumbo_vit.py.

SimpleViT (fixed 2D sin-cos position embedding, bias-free attention projections) with a "jumbo" class token:
`num_jumbo_cls` learned tokens of width `jumbo_cls_k * dim`, each split into `jumbo_cls_k` tokens of width `dim` for
attention and put back together for their own, wider feed-forward (`jumbo_ff`, one set of weights shared by every
layer), while the patch tokens take each layer's feed-forward. The head reads the mean of the jumbo tokens after a
LayerNorm.

Quirks of vit-pytorch kept so weights transfer:
- The layers' `FeedForward(dim, mult)` is handed `mlp_dim` as its multiplier: a layer's hidden width is
  `int(dim * mlp_dim)`, not `mlp_dim`.
- Likewise `jumbo_ff` is handed `int(jumbo_cls_k * dim * jumbo_ff_mult)` as its multiplier: its hidden width is
  `jumbo_cls_k * dim * int(jumbo_cls_k * dim * jumbo_ff_mult)`.
- The jumbo class token starts at zeros.
- The position embedding is built for `image_size`; an input must give the same number of patches.
- `num_classes=0` keeps a `linear_head` with no outputs, returning (batch, 0).

Fix: vit-pytorch fails at its first forward with `depth=0` (the pooled tokens are never assigned); refused at
construction here.

No random draws (no dropout): `train` is accepted for a uniform interface.

JAX-only options: `attention_impl` ('explicit', the default, forms vit-pytorch's maps; 'xla' / 'cudnn' / 'auto' call
jax.nn.dot_product_attention). There is no `scan_layers` / `remat_policy`: the layers share the jumbo feed-forward's
weights and the model holds them in `layers`, not a `transformer`.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from einops import rearrange, repeat

from vit_flax.layers import (
    LayerNorm, Linear, SequentialFeedForward, add_posemb_sincos_2d, check_attention_impl, check_floating_input,
    check_keywords, check_sincos_dim,
)
from vit_flax.simple_vit import Attention
from vit_flax.vit import check_image_config, embed_patches


class JumboViT(nn.Module):
    image_size: int | tuple[int, int]
    patch_size: int | tuple[int, int]
    num_classes: int
    dim: int
    depth: int
    heads: int
    mlp_dim: int
    num_jumbo_cls: int = 1
    jumbo_cls_k: int = 6
    jumbo_ff_mult: float = 2
    channels: int = 3
    dim_head: int = 64
    attention_impl: str = 'explicit'  # JAX-only, see the module docstring

    def __post_init__(self):
        check_keywords(self)
        check_image_config(self.image_size, self.patch_size)
        check_sincos_dim(self.dim)
        check_attention_impl(self.attention_impl)
        if self.depth < 1:
            raise ValueError(f'JumboViT needs at least one layer (its head pools what the layers give the jumbo '
                             f'tokens), got depth={self.depth}')
        super().__post_init__()

    @nn.compact
    def __call__(self, img, train: bool = False):  # `train` accepted for a uniform interface; nothing is random
        check_floating_input(self, 'img', img)
        k = self.jumbo_cls_k
        jumbo_cls_dim = self.dim * k

        x = embed_patches(img, self.patch_size, self.channels, self.dim)
        x = add_posemb_sincos_2d(x, img.shape[1:3], self.image_size, self.patch_size, self.dim)

        jumbo_cls_token = self.param('jumbo_cls_token', nn.initializers.zeros, (self.num_jumbo_cls, jumbo_cls_dim))
        cls_tokens = repeat(jumbo_cls_token.astype(x.dtype), 'nj d -> b nj d', b=x.shape[0])
        jumbo_tokens = rearrange(cls_tokens, 'b n (k d) -> b (n k) d', k=k)
        num_jumbo_tokens = jumbo_tokens.shape[1]
        x = jnp.concatenate((jumbo_tokens, x), axis=1)

        # vit-pytorch's FeedForward(dim, mult): the second argument is a multiplier (module docstring)
        jumbo_ff = SequentialFeedForward(int(jumbo_cls_dim * int(jumbo_cls_dim * self.jumbo_ff_mult)),
                                         name='jumbo_ff_1')
        for i in range(self.depth):
            x = Attention(self.dim, self.heads, self.dim_head, self.attention_impl, name=f'layers_{i}_0')(x) + x
            jumbo_tokens, x = x[:, :num_jumbo_tokens], x[:, num_jumbo_tokens:]
            x = SequentialFeedForward(int(self.dim * self.mlp_dim), name=f'layers_{i}_1')(x) + x
            wide = rearrange(jumbo_tokens, 'b (n k) d -> b n (k d)', k=k)
            jumbo_tokens = rearrange(jumbo_ff(wide), 'b n (k d) -> b (n k) d', k=k) + jumbo_tokens
            if i < self.depth - 1:
                x = jnp.concatenate((jumbo_tokens, x), axis=1)

        embed = LayerNorm(name='norm')(jumbo_tokens.mean(axis=1))
        return Linear(self.num_classes, name='linear_head')(embed)
