"""ScalableViT ("ScalableViT: Rethinking the Context-oriented Generalization of Vision Transformer", Yang et al.,
2022), mirroring vit_pytorch/scalable_vit.py.

A 7x7 stride-4 convolutional stem, then stages of width `dim * 2 ** i` separated by stride-2 3x3 convolutions.
Each transformer block is scalable self-attention (keys and values from a `reduction_factor` strided conv),
a feed-forward, a position-encoding generator (depth-wise 3x3 conv, first block of a stage only), another
feed-forward and interactive windowed self-attention (attention inside `window_size` windows plus a local
interactive module, a 3x3 conv on the values). Everything runs on feature maps, channels-last here
((B, H, W, C)) where vit-pytorch is channels-first; the logits come from global average pooling, a LayerNorm
and a Linear head.

Parameter tree = vit-pytorch's module tree: `to_patches.weight` lives at `params/to_patches/kernel`,
`layers.0.0.layers.0.4.local_interactive_module.weight` (stage 1, block 1, the windowed attention's LIM) at
`params/layers_0_0/layers_0_4/local_interactive_module/kernel`, `layers.0.1.conv.weight` (stage 1's downsample)
at `params/layers_0_1/conv/kernel`, `mlp_head.1.weight` (the head's LayerNorm) at `params/mlp_head_1/scale`.

Quirks of vit-pytorch kept so weights transfer:
- `depth` must be a tuple (one depth per stage), even for a single stage; `heads`, `reduction_factor`,
  `window_size` and the four `*_dim_key` / `*_dim_value` keywords are an int (every stage) or a tuple with one
  entry per stage.
- Torch's block list is (ssa, ff, peg, ff, iwsa) while its forward unpacks it as (ssa, ff1, peg, iwsa, ff2): the
  windowed attention `layers.i.4` runs last, after the second feed-forward `layers.i.3`. Kept in list order.
- `window_size=None` (for a stage, or all) makes the window the whole feature map: one window, global attention.
  An int is a square window, and the map's height and width must both be divisible by it (checked at the
  forward, as torch does, since the map size depends on the input).
- The keys and values of scalable self-attention come from a conv with kernel = stride = reduction factor and no
  padding, so map sides that are not multiples of it lose their last rows / columns of keys (floor).
- The channel LayerNorm owns raw parameters `g` and `b` of torch's shape (1, dim, 1, 1). The last stage has no
  output norm (torch's nn.Identity, no parameters) and no downsample.
- The query / key / value convs have no biases; the output convs, the LIM conv and the PEG conv have.
- Any image size and aspect ratio works (there is no `image_size`); sizes shrink as ceil(H / 4) through the
  stem and ceil(H / 2) through each downsample.
- `num_classes=0` keeps a head with no outputs, returning (batch, 0).

This port refuses at construction, with a ValueError naming the value (torch fails at construction, at the first
forward, or not at all):
non-positive dims, heads, key / value dims, reduction factors, window sizes, expansion factor or channels, and
negative stage depths or `num_classes`.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from einops import rearrange

from vit_flax.layers import (
    ChanLayerNorm, Conv, LayerNorm, Linear, attention_weights, check_floating_input, check_keywords, default, gelu,
)

# helpers


def cast_tuple(val, length=1):
    return val if isinstance(val, tuple) else ((val,) * length)


# helper classes


class Downsample(nn.Module):
    dim_in: int
    dim_out: int

    @nn.compact
    def __call__(self, x):
        return Conv(self.dim_out, 3, stride=2, padding=1, name='conv')(x)


class PEG(nn.Module):
    dim: int
    kernel_size: int = 3

    @nn.compact
    def __call__(self, x):
        proj = Conv(self.dim, self.kernel_size, padding=self.kernel_size // 2, groups=self.dim, stride=1, name='proj')
        return proj(x) + x


# feedforward


class FeedForward(nn.Module):
    dim: int
    expansion_factor: int = 4
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        inner_dim = self.dim * self.expansion_factor
        x = ChanLayerNorm(self.dim, name='net_0')(x)
        x = Conv(inner_dim, 1, name='net_1')(x)
        x = gelu(x)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = Conv(self.dim, 1, name='net_4')(x)
        return nn.Dropout(self.dropout, deterministic=not train)(x)


# attention


def _attend(q, k, v, scale, dropout, train):
    attn = attention_weights(q, k, scale=scale)
    attn = nn.Dropout(dropout, deterministic=not train)(attn)
    return jnp.einsum('bhij,bhjd->bhid', attn, v)


class ScalableSelfAttention(nn.Module):
    dim: int
    heads: int = 8
    dim_key: int = 32
    dim_value: int = 32
    dropout: float = 0.0
    reduction_factor: int = 1

    @nn.compact
    def __call__(self, x, train: bool = False):
        height, width, heads = x.shape[1], x.shape[2], self.heads
        rf = self.reduction_factor
        if min(height, width) < rf:  # torch's strided conv raises; here it would attend over no keys
            raise ValueError(f'feature map of size ({height}, {width}) is smaller than the keys\' conv '
                             f'(reduction_factor={rf}): give a larger image')

        x = ChanLayerNorm(self.dim, name='norm')(x)

        q = Conv(self.dim_key * heads, 1, use_bias=False, name='to_q')(x)
        k = Conv(self.dim_key * heads, rf, stride=rf, use_bias=False, name='to_k')(x)
        v = Conv(self.dim_value * heads, rf, stride=rf, use_bias=False, name='to_v')(x)

        # split out heads
        q, k, v = (rearrange(t, 'b x y (h d) -> b h (x y) d', h=heads) for t in (q, k, v))

        out = _attend(q, k, v, self.dim_key**-0.5, self.dropout, train)

        # merge back heads
        out = rearrange(out, 'b h (x y) d -> b x y (h d)', x=height, y=width)
        out = Conv(self.dim, 1, name='to_out_0')(out)
        return nn.Dropout(self.dropout, deterministic=not train)(out)


class InteractiveWindowedSelfAttention(nn.Module):
    dim: int
    window_size: int | None
    heads: int = 8
    dim_key: int = 32
    dim_value: int = 32
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        height, width, heads, wsz = x.shape[1], x.shape[2], self.heads, self.window_size

        x = ChanLayerNorm(self.dim, name='norm')(x)

        wsz_h, wsz_w = default(wsz, height), default(wsz, width)
        if height % wsz_h or width % wsz_w:
            raise ValueError(
                f'height ({height}) or width ({width}) of feature map is not divisible by the window size '
                f'({wsz_h}, {wsz_w})'
            )

        q = Conv(self.dim_key * heads, 1, use_bias=False, name='to_q')(x)
        k = Conv(self.dim_key * heads, 1, use_bias=False, name='to_k')(x)
        v = Conv(self.dim_value * heads, 1, use_bias=False, name='to_v')(x)

        # output of the local interactive module (LIM)
        local_out = Conv(self.dim_value * heads, 3, padding=1, name='local_interactive_module')(v)

        # divide into windows (and split out heads)
        q, k, v = (
            rearrange(t, 'b (x w1) (y w2) (h d) -> (b x y) h (w1 w2) d', h=heads, w1=wsz_h, w2=wsz_w)
            for t in (q, k, v)
        )

        out = _attend(q, k, v, self.dim_key**-0.5, self.dropout, train)

        # windows back to the full feature map (and merge heads)
        out = rearrange(out, '(b x y) h (w1 w2) d -> b (x w1) (y w2) (h d)',
                        x=height // wsz_h, y=width // wsz_w, w1=wsz_h, w2=wsz_w)

        out = out + local_out

        out = Conv(self.dim, 1, name='to_out_0')(out)
        return nn.Dropout(self.dropout, deterministic=not train)(out)


class Transformer(nn.Module):
    dim: int
    depth: int
    heads: int = 8
    ff_expansion_factor: int = 4
    dropout: float = 0.0
    ssa_dim_key: int = 32
    ssa_dim_value: int = 32
    ssa_reduction_factor: int = 1
    iwsa_dim_key: int = 32
    iwsa_dim_value: int = 32
    iwsa_window_size: int | None = None
    norm_output: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        for ind in range(self.depth):
            ssa = ScalableSelfAttention(self.dim, heads=self.heads, dim_key=self.ssa_dim_key,
                                        dim_value=self.ssa_dim_value, reduction_factor=self.ssa_reduction_factor,
                                        dropout=self.dropout, name=f'layers_{ind}_0')
            ff1 = FeedForward(self.dim, expansion_factor=self.ff_expansion_factor, dropout=self.dropout,
                              name=f'layers_{ind}_1')
            ff2 = FeedForward(self.dim, expansion_factor=self.ff_expansion_factor, dropout=self.dropout,
                              name=f'layers_{ind}_3')
            iwsa = InteractiveWindowedSelfAttention(self.dim, heads=self.heads, dim_key=self.iwsa_dim_key,
                                                    dim_value=self.iwsa_dim_value, window_size=self.iwsa_window_size,
                                                    dropout=self.dropout, name=f'layers_{ind}_4')

            x = ssa(x, train) + x
            x = ff1(x, train) + x

            if ind == 0:
                x = PEG(self.dim, name=f'layers_{ind}_2')(x)

            # torch's list order (its forward names these two the other way round)
            x = ff2(x, train) + x
            x = iwsa(x, train) + x

        return ChanLayerNorm(self.dim, name='norm')(x) if self.norm_output else x


_PER_STAGE = ('heads', 'ssa_dim_key', 'ssa_dim_value', 'reduction_factor', 'iwsa_dim_key', 'iwsa_dim_value',
              'window_size')


class ScalableViT(nn.Module):
    num_classes: int
    dim: int
    depth: tuple[int, ...]
    heads: int | tuple[int, ...]
    reduction_factor: int | tuple[int, ...]
    window_size: int | None | tuple[int | None, ...] = None
    iwsa_dim_key: int | tuple[int, ...] = 32
    iwsa_dim_value: int | tuple[int, ...] = 32
    ssa_dim_key: int | tuple[int, ...] = 32
    ssa_dim_value: int | tuple[int, ...] = 32
    ff_expansion_factor: int = 4
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
        if num_stages == 0:
            raise ValueError(f'depth needs at least one stage, got depth={self.depth!r}')
        for key in _PER_STAGE:
            values = cast_tuple(getattr(self, key), num_stages)
            if len(values) != num_stages:
                raise ValueError(
                    f'{key}={getattr(self, key)!r} needs one entry per stage ({num_stages} stages: depth={self.depth})'
                )
        super().__post_init__()

    def stage_configs(self) -> tuple[dict, ...]:
        """Each stage's Transformer keywords, as vit-pytorch's constructor derives them."""
        num_stages = len(self.depth)
        dims = tuple((2**i) * self.dim for i in range(num_stages))
        per_stage = [cast_tuple(getattr(self, key), num_stages) for key in _PER_STAGE]
        configs = []
        for ind, (layer_dim, layer_depth, heads, ssa_key, ssa_value, rf, iwsa_key, iwsa_value, window) in enumerate(
            zip(dims, self.depth, *per_stage)
        ):
            configs.append(dict(dim=layer_dim, depth=layer_depth, heads=heads,
                                ff_expansion_factor=self.ff_expansion_factor, dropout=self.dropout,
                                ssa_dim_key=ssa_key, ssa_dim_value=ssa_value, ssa_reduction_factor=rf,
                                iwsa_dim_key=iwsa_key, iwsa_dim_value=iwsa_value, iwsa_window_size=window,
                                norm_output=ind != num_stages - 1))
        return tuple(configs)

    @nn.compact
    def __call__(self, img, train: bool = False):
        check_floating_input(self, 'img', img)
        if img.ndim != 4:
            raise ValueError(f'expected images of shape (batch, height, width, channels), got shape {img.shape}')
        if img.shape[-1] != self.channels:
            raise ValueError(f'expected {self.channels} channels (channels-last input), got shape {img.shape}')

        x = Conv(self.dim, 7, stride=4, padding=3, name='to_patches')(img)

        configs = self.stage_configs()
        for ind, config in enumerate(configs):
            x = Transformer(**config, name=f'layers_{ind}_0')(x, train)
            if ind != len(configs) - 1:
                x = Downsample(config['dim'], config['dim'] * 2, name=f'layers_{ind}_1')(x)

        x = x.mean(axis=(1, 2))
        x = LayerNorm(name='mlp_head_1')(x)
        return Linear(self.num_classes, name='mlp_head_2')(x)
