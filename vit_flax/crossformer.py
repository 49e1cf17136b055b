"""CrossFormer ("CrossFormer: A Versatile Vision Transformer Hinging on Cross-scale Attention", Wang et al., 2021),
mirroring vit_pytorch/crossformer.py.

Four stages, each a cross-scale embedding (several strided convolutions of different kernel sizes, concatenated
over channels) and a transformer alternating short-distance attention (within local windows) and long-distance
attention (over pixels a fixed stride apart), each followed by a convolutional feed-forward. Attention logits get
a dynamic position bias (a small MLP of the relative position). Everything runs on feature maps, channels-last
here ((B, H, W, C)) where vit-pytorch is channels-first; the logits come from global average pooling.

Parameter tree = vit-pytorch's module tree: `layers.0.0.convs.1.weight` (stage 1's second embedding conv) lives
at `params/layers_0_0/convs_1/kernel`, `layers.0.1.layers.0.0.dpb.3.weight` (a position-bias Linear) at
`params/layers_0_1/layers_0_0/dpb_3/kernel`, `layers.0.1.layers.0.1.1.weight` (a feed-forward conv) at
`params/layers_0_1/layers_0_1_1/kernel`, `to_logits.1.weight` at `params/to_logits_1/kernel`. vit-pytorch's
`FeedForward` and `DynamicPositionBias` are functions returning an `nn.Sequential`; here they are functions too,
whose layers become children of the caller named `<name>_<index>`, as torch's keys are.

Quirks of vit-pytorch kept so weights transfer:
- `dim_head` is fixed at 32: CrossFormer does not pass it on, so a stage has `dim // 32` heads and an inner width
  of `32 * (dim // 32)`, which need not equal `dim` (the output conv maps it back).
- The dynamic position bias is evaluated on the (2w + 1)^2 offsets `arange(-w, w + 1)` but looked up with indices
  built for a (2w - 1)^2 table (`(dy + w - 1) * (2w - 1) + dx + w - 1`), so a pair of positions gets the bias of
  some other offset. Mirrored exactly; every head shares the bias.
- Queries are scaled before the dot product (not the logits after it).
- The feed-forward has dropout after its GELU only; attention has dropout on the attention map only.
- `cast_tuple`: a tuple keyword is taken as given (it must have 4 entries), anything else is repeated 4 times
  (so `cross_embed_kernel_sizes=(2, 4)` is refused: it is a tuple of 2 entries, not a pair of kernel sizes for
  every stage; give `((2, 4),) * 4`). Flax turns a list attribute into a tuple, so where torch repeats a list
  (`cross_embed_kernel_sizes=[2, 4]`: those kernels for every stage) this port takes it as the per-stage tuple.
- A cross-scale embedding sorts its kernel sizes, gives the i-th conv `int(dim_out / 2**(i + 1))` channels and
  the last one the rest, and pads each by `(kernel - stride) // 2`.
- The channel LayerNorm owns raw parameters `g` and `b` of torch's shape (1, dim, 1, 1).
- Any image size works whose feature maps every stage's windows divide; `num_classes=0` keeps a head with no
  outputs, returning (batch, 0).

Where torch fails late (at the first forward) or with an assert, this port raises a ValueError naming the value,
at construction: a stage with attention (`depth > 0`) and `dim < 32` (no heads), a kernel smaller than its stride
(negative padding), a conv left with no channels, non-positive sizes; at the first call: an input whose feature
map a window size does not divide, scales of one embedding that give maps of different sizes, wrong channels.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from einops import rearrange

from vit_flax import layers
from vit_flax.layers import ChanLayerNorm, Conv, Linear, check_floating_input, check_keywords, gelu, softmax

# helpers


def cast_tuple(val, length=1):
    return val if isinstance(val, tuple) else ((val,) * length)


def embed_dim_scales(dim_out: int, num_scales: int) -> list[int]:
    """The channels of each scale of a cross-scale embedding, as vit-pytorch computes them."""
    dim_scales = [int(dim_out / (2**i)) for i in range(1, num_scales)]
    return [*dim_scales, dim_out - sum(dim_scales)]


# cross embed layer


class CrossEmbedLayer(nn.Module):
    dim_in: int
    dim_out: int
    kernel_sizes: tuple[int, ...]
    stride: int = 2

    @nn.compact
    def __call__(self, x):
        kernel_sizes = sorted(self.kernel_sizes)
        dim_scales = embed_dim_scales(self.dim_out, len(kernel_sizes))
        fmaps = [
            Conv(dim_scale, kernel, stride=self.stride, padding=(kernel - self.stride) // 2, name=f'convs_{i}')(x)
            for i, (kernel, dim_scale) in enumerate(zip(kernel_sizes, dim_scales))
        ]
        sizes = [fmap.shape[1:3] for fmap in fmaps]
        if min(min(size) for size in sizes) < 1:
            raise ValueError(
                f'cross-scale embedding with kernel_sizes={tuple(kernel_sizes)}, stride={self.stride} leaves no pixels '
                f'of an input of size {tuple(x.shape[1:3])}: give a larger image'
            )
        if len(set(sizes)) > 1:
            raise ValueError(
                f'cross-scale embedding with kernel_sizes={tuple(kernel_sizes)}, stride={self.stride} gives maps of '
                f'different sizes {sizes} from an input of size {tuple(x.shape[1:3])}, which cannot be concatenated'
            )
        return jnp.concatenate(fmaps, axis=-1)


# dynamic positional bias


def DynamicPositionBias(dim, *, name: str):
    """vit-pytorch's nn.Sequential (Linear, LayerNorm, ReLU) x 3, Linear(dim, 1): relative positions (n, 2) ->
    biases (n,). Call inside a compact method: the layers become the caller's children `{name}_{index}`."""

    def apply(x):
        for index in (0, 3, 6):
            x = Linear(dim, name=f'{name}_{index}')(x)
            x = layers.LayerNorm(name=f'{name}_{index + 1}')(x)
            x = nn.relu(x)
        x = Linear(1, name=f'{name}_9')(x)
        return x[..., 0]

    return apply


