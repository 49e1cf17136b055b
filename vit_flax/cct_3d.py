"""CCT for video (Hassani et al., 2021, "Escaping the Big Data Paradigm with Compact Transformers"), mirroring
vit_pytorch/cct_3d.py.

vit-pytorch's cct_3d.py is cct.py with a 3-D tokenizer (Conv3d -> ReLU -> MaxPool3d, repeated) over
(frames, height, width), tokens in `(f h w)` order, and a position embedding for that many tokens. The attention,
encoder layer, stochastic depth and sine table are identical copies, so they are imported from vit_flax/cct.py.
Input is channels-last video, (batch, frames, height, width, channels). The presets `cct_2` ... `cct_16` take
the same keywords as torch's and return configured `CCT` modules.

Parameter tree = vit-pytorch's module tree: `tokenizer.conv_layers.0.0.weight` (OIDHW) lives at
`params/tokenizer/conv_layers_0_0/kernel` (DHWIO), `classifier.blocks.0.self_attn.qkv.weight` at
`params/classifier/blocks_0/self_attn/qkv/kernel`, a learnable `classifier.positional_emb` at
`params/classifier/positional_emb` and the sine one at `buffers/classifier/positional_emb`.

Stochastic depth draws from the 'drop_path' rng stream in training (see cct.DropPath), dropout from 'dropout'.

Quirks of vit-pytorch kept so weights transfer (besides cct.py's, listed there):
- The sine position embedding is a persistent buffer here (`register_buffer`), where cct.py has a frozen
  `nn.Parameter`: it lives in the 'buffers' collection, and the forward reads it from there, so a loaded table is
  the one used. `CCT.apply` needs the 'buffers' collection next to 'params' for it.
- CCT hard-codes the classifier's `dropout_rate=0.` and `attention_dropout=0.1`: they are not keywords (torch
  raises a TypeError for either, "multiple values"). It also passes `stochastic_depth=0.1`, a keyword the
  classifier swallows unused, so the stochastic depth rate is the classifier's `stochastic_depth_rate`
  (default 0.1), which CCT takes through its **kwargs.
- `frame_padding=None` means `frame_kernel_size // 2` and `frame_pooling_padding=None` means
  `frame_pooling_kernel_size // 2`; the frame axis pools with kernel 1 and stride 1 by default (no pooling).
- The position embedding fixes the token count: the input must have `num_frames` frames of `img_size`
  (with `positional_embedding='none'` larger inputs work).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from einops import rearrange

from vit_flax import cct, layers
from vit_flax.cct import Conv, sinusoidal_embedding
from vit_flax.layers import check_floating_input, check_keywords, default, exists, pair

# CCT Models (defined at the end of the file, from cct.py's presets)

__all__ = ['cct_2', 'cct_4', 'cct_6', 'cct_7', 'cct_8', 'cct_14', 'cct_16']


# modules


class Tokenizer(nn.Module):
    frame_kernel_size: int
    kernel_size: int
    stride: int
    padding: int
    frame_stride: int = 1
    frame_padding: int | None = None
    frame_pooling_stride: int = 1
    frame_pooling_kernel_size: int = 1
    frame_pooling_padding: int | None = None
    pooling_kernel_size: int = 3
    pooling_stride: int = 2
    pooling_padding: int = 1
    n_conv_layers: int = 1
    n_input_channels: int = 3
    n_output_channels: int = 64
    in_planes: int = 64
    activation: bool = False  # torch takes a module class; CCT passes nn.ReLU, which is `True` here
    max_pool: bool = True
    conv_bias: bool = False

    @nn.nowrap
    def n_filter_list(self) -> list[int]:
        return [self.n_input_channels] + [self.in_planes for _ in range(self.n_conv_layers - 1)] + \
            [self.n_output_channels]

    # (frames, height, width) triples of the conv and the pooling, torch's None paddings resolved

    @nn.nowrap
    def conv_geometry(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        frame_padding = default(self.frame_padding, self.frame_kernel_size // 2)
        return ((self.frame_kernel_size, self.kernel_size, self.kernel_size),
                (self.frame_stride, self.stride, self.stride),
                (frame_padding, self.padding, self.padding))

    @nn.nowrap
    def pooling_geometry(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        frame_pooling_padding = default(self.frame_pooling_padding, self.frame_pooling_kernel_size // 2)
        return ((self.frame_pooling_kernel_size, self.pooling_kernel_size, self.pooling_kernel_size),
                (self.frame_pooling_stride, self.pooling_stride, self.pooling_stride),
                (frame_pooling_padding, self.pooling_padding, self.pooling_padding))

    @nn.nowrap
    def output_size(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """The token grid of a video, with torch's errors for a kernel larger than its (padded) input."""
        size = (frames, height, width)
        kernel, stride, padding = self.conv_geometry()
        pool_kernel, pool_stride, pool_padding = self.pooling_geometry()
        for _ in range(len(self.n_filter_list()) - 1):
            padded = tuple(s + 2 * p for s, p in zip(size, padding))
            if any(p < k for p, k in zip(padded, kernel)):
                raise ValueError(f'conv kernel {kernel} (frame_kernel_size, kernel_size, kernel_size) is larger '
                                 f'than its padded input {padded} (padding {padding})')
            size = tuple(map(layers.conv_output_size, size, kernel, stride, padding))
            if self.max_pool:
                pooled = tuple(map(layers.conv_output_size, size, pool_kernel, pool_stride, pool_padding))
                if min(pooled) < 1:
                    raise ValueError(f'max pool of kernel {pool_kernel}, stride {pool_stride}, padding {pool_padding} '
                                     f'on a {size} feature map gives an empty output {pooled}')
                size = pooled
        return size

    @nn.nowrap
    def sequence_length(self, frames: int = 8, height: int = 224, width: int = 224) -> int:
        f, h, w = self.output_size(frames, height, width)
        return f * h * w

    @nn.compact
    def __call__(self, x):
        kernel, stride, padding = self.conv_geometry()
        pool_kernel, pool_stride, pool_padding = self.pooling_geometry()
        for i, chan_out in enumerate(self.n_filter_list()[1:]):
            x = Conv(chan_out, kernel_size=kernel, stride=stride, padding=padding, use_bias=self.conv_bias,
                     name=f'conv_layers_{i}_0')(x)
            if self.activation:
                x = nn.relu(x)
            if self.max_pool:
                # torch pads max pooling with -inf, as reduce_window pads with max's identity
                x = nn.max_pool(x, pool_kernel, strides=pool_stride, padding=tuple((p, p) for p in pool_padding))
        return rearrange(x, 'b f h w c -> b (f h w) c')


