"""ViViT with MOSS (Co6SCyBIjo, "Exploring High-Order Self-Similarity for Video Understanding"), mirroring
vit_pytorch/vivit_with_moss.py: a factorised-encoder ViViT whose patch tokens, after the spatial transformer, go
through MOSS, a stack of space-time self-similarity (STSS) encoders, before the temporal transformer.

    v = ViViT(image_size=256, image_patch_size=32, frames=8, frame_patch_size=2, num_classes=1000, dim=512,
              spatial_depth=2, temporal_depth=2, heads=4, mlp_dim=2048)
    logits = v.apply(variables, video)            # video (batch, frames, height, width, channels)
    moss_out = MOSS(dim=512).apply(moss_variables, tokens)  # tokens (batch, frames, height, width, dim) -> same

Videos are channels-last, (batch, frames, height, width, channels); vit-pytorch takes (batch, channels, frames,
height, width). MOSS takes (batch, frames, height, width, dim) on both sides. Parameter tree = vit-pytorch's module
tree: `moss.encoders.0.conv.1.gamma` lives at `params/moss/encoders_0/conv_1/gamma`,
`temporal_transformer.layers.0.0.to_qkv.weight` at `params/temporal_transformer/layers_0_0/to_qkv/kernel`.

The patch embedding, position embedding and frame-mask reduction are vivit.ViViT's (the same Rearrange, LayerNorm,
Linear, LayerNorm, the same (1, frame patches, image patches, dim) table); `FeedForward` is vit.py's. This file's
`Attention` adds causal masking and a key / value cache to vivit.py's, so it lives here.

MOSS: each of `orders` STSS steps L2-normalises its input over the feature axis, takes the dot products of every
token with its (local_time, local_height, local_width) neighbourhood (zero padded; `causal=True` pads only the past,
so a token sees itself and the `local_time - 1` frames before it), and encodes the similarity volume (a Linear over
the spatial neighbourhood, two 3x3 conv / channel LayerNorm / GELU blocks per frame and neighbour offset, a Linear
over the temporal neighbourhood) back to `dim` features. The output is `to_out(x)` plus each order's encoding
through its `to_order_out`; order k > 1 runs on order k - 1's encoding.

Quirks of vit-pytorch kept so weights and outputs transfer:
- `moss_causal=True` (the default) also makes the temporal transformer causal. With `pool='cls'` the temporal cls
  token sits first and is read back first, so under causal attention it attends only to itself: the logits do not
  depend on the video at all (every gradient but the temporal cls token's, the temporal transformer's and the
  head's is zero). `pool='mean'` or `moss_causal=False` give a classifier of the video.
- The patch tokens are reshaped to the configured grid (`image_size // image_patch_size`), so videos must have
  exactly `image_size`; fewer frames (whole frame patches) take the first rows of the position embedding.
- With `pool='cls'` the spatial cls tokens skip MOSS: each frame patch's feature is its spatial cls token plus the
  mean of its MOSS-encoded patch tokens; with `pool='mean'` only that mean.
- `mask` (batch, frames) of bools masks temporal attention (keys only), a frame patch visible when all of its frames
  are True, and only without `moss_causal` (vit-pytorch asserts it; refused here with a ValueError).
- `ChanLayerNorm` has a scale `gamma` of torch's shape (1, dim, 1, 1) and no bias.
- `use_flash_attn=True` (torch's `scaled_dot_product_attention`):
  * a query that may see no key (every frame of a video masked, with `pool='mean'`) gets all-zero attention
    weights (torch 2.13's softmax there); `use_flash_attn=False` fills masked logits with -max and so spreads such a
    query evenly over all keys;
  * causal attention over a key / value cache is aligned top-left, as `is_causal=True` is for a non-square mask:
    query i sees keys 0..i, counting from the start of the cache, not its own position after it. The explicit path
    (`use_flash_attn=False`) aligns bottom-right (query i of n after m cached keys sees keys 0..m + i), the masking
    a cache is meant for. Both are kept.
- With `heads == 1 and dim_head == dim` the attention output projection (and its dropout) is dropped.
- A MOSS cache holds the last `local_time - 1` L2-normalised frames of each order's input (`local_time=1` keeps
  every frame, as `padded_x[..., -0:, ...]` does in vit-pytorch; such a cache cannot be passed back, see below).

Differences:
- Not kept: with `use_flash_attn=True` vit-pytorch applies attention dropout in eval mode too (`dropout_p` is passed
  to `scaled_dot_product_attention` whatever `self.training`). Here dropout is on only with `train=True`, so for
  `dropout > 0` vit-pytorch's eval outputs match only with `use_flash_attn=False` (as in vivit.py).
- MOSS caches are channels-last, (batch, local_time - 1, height, width, dim), like MOSS's input; vit-pytorch's are
  (batch, dim, local_time - 1, height, width). Attention caches are (k, v), each (batch, heads, n, dim_head), on both
  sides.
- Refused with a ValueError naming the values, where vit-pytorch asserts or fails later: even MOSS local sizes; a
  mask with `moss_causal`; a cache for a non-causal MOSS; a MOSS cache of another length than `local_time - 1`
  frames (vit-pytorch's einsum fails); a cache with another number of entries than layers or orders (vit-pytorch's
  `zip` would silently skip the layers or orders beyond the shorter one); MOSS input without `dim` features.

No rng streams but 'dropout' (`dropout`, `emb_dropout`, with `train=True`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange, reduce, repeat

from vit_flax.layers import (
    Conv, LayerNorm, Linear, attention_weights, check_floating_input, check_keywords, default, exists, gelu,
    l2_normalize, pair, randn,
)
from vit_flax.vit import FeedForward
from vit_flax.vit_3d import check_video_config
from vit_flax.vivit import ViViT as FactorizedViViT


# helpers


def is_odd(n: int) -> bool:
    return n % 2 == 1


def check_cache_entries(cache, count: int, what: str):
    """A cache must hold one entry per layer (order): vit-pytorch zips them, and a shorter cache would silently skip
    the layers after it."""
    if exists(cache) and len(cache) != count:
        raise ValueError(f'cache has {len(cache)} entries for {count} {what}: pass one per {what[:-1]} (or None)')


# normalization helpers


class ChanLayerNorm(nn.Module):
    """vivit_with_moss's ChanLayerNorm: `(x - mean) * rsqrt(var + eps) * gamma` over the channel axis (last here,
    second in torch), biased variance, a scale `gamma` of torch's shape (1, dim, 1, 1) and no bias (unlike
    layers.ChanLayerNorm's `g` and `b`)."""

    dim: int
    eps: float = 1e-5

    @nn.compact
    def __call__(self, x):
        gamma = self.param('gamma', nn.initializers.ones, (1, self.dim, 1, 1))
        var = jnp.var(x, axis=-1, keepdims=True)
        mean = jnp.mean(x, axis=-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * gamma.reshape(self.dim).astype(x.dtype)


# classes


class Attention(nn.Module):
    dim: int
    heads: int = 8
    dim_head: int = 64
    dropout: float = 0.0
    use_flash_attn: bool = True
    causal: bool = False

    @nn.compact
    def __call__(self, x, mask=None, cache=None, return_cache: bool = False, train: bool = False):
        """x (b, n, dim); mask (b, j) True where a key is visible; cache (k, v) of earlier keys and values, each
        (b, heads, m, dim_head). Returns the output, and with `return_cache` also (k, v) with this call's appended."""
        is_causal = self.causal and x.shape[-2] > 1
        if is_causal and exists(mask):
            raise ValueError('causal attention is not compatible with key padding mask')

        inner_dim = self.dim_head * self.heads
        project_out = not (self.heads == 1 and self.dim_head == self.dim)
        scale = self.dim_head**-0.5

        x = LayerNorm(name='norm')(x)
        qkv = jnp.split(Linear(inner_dim * 3, use_bias=False, name='to_qkv')(x), 3, axis=-1)
        q, k, v = (rearrange(t, 'b n (h d) -> b h n d', h=self.heads) for t in qkv)

        if exists(cache):
            ck, cv = cache
            k = jnp.concatenate((jnp.asarray(ck, k.dtype), k), axis=-2)
            v = jnp.concatenate((jnp.asarray(cv, v.dtype), v), axis=-2)

        if exists(mask):
            mask = rearrange(jnp.asarray(mask, bool), 'b j -> b 1 1 j')

        i, j = q.shape[-2], k.shape[-2]
        if self.use_flash_attn:
            # scaled_dot_product_attention: is_causal aligns its lower triangle top-left (query i sees keys 0..i)
            allowed = jnp.asarray(np.tril(np.ones((i, j), bool))) if is_causal else mask
            attn = attention_weights(q, k, scale=scale, mask=allowed)
            if exists(mask):
                # torch's scaled_dot_product_attention gives a query with no visible key zero weights
                attn = jnp.where(mask.any(axis=-1, keepdims=True), attn, 0.0)
        else:
            allowed = mask
            if self.causal:
                # bottom-right aligned: masked where key > query + (j - i), torch's triu(j - i + 1)
                causal_allowed = jnp.asarray(~np.triu(np.ones((i, j), bool), j - i + 1))
                allowed = causal_allowed if allowed is None else allowed & causal_allowed
            attn = attention_weights(q, k, scale=scale, mask=allowed)
        attn = nn.Dropout(self.dropout, deterministic=not train)(attn)

        out = jnp.einsum('bhij,bhjd->bhid', attn, v)
        out = rearrange(out, 'b h n d -> b n (h d)')
        if project_out:
            out = Linear(self.dim, name='to_out_0')(out)
            out = nn.Dropout(self.dropout, deterministic=not train)(out)

        if not return_cache:
            return out
        return out, (k, v)


class Transformer(nn.Module):
    dim: int
    depth: int
    heads: int
    dim_head: int
    mlp_dim: int
    dropout: float = 0.0
    use_flash_attn: bool = True
    causal: bool = False

    @nn.compact
    def __call__(self, x, mask=None, cache=None, return_cache: bool = False, train: bool = False):
        """x (b, n, dim) -> (b, n, dim); with `return_cache` also a tuple of each layer's (k, v)."""
        check_cache_entries(cache, self.depth, 'layers')
        cache = default(cache, (None,) * self.depth)
        new_caches = []

        for i, layer_cache in enumerate(cache):
            attn = Attention(self.dim, self.heads, self.dim_head, self.dropout, self.use_flash_attn, self.causal,
                             name=f'layers_{i}_0')
            attn_out, next_cache = attn(x, mask=mask, cache=layer_cache, return_cache=True, train=train)
            new_caches.append(next_cache)

            x = attn_out + x
            x = FeedForward(self.dim, self.mlp_dim, self.dropout, name=f'layers_{i}_1')(x, train) + x

        x = LayerNorm(name='norm')(x)

        if not return_cache:
            return x
        return x, tuple(new_caches)


# moss specific classes


class STSSEncoder(nn.Module):
    """A similarity volume (b, t, h, w, local_time, local_height, local_width) -> features (b, t, h, w, dim)."""

    dim: int
    local_time: int = 3
    local_height: int = 3
    local_width: int = 3
    hidden_dim: int = 64

    @nn.compact
    def __call__(self, sim):
        b, t, h, w, lt, lh, lw = sim.shape
        if (lt, lh, lw) != (self.local_time, self.local_height, self.local_width):
            raise ValueError(
                f'similarity volume of shape {sim.shape} has a ({lt}, {lh}, {lw}) neighbourhood; this encoder takes '
                f'local_time, local_height, local_width = {(self.local_time, self.local_height, self.local_width)}'
            )

        x = rearrange(sim, 'b t h w lt lh lw -> b t h w lt (lh lw)')
        x = Linear(self.hidden_dim, name='spatial_to_hidden')(x)

        # per frame and temporal offset, convolved over (h, w): channels-last here, (b t lt) d h w in torch
        x = rearrange(x, 'b t h w lt d -> (b t lt) h w d')
        x = Conv(self.hidden_dim, 3, padding=1, name='conv_0')(x)
        x = gelu(ChanLayerNorm(self.hidden_dim, name='conv_1')(x))
        x = Conv(self.hidden_dim, 3, padding=1, name='conv_3')(x)
        x = gelu(ChanLayerNorm(self.hidden_dim, name='conv_4')(x))
        x = rearrange(x, '(b t lt) h w d -> b t h w (lt d)', b=b, t=t, lt=lt)

        return Linear(self.dim, name='time_to_out')(x)


class MOSS(nn.Module):
    dim: int
    local_time: int = 3
    local_height: int = 3
    local_width: int = 3
    hidden_dim: int = 64
    orders: int = 2
    causal: bool = False

    def __post_init__(self):
        check_keywords(self)
        check_moss_keywords(self, local_time=self.local_time, local_height=self.local_height,
                            local_width=self.local_width, hidden_dim=self.hidden_dim, orders=self.orders)
        super().__post_init__()

    def stss_transform(self, x, cache=None, return_cache: bool = False):
        """The similarity of each token of x (b, t, h, w, c) with its zero-padded (local_time, local_height,
        local_width) neighbourhood, after L2-normalising x over c: (b, t, h, w, lt, lh, lw). With `return_cache`
        also the last `local_time - 1` normalised frames (the cache of a causal MOSS; None otherwise)."""
        if exists(cache) and not self.causal:
            raise ValueError('cache cannot be passed in if MOSS is not causal')

        lt, lh, lw = self.local_time, self.local_height, self.local_width
        _, t, h, w, _ = x.shape

        x = l2_normalize(x)

        pad_h, pad_w = lh // 2, lw // 2
        pad_t_past, pad_t_future = (lt - 1, 0) if self.causal else (lt // 2, lt // 2)

        has_cache = self.causal and exists(cache)
        if has_cache:
            cache = jnp.asarray(cache, x.dtype)
            if cache.shape[0] != x.shape[0] or cache.shape[2:] != x.shape[2:] or cache.shape[1] != lt - 1:
                raise ValueError(
                    f'a MOSS cache for input of shape {x.shape} must be (batch, local_time - 1, height, width, dim) = '
                    f'{(x.shape[0], lt - 1, *x.shape[2:])}, got shape {cache.shape}'
                )
        x_temporal = jnp.concatenate((cache, x), axis=1) if has_cache else x

        padding = ((0, 0), (0 if has_cache else pad_t_past, pad_t_future), (pad_h, pad_h), (pad_w, pad_w), (0, 0))
        padded_x = jnp.pad(x_temporal, padding)

        # torch's unfold over (t, h, w) then one einsum: here one dot product per neighbour offset
        sim = jnp.stack([
            jnp.einsum('bthwc,bthwc->bthw', x, padded_x[:, l:l + t, u:u + h, v:v + w])
            for l in range(lt) for u in range(lh) for v in range(lw)
        ], axis=-1)
        sim = rearrange(sim, 'b t h w (l u v) -> b t h w l u v', l=lt, u=lh, v=lw)

        if not return_cache:
            return sim

        new_cache = padded_x[:, -(lt - 1):, pad_h:(pad_h + h), pad_w:(pad_w + w)] if self.causal else None
        return sim, new_cache

    @nn.compact
    def __call__(self, x, cache=None, return_cache: bool = False, train: bool = False):
        """x (b, t, h, w, dim) -> (b, t, h, w, dim); with `return_cache` also a tuple of each order's cache.
        (`train` is accepted for a uniform interface: MOSS has no dropout.)"""
        check_floating_input(self, 'x', x, what='token grids')
        if exists(cache) and not self.causal:
            raise ValueError('cache cannot be passed in if MOSS is not causal')
        if x.ndim != 5 or x.shape[-1] != self.dim:
            raise ValueError(f'MOSS takes tokens of shape (batch, frames, height, width, dim={self.dim}), got shape '
                             f'{x.shape}')
        check_cache_entries(cache, self.orders, 'orders')

        out = Linear(self.dim, name='to_out')(x)

        new_caches = []
        cache = default(cache, (None,) * self.orders)

        for i, layer_cache in enumerate(cache):
            sim, next_cache = self.stss_transform(x, cache=layer_cache, return_cache=True)
            new_caches.append(next_cache)

            encoder = STSSEncoder(self.dim, self.local_time, self.local_height, self.local_width, self.hidden_dim,
                                  name=f'encoders_{i}')
            x = encoder(sim)
            out = out + Linear(self.dim, name=f'to_order_out_{i}')(x)

        if not return_cache:
            return out
        return out, tuple(new_caches)


def check_moss_keywords(module: nn.Module, prefix: str = '', **sizes):
    """MOSS's sizes, by their keyword names (ViViT's carry the prefix `moss_`): odd positive local sizes (vit-pytorch
    asserts they are odd), a positive hidden width, a non-negative number of orders."""
    name = type(module).__name__
    for key, value in sizes.items():
        keyword = f'{prefix}{key}'
        integer = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
        if key.startswith('local_') and not (integer and value >= 1 and is_odd(value)):
            raise ValueError(f'{name}: {keyword}={value!r} must be a positive odd integer (MOSS local dimensions must '
                             'be odd)')
        if key == 'hidden_dim' and not (integer and value >= 1):
            raise ValueError(f'{name}: {keyword}={value!r} must be a positive integer')
        if key == 'orders' and not (integer and value >= 0):
            raise ValueError(f'{name}: {keyword}={value!r} must be a non-negative integer')


# main architecture


class ViViT(nn.Module):
    image_size: int | tuple[int, int]
    image_patch_size: int | tuple[int, int]
    frames: int
    frame_patch_size: int
    num_classes: int
    dim: int
    spatial_depth: int
    temporal_depth: int
    heads: int
    mlp_dim: int
    pool: str = 'cls'
    channels: int = 3
    dim_head: int = 64
    dropout: float = 0.0
    emb_dropout: float = 0.0
    use_flash_attn: bool = True
    moss_local_time: int = 3
    moss_local_height: int = 3
    moss_local_width: int = 3
    moss_hidden_dim: int = 64
    moss_orders: int = 2
    moss_causal: bool = True

    def __post_init__(self):
        check_keywords(self)
        # vit-pytorch's asserts, as ValueErrors naming the values
        check_video_config(self.image_size, self.image_patch_size, self.frames, self.frame_patch_size)
        if self.pool not in {'cls', 'mean'}:
            raise ValueError(f"pool type must be either cls (cls token) or mean (mean pooling), got pool={self.pool!r}")
        check_moss_keywords(self, 'moss_', local_time=self.moss_local_time, local_height=self.moss_local_height,
                            local_width=self.moss_local_width, hidden_dim=self.moss_hidden_dim,
                            orders=self.moss_orders)
        super().__post_init__()

    @property
    def patch_grid(self) -> tuple[int, int]:
        """(patch_h, patch_w): the image patch grid MOSS reshapes the patch tokens to."""
        (image_height, image_width), (patch_height, patch_width) = pair(self.image_size), pair(self.image_patch_size)
        return image_height // patch_height, image_width // patch_width

    def _transformer(self, depth: int, causal: bool, name: str) -> Transformer:
        return Transformer(self.dim, depth, self.heads, self.dim_head, self.mlp_dim, self.dropout,
                           self.use_flash_attn, causal=causal, name=name)

    @nn.compact
    def __call__(self, video, mask=None, train: bool = False):
        check_floating_input(self, 'video', video, what='videos')
        if exists(mask) and self.moss_causal:
            raise ValueError('mask cannot be passed if MOSS is causal (moss_causal=True)')
        has_cls = self.pool != 'mean'
        patch_h, patch_w = self.patch_grid

        # vivit.ViViT's patch embedding, position embedding and frame-mask reduction (the same names and layout)
        x = FactorizedViViT._to_patch_embedding(self, video)
        batch, frames, seq, _ = x.shape
        if seq != patch_h * patch_w:
            raise ValueError(
                f'video of shape {tuple(video.shape)} gives {seq} image patches; MOSS reshapes them to the '
                f'{patch_h} x {patch_w} grid of image_size={self.image_size}, so videos must have that size'
            )
        x = FactorizedViViT._add_position_embedding(self, x, video.shape)

        if has_cls:
            spatial_cls_token = self.param('spatial_cls_token', randn, (1, 1, self.dim))
            spatial_cls_tokens = repeat(spatial_cls_token, '1 1 d -> b f 1 d', b=batch, f=frames)
            x = jnp.concatenate((spatial_cls_tokens.astype(x.dtype), x), axis=2)

        x = nn.Dropout(self.emb_dropout, deterministic=not train)(x)

        # temporal mask

        temporal_mask = FactorizedViViT._temporal_mask(self, mask, video.shape) if exists(mask) else None

        # attend across space

        x = rearrange(x, 'b f n d -> (b f) n d')
        x = self._transformer(self.spatial_depth, False, 'spatial_transformer')(x, train=train)
        x = rearrange(x, '(b f) n d -> b f n d', b=batch)

        # moss integration over spatial patch tokens

        if has_cls:
            spatial_cls_tokens, patch_tokens = x[:, :, :1], x[:, :, 1:]
        else:
            patch_tokens = x

        moss = MOSS(self.dim, local_time=self.moss_local_time, local_height=self.moss_local_height,
                    local_width=self.moss_local_width, hidden_dim=self.moss_hidden_dim, orders=self.moss_orders,
                    causal=self.moss_causal, name='moss')
        patch_tokens = rearrange(patch_tokens, 'b f (h w) d -> b f h w d', h=patch_h, w=patch_w)
        patch_tokens = moss(patch_tokens)
        patch_tokens = rearrange(patch_tokens, 'b f h w d -> b f (h w) d')

        # pool spatial features

        moss_pooled = reduce(patch_tokens, 'b f n d -> b f d', 'mean')

        if has_cls:
            x = rearrange(spatial_cls_tokens, 'b f 1 d -> b f d') + moss_pooled
        else:
            x = moss_pooled

        # append temporal cls tokens

        if has_cls:
            temporal_cls_token = self.param('temporal_cls_token', randn, (1, 1, self.dim))
            temporal_cls_tokens = repeat(temporal_cls_token, '1 1 d -> b 1 d', b=batch)
            x = jnp.concatenate((temporal_cls_tokens.astype(x.dtype), x), axis=1)

            if exists(temporal_mask):
                temporal_mask = jnp.pad(temporal_mask, ((0, 0), (1, 0)), constant_values=True)

        # attend across time

        x = self._transformer(self.temporal_depth, self.moss_causal, 'temporal_transformer')(
            x, mask=temporal_mask, train=train)

        # temporal pooling

        x = x[:, 0] if has_cls else reduce(x, 'b f d -> b d', 'mean')

        x = LayerNorm(name='mlp_head_0')(x)
        return Linear(self.num_classes, name='mlp_head_1')(x)