# transformer classes

LayerNorm = ChanLayerNorm  # vit-pytorch's channel LayerNorm: `g`, `b` of shape (1, dim, 1, 1)


def FeedForward(dim, mult=4, dropout=0.0, *, name: str):
    """vit-pytorch's nn.Sequential(LayerNorm, 1x1 conv, GELU, Dropout, 1x1 conv). Call inside a compact method:
    the layers become the caller's children `{name}_0`, `{name}_1`, `{name}_4`."""

    def apply(x, train: bool = False):
        x = LayerNorm(dim, name=f'{name}_0')(x)
        x = Conv(dim * mult, 1, name=f'{name}_1')(x)
        x = gelu(x)
        x = nn.Dropout(dropout, deterministic=not train)(x)
        return Conv(dim, 1, name=f'{name}_4')(x)

    return apply


def relative_position_indices(window_size: int) -> np.ndarray:
    """vit-pytorch's `rel_pos_indices` buffer (not saved in its state dict): (w^2, w^2) indices into the bias table."""
    pos = np.arange(window_size)
    grid = np.stack(np.meshgrid(pos, pos, indexing='ij'))
    grid = rearrange(grid, 'c i j -> (i j) c')
    rel_pos = grid[:, None] - grid[None, :]
    rel_pos += window_size - 1
    return (rel_pos * np.array([2 * window_size - 1, 1])).sum(axis=-1)


