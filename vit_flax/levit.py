"""LeViT (Graham et al., 2021), mirroring vit_pytorch/levit.py.

Parameter tree = vit-pytorch's module tree: `backbone.0.layers.0.0.to_q.1.running_mean` lives at
`batch_stats/backbone_0/layers_0_0/to_q_1/mean`, `backbone.0.layers.0.0.pos_bias.weight` at
`params/backbone_0/layers_0_0/pos_bias/embedding`. The feature maps stay channels-last throughout; vit-pytorch's
1x1 convolutions and BatchNorm2d act on the channel axis, so they are Conv / BatchNorm on the last axis here.

Quirks of vit-pytorch kept so weights transfer:
- Each attention layer saves its relative-position index table `pos_indices` as a persistent buffer (in the
  state dict, int64): it lives in the 'buffers' collection (int32, as JAX holds integers without x64) and the
  forward pass reads it from there, as torch does, so a loaded table is the one used.
- The attention bias is added as `bias / scale`, i.e. multiplied by sqrt(dim_key), not scaled with the dots.
- The output BatchNorm of every attention starts with scale 0 (`nn.init.zeros_`); the others with 1.
- The conv embedding is four stride-2 3x3 convolutions with no activation between them, and takes 3 channels
  (there is no `channels` keyword; `LeViT.channels` is the constant 3).
- The downsampling transformer between stages ignores `mlp_mult` and `dropout`: it always uses `mlp_mult=2`
  and no dropout, with `heads * 2` heads of the stage it follows, and has no attention residual.
- `dim`, `depth`, `heads` as ints or tuples; a tuple shorter than `stages` is padded with its last value.
- The heads read the last stage's dim. With `num_distill_classes` (0 included) the model returns
  `(logits, distill_logits)`.
- `image_size` must be an int; the feature map side is `image_size // 16` and the position biases are built
  for it. Inputs of other sizes work when the conv embedding still gives that map (sides in
  `(16 * (f - 1), 16 * f]`); others are refused with the sizes. (vit-pytorch fails for most of them and silently
  broadcasts a transposed map for a few non-square ones.)
"""

from __future__ import annotations

from math import ceil

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from einops import rearrange

from vit_flax.layers import (
    BatchNorm, Conv, Embedding, Linear, check_floating_input, check_keywords, default, exists, gelu, softmax,
)

# helpers


def cast_tuple(val, l=3):
    val = val if isinstance(val, tuple) else (val,)
    return (*val, *((val[-1],) * max(l - len(val), 0)))


def relative_position_indices(fmap_size: int, downsample: bool) -> np.ndarray:
    """vit-pytorch's `pos_indices` buffer: for each query and key position, |dx| * fmap_size + |dy|."""
    q_range = np.arange(0, fmap_size, 2 if downsample else 1)
    k_range = np.arange(fmap_size)
    q_pos = np.stack(np.meshgrid(q_range, q_range, indexing='ij'), axis=-1).reshape(-1, 2)
    k_pos = np.stack(np.meshgrid(k_range, k_range, indexing='ij'), axis=-1).reshape(-1, 2)
    rel_pos = np.abs(q_pos[:, None, :] - k_pos[None, :, :])
    return (rel_pos[..., 0] * fmap_size + rel_pos[..., 1]).astype(np.int32)


# classes


class FeedForward(nn.Module):
    dim: int
    mult: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = Conv(self.dim * self.mult, 1, name='net_0')(x)
        x = nn.hard_swish(x)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = Conv(self.dim, 1, name='net_3')(x)
        return nn.Dropout(self.dropout, deterministic=not train)(x)


class Attention(nn.Module):
    dim: int
    fmap_size: int
    heads: int = 8
    dim_key: int = 32
    dim_value: int = 64
    dropout: float = 0.0
    dim_out: int | None = None
    downsample: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        inner_dim_key = self.dim_key * self.heads
        inner_dim_value = self.dim_value * self.heads
        dim_out = default(self.dim_out, self.dim)
        scale = self.dim_key**-0.5

        q = Conv(inner_dim_key, 1, stride=2 if self.downsample else 1, use_bias=False, name='to_q_0')(x)
        q = BatchNorm(name='to_q_1')(q, train)
        k = BatchNorm(name='to_k_1')(Conv(inner_dim_key, 1, use_bias=False, name='to_k_0')(x), train)
        v = BatchNorm(name='to_v_1')(Conv(inner_dim_value, 1, use_bias=False, name='to_v_0')(x), train)
        y = q.shape[1]  # torch's `q.shape[2]`: the height of the query map

        q, k, v = (rearrange(t, 'b x y (h d) -> b h (x y) d', h=self.heads) for t in (q, k, v))

        dots = jnp.einsum('bhid,bhjd->bhij', q, k) * scale

        # positional bias
        pos_bias = Embedding(self.fmap_size * self.fmap_size, self.heads, name='pos_bias')
        pos_indices = self.variable(
            'buffers', 'pos_indices', lambda: jnp.asarray(relative_position_indices(self.fmap_size, self.downsample))
        )
        bias = rearrange(pos_bias(pos_indices.value), 'i j h -> () h i j')
        dots = dots + (bias / scale).astype(dots.dtype)

        attn = softmax(dots, axis=-1)
        attn = nn.Dropout(self.dropout, deterministic=not train)(attn)

        out = jnp.einsum('bhij,bhjd->bhid', attn, v)
        out = rearrange(out, 'b h (x y) d -> b x y (h d)', h=self.heads, y=y)

        out = gelu(out)
        out = Conv(dim_out, 1, name='to_out_1')(out)
        # vit-pytorch's nn.init.zeros_(out_batch_norm.weight)
        out = BatchNorm(scale_init=nn.initializers.zeros, name='to_out_2')(out, train)
        return nn.Dropout(self.dropout, deterministic=not train)(out)


