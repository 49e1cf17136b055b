"""RegionViT ("RegionViT: Regional-to-Local Attention for Vision Transformers", Chen et al., 2021), mirroring
vit_pytorch/regionvit.py.

Two token maps travel through four stages: local tokens (a 4x-downsampling convolutional tokenizer) and region
tokens (one per `local_patch_size * window_size` square of pixels, a 1x1 conv over the flattened patch). Each
R2L transformer layer first lets the region tokens attend to each other, then lets every region token attend
together with the local tokens of its window (with a learned relative position bias over the window), and runs
one feed-forward over both. Stages 2-4 halve both maps with one shared strided conv (and, with `use_peg`, add a
depth-wise conv position encoding to the local tokens). The logits come from the mean of the last region tokens.
Maps are channels-last here ((B, H, W, C)) where vit-pytorch is channels-first.

Parameter tree = vit-pytorch's module tree: `layers.1.2.layers.0.0.to_qkv.weight` lives at
`params/layers_1_2/layers_0_0/to_qkv/kernel`, the feed-forward `layers.1.2.layers.0.1.4.weight` (a Sequential
returned by a function in torch) at `params/layers_1_2/layers_0_1/4/kernel`, `region_encoder.1.weight` at
`params/region_encoder_1/kernel`, the plain local tokenizer `local_encoder.weight` at `params/local_encoder/kernel`
(with `tokenize_local_3_conv`: `local_encoder_0`, `_1` (channel LayerNorm `g` / `b`), `_3`, `_4`, `_6`).

Quirks of vit-pytorch kept so weights transfer:
- RegionViT exposes no `heads` or `dim_head`: every attention has 4 heads of 32 (inner width 128 whatever `dim`);
  the feed-forward always widens 4x. `R2LTransformer` itself takes `heads` and `dim_head`.
- The local tokenizer always takes 3 input channels and always downsamples 4x, whatever `channels` and
  `local_patch_size` say: `local_patch_size` only sets the region patch (`local_patch_size * window_size`) and the
  divisibility check. So the local window of a region token is `local_patch_size * window_size / 4` tokens wide at
  stage 1 (`window_size` only when `local_patch_size=4`), and only `channels=3` can run in torch (the region
  encoder takes `channels`): other values are refused here at construction.
- The relative position table has `(2 * window_size - 1) ** 2` rows for the constructor's `window_size`, and is
  indexed with the window the maps actually have (`local // region`, which shrinks when a map of odd size is
  halved); where that index leaves the table torch raises, and this port raises a ValueError naming the sizes.
- The relative bias is zero-padded for the region token (row and column 0), and the same `Attention` (weights
  and all) serves the region-only and the region-with-local attention; the same `Downsample` conv halves both maps.
- The feed-forward's inner `Linear(dim, dim * mult, 1)` passes `bias=1` (a bias); it has dropout after the GELU
  only. Attention dropout acts on the attention map and after the output projection.
- `num_classes=0` keeps a head with no outputs, returning (batch, 0).

Where torch fails at the first forward, this port raises a ValueError naming the values: an image not divisible
by the region or local patch size (torch's asserts), maps that do not tile into whole windows in a stage with
layers (torch's rearrange or concatenation fails; a stage of depth 0 never splits its maps, so any sizes pass
there, as in torch), a `dim` / `depth` tuple not of length 4 (torch's asserts, at construction).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from einops import rearrange

from vit_flax.layers import (
    ChanLayerNorm, Conv, Embedding, LayerNorm, Linear, check_floating_input, check_keywords, exists, gelu,
)

# helpers


def cast_tuple(val, length=1):
    return val if isinstance(val, tuple) else ((val,) * length)


def divisible_by(val, d):
    return (val % d) == 0


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


# transformer classes


class FeedForward(nn.Module):
    """vit-pytorch's `FeedForward(dim, mult, dropout)`, a function returning an nn.Sequential: its layers keep the
    Sequential's indices as names (`0` LayerNorm, `1` Linear, `4` Linear)."""

    dim: int
    mult: int = 4
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = LayerNorm(name='0')(x)
        x = Linear(self.dim * self.mult, name='1')(x)
        x = gelu(x)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return Linear(self.dim, name='4')(x)


