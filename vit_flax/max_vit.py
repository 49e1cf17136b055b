"""MaxViT ("MaxViT: Multi-Axis Vision Transformer", Tu et al., 2022), mirroring vit_pytorch/max_vit.py.

A convolutional stem (two 3x3 convs, the first strided), then stages of blocks. Each block is an MBConv
(1x1 conv, BatchNorm, GELU, depth-wise 3x3 conv, BatchNorm, GELU, squeeze-excitation, 1x1 conv, BatchNorm; the
first block of a stage downsamples by 2) followed by block attention (local `window_size` x `window_size`
windows) and grid attention (a dilated `window_size` x `window_size` grid over the whole map), each attention with
a learned relative position bias and a feed-forward, both pre-norm residual. The logits come from global average
pooling, a LayerNorm and a Linear. Feature maps are channels-last here ((B, H, W, C)) where vit-pytorch's are
channels-first.

Parameter tree = vit-pytorch's module tree: `conv_stem.0.weight` lives at `params/conv_stem_0/kernel`; block `b`
(counted over all stages) is `layers.b`, a Sequential whose MBConv is `layers.b.0` (its Sequential's layers at
`layers_b_0_{k}`, or `layers_b_0/fn_{k}` when it is residual), block attention `layers.b.2.fn`
(`params/layers_b_2/fn/{norm,to_qkv,rel_pos_bias,to_out_0}`), its feed-forward `layers.b.3.fn.net`, grid attention
`layers.b.6.fn`, its feed-forward `layers.b.7.fn.net`; BatchNorm running statistics at
`batch_stats/.../{mean,var}`; the head at `mlp_head_1` (LayerNorm) and `mlp_head_2` (Linear).

BatchNorm follows torch's BatchNorm2d: `train=True` normalises with the batch's biased variance and, with
`mutable=['batch_stats']`, updates the running variance with the unbiased one (momentum 0.1).

Quirks of vit-pytorch kept so weights transfer:
- `depth` must be a tuple (one block count per stage); stage `i` has width `dim * 2 ** i`; `dim_conv_stem`
  (default `dim`) is only the stem's width. Heads are `dim // dim_head` per stage, so deeper stages have more.
- The MBConv of a block is residual (`MBConvResidual`, keys `...0.fn.{k}`) only when it neither downsamples nor
  changes width: every block but a stage's first (which downsamples, stride 2).
- MaxViT never passes a dropout to its MBConvs, so their `Dropsample` is always the identity inside MaxViT
  (`dropout` reaches attention and feed-forward only, default 0.1).
- The squeeze-excitation Linears have no biases; attention's `to_qkv` and `to_out` have none either.
- The relative position indices are a non-persistent buffer in torch (not in the state dict): recomputed here.
- `num_classes=0` keeps a head with no outputs, returning (batch, 0).
- `Residual(dim, fn)` takes a `dim` it ignores, as torch's does. A squeeze-excitation of fewer than
  1 / `mbconv_shrinkage_rate` channels has a hidden width of 0 (its gate is sigmoid(0) = 0.5), as in torch.
- torch's `MBConv(...)` is a factory returning a Sequential or an `MBConvResidual`; here `MBConv(x, ...)` applies the
  same layers inside the caller's compact method, so the Sequential's layers keep torch's names in the caller.
- Any image size works whose feature map after the stem and each stage's stride-2 MBConv (sizes rounded up) is
  divisible by `window_size` in both directions, at every stage; torch fails in a rearrange otherwise, this port
  raises a ValueError naming the sizes.

One deliberate difference: torch's `Dropsample` draws `torch.FloatTensor((batch, 1, 1, 1)).uniform_()`, a tensor
of 4 values (the tuple is read as data, not a shape), which broadcasts over the width axis and fails unless the
width is 4 (or broadcasts a width of 1 up to 4). This port implements the intended stochastic depth on samples:
one uniform draw per sample from the 'dropsample' rng stream, kept where it exceeds `prob`, the kept samples
scaled by 1 / (1 - prob). It is only reachable through a standalone `MBConvResidual` (see above).

Where torch fails late or not at all, this port refuses at construction with a ValueError naming the value:
non-tuple `depth`, `dim` not divisible by `dim_head`, non-positive sizes, negative depths, `num_classes` or
dropout outside [0, 1].
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange

from vit_flax.layers import (
    BatchNorm, Conv, Embedding, LayerNorm, Linear, check_floating_input, check_keywords, default, gelu, softmax,
)

# helpers


def cast_tuple(val, length=1):
    return val if isinstance(val, tuple) else ((val,) * length)


# helper classes


class Residual(nn.Module):
    """`fn(x) + x`; `fn` (created with `parent=None`) is adopted under the name `fn`, as in torch."""

    dim: int
    fn: nn.Module

    @nn.compact
    def __call__(self, x, train: bool = False):
        return self.fn(x, train) + x


class FeedForward(nn.Module):
    dim: int
    mult: float = 4
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        inner_dim = int(self.dim * self.mult)
        x = LayerNorm(name='net_0')(x)
        x = Linear(inner_dim, name='net_1')(x)
        x = gelu(x)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = Linear(self.dim, name='net_4')(x)
        return nn.Dropout(self.dropout, deterministic=not train)(x)


# MBConv


class SqueezeExcitation(nn.Module):
    dim: int
    shrinkage_rate: float = 0.25

    @nn.compact
    def __call__(self, x):
        hidden_dim = int(self.dim * self.shrinkage_rate)
        gate = x.mean(axis=(1, 2))
        gate = Linear(hidden_dim, use_bias=False, name='gate_1')(gate)
        gate = nn.silu(gate)
        gate = Linear(self.dim, use_bias=False, name='gate_3')(gate)
        gate = jax.nn.sigmoid(gate)
        return x * gate[:, None, None, :]


class Dropsample(nn.Module):
    """Stochastic depth on samples: in training, each sample is zeroed with probability `prob` (one uniform draw
    per sample from the 'dropsample' rng stream) and the rest are scaled by 1 / (1 - prob). See the module
    docstring for how torch's version differs."""

    prob: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.prob == 0.0 or not train:
            return x
        u = jax.random.uniform(self.make_rng('dropsample'), (x.shape[0],) + (1,) * (x.ndim - 1), jnp.float32)
        keep_mask = u > self.prob
        return x * keep_mask.astype(x.dtype) / (1 - self.prob)


