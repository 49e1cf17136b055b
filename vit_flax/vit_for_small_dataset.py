"""ViT for small datasets (Lee et al., 2021): shifted patch tokenization and locality self-attention.

Mirrors vit_pytorch/vit_for_small_dataset.py. Parameter tree = vit-pytorch's module tree:
`transformer.layers.0.0.to_qkv.weight` lives at `params/transformer/layers_0_0/to_qkv/kernel`, the LSA's learned
temperature at `params/transformer/layers_0_0/temperature`, and the SPT's LayerNorm / Linear at
`params/to_patch_embedding/to_patch_tokens_1` / `_2`.

SPT (shifted patch tokenization) concatenates the image with four copies shifted by one pixel, in torch's
order `F.pad(x, (1, -1, 0, 0))`, `(-1, 1, 0, 0)`, `(0, 0, 1, -1)`, `(0, 0, -1, 1)`: right, left, down, up
(the first pair pads / crops the width, the second the height; the vacated row or column is zero), then cuts
(p1 p2 c) patches of the 5 * channels stack, channel index = shift * channels + channel.

LSA (locality self-attention) scales the dot products by exp(temperature), a learned scalar initialised to
log(dim_head ** -0.5), and masks each token's attention to itself (the diagonal) with -finfo.max of the dot
products' dtype.

Quirks of vit-pytorch kept so weights transfer:
- `patch_size` must be an int: SPT multiplies it by itself (torch fails with a TypeError for a tuple, even
  after ViT's divisibility assert accepted it); `image_size` may be a (height, width) tuple.
- `cls_token` (1, 1, dim) and `pos_embedding` (1, num_patches + 1, dim) keep the old 3-d layout, and the cls
  token exists for `pool='mean'` too: mean pooling averages it with the patch tokens.
- An input smaller than `image_size` takes the first tokens of the position embedding, whatever its height and
  width; only the token count has to fit.
- LSA always has its output projection (no `heads == 1 and dim_head == dim` shortcut); the transformer has no
  final LayerNorm, `mlp_head` is LayerNorm + Linear.
- `num_classes=0` keeps the head: a Linear(dim, 0), so the output is (batch, 0).
- vit-pytorch's unused `patch_dim` and identity `to_latent` have no parameters and no Flax twin.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from einops import rearrange, repeat

from vit_flax.layers import (
    LayerNorm, Linear, add_position_embedding, attention_weights, check_floating_input, check_keywords, pair, randn,
    record_attention_map,
)
from vit_flax.vit import FeedForward, check_image_config, patchify


def check_int_patch_size(patch_size):
    if isinstance(patch_size, bool) or not isinstance(patch_size, int):
        raise ValueError(
            f'SPT needs an int patch_size (vit-pytorch multiplies it by itself), got patch_size={patch_size!r}'
        )


def shift(x, axis: int, amount: int):
    """torch's F.pad with (amount, -amount) on `axis`: moves the image by `amount` (+1 or -1), zero-filling."""
    width = x.shape[axis]
    index = [slice(None)] * x.ndim
    index[axis] = slice(0, width - 1) if amount > 0 else slice(1, width)
    pad = [(0, 0)] * x.ndim
    pad[axis] = (1, 0) if amount > 0 else (0, 1)
    return jnp.pad(x[tuple(index)], pad)


class LSA(nn.Module):
    dim: int
    heads: int = 8
    dim_head: int = 64
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        inner_dim = self.dim_head * self.heads
        # torch.log(torch.tensor(dim_head ** -0.5)): a float32 scalar
        temperature = self.param(
            'temperature', lambda key, shape, dtype: jnp.log(jnp.asarray(self.dim_head**-0.5, dtype)), (), jnp.float32
        )

        x = LayerNorm(name='norm')(x)
        qkv = jnp.split(Linear(inner_dim * 3, use_bias=False, name='to_qkv')(x), 3, axis=-1)
        q, k, v = (rearrange(t, 'b n (h d) -> b h n d', h=self.heads) for t in qkv)

        n = x.shape[1]
        not_self = ~jnp.eye(n, dtype=bool)  # locality: no token attends to itself
        attn = attention_weights(q, k, scale=jnp.exp(temperature).astype(q.dtype), mask=not_self)
        record_attention_map(self, attn)
        attn = nn.Dropout(self.dropout, deterministic=not train)(attn)

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
            x = LSA(self.dim, self.heads, self.dim_head, self.dropout, name=f'layers_{i}_0')(x, train) + x
            x = FeedForward(self.dim, self.mlp_dim, self.dropout, name=f'layers_{i}_1')(x, train) + x
        return x


class SPT(nn.Module):
    """Shifted patch tokenization: images (b, H, W, channels) -> tokens (b, (H / p) * (W / p), dim)."""

    dim: int
    patch_size: int
    channels: int = 3

    def __post_init__(self):
        check_keywords(self)
        check_int_patch_size(self.patch_size)
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False):  # `train` for the module contract: SPT has no dropout
        check_floating_input(self, 'x', x)
        patchify(x, self.patch_size, self.channels)  # checks rank, channels and divisibility with its messages
        shifted = [shift(x, 2, 1), shift(x, 2, -1), shift(x, 1, 1), shift(x, 1, -1)]
        x_with_shifts = jnp.concatenate((x, *shifted), axis=-1)
        x = patchify(x_with_shifts, self.patch_size, 5 * self.channels)
        x = LayerNorm(name='to_patch_tokens_1')(x)
        return Linear(self.dim, name='to_patch_tokens_2')(x)


class ViT(nn.Module):
    image_size: int | tuple[int, int]
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
        check_image_config(self.image_size, self.patch_size)
        if self.pool not in {'cls', 'mean'}:
            raise ValueError(f"pool type must be either cls (cls token) or mean (mean pooling), got pool={self.pool!r}")
        check_int_patch_size(self.patch_size)
        super().__post_init__()

    @nn.compact
    def __call__(self, img, train: bool = False):
        check_floating_input(self, 'img', img)
        (image_height, image_width), (patch_height, patch_width) = pair(self.image_size), pair(self.patch_size)
        num_patches = (image_height // patch_height) * (image_width // patch_width)

        x = SPT(dim=self.dim, patch_size=self.patch_size, channels=self.channels, name='to_patch_embedding')(img)
        b = x.shape[0]

        pos_embedding = self.param('pos_embedding', randn, (1, num_patches + 1, self.dim))
        cls_token = self.param('cls_token', randn, (1, 1, self.dim))

        cls_tokens = repeat(cls_token, '() n d -> b n d', b=b)
        x = jnp.concatenate((cls_tokens.astype(x.dtype), x), axis=1)
        x = add_position_embedding(x, pos_embedding, img.shape[1:3], self.image_size)
        x = nn.Dropout(self.emb_dropout, deterministic=not train)(x)

        x = Transformer(self.dim, self.depth, self.heads, self.dim_head, self.mlp_dim, self.dropout, name='transformer')(
            x, train
        )

        x = x.mean(axis=1) if self.pool == 'mean' else x[:, 0]
        x = LayerNorm(name='mlp_head_0')(x)
        return Linear(self.num_classes, name='mlp_head_1')(x)
