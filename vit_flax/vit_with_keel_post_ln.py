"""ViT with KEEL post-LayerNorm residuals, mirroring vit_pytorch/vit_with_keel_post_ln.py.

vit.ViT whose transformer is one flat list of sublayers (attention, feed-forward, attention, ...) joined by scaled
post-norm residuals: after the first sublayer (a plain residual), each sublayer's output is added to its input times
`keel_residual_scale` (default: the number of sublayers, 2 * depth) and the sum normalised by a bias-free LayerNorm
of its own (`transformer.post_norms`). Every LayerNorm of the transformer is bias-free, and there is no final norm.

Quirks of vit-pytorch kept so weights transfer:
- `pool='mean'` still owns a `cls_token` parameter, of shape (0, dim).
- An input smaller than `image_size` takes the first `seq` rows of the position embedding, whatever its height and
  width; only the token count has to fit.
- With `heads == 1 and dim_head == dim` the attention output projection (and its dropout) is dropped.
- `num_classes=0` has no head and returns the transformer's tokens, (batch, seq, dim).
- vit-pytorch asserts `depth > 1`: refused at construction here, naming the value.

Random draws: dropout only, from the 'dropout' stream (`train=True`).

JAX-only options: `attention_impl` ('explicit', the default, forms vit-pytorch's maps, which recorder.Recorder records;
'xla' / 'cudnn' / 'auto' call jax.nn.dot_product_attention; training with attention dropout keeps the explicit path).
There is no `scan_layers` / `remat_policy`: the first sublayer has no post-norm, so the stack is not one repeated
layer in vit-pytorch's module tree.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from einops import repeat

from vit_flax.layers import (
    LayerNorm, Linear, add_position_embedding, check_attention_impl, check_floating_input, check_keywords, default,
    gelu, multi_head_attention, pair, randn, residual_boundary,
)
from vit_flax.vit import check_image_config, embed_patches


class FeedForward(nn.Module):
    dim: int
    hidden_dim: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = LayerNorm(use_bias=False, name='net_0')(x)
        x = gelu(Linear(self.hidden_dim, name='net_1')(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = Linear(self.dim, name='net_4')(x)
        return nn.Dropout(self.dropout, deterministic=not train)(x)


class Attention(nn.Module):
    dim: int
    heads: int = 8
    dim_head: int = 64
    dropout: float = 0.0
    attention_impl: str = 'explicit'  # JAX-only, see the module docstring

    @nn.compact
    def __call__(self, x, train: bool = False):
        inner_dim = self.dim_head * self.heads
        project_out = not (self.heads == 1 and self.dim_head == self.dim)
        x = LayerNorm(use_bias=False, name='norm')(x)
        q, k, v = jnp.split(Linear(inner_dim * 3, use_bias=False, name='to_qkv')(x), 3, axis=-1)
        out = multi_head_attention(self, q, k, v, self.heads, self.dim_head**-0.5, self.attention_impl, self.dropout,
                                   train)
        if not project_out:
            return out
        out = Linear(self.dim, name='to_out_0')(out)
        return nn.Dropout(self.dropout, deterministic=not train)(out)


class Transformer(nn.Module):
    dim: int
    depth: int
    heads: int
    dim_head: int
    mlp_dim: int
    dropout: float = 0.0
    keel_residual_scale: float | None = None
    attention_impl: str = 'explicit'  # JAX-only

    @nn.compact
    def __call__(self, x, train: bool = False):
        residual_scale = default(self.keel_residual_scale, self.depth * 2)
        for index in range(self.depth * 2):
            if index % 2 == 0:
                layer = Attention(self.dim, self.heads, self.dim_head, self.dropout, self.attention_impl,
                                  name=f'layers_{index}')
            else:
                layer = FeedForward(self.dim, self.mlp_dim, self.dropout, name=f'layers_{index}')
            out = layer(x, train)
            if index == 0:
                x = out + x
            else:
                x = LayerNorm(use_bias=False, name=f'post_norms_{index - 1}')(out + x * residual_scale)
            x = residual_boundary(x)  # linear, not quadratic, backward work on CPU (layers.py)
        return x


class ViT(nn.Module):
    image_size: int | tuple[int, int]
    patch_size: int | tuple[int, int]
    num_classes: int
    dim: int
    depth: int
    heads: int
    mlp_dim: int
    pool: str = 'cls'
    channels: int = 3
    dim_head: int = 64
    dropout: float = 0.0
    emb_dropout: float = 0.0
    keel_residual_scale: float | None = None
    attention_impl: str = 'explicit'  # JAX-only, see the module docstring

    def __post_init__(self):
        check_keywords(self)
        check_image_config(self.image_size, self.patch_size)
        check_attention_impl(self.attention_impl)
        if self.pool not in {'cls', 'mean'}:
            raise ValueError(f"pool type must be either cls (cls token) or mean (mean pooling), got pool={self.pool!r}")
        if self.depth < 2:
            raise ValueError(f'the KEEL transformer needs depth > 1 (as vit-pytorch asserts), got depth={self.depth}')
        super().__post_init__()

    @nn.compact
    def __call__(self, img, train: bool = False):
        check_floating_input(self, 'img', img)
        x = embed_patches(img, self.patch_size, self.channels, self.dim)

        (image_height, image_width), (patch_height, patch_width) = pair(self.image_size), pair(self.patch_size)
        num_patches = (image_height // patch_height) * (image_width // patch_width)
        num_cls_tokens = 1 if self.pool == 'cls' else 0
        cls_token = self.param('cls_token', randn, (num_cls_tokens, self.dim))
        pos_embedding = self.param('pos_embedding', randn, (num_patches + num_cls_tokens, self.dim))

        cls_tokens = repeat(cls_token.astype(x.dtype), 'n d -> b n d', b=x.shape[0])
        x = jnp.concatenate((cls_tokens, x), axis=1)
        x = add_position_embedding(x, pos_embedding, img.shape[1:3], self.image_size)
        x = nn.Dropout(self.emb_dropout, deterministic=not train)(x)

        x = Transformer(self.dim, self.depth, self.heads, self.dim_head, self.mlp_dim, self.dropout,
                        keel_residual_scale=self.keel_residual_scale, attention_impl=self.attention_impl,
                        name='transformer')(x, train)

        if self.num_classes <= 0:
            return x

        x = x.mean(axis=1) if self.pool == 'mean' else x[:, 0]
        return Linear(self.num_classes, name='mlp_head')(x)
