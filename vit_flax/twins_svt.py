"""Twins-SVT ("Twins: Revisiting the Design of Spatial Attention in Vision Transformers", Chu et al., 2021),
mirroring vit_pytorch/twins_svt.py.

Four stages, each a patch embedding (space-to-depth, channel LayerNorm, 1x1 conv, channel LayerNorm), a
one-layer transformer, a position-encoding generator (PEG: a residual depth-wise conv) and a transformer of
`depth` layers. A transformer layer is locally-grouped self-attention within `local_patch_size` windows, a
feed-forward, global sub-sampled attention (keys and values from a `global_k` x `global_k` strided conv) and a
feed-forward, each residual; the last stage has only the global half. Everything runs on feature maps,
channels-last here ((B, H, W, C)) where vit-pytorch is channels-first; the logits come from global average
pooling and a Linear.

Parameter tree = vit-pytorch's module tree: `layers.0.0.proj.1.weight` (stage 1's embedding conv) lives at
`params/layers_0_0/proj_1/kernel`, `layers.1.3.layers.0.2.fn.to_kv.weight` (a global attention's key / value
conv) at `params/layers_1_3/layers_0_2/fn/to_kv/kernel`, the PEG conv `layers.0.2.proj.fn.weight` at
`params/layers_0_2/proj/fn/kernel`, the head `layers.6.weight` at `params/layers_6/kernel`.

Quirks of vit-pytorch kept so weights transfer:
- Every attention uses vit-pytorch's Transformer defaults `heads=8, dim_head=64` and every feed-forward
  `mult=4`: TwinsSVT does not expose them, so a stage's inner width is 512 whatever its `emb_dim`.
- Images have 3 channels: the first patch embedding is built for `dim = 3` (there is no `channels` keyword).
- The last stage has no local attention and no first feed-forward (torch's `nn.Identity`, no parameters), so
  `s4_local_patch_size` is ignored.
- The channel LayerNorm (vit-pytorch's `LayerNorm` here) owns raw parameters `g` and `b` of torch's shape
  (1, dim, 1, 1) and divides by sqrt(biased variance + eps).
- Local attention has no dropout on its attention weights (only after its output conv); global attention has
  both. Query / key / value convs have no biases.
- The patch embedding orders a patch's features `(c p1 p2)`.
- The global key / value conv has no padding: a map whose side is not a multiple of `global_k` drops its last
  rows / columns from the keys and values (the queries keep them).
- Any image size works as long as every stage's map fits (see below); there is no `image_size`.
- `num_classes=0` keeps a head with no outputs, returning (batch, 0).

Where torch fails late or not at all, this port refuses with a ValueError naming the value:
- At construction: non-positive dims, patch sizes, local patch sizes, `global_k` or `peg_kernel_size`; an even
  `peg_kernel_size` (torch's PEG output is one pixel larger than its input and the residual add fails, or
  broadcasts to a different shape on 1-pixel maps); a negative depth (torch builds an empty transformer);
  a negative `num_classes` or `dropout` outside [0, 1].
- At the first call: a map not divisible by the stage's `patch_size` or `local_patch_size`, or smaller than
  `global_k` (torch's einops or conv error), or an input that is not (batch, height, width, 3).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp
from einops import rearrange

from vit_flax.layers import (
    ChanLayerNorm, Conv, Linear, attention_weights, call_plugged_in, check_floating_input, check_keywords,
    group_by_key_prefix_and_remove_prefix,
)
from vit_flax.cvt import FeedForward  # the same channel-first feed-forward as cvt

LayerNorm = ChanLayerNorm  # vit-pytorch's name for the channel LayerNorm in this file

# classes


class Residual(nn.Module):
    """`fn(x) + x`. Build `fn` with `parent=None` so that it is adopted here under torch's attribute name `fn`."""

    fn: nn.Module

    def __call__(self, x, train: bool = False):
        return call_plugged_in(self.fn, x, train) + x


class PatchEmbedding(nn.Module):
    dim: int
    dim_out: int
    patch_size: int

    @nn.compact
    def __call__(self, fmap):
        p = self.patch_size
        _, height, width, _ = fmap.shape
        if height % p or width % p:
            raise ValueError(f'feature map of size {(height, width)} is not divisible by patch_size={p}')
        fmap = rearrange(fmap, 'b (h p1) (w p2) c -> b h w (c p1 p2)', p1=p, p2=p)
        fmap = ChanLayerNorm(p**2 * self.dim, name='proj_0')(fmap)
        fmap = Conv(self.dim_out, 1, name='proj_1')(fmap)
        return ChanLayerNorm(self.dim_out, name='proj_2')(fmap)


