"""MobileViT (Mehta & Rastegari, 2021), mirroring vit_pytorch/mobile_vit.py.

A strided conv stem, MobileNetV2 inverted-residual blocks (point-wise / depth-wise / point-wise convs with
BatchNorm and SiLU) and three MobileViT blocks: local convs, then a transformer over the pixels that share a
position within each `patch_size` patch (unfold), folded back and fused with the block's input. Channels-last
here ((B, H, W, 3)) where vit-pytorch is channels-first.

Parameter tree = vit-pytorch's module tree: `stem.1.conv.3.weight` (a depth-wise conv) lives at
`params/stem_1/conv_3/kernel` (HWIO, one input channel per group), `trunk.0.1.conv4.1.running_var` at
`batch_stats/trunk_0_1/conv4_1/var`, `to_logits.0.0.weight` at `params/to_logits_0_0/kernel`.

BatchNorm statistics live in 'batch_stats' and follow torch's BatchNorm2d: `train=True` normalises with the
batch's biased variance and, with `mutable=['batch_stats']`, updates the running variance with the unbiased one
(momentum 0.1).

Quirks of vit-pytorch kept so weights transfer:
- `channels` is the list of stage widths (11 in the paper's presets), not the input's channel count: the input
  always has 3 channels. `image_size` is only checked against `patch_size`; any input whose feature maps divide
  into patches at every MobileViT block runs.
- Every transformer has 4 heads of 8 dimensions whatever `dims`, a SiLU feed-forward of width 2x (first block) or
  4x (others) its dim, and no final LayerNorm. The head's Linear has no bias.
- The n x n convs always pad 1, so `kernel_size` other than 3 changes the map size and torch fails at its first
  forward; it is refused here.
- The fourth stem block is built as MV2Block(channels[2], channels[3]) although it receives channels[3]
  channels, and each MobileViT block expects the width of the MV2 block before it: torch fails at the first
  forward unless channels[2] == channels[3], channels[4] == channels[5], channels[6] == channels[7],
  channels[8] == channels[9] == channels[-2]; those are refused here.
- `expansion` may be fractional: hidden widths are int(inp * expansion); expansion 1 drops the first point-wise
  conv (MobileNetV2's layout), which changes the Sequential indices.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from einops import rearrange

from vit_flax.layers import BatchNorm, Conv, LayerNorm, Linear, attention_weights, check_floating_input, check_keywords

# helpers


def conv_1x1_bn(oup, name):
    """torch's nn.Sequential(Conv2d(inp, oup, 1, bias=False), BatchNorm2d, SiLU) as `{name}_0`, `{name}_1`."""

    def layer(x, train):
        x = Conv(oup, 1, 1, 0, use_bias=False, name=f'{name}_0')(x)
        return nn.silu(BatchNorm(name=f'{name}_1')(x, train))

    return layer


def conv_nxn_bn(oup, kernel_size=3, stride=1, *, name):
    """torch's nn.Sequential(Conv2d(inp, oup, k, stride, 1, bias=False), BatchNorm2d, SiLU): padding is always 1."""

    def layer(x, train):
        x = Conv(oup, kernel_size, stride, 1, use_bias=False, name=f'{name}_0')(x)
        return nn.silu(BatchNorm(name=f'{name}_1')(x, train))

    return layer


# classes


class FeedForward(nn.Module):
    dim: int
    hidden_dim: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = LayerNorm(name='net_0')(x)
        x = Linear(self.hidden_dim, name='net_1')(x)
        x = nn.silu(x)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = Linear(self.dim, name='net_4')(x)
        return nn.Dropout(self.dropout, deterministic=not train)(x)


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
        q, k, v = (rearrange(t, 'b p n (h d) -> b p h n d', h=self.heads) for t in qkv)

        attn = attention_weights(q, k, scale=self.dim_head**-0.5)
        attn = nn.Dropout(self.dropout, deterministic=not train)(attn)

        out = jnp.einsum('bphij,bphjd->bphid', attn, v)
        out = rearrange(out, 'b p h n d -> b p n (h d)')
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


class MV2Block(nn.Module):
    inp: int
    oup: int
    stride: int = 1
    expansion: float = 4

    def __post_init__(self):
        if self.stride not in (1, 2):
            raise ValueError(f'MV2Block stride must be 1 or 2, got stride={self.stride}')
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False):
        hidden_dim = int(self.inp * self.expansion)
        use_res_connect = self.stride == 1 and self.inp == self.oup
        if x.shape[-1] != self.inp:
            raise ValueError(f'MV2Block expects {self.inp} channels, got shape {x.shape}')

        def dw(y, index):
            y = Conv(hidden_dim, 3, self.stride, 1, groups=hidden_dim, use_bias=False, name=f'conv_{index}')(y)
            return nn.silu(BatchNorm(name=f'conv_{index + 1}')(y, train))

        def pw_linear(y, index):
            y = Conv(self.oup, 1, 1, 0, use_bias=False, name=f'conv_{index}')(y)
            return BatchNorm(name=f'conv_{index + 1}')(y, train)

        if self.expansion == 1:
            out = pw_linear(dw(x, 0), 3)
        else:
            out = Conv(hidden_dim, 1, 1, 0, use_bias=False, name='conv_0')(x)
            out = nn.silu(BatchNorm(name='conv_1')(out, train))
            out = pw_linear(dw(out, 3), 6)
        if use_res_connect:
            out = out + x
        return out