class Attention(nn.Module):
    dim: int
    attn_type: str
    window_size: int
    dim_head: int = 32
    dropout: float = 0.0

    def __post_init__(self):
        if self.attn_type not in {'short', 'long'}:
            raise ValueError(f"attention type must be one of 'short' (local) or 'long' (distant), got "
                             f'attn_type={self.attn_type!r}')
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False):
        heads = self.dim // self.dim_head
        scale = self.dim_head**-0.5
        inner_dim = self.dim_head * heads
        _, height, width, _ = x.shape
        wsz = self.window_size
        if height % wsz or width % wsz:
            raise ValueError(
                f'{self.attn_type} distance attention with window_size={wsz} needs a feature map divisible by it, '
                f'got size {(height, width)}'
            )

        # prenorm

        x = LayerNorm(self.dim, name='norm')(x)

        # rearrange for short or long distance attention

        if self.attn_type == 'short':
            x = rearrange(x, 'b (h s1) (w s2) d -> (b h w) s1 s2 d', s1=wsz, s2=wsz)
        else:
            x = rearrange(x, 'b (l1 h) (l2 w) d -> (b h w) l1 l2 d', l1=wsz, l2=wsz)

        # queries / keys / values

        q, k, v = jnp.split(Conv(inner_dim * 3, 1, use_bias=False, name='to_qkv')(x), 3, axis=-1)

        # split heads

        q, k, v = (rearrange(t, 'b x y (h d) -> b h (x y) d', h=heads) for t in (q, k, v))
        q = q * scale

        sim = jnp.einsum('bhid,bhjd->bhij', q, k)

        # add dynamic positional bias

        pos = np.arange(-wsz, wsz + 1)
        rel_pos = np.stack(np.meshgrid(pos, pos, indexing='ij'))
        rel_pos = rearrange(rel_pos, 'c i j -> (i j) c')
        biases = DynamicPositionBias(self.dim // 4, name='dpb')(jnp.asarray(rel_pos, x.dtype))
        rel_pos_bias = biases[relative_position_indices(wsz)]

        sim = sim + rel_pos_bias

        # attend

        attn = softmax(sim, axis=-1)
        attn = nn.Dropout(self.dropout, deterministic=not train)(attn)

        # merge heads

        out = jnp.einsum('bhij,bhjd->bhid', attn, v)
        out = rearrange(out, 'b h (x y) d -> b x y (h d)', x=wsz, y=wsz)
        out = Conv(self.dim, 1, name='to_out')(out)

        # rearrange back for long or short distance attention

        if self.attn_type == 'short':
            return rearrange(out, '(b h w) s1 s2 d -> b (h s1) (w s2) d', h=height // wsz, w=width // wsz)
        return rearrange(out, '(b h w) l1 l2 d -> b (l1 h) (l2 w) d', h=height // wsz, w=width // wsz)


class Transformer(nn.Module):
    dim: int
    local_window_size: int
    global_window_size: int
    depth: int = 4
    dim_head: int = 32
    attn_dropout: float = 0.0
    ff_dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        for i in range(self.depth):
            short_attn = Attention(self.dim, attn_type='short', window_size=self.local_window_size,
                                   dim_head=self.dim_head, dropout=self.attn_dropout, name=f'layers_{i}_0')
            short_ff = FeedForward(self.dim, dropout=self.ff_dropout, name=f'layers_{i}_1')
            long_attn = Attention(self.dim, attn_type='long', window_size=self.global_window_size,
                                  dim_head=self.dim_head, dropout=self.attn_dropout, name=f'layers_{i}_2')
            long_ff = FeedForward(self.dim, dropout=self.ff_dropout, name=f'layers_{i}_3')
            x = short_attn(x, train) + x
            x = short_ff(x, train) + x
            x = long_attn(x, train) + x
            x = long_ff(x, train) + x
        return x


# classes

_STAGE_KEYWORDS = ('dim', 'depth', 'global_window_size', 'local_window_size', 'cross_embed_kernel_sizes',
                   'cross_embed_strides')
DIM_HEAD = 32  # what vit-pytorch's Transformer uses: CrossFormer does not pass a dim_head


class CrossFormer(nn.Module):
    dim: int | tuple[int, ...] = (64, 128, 256, 512)
    depth: int | tuple[int, ...] = (2, 2, 8, 2)
    global_window_size: int | tuple[int, ...] = (8, 4, 2, 1)
    local_window_size: int | tuple[int, ...] = 7
    cross_embed_kernel_sizes: tuple = ((4, 8, 16, 32), (2, 4), (2, 4), (2, 4))
    cross_embed_strides: int | tuple[int, ...] = (4, 2, 2, 2)
    num_classes: int = 1000
    attn_dropout: float = 0.0
    ff_dropout: float = 0.0
    channels: int = 3

    def __post_init__(self):
        check_keywords(self)
        self.stage_configs()  # validates
        super().__post_init__()

    def stage_configs(self) -> tuple[dict, ...]:
        """The four stages' keywords, cast to 4-tuples as vit-pytorch does, and checked (their signs are
        check_keywords')."""
        values = {}
        for key in _STAGE_KEYWORDS:
            value = cast_tuple(getattr(self, key), 4)
            if len(value) != 4:
                raise ValueError(f'{key} must be one value or a tuple of 4 (one per stage), got {key}={value!r}')
            values[key] = value
        configs = tuple({key: values[key][i] for key in _STAGE_KEYWORDS} for i in range(4))
        for i, config in enumerate(configs):
            kernels = config['cross_embed_kernel_sizes']
            if not isinstance(kernels, (tuple, list)) or not kernels:
                raise ValueError(
                    f'cross_embed_kernel_sizes of stage {i} must be a sequence of positive kernel sizes, got '
                    f'cross_embed_kernel_sizes={self.cross_embed_kernel_sizes!r}'
                )
            stride = config['cross_embed_strides']
            if min(kernels) < stride:
                raise ValueError(
                    f'cross_embed_kernel_sizes of stage {i} ({tuple(kernels)}) has a kernel smaller than its stride '
                    f'{stride}: its padding (kernel - stride) // 2 would be negative'
                )
            if min(embed_dim_scales(config['dim'], len(kernels))) < 1:
                raise ValueError(
                    f'dim={config["dim"]} of stage {i} is too small to split over {len(kernels)} kernel sizes: some '
                    f'convolution of the cross-scale embedding gets {embed_dim_scales(config["dim"], len(kernels))} '
                    f'channels'
                )
            if config['depth'] > 0 and config['dim'] < DIM_HEAD:
                raise ValueError(
                    f'dim={config["dim"]} of stage {i} gives no attention heads: vit-pytorch uses dim // {DIM_HEAD} '
                    f'heads (dim_head is fixed at {DIM_HEAD})'
                )
        return configs

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_floating_input(self, 'x', x)
        if x.ndim != 4:
            raise ValueError(f'expected images of shape (batch, height, width, channels), got shape {x.shape}')
        if x.shape[-1] != self.channels:
            raise ValueError(f'expected {self.channels} channels (channels-last input), got shape {x.shape}')

        dim_in = self.channels
        for i, config in enumerate(self.stage_configs()):
            x = CrossEmbedLayer(dim_in, config['dim'], tuple(config['cross_embed_kernel_sizes']),
                                stride=config['cross_embed_strides'], name=f'layers_{i}_0')(x)
            x = Transformer(config['dim'], local_window_size=config['local_window_size'],
                            global_window_size=config['global_window_size'], depth=config['depth'],
                            attn_dropout=self.attn_dropout, ff_dropout=self.ff_dropout, name=f'layers_{i}_1')(x, train)
            dim_in = config['dim']

        # final logits

        return Linear(self.num_classes, name='to_logits_1')(x.mean(axis=(1, 2)))