class PEG(nn.Module):
    dim: int
    kernel_size: int = 3

    @nn.compact
    def __call__(self, x):
        conv = Conv(self.dim, self.kernel_size, padding=self.kernel_size // 2, groups=self.dim, stride=1, parent=None)
        return Residual(conv, name='proj')(x)


class LocalAttention(nn.Module):
    dim: int
    heads: int = 8
    dim_head: int = 64
    dropout: float = 0.0
    patch_size: int = 7

    @nn.compact
    def __call__(self, fmap, train: bool = False):
        inner_dim = self.dim_head * self.heads
        fmap = ChanLayerNorm(self.dim, name='norm')(fmap)

        p, h = self.patch_size, self.heads
        _, height, width, _ = fmap.shape
        if height % p or width % p:
            raise ValueError(
                f'feature map of size {(height, width)} is not divisible by local_patch_size={p}'
            )
        x, y = height // p, width // p

        fmap = rearrange(fmap, 'b (x p1) (y p2) c -> (b x y) p1 p2 c', p1=p, p2=p)

        q = Conv(inner_dim, 1, use_bias=False, name='to_q')(fmap)
        k, v = jnp.split(Conv(inner_dim * 2, 1, use_bias=False, name='to_kv')(fmap), 2, axis=-1)
        q, k, v = (rearrange(t, 'b p1 p2 (h d) -> b h (p1 p2) d', h=h) for t in (q, k, v))

        attn = attention_weights(q, k, scale=self.dim_head**-0.5)

        out = jnp.einsum('bhij,bhjd->bhid', attn, v)
        out = rearrange(out, '(b x y) h (p1 p2) d -> b (x p1) (y p2) (h d)', x=x, y=y, p1=p, p2=p)
        out = Conv(self.dim, 1, name='to_out_0')(out)
        return nn.Dropout(self.dropout, deterministic=not train)(out)


class GlobalAttention(nn.Module):
    dim: int
    heads: int = 8
    dim_head: int = 64
    dropout: float = 0.0
    k: int = 7

    @nn.compact
    def __call__(self, x, train: bool = False):
        inner_dim = self.dim_head * self.heads
        x = ChanLayerNorm(self.dim, name='norm')(x)

        _, height, width, _ = x.shape
        if height < self.k or width < self.k:
            raise ValueError(f'feature map of size {(height, width)} is smaller than global_k={self.k}')
        h = self.heads
        q = Conv(inner_dim, 1, use_bias=False, name='to_q')(x)
        kv = Conv(inner_dim * 2, self.k, stride=self.k, use_bias=False, name='to_kv')(x)
        k, v = jnp.split(kv, 2, axis=-1)
        q, k, v = (rearrange(t, 'b x y (h d) -> b h (x y) d', h=h) for t in (q, k, v))

        attn = attention_weights(q, k, scale=self.dim_head**-0.5)
        attn = nn.Dropout(self.dropout, deterministic=not train)(attn)

        out = jnp.einsum('bhij,bhjd->bhid', attn, v)
        out = rearrange(out, 'b h (x y) d -> b x y (h d)', y=width)
        out = Conv(self.dim, 1, name='to_out_0')(out)
        return nn.Dropout(self.dropout, deterministic=not train)(out)


class Transformer(nn.Module):
    dim: int
    depth: int
    heads: int = 8
    dim_head: int = 64
    mlp_mult: int = 4
    local_patch_size: int = 7
    global_k: int = 7
    dropout: float = 0.0
    has_local: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        attention = dict(heads=self.heads, dim_head=self.dim_head, dropout=self.dropout, parent=None)
        for i in range(self.depth):
            if self.has_local:  # torch's nn.Identity otherwise: no parameters
                local_attn = LocalAttention(self.dim, patch_size=self.local_patch_size, **attention)
                x = Residual(local_attn, name=f'layers_{i}_0')(x, train)
                ff1 = FeedForward(self.dim, self.mlp_mult, dropout=self.dropout, parent=None)
                x = Residual(ff1, name=f'layers_{i}_1')(x, train)
            global_attn = GlobalAttention(self.dim, k=self.global_k, **attention)
            x = Residual(global_attn, name=f'layers_{i}_2')(x, train)
            ff2 = FeedForward(self.dim, self.mlp_mult, dropout=self.dropout, parent=None)
            x = Residual(ff2, name=f'layers_{i}_3')(x, train)
        return x


STAGES = ('s1', 's2', 's3', 's4')


class TwinsSVT(nn.Module):
    num_classes: int
    s1_emb_dim: int = 64
    s1_patch_size: int = 4
    s1_local_patch_size: int = 7
    s1_global_k: int = 7
    s1_depth: int = 1
    s2_emb_dim: int = 128
    s2_patch_size: int = 2
    s2_local_patch_size: int = 7
    s2_global_k: int = 7
    s2_depth: int = 1
    s3_emb_dim: int = 256
    s3_patch_size: int = 2
    s3_local_patch_size: int = 7
    s3_global_k: int = 7
    s3_depth: int = 5
    s4_emb_dim: int = 512
    s4_patch_size: int = 2
    s4_local_patch_size: int = 7
    s4_global_k: int = 7
    s4_depth: int = 4
    peg_kernel_size: int = 3
    dropout: float = 0.0

    channels: ClassVar[int] = 3  # not a keyword: vit-pytorch builds the first patch embedding for 3 channels

    def __post_init__(self):
        check_keywords(self)
        if self.peg_kernel_size % 2 == 0:
            raise ValueError(
                'peg_kernel_size must be a positive odd integer: an even kernel makes the PEG output one pixel larger '
                f'than its input and vit-pytorch fails at the residual add, got peg_kernel_size={self.peg_kernel_size!r}'
            )
        super().__post_init__()

    def stage_configs(self) -> tuple[dict, ...]:
        """Each stage's keywords without its prefix, split off as vit-pytorch does."""
        kwargs = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)
                  if field.name not in ('parent', 'name')}
        configs = []
        for prefix in STAGES:
            config, kwargs = group_by_key_prefix_and_remove_prefix(f'{prefix}_', kwargs)
            configs.append(config)
        return tuple(configs)

    def check_input(self, x):
        """Every stage's map must fit its patch embedding, windows and key / value conv; torch fails deep inside."""
        if x.ndim != 4:
            raise ValueError(f'expected images of shape (batch, height, width, channels), got shape {x.shape}')
        if x.shape[-1] != self.channels:
            raise ValueError(f'expected {self.channels} channels (channels-last input), got shape {x.shape}')
        size = x.shape[1:3]
        for prefix, config in zip(STAGES, self.stage_configs()):
            p = config['patch_size']
            if size[0] % p or size[1] % p:
                raise ValueError(f'input of shape {x.shape}: the {prefix} map of size {size} is not divisible by '
                                 f'{prefix}_patch_size={p}')
            size = (size[0] // p, size[1] // p)
            window = config['local_patch_size']
            if prefix != STAGES[-1] and (size[0] % window or size[1] % window):
                raise ValueError(f'input of shape {x.shape}: the {prefix} map of size {size} is not divisible by '
                                 f'{prefix}_local_patch_size={window}')
            if min(size) < config['global_k']:
                raise ValueError(f'input of shape {x.shape}: the {prefix} map of size {size} is smaller than '
                                 f'{prefix}_global_k={config["global_k"]}')

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_floating_input(self, 'x', x)
        self.check_input(x)
        dim = self.channels
        for i, (prefix, config) in enumerate(zip(STAGES, self.stage_configs())):
            is_last = prefix == STAGES[-1]
            dim_next = config['emb_dim']
            transformer = dict(dim=dim_next, local_patch_size=config['local_patch_size'],
                               global_k=config['global_k'], dropout=self.dropout, has_local=not is_last)
            x = PatchEmbedding(dim=dim, dim_out=dim_next, patch_size=config['patch_size'], name=f'layers_{i}_0')(x)
            x = Transformer(depth=1, **transformer, name=f'layers_{i}_1')(x, train)
            x = PEG(dim=dim_next, kernel_size=self.peg_kernel_size, name=f'layers_{i}_2')(x)
            x = Transformer(depth=config['depth'], **transformer, name=f'layers_{i}_3')(x, train)
            dim = dim_next

        x = x.mean(axis=(1, 2))  # AdaptiveAvgPool2d(1), Rearrange('... () () -> ...')
        return Linear(self.num_classes, name='layers_6')(x)