class Attention(nn.Module):
    dim: int
    heads: int = 4
    dim_head: int = 32
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, rel_pos_bias=None, train: bool = False):
        h = self.heads
        inner_dim = self.dim_head * self.heads

        x = LayerNorm(name='norm')(x)

        q, k, v = jnp.split(Linear(inner_dim * 3, use_bias=False, name='to_qkv')(x), 3, axis=-1)
        q, k, v = (rearrange(t, 'b n (h d) -> b h n d', h=h) for t in (q, k, v))
        q = q * self.dim_head**-0.5

        sim = jnp.einsum('bhid,bhjd->bhij', q, k)

        # relative positional bias for local tokens
        if exists(rel_pos_bias):
            sim = sim + rel_pos_bias.astype(sim.dtype)

        attn = nn.softmax(sim, axis=-1)
        attn = nn.Dropout(self.dropout, deterministic=not train)(attn)

        out = jnp.einsum('bhij,bhjd->bhid', attn, v)
        out = rearrange(out, 'b h n d -> b n (h d)')
        out = Linear(self.dim, name='to_out_0')(out)
        return nn.Dropout(self.dropout, deterministic=not train)(out)


def local_bias_indices(window_size_h: int, window_size_w: int, window_size: int) -> np.ndarray:
    """vit-pytorch's relative-position index table for a (window_size_h, window_size_w) window, (n, n) with
    n = window_size_h * window_size_w: offsets shifted by `window_size - 1`, height offset + width offset * (2 ws - 1)."""
    grid = np.stack(np.meshgrid(np.arange(window_size_h), np.arange(window_size_w), indexing='ij'))
    grid = grid.reshape(2, -1)
    grid = (grid[:, :, None] - grid[:, None, :]) + (window_size - 1)
    return (grid * np.array([1, window_size * 2 - 1])[:, None, None]).sum(axis=0)


