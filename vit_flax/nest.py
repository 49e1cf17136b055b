"""NesT ("Nested Hierarchical Transformer", Zhang et al., 2021), mirroring vit_pytorch/nest.py.

The patch map is cut into 2^(n-1) x 2^(n-1) blocks that a transformer attends within (every block shares the
weights); between hierarchies a block aggregation (3x3 conv, channel LayerNorm, 3x3 max pool of stride 2, padding
1) halves the map and the number of blocks per side, and doubles the width and the head count. Everything runs
on feature maps, channels-last here ((B, H, W, C)) where vit-pytorch is channels-first.

Parameter tree = vit-pytorch's module tree: `layers.0.0.layers.1.0.to_qkv.weight` lives at
`params/layers_0_0/layers_1_0/to_qkv/kernel`, the aggregation conv `layers.0.1.0.weight` at
`params/layers_0_1_0/kernel` (Aggregate is a plain nn.Sequential in torch), `mlp_head.2.weight` at
`params/mlp_head_2/kernel`.

Quirks of vit-pytorch kept so weights transfer:
- `dim_head` is accepted and ignored: every attention uses `dim // heads` per head (the same at each hierarchy,
  as width and heads double together), so the inner width `(dim // heads) * heads` can be below `dim`.
- Each transformer's position embedding `pos_emb` is one learned scalar per block position, shape (seq_len,),
  added to every channel; seq_len = (fmap // 2^(n-1))^2 is the same for every hierarchy.
- The channel LayerNorm owns raw parameters `g` and `b` of torch's shape (1, dim, 1, 1).
- The last hierarchy has no aggregation (torch's nn.Identity, no parameters).
- `image_size` must be an int. Another input size works as in torch when its patch map divides into the blocks
  and a block holds at most seq_len positions (the position embedding is sliced); others are refused here.
- A `block_repeats` tuple longer than `num_hierarchies` has its extra entries ignored (torch's zip).

Where torch fails late, this port refuses at construction with a ValueError naming the value: a patch map not
divisible into 2^(n-1) blocks per side (torch fails at the first forward), `heads > dim` (torch divides by zero),
a `block_repeats` tuple shorter than `num_hierarchies` (torch builds a model whose forward fails).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from einops import rearrange

from vit_flax.layers import (
    ChanLayerNorm, Conv, Linear, attention_weights, check_floating_input, check_keywords, gelu, randn,
)

# helpers


def cast_tuple(val, depth):
    return val if isinstance(val, tuple) else ((val,) * depth)


# classes

LayerNorm = ChanLayerNorm  # vit-pytorch's nest.LayerNorm is the channel LayerNorm


class FeedForward(nn.Module):
    dim: int
    mlp_mult: int = 4
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = LayerNorm(self.dim, name='net_0')(x)
        x = Conv(self.dim * self.mlp_mult, 1, name='net_1')(x)
        x = gelu(x)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = Conv(self.dim, 1, name='net_4')(x)
        return nn.Dropout(self.dropout, deterministic=not train)(x)


class Attention(nn.Module):
    dim: int
    heads: int = 8
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        dim_head = self.dim // self.heads
        inner_dim = dim_head * self.heads
        h, w, heads = x.shape[1], x.shape[2], self.heads

        x = LayerNorm(self.dim, name='norm')(x)

        qkv = jnp.split(Conv(inner_dim * 3, 1, use_bias=False, name='to_qkv')(x), 3, axis=-1)
        q, k, v = (rearrange(t, 'b x y (h d) -> b h (x y) d', h=heads) for t in qkv)

        attn = attention_weights(q, k, scale=dim_head**-0.5)
        attn = nn.Dropout(self.dropout, deterministic=not train)(attn)

        out = jnp.einsum('bhij,bhjd->bhid', attn, v)
        out = rearrange(out, 'b h (x y) d -> b x y (h d)', x=h, y=w)
        out = Conv(self.dim, 1, name='to_out_0')(out)
        return nn.Dropout(self.dropout, deterministic=not train)(out)


def Aggregate(dim, dim_out, name):
    """torch's Aggregate is an nn.Sequential; its modules are created in the caller's scope as `{name}_{i}`."""

    def aggregate(x):
        x = Conv(dim_out, 3, padding=1, name=f'{name}_0')(x)
        x = LayerNorm(dim_out, name=f'{name}_1')(x)
        return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))  # pads with -inf, as torch

    return aggregate


class Transformer(nn.Module):
    dim: int
    seq_len: int
    depth: int
    heads: int
    mlp_mult: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        h, w = x.shape[1], x.shape[2]
        pos_emb = self.param('pos_emb', randn, (self.seq_len,))
        if h * w > self.seq_len:
            raise ValueError(
                f'blocks of {h} x {w} positions hold more than the seq_len={self.seq_len} position embeddings'
            )
        pos_emb = rearrange(pos_emb[: h * w], '(h w) -> () h w ()', h=h, w=w)
        x = x + pos_emb.astype(x.dtype)

        for i in range(self.depth):
            x = Attention(self.dim, heads=self.heads, dropout=self.dropout, name=f'layers_{i}_0')(x, train) + x
            x = FeedForward(self.dim, self.mlp_mult, dropout=self.dropout, name=f'layers_{i}_1')(x, train) + x
        return x


class NesT(nn.Module):
    image_size: int
    patch_size: int
    num_classes: int
    dim: int
    heads: int
    num_hierarchies: int
    block_repeats: int | tuple[int, ...]
    mlp_mult: int = 4
    channels: int = 3
    dim_head: int = 64  # ignored, as in vit-pytorch
    dropout: float = 0.0

    def __post_init__(self):
        check_keywords(self)
        for name in ('image_size', 'patch_size'):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f'{name} must be a positive int (vit-pytorch takes no tuple), got {name}={value!r}')
        if self.image_size % self.patch_size:
            raise ValueError(
                f'Image dimensions must be divisible by the patch size: image_size={self.image_size}, '
                f'patch_size={self.patch_size}'
            )
        fmap_size, blocks = self.image_size // self.patch_size, 2 ** (self.num_hierarchies - 1)
        if fmap_size % blocks:
            raise ValueError(
                f'the patch map ({fmap_size} = image_size={self.image_size} // patch_size={self.patch_size}) must '
                f'divide into 2^(num_hierarchies - 1) = {blocks} blocks per side (num_hierarchies='
                f'{self.num_hierarchies})'
            )
        if self.heads < 1 or self.heads > self.dim:
            raise ValueError(f'heads must be in [1, dim={self.dim}] (dim_head = dim // heads), got heads={self.heads}')
        block_repeats = cast_tuple(self.block_repeats, self.num_hierarchies)
        if len(block_repeats) < self.num_hierarchies:
            raise ValueError(
                f'block_repeats={self.block_repeats} needs one entry per hierarchy (num_hierarchies='
                f'{self.num_hierarchies})'
            )
        super().__post_init__()

    @nn.compact
    def __call__(self, img, train: bool = False):
        check_floating_input(self, 'img', img)
        num_hierarchies, patch_size = self.num_hierarchies, self.patch_size
        patch_dim = self.channels * patch_size**2
        fmap_size = self.image_size // patch_size
        blocks = 2 ** (num_hierarchies - 1)
        seq_len = (fmap_size // blocks) ** 2  # sequence length is held constant across hierarchy
        hierarchies = list(reversed(range(num_hierarchies)))
        mults = [2**i for i in reversed(hierarchies)]
        layer_heads = [t * self.heads for t in mults]
        layer_dims = [t * self.dim for t in mults]
        last_dim = layer_dims[-1]
        layer_dims = [*layer_dims, layer_dims[-1]]
        dim_pairs = zip(layer_dims[:-1], layer_dims[1:])
        block_repeats = cast_tuple(self.block_repeats, num_hierarchies)

        if img.ndim != 4:
            raise ValueError(f'expected images of shape (batch, height, width, channels), got shape {img.shape}')
        _, height, width, c = img.shape
        if c != self.channels:
            raise ValueError(f'expected {self.channels} channels (channels-last input), got shape {img.shape}')
        if height % (patch_size * blocks) or width % (patch_size * blocks):
            raise ValueError(
                f'image of size {(height, width)} must be divisible by patch_size * 2^(num_hierarchies - 1) = '
                f'{patch_size * blocks}'
            )

        x = rearrange(img, 'b (h p1) (w p2) c -> b h w (p1 p2 c)', p1=patch_size, p2=patch_size)
        x = LayerNorm(patch_dim, name='to_patch_embedding_1')(x)
        x = Conv(layer_dims[0], 1, name='to_patch_embedding_2')(x)
        x = LayerNorm(layer_dims[0], name='to_patch_embedding_3')(x)

        for i, (level, heads, (dim_in, dim_out), depth) in enumerate(
            zip(hierarchies, layer_heads, dim_pairs, block_repeats)
        ):
            block_size = 2**level
            transformer = Transformer(dim_in, seq_len, depth, heads, self.mlp_mult, self.dropout, name=f'layers_{i}_0')
            x = rearrange(x, 'b (b1 h) (b2 w) c -> (b b1 b2) h w c', b1=block_size, b2=block_size)
            x = transformer(x, train)
            x = rearrange(x, '(b b1 b2) h w c -> b (b1 h) (b2 w) c', b1=block_size, b2=block_size)
            if level != 0:
                x = Aggregate(dim_in, dim_out, name=f'layers_{i}_1')(x)

        x = LayerNorm(last_dim, name='mlp_head_0')(x)
        x = x.mean(axis=(1, 2))
        return Linear(self.num_classes, name='mlp_head_2')(x)