def _mbconv_net(x, prefix: str, dim_out, hidden_dim, stride, shrinkage_rate, train):
    """torch's MBConv Sequential, its layers named `{prefix}{index}` in the calling module's scope."""
    x = Conv(hidden_dim, 1, name=f'{prefix}0')(x)
    x = BatchNorm(name=f'{prefix}1')(x, train)
    x = gelu(x)
    x = Conv(hidden_dim, 3, stride=stride, padding=1, groups=hidden_dim, name=f'{prefix}3')(x)
    x = BatchNorm(name=f'{prefix}4')(x, train)
    x = gelu(x)
    x = SqueezeExcitation(hidden_dim, shrinkage_rate=shrinkage_rate, name=f'{prefix}6')(x)
    x = Conv(dim_out, 1, name=f'{prefix}7')(x)
    return BatchNorm(name=f'{prefix}8')(x, train)


class MBConvResidual(nn.Module):
    """torch's `MBConvResidual(MBConv net, dropout)`: the MBConv of `dim` -> `dim` channels without downsampling
    (layers at `fn_{k}`), a Dropsample, plus the input. (torch builds it from a module; here from MBConv's
    keywords, since the net's layers must live in this module's scope to keep torch's names.)"""

    dim: int
    expansion_rate: float = 4
    shrinkage_rate: float = 0.25
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        hidden_dim = int(self.expansion_rate * self.dim)
        out = _mbconv_net(x, 'fn_', self.dim, hidden_dim, 1, self.shrinkage_rate, train)
        out = Dropsample(self.dropout, name='dropsample')(out, train)
        return out + x