class R2LTransformer(nn.Module):
    """`__call__(local_tokens, region_tokens)` on channels-last maps (B, lh, lw, dim) and (B, rh, rw, dim); each
    region token owns a (lh // rh, lw // rw) window of local tokens. Returns both maps, same shapes."""

    dim: int
    window_size: int
    depth: int = 4
    heads: int = 4
    dim_head: int = 32
    attn_dropout: float = 0.0
    ff_dropout: float = 0.0

    @nn.compact
    def __call__(self, local_tokens, region_tokens, train: bool = False):
        lh, lw = local_tokens.shape[1:3]
        rh, rw = region_tokens.shape[1:3]
        # torch only rearranges into windows inside the layer loop: with depth 0 any map sizes pass
        if self.depth > 0 and (lh % rh or lw % rw):
            raise ValueError(
                f'local token map {(lh, lw)} does not split into whole windows, one per region token of the '
                f'region map {(rh, rw)}'
            )
        window_size_h, window_size_w = lh // rh, lw // rw

        # local relative positional bias
        rel_positions = 2 * self.window_size - 1
        bias_indices = local_bias_indices(window_size_h, window_size_w, self.window_size)
        if bias_indices.size and (bias_indices.min() < 0 or bias_indices.max() >= rel_positions**2):
            raise ValueError(
                f'a local window of {(window_size_h, window_size_w)} tokens (local map {(lh, lw)}, region map '
                f'{(rh, rw)}) indexes outside the relative position table of window_size={self.window_size}'
            )
        table = Embedding(rel_positions**2, self.heads, name='local_rel_pos_bias')
        rel_pos_bias = table(jnp.asarray(bias_indices))
        rel_pos_bias = rearrange(rel_pos_bias, 'i j h -> () h i j')
        rel_pos_bias = jnp.pad(rel_pos_bias, ((0, 0), (0, 0), (1, 0), (1, 0)))

        local_tokens = rearrange(local_tokens, 'b h w c -> b (h w) c')
        region_tokens = rearrange(region_tokens, 'b h w c -> b (h w) c')

        for i in range(self.depth):
            attn = Attention(self.dim, heads=self.heads, dim_head=self.dim_head, dropout=self.attn_dropout,
                             name=f'layers_{i}_0')
            ff = FeedForward(self.dim, dropout=self.ff_dropout, name=f'layers_{i}_1')

            region_tokens = attn(region_tokens, train=train) + region_tokens

            # each region token joins the local tokens of its window
            local_tokens = rearrange(local_tokens, 'b (h w) d -> b h w d', h=lh)
            local_tokens = rearrange(local_tokens, 'b (h p1) (w p2) d -> (b h w) (p1 p2) d',
                                     p1=window_size_h, p2=window_size_w)
            region_tokens = rearrange(region_tokens, 'b n d -> (b n) () d')

            region_and_local_tokens = jnp.concatenate((region_tokens, local_tokens), axis=1)
            region_and_local_tokens = attn(region_and_local_tokens, rel_pos_bias, train) + region_and_local_tokens
            region_and_local_tokens = ff(region_and_local_tokens, train) + region_and_local_tokens

            region_tokens, local_tokens = region_and_local_tokens[:, :1], region_and_local_tokens[:, 1:]
            local_tokens = rearrange(local_tokens, '(b h w) (p1 p2) d -> b (h p1 w p2) d',
                                     h=lh // window_size_h, w=lw // window_size_w, p1=window_size_h)
            region_tokens = rearrange(region_tokens, '(b n) () d -> b n d', n=rh * rw)

        local_tokens = rearrange(local_tokens, 'b (h w) c -> b h w c', h=lh, w=lw)
        region_tokens = rearrange(region_tokens, 'b (h w) c -> b h w c', h=rh, w=rw)
        return local_tokens, region_tokens


# classes


class RegionViT(nn.Module):
    dim: int | tuple[int, int, int, int] = (64, 128, 256, 512)
    depth: int | tuple[int, int, int, int] = (2, 2, 8, 2)
    window_size: int = 7
    num_classes: int = 1000
    tokenize_local_3_conv: bool = False
    local_patch_size: int = 4
    use_peg: bool = False
    attn_dropout: float = 0.0
    ff_dropout: float = 0.0
    channels: int = 3

    def __post_init__(self):
        check_keywords(self)
        dim, depth = cast_tuple(self.dim, 4), cast_tuple(self.depth, 4)
        if len(dim) != 4:
            raise ValueError(f'dim needs to be a single value or a tuple of length 4, got dim={self.dim!r}')
        if len(depth) != 4:
            raise ValueError(f'depth needs to be a single value or a tuple of length 4, got depth={self.depth!r}')
        if self.channels != 3:
            raise ValueError(
                f"channels={self.channels!r}: vit-pytorch's local tokenizer always takes 3 channels while its region "
                'encoder takes `channels`, so only channels=3 runs'
            )
        super().__post_init__()

    @property
    def region_patch_size(self) -> int:
        return self.local_patch_size * self.window_size

    def _local_encoder(self, x):
        init_dim = cast_tuple(self.dim, 4)[0]
        if not self.tokenize_local_3_conv:
            return Conv(init_dim, 8, stride=4, padding=3, name='local_encoder')(x)
        x = Conv(init_dim, 3, stride=2, padding=1, name='local_encoder_0')(x)
        x = gelu(ChanLayerNorm(init_dim, name='local_encoder_1')(x))
        x = Conv(init_dim, 3, stride=2, padding=1, name='local_encoder_3')(x)
        x = gelu(ChanLayerNorm(init_dim, name='local_encoder_4')(x))
        return Conv(init_dim, 3, stride=1, padding=1, name='local_encoder_6')(x)

    def _region_encoder(self, x):
        p = self.region_patch_size
        x = rearrange(x, 'b (h p1) (w p2) c -> b h w (c p1 p2)', p1=p, p2=p)
        return Conv(cast_tuple(self.dim, 4)[0], 1, name='region_encoder_1')(x)

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_floating_input(self, 'x', x)
        if x.ndim != 4:
            raise ValueError(f'expected images of shape (batch, height, width, channels), got shape {x.shape}')
        *_, h, w, c = x.shape
        if c != self.channels:
            raise ValueError(f'expected {self.channels} channels (channels-last input), got shape {x.shape}')
        if not (divisible_by(h, self.region_patch_size) and divisible_by(w, self.region_patch_size)):
            raise ValueError(
                f'height and width must be divisible by region patch size: image of size {(h, w)}, region patch size '
                f'{self.region_patch_size} (local_patch_size={self.local_patch_size} * '
                f'window_size={self.window_size})'
            )
        if not (divisible_by(h, self.local_patch_size) and divisible_by(w, self.local_patch_size)):
            raise ValueError(
                f'height and width must be divisible by local patch size: image of size {(h, w)}, '
                f'local_patch_size={self.local_patch_size}'
            )

        local_tokens = self._local_encoder(x)
        region_tokens = self._region_encoder(x)

        dims, depths = cast_tuple(self.dim, 4), cast_tuple(self.depth, 4)
        current_dim = dims[0]
        for ind, (dim, num_layers) in enumerate(zip(dims, depths)):
            not_first = ind != 0
            if not_first:
                down = Downsample(current_dim, dim, name=f'layers_{ind}_0')
                local_tokens, region_tokens = down(local_tokens), down(region_tokens)
            if not_first and self.use_peg:
                local_tokens = PEG(dim, name=f'layers_{ind}_1')(local_tokens)
            transformer = R2LTransformer(dim, depth=num_layers, window_size=self.window_size,
                                         attn_dropout=self.attn_dropout, ff_dropout=self.ff_dropout,
                                         name=f'layers_{ind}_2')
            local_tokens, region_tokens = transformer(local_tokens, region_tokens, train)
            current_dim = dim

        x = region_tokens.mean(axis=(1, 2))
        x = LayerNorm(name='to_logits_1')(x)
        return Linear(self.num_classes, name='to_logits_2')(x)
