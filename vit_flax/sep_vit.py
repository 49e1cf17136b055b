"""SepViT ("SepViT: Separable Vision Transformer", Li et al., 2022), mirroring vit_pytorch/sep_vit.py.

Stages of an overlapping patch embedding (a strided convolution: stride 4, then 2 per stage, doubling the width),
a PEG (depth-wise 3 x 3 convolution added to its input) and a transformer of depth-wise separable self-attention
(DSSA): "depth-wise" attention within each window of `window_size` x `window_size` pixels, with a learned window
token prepended to every window, then "point-wise" attention among the windows' tokens whose weights mix the
windows' feature maps. Everything runs on feature maps, channels-last here ((B, H, W, C)) where vit-pytorch is
channels-first; the logits come from global average pooling, a LayerNorm and a Linear.

Parameter tree = vit-pytorch's module tree: `layers.0.0.conv.weight` (stage 1's patch embedding) lives at
`params/layers_0_0/conv/kernel`, `layers.0.1.proj.weight` (its PEG, depth-wise) at `params/layers_0_1/proj/kernel`
(3, 3, 1, dim), `layers.0.2.layers.0.0.window_tokens_to_qk.3.weight` (a Conv1d) at
`params/layers_0_2/layers_0_0/window_tokens_to_qk_3/kernel` (1, in, out), `mlp_head.2.weight` at
`params/mlp_head_2/kernel`.

Quirks of vit-pytorch kept so weights transfer:
- `SepViT` ignores its `window_size` and `dim_head`: neither reaches the attention, so every DSSA uses windows of
  7 x 7 and `dim_head=32` (inner width `32 * heads`) whatever is passed. `window_size` is only checked: a tuple
  must have one entry per stage, like `heads`. Every stage's feature map must therefore have height and width
  divisible by 7: the first stage's map is ceil(H / 4) x ceil(W / 4) and each further stage halves it (rounding
  up), so a one-stage model takes H, W in 25..28 (one window) or 53..56 (2 x 2 windows) and so on, and each extra
  stage doubles those sizes. Other sizes fail at the first forward in both (here a ValueError naming the sizes).
- With a single window in a map, the point-wise attention is skipped, yet its `window_tokens_to_qk` parameters
  exist (their gradient is zero; torch's is None).
- `depth` must be a tuple; `heads` (and `window_size`) may be an int or a tuple with one entry per stage.
  `depth=()` builds no stage in torch and pools the raw image: mirrored.
- The last stage's transformer has no output norm (`norm_output=False`); the others end in a channel LayerNorm.
- The channel LayerNorm (`ChanLayerNorm`) owns raw parameters `g` and `b` of torch's shape (1, dim, 1, 1).
- The window tokens' queries and keys come from one Conv1d whose output is split per head as (h (2 d)), then
  halved: head h's query is channels [2 d h, 2 d h + d), its key the next d.
- `num_classes=0` keeps a head with no outputs, returning (batch, 0). `ff_mult` may be a float
  (`int(dim * mult)` hidden channels).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from einops import rearrange, repeat

from vit_flax.layers import (
    ChanLayerNorm, Conv, LayerNorm, Linear, check_floating_input, check_keywords, gelu, randn, softmax,
)
from vit_flax.cvt import FeedForward  # the same channel-first feed-forward as cvt

# helpers


def cast_tuple(val, length=1):
    return val if isinstance(val, tuple) else ((val,) * length)


# helper classes


class OverlappingPatchEmbed(nn.Module):
    dim_in: int
    dim_out: int
    stride: int = 2

    @nn.compact
    def __call__(self, x):
        kernel_size = self.stride * 2 - 1
        padding = kernel_size // 2
        return Conv(self.dim_out, kernel_size, stride=self.stride, padding=padding, name='conv')(x)


class PEG(nn.Module):
    dim: int
    kernel_size: int = 3

    @nn.compact
    def __call__(self, x):
        proj = Conv(self.dim, self.kernel_size, padding=self.kernel_size // 2, groups=self.dim, stride=1, name='proj')
        return proj(x) + x


# feedforward


# attention


class DSSA(nn.Module):
    dim: int
    heads: int = 8
    dim_head: int = 32
    dropout: float = 0.0
    window_size: int = 7

    @nn.compact
    def __call__(self, x, train: bool = False):
        """x: (b, H, W, dim) -> (b, H, W, dim). Einstein notation as in vit-pytorch: x, y count windows along the
        height and width, w1, w2 are positions inside a window."""
        heads, wsz = self.heads, self.window_size
        inner_dim = self.dim_head * heads
        scale = self.dim_head**-0.5
        height, width = x.shape[1:3]
        if height % wsz or width % wsz:
            raise ValueError(
                f'height {height} and width {width} must be divisible by window size {wsz} '
                "(SepViT's attention always uses 7: SepViT does not pass its window_size on)"
            )
        num_windows = (height // wsz) * (width // wsz)
        nx, ny = height // wsz, width // wsz

        x = ChanLayerNorm(self.dim, name='norm')(x)

        # fold in windows for "depthwise" attention
        x = rearrange(x, 'b (h w1) (w w2) c -> (b h w) (w1 w2) c', w1=wsz, w2=wsz)

        # add windowing tokens
        window_tokens = self.param('window_tokens', randn, (self.dim,))
        w = repeat(window_tokens.astype(x.dtype), 'c -> b 1 c', b=x.shape[0])
        x = jnp.concatenate((w, x), axis=1)

        q, k, v = jnp.split(Conv(inner_dim * 3, 1, use_bias=False, name='to_qkv')(x), 3, axis=-1)
        q, k, v = (rearrange(t, 'b n (h d) -> b h n d', h=heads) for t in (q, k, v))

        q = q * scale
        dots = jnp.einsum('bhid,bhjd->bhij', q, k)
        attn = softmax(dots, axis=-1)
        attn = nn.Dropout(self.dropout, deterministic=not train)(attn)
        out = jnp.einsum('bhij,bhjd->bhid', attn, v)

        # split out windowed tokens
        window_tokens, windowed_fmaps = out[:, :, 0], out[:, :, 1:]

        window_tokens = rearrange(window_tokens, '(b x y) h d -> b h (x y) d', x=nx, y=ny)
        # windowed queries and keys; with one window torch skips them but owns their parameters, so they are
        # computed (and dropped, their gradient zero) to keep the parameter tree whatever the input size
        w_q, w_k = self._window_tokens_to_qk(window_tokens, inner_dim)

        # early return if there is only 1 window
        if num_windows == 1:
            fmap = rearrange(windowed_fmaps, '(b x y) h (w1 w2) d -> b (x w1) (y w2) (h d)', x=nx, y=ny, w1=wsz, w2=wsz)
            return self._to_out(fmap, train)

        # the point-wise attention among windows
        windowed_fmaps = rearrange(windowed_fmaps, '(b x y) h n d -> b h (x y) n d', x=nx, y=ny)

        w_q = w_q * scale
        w_dots = jnp.einsum('bhid,bhjd->bhij', w_q, w_k)
        w_attn = softmax(w_dots, axis=-1)
        w_attn = nn.Dropout(self.dropout, deterministic=not train)(w_attn)

        aggregated_windowed_fmap = jnp.einsum('bhij,bhjwd->bhiwd', w_attn, windowed_fmaps)
        fmap = rearrange(aggregated_windowed_fmap, 'b h (x y) (w1 w2) d -> b (x w1) (y w2) (h d)',
                         x=nx, y=ny, w1=wsz, w2=wsz)
        return self._to_out(fmap, train)

    def _window_tokens_to_qk(self, window_tokens, inner_dim):
        """torch's `window_tokens_to_qk` (LayerNorm over dim_head, GELU, Conv1d over (h c)) then `.chunk(2, -1)`."""
        t = LayerNorm(name='window_tokens_to_qk_0')(window_tokens)
        t = gelu(t)
        t = rearrange(t, 'b h n c -> b n (h c)')
        t = Conv(inner_dim * 2, 1, name='window_tokens_to_qk_3')(t)
        t = rearrange(t, 'b n (h c) -> b h n c', h=self.heads)
        return jnp.split(t, 2, axis=-1)

    def _to_out(self, fmap, train):
        out = Conv(self.dim, 1, name='to_out_0')(fmap)
        return nn.Dropout(self.dropout, deterministic=not train)(out)