def MBConv(x, dim_in, dim_out, *, downsample, expansion_rate=4, shrinkage_rate=0.25, dropout=0.0, name,
           train=False):
    """torch's `MBConv(dim_in, dim_out, downsample=..., ...)` applied to `x` inside a compact method: a residual
    `MBConvResidual` named `name` when `dim_in == dim_out and not downsample`, else the Sequential's layers named
    `{name}_{k}` in the calling module (torch's keys `{name}.{k}`)."""
    if dim_in == dim_out and not downsample:
        return MBConvResidual(dim_out, expansion_rate, shrinkage_rate, dropout, name=name)(x, train)
    hidden_dim = int(expansion_rate * dim_out)
    stride = 2 if downsample else 1
    return _mbconv_net(x, f'{name}_', dim_out, hidden_dim, stride, shrinkage_rate, train)


# attention related classes


def relative_position_indices(window_size: int) -> np.ndarray:
    """torch's `rel_pos_indices` buffer: (w*w, w*w) indices into the (2w - 1)^2 relative position table."""
    pos = np.arange(window_size)
    grid = np.stack(np.meshgrid(pos, pos, indexing='ij'))
    grid = rearrange(grid, 'c i j -> (i j) c')
    rel_pos = grid[:, None, :] - grid[None, :, :]
    rel_pos += window_size - 1
    return (rel_pos * np.array([2 * window_size - 1, 1])).sum(axis=-1)


class Attention(nn.Module):
    """Attention within windows: input (b, x, y, w1, w2, dim), `dim // dim_head` heads, relative position bias."""

    dim: int
    dim_head: int = 32
    dropout: float = 0.0
    window_size: int = 7

    def __post_init__(self):
        if self.dim_head <= 0 or self.dim % self.dim_head:
            raise ValueError(
                f'dimension should be divisible by dimension per head: dim={self.dim}, dim_head={self.dim_head}'
            )
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False):
        batch, height, width, window_height, window_width, _ = x.shape
        h = self.dim // self.dim_head
        scale = self.dim_head**-0.5

        x = LayerNorm(name='norm')(x)
        x = rearrange(x, 'b x y w1 w2 d -> (b x y) (w1 w2) d')

        q, k, v = jnp.split(Linear(self.dim * 3, use_bias=False, name='to_qkv')(x), 3, axis=-1)
        q, k, v = (rearrange(t, 'b n (h d) -> b h n d', h=h) for t in (q, k, v))

        q = q * scale
        sim = jnp.einsum('bhid,bhjd->bhij', q, k)

        num_rel = (2 * self.window_size - 1) ** 2
        bias = Embedding(num_rel, h, name='rel_pos_bias')(jnp.asarray(relative_position_indices(self.window_size)))
        sim = sim + rearrange(bias, 'i j h -> h i j').astype(sim.dtype)

        attn = softmax(sim, axis=-1)
        attn = nn.Dropout(self.dropout, deterministic=not train)(attn)

        out = jnp.einsum('bhij,bhjd->bhid', attn, v)
        out = rearrange(out, 'b h (w1 w2) d -> b w1 w2 (h d)', w1=window_height, w2=window_width)

        out = Linear(self.dim, use_bias=False, name='to_out_0')(out)
        out = nn.Dropout(self.dropout, deterministic=not train)(out)
        return rearrange(out, '(b x y) ... -> b x y ...', x=height, y=width)


