"""PiT ("Rethinking Spatial Dimensions of Vision Transformers", Heo et al., 2021), mirroring vit_pytorch/pit.py.

Pooling-based ViT: stages of transformers with a pooling layer between them. Each `Pool` halves the token grid
(a depthwise 3x3 convolution with stride 2 and padding 1, channel multiplier 2, then a 1x1 convolution) and
doubles the width; the cls token goes through its own Linear. `depth` is a tuple with one transformer depth
per stage; `heads` is one int for every stage or a tuple with one per stage. Patches are cut by an overlapping
`nn.Unfold` (kernel `patch_size`, stride `patch_size // 2`, no padding) in torch's `(c kh kw)` feature order.

Parameter tree = vit-pytorch's module tree. `layers` is one torch `nn.Sequential` of Transformer, Pool,
Transformer, ..., so stage `s`'s transformer lives at `params/layers_{2s}` (its attention at
`layers_{2s}/layers_{i}_0`) and the pool after it at `params/layers_{2s+1}`: `downsample/net_0` (depthwise,
`kernel` (3, 3, 1, 2 * dim), torch's `(2 * dim, 1, 3, 3)` weight), `downsample/net_1` (1x1) and `cls_ff`.

Quirks of vit-pytorch kept so weights transfer:
- `image_size` and `patch_size` are plain ints (square images and patches); torch fails on tuples.
- The token grid is torch's `conv_output_size(image_size, patch_size, patch_size // 2)`, float division then
  `int()`: with an odd patch size the last pixels that do not fill a window are dropped, as `nn.Unfold` does.
- `pos_embedding` is (1, n + 1, dim) and `cls_token` is (1, 1, dim), leading axes included.
- Any input whose unfolded grid gives no more tokens than `image_size` does takes the first `n + 1` rows of the
  position embedding, whatever its height and width; its sides need not be multiples of the patch size.
- Each `Pool` folds the tokens back into a grid of `int(sqrt(n))` rows, whatever the real grid was: a
  non-square input is re-folded as if it were square. A token count not divisible by that row count fails, as
  in torch (where einops raises).
- `heads` is zipped with `depth`: a heads tuple longer than `depth` has its extra entries ignored; a shorter one
  builds only `len(heads)` stages, and (torch decides "not the last stage" by `len(depth)`) the last of them is
  still followed by a `Pool`, whose tokens then go unused, and the head works on the doubled width.
  `depth=()` builds no stage at all: the head reads the cls token straight from the embedding.
- A stage of depth 0 is an empty transformer (no parameters).
- The stage transformers have no final LayerNorm; the head is LayerNorm + Linear (`mlp_head.0`, `mlp_head.1`)
  on the cls token. `mlp_dim` and `dim_head` are the same in every stage while the width doubles.
- A stage with `heads == 1` and `dim_head` equal to its width drops its attention output projection.
- `num_classes=0` keeps an `mlp_head.1` with no outputs and returns (batch, 0), as torch does.

Deliberate differences: vit-pytorch accepts a negative stage depth (an empty stage) and `image_size=0`
(whose forward always fails); both are refused here at construction, naming the value.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp
from einops import rearrange, repeat

from vit_flax.layers import (
    Conv, LayerNorm, Linear, add_position_embedding, check_floating_input, check_keywords, conv_output_size, randn,
    unfold,
)
from vit_flax.vit import Attention, FeedForward

# helpers


def cast_tuple(val, num):
    return val if isinstance(val, tuple) else (val,) * num


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# classes


class Transformer(nn.Module):
    """vit-pytorch's PiT transformer: ViT's layers without the final LayerNorm."""

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


# depthwise convolution, for pooling


class DepthWiseConv2d(nn.Module):
    """A grouped convolution with `groups = dim_in` (each input channel gets dim_out // dim_in filters), then 1x1.

    Channels-last: (b, h, w, dim_in) -> (b, h', w', dim_out).
    """

    dim_in: int
    dim_out: int
    kernel_size: int
    padding: int
    stride: int
    bias: bool = True

    @nn.compact
    def __call__(self, x):
        x = Conv(self.dim_out, self.kernel_size, stride=self.stride, padding=self.padding, groups=self.dim_in,
                 use_bias=self.bias, name='net_0')(x)
        return Conv(self.dim_out, 1, use_bias=self.bias, name='net_1')(x)


# pooling layer


class Pool(nn.Module):
    dim: int

    @nn.compact
    def __call__(self, x):
        cls_token, tokens = x[:, :1], x[:, 1:]

        cls_token = Linear(self.dim * 2, name='cls_ff')(cls_token)

        n = tokens.shape[1]
        rows = int(math.sqrt(n))
        if rows == 0 or n % rows:
            raise ValueError(
                f'{n} tokens cannot be folded into {rows} rows: vit-pytorch folds the tokens back into int(sqrt(n)) '
                f'rows before each pooling, so every grid that reaches a Pool must fold that way'
            )
        tokens = rearrange(tokens, 'b (h w) c -> b h w c', h=rows)
        tokens = DepthWiseConv2d(self.dim, self.dim * 2, kernel_size=3, stride=2, padding=1, name='downsample')(tokens)
        tokens = rearrange(tokens, 'b h w c -> b (h w) c')

        return jnp.concatenate((cls_token, tokens), axis=1)


# main class


class PiT(nn.Module):
    image_size: int
    patch_size: int
    num_classes: int
    dim: int
    depth: tuple[int, ...]
    heads: int | tuple[int, ...]
    mlp_dim: int
    dim_head: int = 64
    dropout: float = 0.0
    emb_dropout: float = 0.0
    channels: int = 3

    def __post_init__(self):
        check_keywords(self)
        for name in ('image_size', 'patch_size'):
            value = getattr(self, name)
            if not _is_int(value):
                raise ValueError(f'PiT takes a single int {name} (square images and patches), got {name}={value!r}')
        if self.patch_size < 2:
            # torch: the unfold stride patch_size // 2 is 0 and conv_output_size divides by it
            raise ValueError(
                f'patch_size must be at least 2 (the patches overlap with stride patch_size // 2), '
                f'got patch_size={self.patch_size}'
            )
        if self.image_size % self.patch_size:
            raise ValueError(
                f'Image dimensions must be divisible by the patch size: image_size={self.image_size}, '
                f'patch_size={self.patch_size}'
            )
        if self.image_size < self.patch_size:
            raise ValueError(
                f'image_size must be at least the patch size: image_size={self.image_size}, '
                f'patch_size={self.patch_size}'
            )
        if not isinstance(self.depth, tuple):
            raise ValueError(
                'depth must be a tuple of integers, specifying the number of blocks before each downsizing, '
                f'got depth={self.depth!r}'
            )
        if not (_is_int(self.heads) or isinstance(self.heads, tuple)):
            raise ValueError(f'heads must be an int or a tuple of ints (one per stage), got heads={self.heads!r}')
        super().__post_init__()

    @property
    def stage_heads(self) -> tuple:
        """The heads of each stage that torch builds: `zip(depth, cast_tuple(heads, len(depth)))`."""
        return tuple(h for _, h in zip(self.depth, cast_tuple(self.heads, len(self.depth))))

    @nn.compact
    def __call__(self, img, train: bool = False):
        check_floating_input(self, 'img', img)
        if img.ndim != 4:
            raise ValueError(f'expected images of shape (batch, height, width, channels), got shape {img.shape}')
        if img.shape[-1] != self.channels:
            raise ValueError(f'expected {self.channels} channels (channels-last input), got shape {img.shape}')
        height, width = img.shape[1:3]
        if min(height, width) < self.patch_size:
            raise ValueError(
                f'image of size {(height, width)} is smaller than the patch size {self.patch_size} on a side'
            )

        stride = self.patch_size // 2
        output_size = conv_output_size(self.image_size, self.patch_size, stride)
        num_patches = output_size**2

        x = unfold(img, self.patch_size, stride, 0)
        x = Linear(self.dim, name='to_patch_embedding_2')(x)
        b = x.shape[0]

        pos_embedding = self.param('pos_embedding', randn, (1, num_patches + 1, self.dim))
        cls_token = self.param('cls_token', randn, (1, 1, self.dim))

        cls_tokens = repeat(cls_token, '() n d -> b n d', b=b)
        x = jnp.concatenate((cls_tokens.astype(x.dtype), x), axis=1)
        x = add_position_embedding(x, pos_embedding, (height, width), self.image_size)
        x = nn.Dropout(self.emb_dropout, deterministic=not train)(x)

        dim = self.dim
        index = 0
        for ind, (layer_depth, layer_heads) in enumerate(zip(self.depth, self.stage_heads)):
            not_last = ind < (len(self.depth) - 1)

            x = Transformer(dim, layer_depth, layer_heads, self.dim_head, self.mlp_dim, self.dropout,
                            name=f'layers_{index}')(x, train)
            index += 1

            if not_last:
                x = Pool(dim, name=f'layers_{index}')(x)
                index += 1
                dim *= 2

        x = LayerNorm(name='mlp_head_0')(x[:, 0])
        return Linear(self.num_classes, name='mlp_head_1')(x)
