"""DeepViT ("DeepViT: Towards Deeper Vision Transformer", Zhou et al., 2021), mirroring vit_pytorch/deepvit.py.

Re-attention: each layer's softmax attention maps are mixed across heads by a learned (heads, heads) matrix
`reattn_weights` and then layer-normalised over the head axis (`reattn_norm`) before they weigh the values.

Parameter tree = vit-pytorch's module tree: `transformer.layers.0.0.reattn_norm.1.weight` lives at
`params/transformer/layers_0_0/reattn_norm_1/scale`.

Quirks of vit-pytorch kept so weights transfer:
- `image_size` and `patch_size` are plain ints (square images and patches); torch fails on tuples.
- `pos_embedding` is (1, num_patches + 1, dim) and `cls_token` is (1, 1, dim), leading axes included.
- The cls token is always prepended, even with `pool='mean'`, whose mean then includes it.
- Any input whose patch grid gives no more tokens than `image_size` does (smaller, or non-square) takes the
  first `n + 1` rows of the position embedding, whatever its height and width.
- Attention dropout acts on the softmax maps *before* re-attention; the output projection is always kept,
  even for a single head with `dim_head == dim`.
- The transformer has no final LayerNorm; the head is LayerNorm + Linear (`mlp_head.0`, `mlp_head.1`).
- `num_classes=0` keeps an `mlp_head.1` with no outputs and returns (batch, 0), as torch does.
- With `heads=1` the re-attention LayerNorm normalises a single value, so the maps become its bias.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from einops import rearrange, repeat

from vit_flax.layers import (
    LayerNorm, Linear, add_position_embedding, attention_weights, check_floating_input, check_keywords, randn,
)
from vit_flax.vit import FeedForward, embed_patches


class Attention(nn.Module):
    dim: int
    heads: int = 8
    dim_head: int = 64
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        inner_dim = self.dim_head * self.heads

        x = LayerNorm(name='norm')(x)

        qkv = jnp.split(Linear(inner_dim * 3, use_bias=False, name='to_qkv')(x), 3, axis=-1)
        q, k, v = (rearrange(t, 'b n (h d) -> b h n d', h=self.heads) for t in qkv)

        # attention

        attn = attention_weights(q, k, scale=self.dim_head**-0.5)
        attn = nn.Dropout(self.dropout, deterministic=not train)(attn)

        # re-attention

        reattn_weights = self.param('reattn_weights', randn, (self.heads, self.heads))
        attn = jnp.einsum('bhij,hg->bgij', attn, reattn_weights.astype(attn.dtype))
        attn = rearrange(attn, 'b h i j -> b i j h')
        attn = LayerNorm(name='reattn_norm_1')(attn)
        attn = rearrange(attn, 'b i j h -> b h i j')

        # aggregate and out

        out = jnp.einsum('bhij,bhjd->bhid', attn, v)
        out = rearrange(out, 'b h n d -> b n (h d)')
        out = Linear(self.dim, name='to_out_0')(out)
        return nn.Dropout(self.dropout, deterministic=not train)(out)


class Transformer(nn.Module):
    dim: int
    depth: int
    heads: int
    dim_head: int
    mlp_dim: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        for i in range(self.depth):
            x = Attention(self.dim, self.heads, self.dim_head, self.dropout, name=f'layers_{i}_0')(x, train) + x
            x = FeedForward(self.dim, self.mlp_dim, self.dropout, name=f'layers_{i}_1')(x, train) + x
        return x


class DeepViT(nn.Module):
    image_size: int
    patch_size: int
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

    def __post_init__(self):
        check_keywords(self)
        for name in ('image_size', 'patch_size'):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f'DeepViT takes a single int {name} (square images and patches), got {name}={value!r}')
        if self.image_size % self.patch_size:
            raise ValueError(
                f'Image dimensions must be divisible by the patch size: image_size={self.image_size}, '
                f'patch_size={self.patch_size}'
            )
        if self.pool not in {'cls', 'mean'}:
            raise ValueError(f"pool type must be either cls (cls token) or mean (mean pooling), got pool={self.pool!r}")
        super().__post_init__()

    @nn.compact
    def __call__(self, img, train: bool = False):
        check_floating_input(self, 'img', img)
        num_patches = (self.image_size // self.patch_size) ** 2

        x = embed_patches(img, self.patch_size, self.channels, self.dim)
        b = x.shape[0]

        pos_embedding = self.param('pos_embedding', randn, (1, num_patches + 1, self.dim))
        cls_token = self.param('cls_token', randn, (1, 1, self.dim))

        cls_tokens = repeat(cls_token, '1 n d -> b n d', b=b)
        x = jnp.concatenate((cls_tokens.astype(x.dtype), x), axis=1)
        x = add_position_embedding(x, pos_embedding, img.shape[1:3], self.image_size)
        x = nn.Dropout(self.emb_dropout, deterministic=not train)(x)

        x = Transformer(self.dim, self.depth, self.heads, self.dim_head, self.mlp_dim, self.dropout, name='transformer')(
            x, train
        )

        x = x.mean(axis=1) if self.pool == 'mean' else x[:, 0]

        x = LayerNorm(name='mlp_head_0')(x)
        return Linear(self.num_classes, name='mlp_head_1')(x)