class MobileViTBlock(nn.Module):
    dim: int
    depth: int
    channel: int
    kernel_size: int
    patch_size: tuple[int, int]
    mlp_dim: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        ph, pw = self.patch_size
        y = x

        # Local representations
        x = conv_nxn_bn(self.channel, self.kernel_size, name='conv1')(x, train)
        x = conv_1x1_bn(self.dim, name='conv2')(x, train)

        # Global representations
        _, h, w, _ = x.shape
        if h % ph or w % pw:
            raise ValueError(f'a feature map of {h} x {w} does not divide into patches of {ph} x {pw}')
        x = rearrange(x, 'b (h ph) (w pw) d -> b (ph pw) (h w) d', ph=ph, pw=pw)
        x = Transformer(self.dim, self.depth, 4, 8, self.mlp_dim, self.dropout, name='transformer')(x, train)
        x = rearrange(x, 'b (ph pw) (h w) d -> b (h ph) (w pw) d', h=h // ph, w=w // pw, ph=ph, pw=pw)

        # Fusion
        x = conv_1x1_bn(self.channel, name='conv3')(x, train)
        x = jnp.concatenate((x, y), axis=-1)
        return conv_nxn_bn(self.channel, self.kernel_size, name='conv4')(x, train)


class MobileViT(nn.Module):
    image_size: tuple[int, int]
    dims: tuple[int, ...]
    channels: tuple[int, ...]
    num_classes: int
    expansion: float = 4
    kernel_size: int = 3
    patch_size: tuple[int, int] = (2, 2)
    depths: tuple[int, ...] = (2, 4, 3)

    def __post_init__(self):
        check_keywords(self)
        if len(self.dims) != 3:
            raise ValueError(f'dims must be a tuple of 3, got dims={self.dims}')
        if len(self.depths) != 3:
            raise ValueError(f'depths must be a tuple of 3, got depths={self.depths}')
        (ih, iw), (ph, pw) = self.image_size, self.patch_size
        if ih % ph or iw % pw:
            raise ValueError(f'image_size={self.image_size} must be divisible by patch_size={self.patch_size}')
        if self.kernel_size != 3:
            raise ValueError(
                f'kernel_size={self.kernel_size}: vit-pytorch pads its n x n convs by 1, so only 3 keeps the map size '
                'that the fusion concatenation needs'
            )
        c = self.channels
        if len(c) < 10:
            raise ValueError(f'channels needs at least 10 stage widths (11 in the presets), got channels={c}')
        for a, b in ((2, 3), (4, 5), (6, 7), (8, 9), (9, len(c) - 2)):
            if c[a] != c[b]:
                raise ValueError(
                    f'channels[{a}]={c[a]} and channels[{b}]={c[b]} must be equal (vit-pytorch builds the layer that '
                    f'follows for the wrong width otherwise): channels={c}'
                )
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_floating_input(self, 'x', x)
        channels, expansion = self.channels, self.expansion
        if x.ndim != 4:
            raise ValueError(f'expected images of shape (batch, height, width, channels), got shape {x.shape}')
        if x.shape[-1] != 3:
            raise ValueError(f'expected 3 channels (channels-last input), got shape {x.shape}')
        init_dim, *_, last_dim = channels

        x = conv_nxn_bn(init_dim, stride=2, name='conv1')(x, train)

        stem = [
            MV2Block(channels[0], channels[1], 1, expansion, name='stem_0'),
            MV2Block(channels[1], channels[2], 2, expansion, name='stem_1'),
            MV2Block(channels[2], channels[3], 1, expansion, name='stem_2'),
            MV2Block(channels[2], channels[3], 1, expansion, name='stem_3'),
        ]
        for conv in stem:
            x = conv(x, train)

        trunk = [
            (MV2Block(channels[3], channels[4], 2, expansion, name='trunk_0_0'),
             MobileViTBlock(self.dims[0], self.depths[0], channels[5], self.kernel_size, self.patch_size,
                            int(self.dims[0] * 2), name='trunk_0_1')),
            (MV2Block(channels[5], channels[6], 2, expansion, name='trunk_1_0'),
             MobileViTBlock(self.dims[1], self.depths[1], channels[7], self.kernel_size, self.patch_size,
                            int(self.dims[1] * 4), name='trunk_1_1')),
            (MV2Block(channels[7], channels[8], 2, expansion, name='trunk_2_0'),
             MobileViTBlock(self.dims[2], self.depths[2], channels[9], self.kernel_size, self.patch_size,
                            int(self.dims[2] * 4), name='trunk_2_1')),
        ]
        for conv, attn in trunk:
            x = conv(x, train)
            x = attn(x, train)

        x = conv_1x1_bn(last_dim, name='to_logits_0')(x, train)
        x = x.mean(axis=(1, 2))
        return Linear(self.num_classes, use_bias=False, name='to_logits_2')(x)