class Transformer(nn.Module):
    dim: int
    fmap_size: int
    depth: int
    heads: int
    dim_key: int
    dim_value: int
    mlp_mult: int = 2
    dropout: float = 0.0
    dim_out: int | None = None
    downsample: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        dim_out = default(self.dim_out, self.dim)
        attn_residual = (not self.downsample) and self.dim == dim_out

        for i in range(self.depth):
            attn = Attention(self.dim, fmap_size=self.fmap_size, heads=self.heads, dim_key=self.dim_key,
                             dim_value=self.dim_value, dropout=self.dropout, downsample=self.downsample,
                             dim_out=dim_out, name=f'layers_{i}_0')
            ff = FeedForward(dim_out, self.mlp_mult, dropout=self.dropout, name=f'layers_{i}_1')
            attn_res = x if attn_residual else 0
            x = attn(x, train) + attn_res
            x = ff(x, train) + x
        return x


class LeViT(nn.Module):
    image_size: int
    num_classes: int
    dim: int | tuple[int, ...]
    depth: int | tuple[int, ...]
    heads: int | tuple[int, ...]
    mlp_mult: int
    stages: int = 3
    dim_key: int = 32
    dim_value: int = 64
    dropout: float = 0.0
    num_distill_classes: int | None = None

    channels = 3  # not a keyword: vit-pytorch's conv embedding takes 3 channels

    def __post_init__(self):
        check_keywords(self)
        if not isinstance(self.image_size, (int, np.integer)) or isinstance(self.image_size, bool):
            raise ValueError(f'LeViT takes a single int image_size (vit-pytorch divides it by 16), '
                             f'got image_size={self.image_size!r}')
        if self.image_size < 16:
            raise ValueError(f'image_size={self.image_size} gives an empty feature map: LeViT downsamples by 16')
        dims, depths, layer_heads = (cast_tuple(v, self.stages) for v in (self.dim, self.depth, self.heads))
        if not all(len(t) == self.stages for t in (dims, depths, layer_heads)):
            raise ValueError(
                'dimensions, depths, and heads must be a tuple that is less than the designated number of stages: '
                f'dim={self.dim}, depth={self.depth}, heads={self.heads}, stages={self.stages}'
            )
        if min(depths) < 1:
            raise ValueError(f'depth must be positive ints, got depth={self.depth}')
        super().__post_init__()

    @nn.compact
    def __call__(self, img, train: bool = False):
        check_floating_input(self, 'img', img)
        dims, depths, layer_heads = (cast_tuple(v, self.stages) for v in (self.dim, self.depth, self.heads))
        fmap_size = self.image_size // (2**4)

        if img.ndim != 4:
            raise ValueError(f'expected images of shape (batch, height, width, channels), got shape {img.shape}')
        if img.shape[-1] != self.channels:
            raise ValueError(f'expected {self.channels} channels (channels-last input), got shape {img.shape}')
        grid = tuple(ceil(side / 16) for side in img.shape[1:3])
        if grid != (fmap_size, fmap_size):
            raise ValueError(
                f'image of size {tuple(img.shape[1:3])} gives a {grid[0]}x{grid[1]} feature map, but the position '
                f'biases of image_size={self.image_size} are for {fmap_size}x{fmap_size} '
                f'(height and width must lie in ({16 * (fmap_size - 1)}, {16 * fmap_size}])'
            )

        x = img
        for i, features in enumerate((32, 64, 128, dims[0])):
            x = Conv(features, 3, stride=2, padding=1, name=f'conv_embedding_{i}')(x)

        index = 0
        for ind, (dim, depth, heads) in enumerate(zip(dims, depths, layer_heads)):
            is_last = ind == (self.stages - 1)
            x = Transformer(dim, fmap_size, depth, heads, self.dim_key, self.dim_value, self.mlp_mult, self.dropout,
                            name=f'backbone_{index}')(x, train)
            index += 1

            if not is_last:
                next_dim = dims[ind + 1]
                x = Transformer(dim, fmap_size, 1, heads * 2, self.dim_key, self.dim_value, dim_out=next_dim,
                                downsample=True, name=f'backbone_{index}')(x, train)
                index += 1
                fmap_size = ceil(fmap_size / 2)

        x = x.mean(axis=(1, 2))

        out = Linear(self.num_classes, name='mlp_head')(x)
        if exists(self.num_distill_classes):
            return out, Linear(self.num_distill_classes, name='distill_head')(x)
        return out