class TransformerClassifier(cct.TransformerClassifier):
    """cct.py's classifier (same keywords), except that the sine table is a persistent buffer ('buffers')."""

    full_size_input = 'videos of num_frames x img_size'

    def sine_position_embedding(self, sequence_length: int):
        return self.variable('buffers', 'positional_emb',
                             lambda: jnp.asarray(sinusoidal_embedding(sequence_length, self.embedding_dim))).value


# CCT Main model

# what torch's CCT passes its classifier, whatever the caller asks
DROPOUT_RATE = 0.0
ATTENTION_DROPOUT = 0.1


class CCT(nn.Module):
    img_size: int | tuple[int, int] = 224
    num_frames: int = 8
    embedding_dim: int = 768
    n_input_channels: int = 3
    n_conv_layers: int = 1
    frame_stride: int = 1
    frame_kernel_size: int = 3
    frame_padding: int | None = None
    frame_pooling_kernel_size: int = 1
    frame_pooling_stride: int = 1
    frame_pooling_padding: int | None = None
    kernel_size: int = 7
    stride: int = 2
    padding: int = 3
    pooling_kernel_size: int = 3
    pooling_stride: int = 2
    pooling_padding: int = 1
    # TransformerClassifier's keywords, which torch's CCT passes through **kwargs (its dropout_rate=0. and
    # attention_dropout=0.1 are fixed, see the module docstring)
    num_layers: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    stochastic_depth_rate: float = 0.1
    positional_embedding: str = 'sine'

    def __post_init__(self):
        check_keywords(self)
        if self.positional_embedding not in {'sine', 'learnable', 'none'}:
            raise ValueError(f"positional_embedding must be 'sine', 'learnable' or 'none', "
                             f'got positional_embedding={self.positional_embedding!r}')
        for padding, kernel in (('frame_pooling_padding', 'frame_pooling_kernel_size'),
                                ('pooling_padding', 'pooling_kernel_size')):
            if default(getattr(self, padding), 0) > getattr(self, kernel) / 2:
                raise ValueError(f'{padding}={getattr(self, padding)} should be at most half of '
                                 f'{kernel}={getattr(self, kernel)} (torch MaxPool3d)')
        if self.embedding_dim % self.num_heads:
            raise ValueError(f'embedding_dim={self.embedding_dim} must be divisible by num_heads={self.num_heads}')
        self.tokenizer(parent=None).output_size(self.num_frames, *pair(self.img_size))  # torch runs it once here
        super().__post_init__()

    # the names the registry's Videos input reads
    @property
    def frames(self):
        return self.num_frames

    @property
    def image_size(self):
        return self.img_size

    @property
    def channels(self):
        return self.n_input_channels

    @nn.nowrap
    def tokenizer(self, **kwargs) -> Tokenizer:
        """The tokenizer torch's CCT builds (ReLU, max pooling, no conv bias)."""
        return Tokenizer(
            n_input_channels=self.n_input_channels, n_output_channels=self.embedding_dim,
            frame_stride=self.frame_stride, frame_kernel_size=self.frame_kernel_size, frame_padding=self.frame_padding,
            frame_pooling_stride=self.frame_pooling_stride, frame_pooling_kernel_size=self.frame_pooling_kernel_size,
            frame_pooling_padding=self.frame_pooling_padding, kernel_size=self.kernel_size, stride=self.stride,
            padding=self.padding, pooling_kernel_size=self.pooling_kernel_size, pooling_stride=self.pooling_stride,
            pooling_padding=self.pooling_padding, max_pool=True, activation=True, n_conv_layers=self.n_conv_layers,
            conv_bias=False, **kwargs,
        )

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_floating_input(self, 'x', x, what='videos')
        if x.ndim != 5:
            raise ValueError(f'expected videos of shape (batch, frames, height, width, channels), got shape {x.shape}')
        if x.shape[-1] != self.n_input_channels:
            raise ValueError(f'expected {self.n_input_channels} channels (channels-last input), got shape {x.shape}')
        img_height, img_width = pair(self.img_size)
        tokenizer = self.tokenizer(name='tokenizer')
        tokenizer.output_size(*x.shape[1:4])  # a readable error for a video too small for the tokenizer
        sequence_length = tokenizer.sequence_length(self.num_frames, img_height, img_width)

        x = tokenizer(x)
        return TransformerClassifier(
            sequence_length=sequence_length,
            embedding_dim=self.embedding_dim, seq_pool=True, dropout_rate=DROPOUT_RATE,
            attention_dropout=ATTENTION_DROPOUT, stochastic_depth_rate=self.stochastic_depth_rate,
            num_layers=self.num_layers, num_heads=self.num_heads, mlp_ratio=self.mlp_ratio,
            num_classes=self.num_classes, positional_embedding=self.positional_embedding, name='classifier',
        )(x, train)


cct_2, cct_4, cct_6, cct_7, cct_8, cct_14, cct_16 = (cct.preset(name, CCT) for name in __all__)