class MaxViT(nn.Module):
    num_classes: int
    dim: int
    depth: tuple[int, ...]
    dim_head: int = 32
    dim_conv_stem: int | None = None
    window_size: int = 7
    mbconv_expansion_rate: float = 4
    mbconv_shrinkage_rate: float = 0.25
    dropout: float = 0.1
    channels: int = 3

    def __post_init__(self):
        check_keywords(self)
        if not isinstance(self.depth, tuple):
            raise ValueError(
                'depth needs to be tuple if integers indicating number of transformer blocks at that stage, '
                f'got depth={self.depth!r}'
            )
        if self.dim % self.dim_head:
            raise ValueError(
                f'dimension should be divisible by dimension per head: dim={self.dim}, dim_head={self.dim_head}'
            )
        # torch's channel flow: a stage of depth 0 passes its input on, which the next stage (or the head's
        # LayerNorm) accepts only when the widths happen to agree
        dims = (default(self.dim_conv_stem, self.dim), *((2**i) * self.dim for i in range(len(self.depth))))
        channels = dims[0]
        for i, layer_depth in enumerate(self.depth):
            if layer_depth:
                if channels != dims[i]:
                    raise ValueError(f'depth={self.depth}: stage {i} expects {dims[i]} channels, but gets {channels} '
                                     'from an empty stage before it')
                channels = dims[i + 1]
        if channels != dims[-1]:
            raise ValueError(f'depth={self.depth}: the head expects {dims[-1]} channels, but gets {channels} from '
                             'an empty last stage')
        if int(self.mbconv_expansion_rate * self.dim) < 1:
            raise ValueError(f'mbconv_expansion_rate={self.mbconv_expansion_rate} leaves no hidden channels')
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_floating_input(self, 'x', x)
        if x.ndim != 4:
            raise ValueError(f'expected images of shape (batch, height, width, channels), got shape {x.shape}')
        if x.shape[-1] != self.channels:
            raise ValueError(f'expected {self.channels} channels (channels-last input), got shape {x.shape}')

        dim_conv_stem = default(self.dim_conv_stem, self.dim)
        x = Conv(dim_conv_stem, 3, stride=2, padding=1, name='conv_stem_0')(x)
        x = Conv(dim_conv_stem, 3, padding=1, name='conv_stem_1')(x)

        num_stages = len(self.depth)
        dims = tuple((2**i) * self.dim for i in range(num_stages))
        dims = (dim_conv_stem, *dims)
        dim_pairs = tuple(zip(dims[:-1], dims[1:]))

        w = self.window_size
        input_size = x.shape[1:3]
        block = 0
        for (layer_dim_in, layer_dim), layer_depth in zip(dim_pairs, self.depth):
            for stage_ind in range(layer_depth):
                is_first = stage_ind == 0
                stage_dim_in = layer_dim_in if is_first else layer_dim
                name = f'layers_{block}'

                x = MBConv(
                    x,
                    stage_dim_in,
                    layer_dim,
                    downsample=is_first,
                    expansion_rate=self.mbconv_expansion_rate,
                    shrinkage_rate=self.mbconv_shrinkage_rate,
                    name=f'{name}_0',
                    train=train,
                )
                height, width = x.shape[1:3]
                if height % w or width % w:
                    raise ValueError(
                        f'feature map of size {(height, width)} in block {block} (input after the stem: '
                        f'{tuple(input_size)}) is not divisible by window_size={w}'
                    )

                x = self.attend_windows(x, block, layer_dim, train)
                block += 1

        x = x.mean(axis=(1, 2))
        x = LayerNorm(name='mlp_head_1')(x)
        return Linear(self.num_classes, name='mlp_head_2')(x)

    def attend_windows(self, x, block: int, layer_dim: int, train: bool):
        """Block `block`'s attention after its MBConv: block-like (local windows), then grid-like (dilated), each
        with its feed-forward (max_vit_with_registers overrides it to add register tokens)."""
        w, name = self.window_size, f'layers_{block}'

        def attend(x, index):
            attention = Attention(dim=layer_dim, dim_head=self.dim_head, dropout=self.dropout,
                                  window_size=w, parent=None)
            x = Residual(layer_dim, attention, name=f'{name}_{index}')(x, train)
            feedforward = FeedForward(dim=layer_dim, dropout=self.dropout, parent=None)
            return Residual(layer_dim, feedforward, name=f'{name}_{index + 1}')(x, train)

        # block-like attention
        x = rearrange(x, 'b (x w1) (y w2) d -> b x y w1 w2 d', w1=w, w2=w)
        x = attend(x, 2)
        x = rearrange(x, 'b x y w1 w2 d -> b (x w1) (y w2) d')

        # grid-like attention
        x = rearrange(x, 'b (w1 x) (w2 y) d -> b x y w1 w2 d', w1=w, w2=w)
        x = attend(x, 6)
        x = rearrange(x, 'b x y w1 w2 d -> b (w1 x) (w2 y) d')
        return x
