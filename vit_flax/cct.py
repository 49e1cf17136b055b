"""CCT ("Escaping the Big Data Paradigm with Compact Transformers", Hassani et al., 2021), mirroring
vit_pytorch/cct.py.

A convolutional tokenizer (conv -> ReLU -> max pool, repeated) feeds a post-norm-in-the-middle transformer
encoder with stochastic depth; sequence pooling (a softmax-weighted sum of the tokens) replaces the class token.
The presets `cct_2` ... `cct_16` take the same keywords as torch's and return configured `CCT` modules.

Parameter tree = vit-pytorch's module tree: `tokenizer.conv_layers.0.0.weight` lives at
`params/tokenizer/conv_layers_0_0/kernel`, `classifier.blocks.0.self_attn.qkv.weight` at
`params/classifier/blocks_0/self_attn/qkv/kernel`, `classifier.positional_emb` at `params/classifier/positional_emb`.

Stochastic depth (DropPath) draws from the 'drop_path' rng stream, in training only: one uniform per sample,
the sample's branch is kept where its uniform is below `1 - drop_prob` and then divided by `1 - drop_prob`, as
torch does. Each call sows its uniforms to 'intermediates' (`drop_path_uniforms`) so a caller can replay them.

Quirks of vit-pytorch kept so weights transfer:
- `positional_embedding='sine'` is an `nn.Parameter(requires_grad=False)`: it is in the state dict and in
  `params` here, but its gradient is stopped (torch's is None), so optimisers leave it where it is.
- Each encoder layer uses one DropPath twice (attention and feed-forward branches: two independent draws), with
  drop probabilities `torch.linspace(0, stochastic_depth_rate, num_layers)`, so the first layer never drops.
- The encoder layer normalises in the middle: `x + attn(pre_norm(x))`, then `norm1`, then `x + ff(x)`;
  the feed-forward's GELU is exact (`F.gelu`).
- `head_dim = embedding_dim // num_heads`; torch only fails at the first forward when it does not divide, here
  the constructor raises.
- `n_conv_layers <= 1` all build one conv layer; the intermediate convs of `n_conv_layers >= 2` have 64
  channels (the tokenizer's `in_planes`, which CCT does not expose). Convs have no bias.
- Initialisation follows torch's `init_weight`s: convs kaiming-normal (fan in, ReLU gain), Linear weights
  trunc_normal(std=0.02) with zero biases, learnable positional embedding trunc_normal(std=0.2).
- The position embedding fixes the token count, so the input must have `img_size` (with
  `positional_embedding='none'` larger inputs work; smaller ones crash torch with an AttributeError and raise
  a ValueError here).
- torch's CCT swallows unknown keywords (`**kwargs` reach the classifier, which ignores what it does not know);
  a Flax dataclass refuses them with a TypeError.
- `num_classes=0` keeps a head with no outputs, returning (batch, 0).
"""

from __future__ import annotations

import functools
from typing import Callable


import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange

from vit_flax import layers
from vit_flax.layers import (
    LayerNorm, attention_weights, check_floating_input, check_keywords, default, exists, gelu, pair, softmax,
)

# CCT Models

__all__ = ['cct_2', 'cct_4', 'cct_6', 'cct_7', 'cct_8', 'cct_14', 'cct_16']


# (num_layers, num_heads, mlp_ratio, embedding_dim) of each preset; cct_3d's presets are the same
PRESETS = {
    'cct_2': (2, 2, 1, 128), 'cct_4': (4, 2, 1, 128), 'cct_6': (6, 4, 2, 256), 'cct_7': (7, 4, 2, 256),
    'cct_8': (8, 4, 2, 256), 'cct_14': (14, 6, 3, 384), 'cct_16': (16, 6, 3, 384),
}