class Transformer(nn.Module):
    dim: int
    depth: int
    dim_head: int = 32
    heads: int = 8
    ff_mult: float = 4
    dropout: float = 0.0
    norm_output: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        for i in range(self.depth):
            # as in torch, the attention gets neither dim_head nor a window size: its defaults (32, 7) apply
            attn = DSSA(self.dim, heads=self.heads, dropout=self.dropout, name=f'layers_{i}_0')
            ff = FeedForward(self.dim, mult=self.ff_mult, dropout=self.dropout, name=f'layers_{i}_1')
            x = attn(x, train) + x
            x = ff(x, train) + x
        return ChanLayerNorm(self.dim, name='norm')(x) if self.norm_output else x


class SepViT(nn.Module):
    num_classes: int
    dim: int
    depth: tuple[int, ...]
    heads: int | tuple[int, ...]
    window_size: int | tuple[int, ...] = 7
    dim_head: int = 32
    ff_mult: float = 4
    channels: int = 3
    dropout: float = 0.0

    def __post_init__(self):
        check_keywords(self)
        if not isinstance(self.depth, tuple):
            raise ValueError(
                'depth needs to be tuple if integers indicating number of transformer blocks at that stage, '
                f'got depth={self.depth!r}'
            )
        num_stages = len(self.depth)
        for name in ('heads', 'window_size'):
            value = cast_tuple(getattr(self, name), num_stages)
            if len(value) != num_stages:
                raise ValueError(
                    f'{name}={getattr(self, name)!r} needs one entry per stage, depth={self.depth!r} has {num_stages}'
                )
        if int(self.dim * self.ff_mult) < 1:
            raise ValueError(f'ff_mult={self.ff_mult!r} gives int(dim * ff_mult) < 1 hidden channels (dim={self.dim})')
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_floating_input(self, 'x', x)
        if x.ndim != 4:
            raise ValueError(f'expected images of shape (batch, height, width, channels), got shape {x.shape}')
        if x.shape[-1] != self.channels:
            raise ValueError(f'expected {self.channels} channels (channels-last input), got shape {x.shape}')

        num_stages = len(self.depth)
        dims = tuple((2**i) * self.dim for i in range(num_stages))
        dims = (self.channels, *dims)
        dim_pairs = tuple(zip(dims[:-1], dims[1:]))
        strides = (4, *((2,) * (num_stages - 1)))
        heads = cast_tuple(self.heads, num_stages)

        for ind, ((layer_dim_in, layer_dim), layer_depth, layer_stride, layer_heads) in enumerate(
            zip(dim_pairs, self.depth, strides, heads)
        ):
            is_last = ind == (num_stages - 1)
            x = OverlappingPatchEmbed(layer_dim_in, layer_dim, stride=layer_stride, name=f'layers_{ind}_0')(x)
            x = PEG(layer_dim, name=f'layers_{ind}_1')(x)
            x = Transformer(dim=layer_dim, depth=layer_depth, heads=layer_heads, ff_mult=self.ff_mult,
                            dropout=self.dropout, norm_output=not is_last, name=f'layers_{ind}_2')(x, train)

        x = x.mean(axis=(1, 2))
        x = LayerNorm(name='mlp_head_1')(x)
        return Linear(self.num_classes, name='mlp_head_2')(x)