def preset(name: str, model_class: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """vit-pytorch's `cct_N(**kwargs)`: the preset's sizes, kernel_size 3 unless given, and stride / padding
    derived from the kernel size unless given. (torch's `*args` cannot work: they collide with the keywords.)"""
    num_layers, num_heads, mlp_ratio, embedding_dim = PRESETS[name]

    def build(kernel_size=3, stride=None, padding=None, **kwargs):
        stride = default(stride, max(1, (kernel_size // 2) - 1))
        padding = default(padding, max(1, (kernel_size // 2)))
        return model_class(num_layers=num_layers, num_heads=num_heads, mlp_ratio=mlp_ratio,
                           embedding_dim=embedding_dim, kernel_size=kernel_size, stride=stride, padding=padding,
                           **kwargs)

    build.__name__ = build.__qualname__ = name
    return build


# torch's init_weight: Linear weights trunc_normal(0.02) with zero biases, conv kernels kaiming_normal

Linear = functools.partial(layers.Linear, kernel_init=layers.trunc_normal(0.02), bias_init=nn.initializers.zeros)
Conv = functools.partial(layers.Conv, kernel_init=layers.kaiming_normal)


# positional


def sinusoidal_embedding(n_channels: int, dim: int) -> np.ndarray:
    """(1, n_channels, dim): angles in float64 rounded to float32 (torch.FloatTensor), then sin / cos in float32."""
    pe = np.array([[p / (10000 ** (2 * (i // 2) / dim)) for i in range(dim)] for p in range(n_channels)],
                  dtype=np.float64).reshape(n_channels, dim).astype(np.float32)
    pe[:, 0::2] = np.sin(pe[:, 0::2])
    pe[:, 1::2] = np.cos(pe[:, 1::2])
    return pe[None]


def drop_path_rates(rate: float, num_layers: int) -> list[float]:
    """vit-pytorch's per-layer drop rates, `torch.linspace(0, rate, num_layers)` in float32, each the float32 nearest
    the exact value. torch's own float32 kernel rounds some of them (9 layers and more) one ulp the other way,
    depending on the CPU's SIMD width, so no fixed float32 formula matches it on every machine."""
    return [float(np.float32(value)) for value in np.linspace(0.0, float(np.float32(rate)), num_layers)]


# modules


class Attention(nn.Module):
    dim: int
    num_heads: int = 8
    attention_dropout: float = 0.1
    projection_dropout: float = 0.1

    @nn.compact
    def __call__(self, x, train: bool = False):
        head_dim = self.dim // self.num_heads

        qkv = jnp.split(Linear(self.dim * 3, use_bias=False, name='qkv')(x), 3, axis=-1)
        q, k, v = (rearrange(t, 'b n (h d) -> b h n d', h=self.num_heads) for t in qkv)

        attn = attention_weights(q * head_dim**-0.5, k, scale=1.0)
        attn = nn.Dropout(self.attention_dropout, deterministic=not train)(attn)

        x = jnp.einsum('bhij,bhjd->bhid', attn, v)
        x = rearrange(x, 'b h n d -> b n (h d)')

        x = Linear(self.dim, name='proj')(x)
        return nn.Dropout(self.projection_dropout, deterministic=not train)(x)


class DropPath(nn.Module):
    """Per-sample stochastic depth from the 'drop_path' rng stream; its uniforms are sown for replay."""

    drop_prob: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.drop_prob <= 0.0 or not train:
            return x

        keep_prob = 1 - self.drop_prob
        shape = (x.shape[0], *((1,) * (x.ndim - 1)))

        uniforms = jax.random.uniform(self.make_rng('drop_path'), shape, jnp.float32)
        self.sow('intermediates', 'drop_path_uniforms', uniforms)
        keep_mask = uniforms < keep_prob
        return (x / jnp.asarray(keep_prob, x.dtype)) * keep_mask.astype(x.dtype)


class TransformerEncoderLayer(nn.Module):
    d_model: int
    nhead: int
    dim_feedforward: int = 2048
    dropout: float = 0.1
    attention_dropout: float = 0.1
    drop_path_rate: float = 0.1

    @nn.compact
    def __call__(self, src, train: bool = False):
        drop_path = DropPath(self.drop_path_rate, name='drop_path')

        attn = Attention(self.d_model, self.nhead, self.attention_dropout, self.dropout, name='self_attn')
        src = src + drop_path(attn(LayerNorm(name='pre_norm')(src), train), train)
        src = LayerNorm(name='norm1')(src)

        src2 = gelu(Linear(self.dim_feedforward, name='linear1')(src))
        src2 = nn.Dropout(self.dropout, deterministic=not train)(src2)
        src2 = Linear(self.d_model, name='linear2')(src2)
        src2 = nn.Dropout(self.dropout, deterministic=not train)(src2)
        return src + drop_path(src2, train)


class Tokenizer(nn.Module):
    kernel_size: int
    stride: int
    padding: int
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

    @nn.nowrap
    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """The token grid of an image, with torch's errors for a kernel larger than its (padded) input."""
        for _ in range(len(self.n_filter_list()) - 1):
            if height + 2 * self.padding < self.kernel_size or width + 2 * self.padding < self.kernel_size:
                raise ValueError(
                    f'conv kernel_size={self.kernel_size} is larger than its padded input '
                    f'{(height + 2 * self.padding, width + 2 * self.padding)} (padding={self.padding})'
                )
            height, width = (layers.conv_output_size(s, self.kernel_size, self.stride, self.padding) for s in (height, width))
            if self.max_pool:
                pooled = tuple(layers.conv_output_size(s, self.pooling_kernel_size, self.pooling_stride,
                                                 self.pooling_padding) for s in (height, width))
                if min(pooled) < 1:
                    raise ValueError(
                        f'max pool of pooling_kernel_size={self.pooling_kernel_size}, pooling_stride='
                        f'{self.pooling_stride}, pooling_padding={self.pooling_padding} on a {(height, width)} '
                        f'feature map gives an empty output {pooled}'
                    )
                height, width = pooled
        return height, width

    @nn.nowrap
    def sequence_length(self, height: int = 224, width: int = 224) -> int:
        h, w = self.output_size(height, width)
        return h * w

    @nn.compact
    def __call__(self, x):
        n_filter_list = self.n_filter_list()
        for i, chan_out in enumerate(n_filter_list[1:]):
            x = Conv(chan_out, kernel_size=self.kernel_size, stride=self.stride, padding=self.padding,
                     use_bias=self.conv_bias, name=f'conv_layers_{i}_0')(x)
            if self.activation:
                x = nn.relu(x)
            if self.max_pool:
                # torch pads max pooling with -inf, as reduce_window pads with max's identity
                p = self.pooling_padding
                x = nn.max_pool(x, pair(self.pooling_kernel_size), strides=pair(self.pooling_stride),
                                padding=((p, p), (p, p)))
        return rearrange(x, 'b h w c -> b (h w) c')


class TransformerClassifier(nn.Module):
    seq_pool: bool = True
    embedding_dim: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    dropout_rate: float = 0.1
    attention_dropout: float = 0.1
    stochastic_depth_rate: float = 0.1
    positional_embedding: str = 'sine'
    sequence_length: int | None = None

    # what the error messages call an input of the configured size (cct_3d: videos of num_frames x img_size)
    full_size_input = 'images of img_size'

    def sine_position_embedding(self, sequence_length: int):
        """torch's frozen sine table: an nn.Parameter with requires_grad=False (cct_3d keeps a buffer instead)."""
        embedding = sinusoidal_embedding(sequence_length, self.embedding_dim)
        table = self.param('positional_emb', lambda key, shape: jnp.asarray(embedding), embedding.shape)
        return jax.lax.stop_gradient(table)

    @nn.compact
    def __call__(self, x, train: bool = False):
        b = x.shape[0]
        dim_feedforward = int(self.embedding_dim * self.mlp_ratio)
        sequence_length = self.sequence_length

        if not exists(self.sequence_length) and self.positional_embedding != 'none':
            raise ValueError(f'Positional embedding is set to {self.positional_embedding} and the sequence length '
                             f'was not specified.')

        if not self.seq_pool:
            sequence_length += 1
            class_emb = self.param('class_emb', nn.initializers.zeros, (1, 1, self.embedding_dim))

        if self.positional_embedding == 'none':
            positional_emb = None
            if x.shape[1] < self.sequence_length:
                # torch pads with `self.n_channels`, an attribute it never sets: AttributeError
                raise ValueError(
                    f'with positional_embedding="none" vit-pytorch fails on fewer tokens ({x.shape[1]}) than '
                    f'sequence_length={self.sequence_length}: give {self.full_size_input} or larger'
                )
        elif self.positional_embedding == 'learnable':
            positional_emb = self.param('positional_emb', layers.trunc_normal(0.2), (1, sequence_length, self.embedding_dim))
        else:
            positional_emb = self.sine_position_embedding(sequence_length)

        if not self.seq_pool:
            x = jnp.concatenate((jnp.broadcast_to(class_emb.astype(x.dtype), (b, 1, self.embedding_dim)), x), axis=1)

        if exists(positional_emb):
            if positional_emb.shape[1] not in (1, x.shape[1]):
                raise ValueError(
                    f'the input gives {x.shape[1]} tokens, but the positional embedding for '
                    f'{self.full_size_input} has {positional_emb.shape[1]}: give {self.full_size_input}'
                )
            x = x + positional_emb.astype(x.dtype)

        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)

        for i, layer_dpr in enumerate(drop_path_rates(self.stochastic_depth_rate, self.num_layers)):
            x = TransformerEncoderLayer(self.embedding_dim, self.num_heads, dim_feedforward, self.dropout_rate,
                                        self.attention_dropout, layer_dpr, name=f'blocks_{i}')(x, train)

        x = LayerNorm(name='norm')(x)

        if self.seq_pool:
            attn_weights = rearrange(Linear(1, name='attention_pool')(x), 'b n 1 -> b n')
            x = jnp.einsum('bn,bnd->bd', softmax(attn_weights, axis=1), x)
        else:
            x = x[:, 0]

        return Linear(self.num_classes, name='fc')(x)


# CCT Main model


class CCT(nn.Module):
    img_size: int | tuple[int, int] = 224
    embedding_dim: int = 768
    n_input_channels: int = 3
    n_conv_layers: int = 1
    kernel_size: int = 7
    stride: int = 2
    padding: int = 3
    pooling_kernel_size: int = 3
    pooling_stride: int = 2
    pooling_padding: int = 1
    dropout_rate: float = 0.0
    attention_dropout: float = 0.1
    stochastic_depth_rate: float = 0.1
    # TransformerClassifier's keywords, which torch's CCT passes through **kwargs
    num_layers: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    positional_embedding: str = 'sine'

    def __post_init__(self):
        check_keywords(self)
        if self.positional_embedding not in {'sine', 'learnable', 'none'}:
            raise ValueError(f"positional_embedding must be 'sine', 'learnable' or 'none', "
                             f'got positional_embedding={self.positional_embedding!r}')
        if self.pooling_padding > self.pooling_kernel_size / 2:
            raise ValueError(f'pooling_padding={self.pooling_padding} should be at most half of '
                             f'pooling_kernel_size={self.pooling_kernel_size} (torch MaxPool2d)')
        if self.embedding_dim % self.num_heads:
            raise ValueError(f'embedding_dim={self.embedding_dim} must be divisible by num_heads={self.num_heads}')
        self.tokenizer(parent=None).output_size(*pair(self.img_size))  # torch runs the tokenizer once here
        super().__post_init__()

    # the names the registry's Images input reads
    @property
    def image_size(self):
        return self.img_size

    @property
    def channels(self):
        return self.n_input_channels

    @nn.nowrap
    def tokenizer(self, **kwargs) -> Tokenizer:
        """The tokenizer torch's CCT builds (ReLU, max pooling, no conv bias)."""
        return Tokenizer(n_input_channels=self.n_input_channels, n_output_channels=self.embedding_dim,
                         kernel_size=self.kernel_size, stride=self.stride, padding=self.padding,
                         pooling_kernel_size=self.pooling_kernel_size, pooling_stride=self.pooling_stride,
                         pooling_padding=self.pooling_padding, max_pool=True, activation=True,
                         n_conv_layers=self.n_conv_layers, conv_bias=False, **kwargs)

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_floating_input(self, 'x', x)
        if x.ndim != 4:
            raise ValueError(f'expected images of shape (batch, height, width, channels), got shape {x.shape}')
        if x.shape[-1] != self.n_input_channels:
            raise ValueError(f'expected {self.n_input_channels} channels (channels-last input), got shape {x.shape}')
        img_height, img_width = pair(self.img_size)
        tokenizer = self.tokenizer(name='tokenizer')
        tokenizer.output_size(*x.shape[1:3])  # a readable error for an image too small for the tokenizer
        sequence_length = tokenizer.sequence_length(img_height, img_width)

        x = tokenizer(x)
        return TransformerClassifier(
            sequence_length=sequence_length,
            embedding_dim=self.embedding_dim, seq_pool=True, dropout_rate=self.dropout_rate,
            attention_dropout=self.attention_dropout, stochastic_depth_rate=self.stochastic_depth_rate,
            num_layers=self.num_layers, num_heads=self.num_heads, mlp_ratio=self.mlp_ratio,
            num_classes=self.num_classes, positional_embedding=self.positional_embedding, name='classifier',
        )(x, train)


cct_2, cct_4, cct_6, cct_7, cct_8, cct_14, cct_16 = (preset(name, CCT) for name in __all__)
