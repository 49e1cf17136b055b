"""LeVJEPA (Kuhn et al., 2026, "LeVJEPA: Efficient & Scalable Video Pretraining without the Heuristics"), mirroring
vit_pytorch/levjepa.py: a block-causal video transformer and the joint-embedding objective that trains it with an
invariance loss between views and SIGReg (Balestriero & LeCun, 2025), no teacher and no predictor.

    encoder = VideoTransformer(image_size=96, patch_size=16, frames=8, dim=256, depth=3, heads=8, mlp_dim=512)
    learner = LeVJEPA(encoder, image_size=96)
    variables = learner.init({'params': key}, video)                          # video (2, 8, 96, 96, 3)
    loss, updates = learner.apply(variables, video, train=True, mutable=['batch_stats'],
                                  rngs={'crop': k1, 'augment': k2, 'token_dropping': k3, 'sigreg': k4})
    embed = learner.apply(variables, video, return_embedding=True)             # (2, 256), the class token
    encoder_variables = {c: tree['encoder'] for c, tree in variables.items() if 'encoder' in tree}

Videos are channels-last, (batch, frames, height, width, channels) (vit-pytorch: (batch, channels, frames, height,
width)).

`VideoTransformer` cuts each frame into `patch_size` patches laid out `(c p1 p2)`, tokens in (frame, row, column)
order after a class token; bias-free LayerNorms around the patch projection; no position embedding: every attention
layer rotates the first `6 * (dim_head // 6)` features of its queries and keys (vit_flax/rotary.py, pairs rotated as
vit-pytorch's `rotate_every_two`) by factorised angles `pi * scales * coordinate` of the token's (frame, row, column)
coordinates in [-1, 1) (`(i / n - 0.5) * 2`; the class token's are zero), `scales = linspace(1, rotary_max_freq / 2,
dim_head // 6)` a persistent buffer (`buffers/rotary_emb/scales`, which the forward reads). RMSNorms (torch.nn.RMSNorm:
`layers.TorchRMSNorm`) before attention, feed-forward and at the end; the output is every token, normalised.
`block_causal=True` masks attention block-causally: bidirectional within a frame, causal across frames, the class
token attends to every token. vit-pytorch builds that mask with flex_attention's `create_block_mask` from a function of
the tokens' frame indices; JAX has no flex attention, so here it is the dense boolean mask of the same function
(`block_causal_mask`, (batch, n, n)), and the masked logits are filled with the most negative float (flex_attention
gives them zero weight too). With `drop_ratio` in training (`train=True`), the encoder keeps a uniformly random
`max(1, int(n_patches * (1 - drop_ratio)))` of each row's patch tokens, those of the largest uniform draws
(`token_noise`, vit-pytorch's `torch.rand(batch, n).topk(k)`, in topk's order), the class token always; their
coordinates and frame indices go with them, so the mask follows the tokens kept.

`LeVJEPA` takes the video, cuts a global view (`global_crop`: a random resized crop of `global_crop_scale` of the
frame area to `image_size`, bicubic, antialiased, then `global_augment`: ImageNet normalisation by default) and
`num_local_views` local views (`local_crop`: `local_crop_scale` to `local_size`, then `local_augment`: horizontal flip,
colour jitter, grayscale, optional Gaussian blur, normalisation by default), encodes all views at once with
`drop_ratio` token dropping, projects each view's class token (`projector`: Linear or WeightStandardizedLinear,
BatchNorm1d or RMSNorm or `norm_fn(projection_hidden)`, GELU, Linear to `num_classes_K`) and returns
`invariance_loss_weight * mse(projections, the first view's) + sigreg_loss_weight * sigreg_loss(projections)`, or with
`return_loss_breakdown=True` (total, LeVJEPALosses(invariance_loss, sigreg_loss)) (weighted). BatchNorm uses batch
statistics in training (`mutable=['batch_stats']` returns the updated running ones) and its running ones in eval mode.
`sigreg_loss` here is levjepa's: knots on [0, 3], scaled by twice the batch (lejepa's differs).

Random draws (`LeVJEPA.rng_streams`; each is drawn in eval mode too, but token dropping):
- 'crop': the crop boxes, per video (`RandomVideoCrop.boxes`, torchvision's RandomResizedCrop.get_params);
- 'augment': the photometric augmentation's flips, colour jitter factors and order, grayscale and blur draws, per
  video (`PhotometricAugment.draws`);
- 'token_dropping': the encoder's token noise, in training only (`VideoTransformer.token_noise`);
- 'sigreg': SIGReg's random projection directions (`sigreg_directions`), drawn in every call;
- 'dropout': the encoder's dropout (`train=True`).
`LeVJEPA.draws(video, train)` returns everything a call with the same rngs draws (the parity tests replay it in
vit-pytorch); no parameters are needed: `learner.apply({}, video, rngs=rngs, method=LeVJEPA.draws)`.

Parameter tree = vit-pytorch's module tree: `encoder/...` (exactly a plain VideoTransformer's params and buffers),
`projector_0` (a Linear's kernel and bias, or WeightStandardizedLinear's raw `weight` (out, in) and `bias`),
`projector_1` (BatchNorm's scale and bias with `batch_stats/projector_1/{mean,var}`, or RMSNorm's scale),
`projector_3`. The crops and augmentations hold no variables (torchvision's transforms have no state).

Quirks of vit-pytorch kept so weights and losses transfer:
- Patch tokens never attend to the class token (the mask's `key_frame >= 0`), while it attends to all of them.
- The views are concatenated as [every video's global view; every video's local views], but the projections are
  regrouped as `'(b v) d -> b v d'` with v = num_local_views + 1, as if each video's views were adjacent: the groups
  that the invariance loss compares with their first member, and SIGReg's per-view batches, mix videos and views.
- `frames` is accepted and unused (the forward takes any frame count); `image_size` only has to be divisible by
  `patch_size` (the forward takes any frame size divisible by it).
- The embedding dropout acts on the patch tokens before the class token joins them.
- `return_embedding=True` returns the encoder's class token without token dropping, in the learner's mode.
- WeightStandardizedLinear standardises its weight per output row with the biased variance clamped below at `eps`.
- SIGReg's directions are normalised without an epsilon (`randn / norm`).
Refused here where vit-pytorch fails later: `local_size` other than `image_size` (vit-pytorch concatenates the global
and local views along the batch), `num_local_views` < 1, a channel count the colour transforms or the normalisation
cannot take (torchvision: 1 or 3 channels; a mean / std of 1 or `channels` entries), a Gaussian blur on views of 4
pixels or fewer (its reflect padding of 4), inputs whose sides are not multiples of `patch_size`.

Where this differs from vit-pytorch 1.26.11 (the intended behaviour): torchvision transforms applied to vit-pytorch's
(batch * frames, c, h, w) tensor of frames draw ONE crop box, flip, jitter... for the whole batch, so all
`num_local_views` local views of a video come out identical. Here every video (each view of each video) draws its
own, the same for all its frames (a clip is cropped and coloured as a whole, as V-JEPA does), as dino.Dino draws per
image. The parity tests give vit-pytorch the per-video draws through a stand-in for torchvision
(parity/levjepa.py), whose resize is torch's own antialiased bicubic `F.interpolate`, as torchvision's
RandomResizedCrop on tensors; torchvision computes the hue shift in float32, as here. (torch 2.13's CPU antialiased
interpolation computes wrong values for an output width of 1 where the height changes; the crops here are the correct
resize, and the stand-in resizes such frames transposed.)

vit-pytorch's VideoTransformer cannot run as shipped with torch 2.13 on a CPU: its `block_causal` mask function is
wrapped in torch.compile, whose wrapper create_block_mask refuses ("Expected 4 or 5 positional args"), and
flex_attention has no backward on CPUs. The parity tests run it on the same mask evaluated densely, softmax with the
masked logits filled (parity/levjepa.py); tests/test_levjepa.py checks flex_attention's own forward against it.
"""

from __future__ import annotations

import dataclasses
import math
from collections import namedtuple
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange, repeat

from vit_flax import vit
from vit_flax.dino import (
    AUGMENT, CROP, IMAGENET_MEAN, IMAGENET_STD, _blend, adjust_brightness, adjust_contrast, adjust_hue,
    adjust_saturation, gaussian_blur, random_resized_crop_boxes, rgb_to_grayscale,
)
from vit_flax.layers import (
    BatchNorm, LayerNorm, Linear, TorchRMSNorm, attention_weights, call_plugged_in, check_floating_input,
    check_keywords, exists, gelu, pair, patches_kept, randn, torch_linspace,
)
from vit_flax.lejepa import SIGREG  # the same stream: SIGReg's random projection directions
from vit_flax.rotary import apply_rotary, interleave_pairs

TOKEN_DROPPING = 'token_dropping'  # the encoder's uniform token noise, in training

# sigreg loss - https://arxiv.org/abs/2511.08544


def sigreg_directions(key, dim: int, num_proj: int, dtype=jnp.float32):
    """SIGReg's random directions (dim, num_proj): standard normal draws from `key` (vit-pytorch's
    `torch.randn(dim, num_proj)`), each column divided by its norm (no epsilon, as vit-pytorch)."""
    projections = jax.random.normal(key, (dim, num_proj), jnp.float32).astype(dtype)
    return projections / jnp.sqrt(jnp.sum(jnp.square(projections), axis=0))


def sigreg_loss(x, key, num_proj: int = 1024, knots: int = 17):
    """vit_pytorch.levjepa.sigreg_loss: how far the 1-D projections of the rows of `x` (..., batch, dim) on
    `num_proj` random unit directions (`sigreg_directions(key, ...)`) are from N(0, 1): the squared distance of their
    empirical characteristic function from exp(-t^2 / 2), weighted by it and integrated with the trapezoid rule over
    `knots` points of [0, 3], averaged over the leading axes and directions, times 2 * batch. |ecf - phi|^2 is
    (mean cos - phi)^2 + (mean sin)^2, as vit-pytorch computes it."""
    batch, dim = x.shape[-2], x.shape[-1]
    projections = sigreg_directions(key, dim, num_proj, x.dtype)
    t = jnp.asarray(torch_linspace(0.0, 3.0, knots), x.dtype)
    phi = jnp.exp(-0.5 * jnp.square(t))
    x_t = jnp.einsum('...nd,dm->...nm', x, projections)[..., None] * t
    ecf_cos, ecf_sin = jnp.cos(x_t).mean(axis=-3), jnp.sin(x_t).mean(axis=-3)
    err = jnp.square(ecf_cos - phi) + jnp.square(ecf_sin)
    return jax.scipy.integrate.trapezoid(err * phi, t, axis=-1).mean() * batch * 2


# block causal mask: bidirectional within a frame, causal across frames, CLS attends to all


def block_causal_mask(coords, causal_dims=(0,)):
    """vit-pytorch's block-causal mask function (levjepa's `block_fn`, levjepa_nd's `dense_nd_mask`) over every
    (query, key) pair: `coords` (batch, n, ndim) are the tokens' integer positions, the class token's all -1; a query
    sees a key iff along each of `causal_dims` the query is the class token, or the key is no class token and not ahead
    of it. (batch, n, n) booleans, True where a query may see a key. Unlike vit_nd_masking's masks (vit_nd), no patch
    sees the class token, and the mask follows the rows' own tokens (after token dropping)."""
    mask = jnp.ones((coords.shape[0], coords.shape[1], coords.shape[1]), bool)
    for causal_dim in causal_dims:
        q, k = coords[:, :, None, causal_dim], coords[:, None, :, causal_dim]
        mask = mask & ((q == -1) | ((k >= 0) & (q >= k)))
    return mask


# uniform random token dropping (training only)


def drop_tokens(noise, drop_ratio: float, x, *aligned):
    """The class token and the `patches_kept(n, drop_ratio)` patch tokens of each row of `x` (batch, 1 + n, d) with
    the largest `noise` (batch, n), in descending order of it (torch.topk's); each of `aligned` (batch or 1, 1 + n,
    ...) is gathered alike (coordinates, frame indices). Returns (x, *aligned)."""
    batch, total = noise.shape
    _, indices = jax.lax.top_k(noise, patches_kept(total, drop_ratio))
    indices = jnp.concatenate((jnp.zeros((batch, 1), indices.dtype), indices + 1), axis=1)

    def gather(t):
        t = jnp.broadcast_to(t, (batch, *t.shape[1:]))
        return jnp.take_along_axis(t, indices.reshape(indices.shape + (1,) * (t.ndim - 2)), axis=1)

    return tuple(gather(t) for t in (x, *aligned))


def draw_token_noise(module: nn.Module, batch: int, num_patches: int):
    """The uniform noise (batch, num_patches) whose largest `patches_kept` keep the patch tokens of an encoder's
    training call (vit-pytorch's `torch.rand(batch, n)`), from `module`'s 'token_dropping' stream."""
    return jax.random.uniform(module.make_rng(TOKEN_DROPPING), (batch, num_patches), jnp.float32)


# factorized rotary (3d for video, any number of coordinates for levjepa_nd)


class VideoRotaryEmbedding(nn.Module):
    """The (sin, cos) tables (batch, n, 2 * ndim * num_freq) of tokens at `coords` (batch, n, ndim) in [-1, 1]:
    angles `coords * scales * pi` per coordinate and frequency, `scales = linspace(1, max_freq / 2, num_freq)`
    (num_freq = dim // (2 * ndim)) the persistent buffer `scales`, each angle repeated for the two features of its
    pair. levjepa_nd's NDRotaryEmbedding is this on `ndim` coordinates."""

    dim: int
    max_freq: float = 10.0
    ndim: int = 3

    @nn.compact
    def __call__(self, coords):
        num_freq = (self.dim - self.dim % (2 * self.ndim)) // (2 * self.ndim)
        scales = self.variable('buffers', 'scales',
                               lambda: jnp.asarray(torch_linspace(1.0, self.max_freq / 2, num_freq))).value
        theta = coords[..., None] * scales.astype(coords.dtype) * math.pi
        theta = rearrange(theta, 'b n i j -> b n (i j)')
        return interleave_pairs(jnp.sin(theta)), interleave_pairs(jnp.cos(theta))


# attention


class Attention(nn.Module):
    dim: int
    heads: int = 8
    dim_head: int = 64
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, sin, cos, mask=None, train: bool = False):
        inner_dim = self.dim_head * self.heads
        x = TorchRMSNorm(name='norm')(x)
        qkv = jnp.split(Linear(inner_dim * 3, use_bias=False, name='to_qkv')(x), 3, axis=-1)
        q, k, v = (rearrange(t, 'b n (h d) -> b h n d', h=self.heads) for t in qkv)
        sin, cos = sin[:, None], cos[:, None]
        q, k = apply_rotary(q, sin, cos), apply_rotary(k, sin, cos)
        attn = attention_weights(q, k, self.dim_head**-0.5, None if mask is None else mask[:, None])
        out = rearrange(jnp.einsum('bhij,bhjd->bhid', attn, v), 'b h n d -> b n (h d)')
        out = Linear(self.dim, use_bias=False, name='to_out_0')(out)
        return nn.Dropout(self.dropout, deterministic=not train)(out)


class FeedForward(vit.FeedForward):
    """vit.FeedForward with torch's nn.RMSNorm as its pre-norm."""

    norm: Callable[..., nn.Module] = TorchRMSNorm


class Transformer(nn.Module):
    """vit-pytorch's `transformer.layers`: pre-RMSNorm rotary attention and feed-forward, each with its residual."""

    dim: int
    depth: int
    heads: int
    dim_head: int
    mlp_dim: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, sin, cos, mask=None, train: bool = False):
        for i in range(self.depth):
            x = Attention(self.dim, self.heads, self.dim_head, self.dropout, name=f'layers_{i}_0')(
                x, sin, cos, mask, train) + x
            x = FeedForward(self.dim, self.mlp_dim, self.dropout, name=f'layers_{i}_1')(x, train) + x
        return x


# video transformer encoder


def normalised_coords(grid_shape) -> np.ndarray:
    """(1 + prod(grid), ndim) float32 coordinates of a class token (zeros) and the cells of `grid_shape` in row-major
    order, each `(i / n - 0.5) * 2` in float32, as vit-pytorch divides its integer grid by a float32 tensor."""
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in grid_shape), indexing='ij'), axis=-1)
    grid = grid.reshape(-1, len(grid_shape))
    coords = (grid.astype(np.float32) / np.asarray(grid_shape, np.float32) - np.float32(0.5)) * np.float32(2)
    return np.concatenate((np.zeros((1, len(grid_shape)), np.float32), coords)).astype(np.float32)


class VideoTransformer(nn.Module):
    dim: int
    depth: int
    heads: int
    mlp_dim: int
    image_size: Any
    patch_size: Any
    frames: int
    channels: int = 3
    dim_head: int = 64
    dropout: float = 0.0
    emb_dropout: float = 0.0
    rotary_max_freq: float = 10.0
    block_causal: bool = True

    rng_streams = (TOKEN_DROPPING,)  # only with drop_ratio in training

    def __post_init__(self):
        check_keywords(self)
        (image_height, image_width), (patch_height, patch_width) = pair(self.image_size), pair(self.patch_size)
        if image_height % patch_height or image_width % patch_width:
            raise ValueError(f'Image dimensions must be divisible by the patch size: image_size={self.image_size}, '
                             f'patch_size={self.patch_size}')
        super().__post_init__()

    @nn.nowrap
    def token_noise(self, batch: int, num_patches: int):
        """The uniform noise (batch, num_patches) whose largest `patches_kept` keep the patch tokens of a training
        call (vit-pytorch's `torch.rand(batch, n)`), from the 'token_dropping' stream: no parameters needed."""
        return draw_token_noise(self, batch, num_patches)

    def check_input(self, video):
        """Videos (batch, frames, height, width, channels) whose sides are multiples of the patch's."""
        check_floating_input(self, 'video', video, 'videos')
        patch_height, patch_width = pair(self.patch_size)
        if video.ndim != 5 or video.shape[-1] != self.channels:
            raise ValueError(f'{type(self).__name__} takes videos (batch, frames, height, width, '
                             f'channels={self.channels}) (channels-last), got shape {video.shape}')
        if video.shape[2] % patch_height or video.shape[3] % patch_width:
            raise ValueError(f'video frames of {video.shape[2]} x {video.shape[3]} are not divisible by the patch size '
                             f'{patch_height} x {patch_width}')

    @nn.compact
    def __call__(self, video, drop_ratio: float | None = None, train: bool = False):
        self.check_input(video)
        batch, frames, height, width, _ = video.shape
        patch_height, patch_width = pair(self.patch_size)
        grid = (frames, height // patch_height, width // patch_width)

        # per-frame tokenization: (c p1 p2) patches, tokens in (frame, row, column) order

        x = rearrange(video, 'b f (h p1) (w p2) c -> b (f h w) (c p1 p2)', p1=patch_height, p2=patch_width)
        x = LayerNorm(use_bias=False, name='to_patch_embedding_1')(x)
        x = Linear(self.dim, name='to_patch_embedding_2')(x)
        x = LayerNorm(use_bias=False, name='to_patch_embedding_3')(x)
        x = nn.Dropout(self.emb_dropout, deterministic=not train)(x)

        # factorized [frame, height, width] coordinates in [-1, 1), the class token's zero; its frame index -1

        coords = jnp.asarray(normalised_coords(grid))[None]
        frame_idx = jnp.asarray(np.concatenate(([-1], np.repeat(np.arange(frames), grid[1] * grid[2]))))[None]

        cls_token = self.param('cls_token', randn, (self.dim,))
        x = jnp.concatenate((jnp.broadcast_to(cls_token.astype(x.dtype), (batch, 1, self.dim)), x), axis=1)

        # uniform random token dropping (training only), the class token never dropped

        if exists(drop_ratio) and train:
            noise = self.token_noise(batch, x.shape[1] - 1)
            x, coords, frame_idx = drop_tokens(noise, drop_ratio, x, coords, frame_idx)

        mask = block_causal_mask(frame_idx[..., None]) if self.block_causal else None
        sin, cos = VideoRotaryEmbedding(self.dim_head, max_freq=self.rotary_max_freq, name='rotary_emb')(coords)
        x = Transformer(self.dim, self.depth, self.heads, self.dim_head, self.mlp_dim, self.dropout,
                        name='transformer')(x, sin, cos, mask, train)
        return TorchRMSNorm(name='norm')(x)


# byol works even without batch statistics - richemond et al. https://arxiv.org/abs/2010.10241


class WeightStandardizedLinear(nn.Module):
    """A Linear whose raw `weight` (dim_out, dim), drawn as randn / sqrt(dim), is standardised per output row (mean 0,
    biased variance clamped below at `eps`) in every call."""

    dim: int
    dim_out: int
    bias: bool = True
    eps: float = 1e-4

    @nn.compact
    def __call__(self, x):
        weight = self.param('weight', lambda key, shape: jax.random.normal(key, shape) * self.dim**-0.5,
                            (self.dim_out, self.dim))
        mean = weight.mean(axis=-1, keepdims=True)
        var = jnp.square(weight - mean).mean(axis=-1, keepdims=True)
        weight = (weight - mean) / jnp.sqrt(jnp.maximum(var, self.eps))
        y = jnp.dot(x, weight.T.astype(x.dtype))
        if self.bias:
            y = y + self.param('bias', nn.initializers.zeros, (self.dim_out,)).astype(y.dtype)
        return y


# the projector and the losses (shared with levjepa_nd's LeVJEPAND)


def projector_layers(module) -> tuple[nn.Module, nn.Module, nn.Module]:
    """The projector's layers for a learner's setup (`projector.0`, `.1`, `.3`; `.2` is the GELU): Linear or
    WeightStandardizedLinear from the encoder's `dim` to `projection_hidden`, the norm (`norm_fn(projection_hidden)`,
    else BatchNorm1d with `use_batch_norm`, else torch's RMSNorm), a Linear to `num_classes_K`."""
    if module.use_weight_standardization:
        linear = WeightStandardizedLinear(module.encoder.dim, module.projection_hidden)
    else:
        linear = Linear(module.projection_hidden)
    if exists(module.norm_fn):
        norm = module.norm_fn(module.projection_hidden)
    else:
        norm = BatchNorm() if module.use_batch_norm else TorchRMSNorm()
    return linear, norm, Linear(module.num_classes_K)


def project(module, x, train: bool):
    """The learner's projector on the class tokens x (n, dim): BatchNorm with batch statistics in training."""
    x = module.projector_0(x)
    x = call_plugged_in(module.projector_1, x, train)
    return module.projector_3(gelu(x))


LeVJEPALosses = namedtuple('LeVJEPALosses', ['invariance_loss', 'sigreg_loss'])


def weighted_losses(module, projections, batch: int, num_views: int):
    """(invariance_loss, sigreg_loss), weighted: vit-pytorch's regrouping `'(b v) d -> b v d'` of the projections
    (see the module docstring), the mean squared distance of each group's members from its first, and SIGReg over the
    groups' members as batches, its directions from the learner's 'sigreg' stream."""
    projection = rearrange(projections, '(b v) d -> b v d', b=batch, v=num_views)
    invariance_loss = jnp.mean(jnp.square(projection - projection[:, :1]))
    sigreg = sigreg_loss(rearrange(projection, 'b v d -> v b d'), module.make_rng(SIGREG),
                         **dict(module.sigreg_loss_kwargs))
    return invariance_loss * module.invariance_loss_weight, sigreg * module.sigreg_loss_weight


def check_learner_config(module):
    """What LeVJEPA and LeVJEPAND share: the projector's size, the token drop ratio, SIGReg's keywords."""
    name = type(module).__name__
    if not isinstance(module.projection_hidden, int) or isinstance(module.projection_hidden, bool) \
            or module.projection_hidden < 1:
        raise ValueError(f'{name}: projection_hidden={module.projection_hidden!r} must be a positive integer')
    if exists(module.drop_ratio) and not 0 <= module.drop_ratio <= 1:
        raise ValueError(f'{name}: drop_ratio={module.drop_ratio!r} must be None or in [0, 1]')
    kwargs = dict(module.sigreg_loss_kwargs)
    for key, value in kwargs.items():
        if key not in ('num_proj', 'knots'):
            raise ValueError(f"{name}: sigreg_loss_kwargs has {key!r}; sigreg_loss takes 'num_proj' and 'knots'")
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f'{name}: sigreg_loss_kwargs[{key!r}]={value!r} must be a positive integer')
    if exists(module.norm_fn) and not callable(module.norm_fn):
        raise ValueError(f'{name}: norm_fn={module.norm_fn!r} must be a callable giving a Flax module for '
                         'projection_hidden features')


def sigreg_num_proj(module) -> int:
    return dict(module.sigreg_loss_kwargs).get('num_proj', 1024)


# augmentation utils: per video, channels-last (batch, frames, height, width, channels)


def _per_frame(values, frames: int):
    """Per-video values (count, ...) repeated for each of a video's `frames` frames: (count * frames, ...)."""
    return jnp.repeat(values, frames, axis=0)


def check_normalization(module, channels: int):
    """torchvision's Normalize subtracts in place: its mean and std need 1 or `channels` entries."""
    for key in ('mean', 'std'):
        value = tuple(getattr(module, key))
        if len(value) not in (1, channels):
            raise ValueError(f'{type(module).__name__}: {key}={value} has {len(value)} entries for videos of '
                             f'{channels} channels (torchvision normalises in place: 1 or channels entries)')


def normalize(videos, mean, std):
    return (videos - jnp.asarray(mean, videos.dtype)) / jnp.asarray(std, videos.dtype)


class NormalizeVideo(nn.Module):
    """torchvision's Normalize(mean, std) on every frame."""

    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD

    def __post_init__(self):
        if any(s == 0 for s in self.std):
            raise ValueError(f'{type(self).__name__}: std={tuple(self.std)} has a zero (torchvision divides by it)')
        super().__post_init__()

    def __call__(self, videos):
        check_normalization(self, videos.shape[-1])
        return normalize(videos, self.mean, self.std)


# ColorJitter(0.4, 0.4, 0.2, 0.1): torchvision's factor ranges for brightness, contrast, saturation, hue
COLOR_JITTER_RANGES = ((0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1))
GAUSSIAN_BLUR = (9, (0.1, 2.0))  # GaussianBlur(9, (0.1, 2.0)): kernel size, sigma range


def photometric_draws(key, count: int) -> dict:
    """Everything PhotometricAugment draws for `count` videos, per video (one draw for all a video's frames), as
    torchvision's transforms draw it for a batch: `flip` (rand < 0.5), `jitter` (RandomApply's random() <= p: here
    uniform < p), the jitter's `order` (randperm(4): brightness, contrast, saturation, hue) and `factors` (uniform in
    COLOR_JITTER_RANGES), `grayscale` (rand < p), `blur` (uniform < p) and its `sigma` (uniform in (0.1, 2)). The
    probabilities are thresholds applied afterwards (`photometric_augment`), so the draws do not depend on them."""
    keys = jax.random.split(key, 8)
    uniform = lambda k, shape=(count,), low=0.0, high=1.0: jax.random.uniform(k, shape, jnp.float32, low, high)  # noqa
    low, high = (jnp.asarray(bounds, jnp.float32) for bounds in zip(*COLOR_JITTER_RANGES))
    return dict(
        flip=uniform(keys[0]),
        jitter=uniform(keys[1]),
        order=jax.vmap(lambda k: jax.random.permutation(k, 4))(jax.random.split(keys[2], count)).astype(jnp.int32),
        factors=low + (high - low) * uniform(keys[3], (count, 4)),
        grayscale=uniform(keys[4]),
        blur=uniform(keys[5]),
        sigma=uniform(keys[6], low=GAUSSIAN_BLUR[1][0], high=GAUSSIAN_BLUR[1][1]),
    )


def _adjust(frames, step: int, factor):
    """torchvision's adjustment `step` (0 brightness, 1 contrast, 2 saturation, 3 hue) of frames (n, h, w, c) with c
    1 or 3, per frame `factor` (n,): on one channel contrast blends with the frame's mean, saturation and hue leave it
    (torchvision matches PIL there)."""
    rgb = frames.shape[-1] == 3
    if step == 0:
        return adjust_brightness(frames, factor)
    if step == 1:
        if rgb:
            return adjust_contrast(frames, factor)
        mean = jnp.mean(frames, axis=(-3, -2, -1), keepdims=True)
        return _blend(frames, mean, factor.reshape(-1, 1, 1, 1))
    if not rgb:
        return frames
    return adjust_saturation(frames, factor) if step == 2 else adjust_hue(frames, factor)


def color_jitter(frames, order, factors):
    """torchvision's ColorJitter on frames (n, h, w, c) with per-frame `order` (n, 4) and `factors` (n, 4)."""
    for position in range(4):
        step = order[:, position]
        candidates = jnp.stack([_adjust(frames, s, factors[:, s]) for s in range(4)])  # (4, n, h, w, c)
        frames = jnp.take_along_axis(candidates, step[None, :, None, None, None], axis=0)[0]
    return frames


def photometric_augment(videos, draws: dict, color_jitter_prob: float = 0.8, grayscale_prob: float = 0.2,
                        gaussian_blur_prob: float = 0.0, hflip: bool = True, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """vit-pytorch's PhotometricAugment on videos (count, frames, h, w, c) with `photometric_draws(key, count)`:
    horizontal flip (p 0.5, if `hflip`), ColorJitter(0.4, 0.4, 0.2, 0.1) with `color_jitter_prob`, grayscale with
    `grayscale_prob`, GaussianBlur(9, (0.1, 2)) with `gaussian_blur_prob`, then Normalize(mean, std)."""
    count, frames = videos.shape[:2]
    select = lambda chosen, a, b: jnp.where(chosen.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)  # noqa: E731
    x = rearrange(videos, 'b t h w c -> (b t) h w c')
    per_frame = {name: _per_frame(value, frames) for name, value in draws.items()}
    if hflip:
        x = select(per_frame['flip'] < 0.5, x[:, :, ::-1], x)
    if color_jitter_prob > 0:
        x = select(per_frame['jitter'] < color_jitter_prob, color_jitter(x, per_frame['order'], per_frame['factors']),
                   x)
    if grayscale_prob > 0 and x.shape[-1] == 3:  # one channel: torchvision's grayscale is the identity
        x = select(per_frame['grayscale'] < grayscale_prob, jnp.broadcast_to(rgb_to_grayscale(x), x.shape), x)
    if gaussian_blur_prob > 0:
        x = select(per_frame['blur'] < gaussian_blur_prob, gaussian_blur(x, per_frame['sigma'], GAUSSIAN_BLUR[0]), x)
    x = normalize(x, mean, std)
    return rearrange(x, '(b t) h w c -> b t h w c', b=count)


class PhotometricAugment(nn.Module):
    """vit-pytorch's PhotometricAugment (`photometric_augment`), per video, drawing from the 'augment' stream."""

    color_jitter_prob: float = 0.8
    grayscale_prob: float = 0.2
    gaussian_blur_prob: float = 0.0
    hflip: bool = True
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD

    def __post_init__(self):
        for key in ('color_jitter_prob', 'grayscale_prob', 'gaussian_blur_prob'):
            value = getattr(self, key)
            if not 0 <= value <= 1:
                raise ValueError(f'{type(self).__name__}: {key}={value!r} must be a probability in [0, 1]')
        if any(s == 0 for s in self.std):
            raise ValueError(f'{type(self).__name__}: std={tuple(self.std)} has a zero (torchvision divides by it)')
        super().__post_init__()

    @nn.nowrap
    def draws(self, count: int) -> dict:
        """`photometric_draws` for `count` videos from the 'augment' stream (what a call on them draws)."""
        return photometric_draws(self.make_rng(AUGMENT), count)

    def __call__(self, videos):
        channels, side = videos.shape[-1], min(videos.shape[2:4])
        if (self.color_jitter_prob > 0 or self.grayscale_prob > 0) and channels not in (1, 3):
            raise ValueError(f'{type(self).__name__}: colour jitter and grayscale take 1 or 3 channels (torchvision), '
                             f'got videos of shape {videos.shape}')
        if self.gaussian_blur_prob > 0 and side <= GAUSSIAN_BLUR[0] // 2:
            raise ValueError(f'{type(self).__name__}: the 9 x 9 Gaussian blur pads by reflection by 4, which '
                             f'torchvision cannot do on frames of {videos.shape[2]} x {videos.shape[3]}')
        check_normalization(self, channels)
        return photometric_augment(videos, self.draws(videos.shape[0]), self.color_jitter_prob, self.grayscale_prob,
                                   self.gaussian_blur_prob, self.hflip, self.mean, self.std)


# random resized crops of whole clips, bicubic and antialiased


def _cubic(x, a: float = -0.5):
    """Keys' cubic convolution kernel with a = -0.5, torch's antialiasing bicubic filter."""
    x = jnp.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return jnp.where(x < 1, near, jnp.where(x < 2, far, 0.0))


def bicubic_resize_weights(start, length, in_size: int, out_size: int):
    """(B, out, in) weights of torch's antialiased bicubic interpolation (align_corners=False) of rows
    [start, start + length) to `out_size` rows, as `_upsample_bicubic2d_aa` computes them: the cubic kernel (support
    2, widened by the scale when shrinking) at `(row - center + 0.5) * invscale` over torch's window
    [trunc(center - support + 0.5), trunc(center + support + 0.5)) clipped to the crop, normalised to sum 1."""
    scale = (length / out_size).astype(jnp.float32)[:, None, None]
    support = jnp.where(scale >= 1.0, 2.0 * scale, 2.0)
    invscale = jnp.where(scale >= 1.0, 1.0 / scale, 1.0)
    center = scale * (jnp.arange(out_size, dtype=jnp.float32)[None, :, None] + 0.5)
    rows = jnp.arange(in_size)[None, None, :] - start[:, None, None]  # row index inside the crop
    low = jnp.maximum(jnp.trunc(center - support + 0.5), 0.0)
    high = jnp.minimum(jnp.trunc(center + support + 0.5), length[:, None, None].astype(jnp.float32))
    in_window = (rows >= low) & (rows < high)
    weights = jnp.where(in_window, _cubic((rows - center + 0.5) * invscale), 0.0)
    return weights / weights.sum(axis=-1, keepdims=True)


def sides(size) -> tuple:
    """A crop size as (height, width): vit-pytorch's `pair`, taking a list (from JSON) as a pair too."""
    return tuple(size) if isinstance(size, (tuple, list)) else (size, size)


def resized_crop_videos(videos, boxes, size):
    """Crop every frame of each video (count, frames, h, w, c) to its video's box (top, left, height, width) and
    resize it to `size` with torch's antialiased bicubic interpolation (torchvision's RandomResizedCrop on tensors)."""
    out_h, out_w = sides(size)
    boxes = jnp.asarray(boxes, jnp.int32)
    rows = bicubic_resize_weights(boxes[:, 0], boxes[:, 2], videos.shape[2], out_h).astype(videos.dtype)
    columns = bicubic_resize_weights(boxes[:, 1], boxes[:, 3], videos.shape[3], out_w).astype(videos.dtype)
    out = jnp.einsum('boh,bthwc->btowc', rows, videos)
    return jnp.einsum('bpw,btowc->btopc', columns, out)


class RandomVideoCrop(nn.Module):
    """vit-pytorch's RandomVideoCrop: a random resized crop of `scale` of the frame area with an aspect ratio in
    `ratio_range`, resized to `size`, one box per video from the 'crop' stream, the same for all its frames."""

    size: Any
    scale: tuple
    ratio_range: tuple = (0.75, 1.3333)

    @nn.nowrap
    def boxes(self, count: int, height: int, width: int):
        """(count, 4) int32 boxes (top, left, height, width): torchvision's RandomResizedCrop.get_params per video."""
        return random_resized_crop_boxes(self.make_rng(CROP), count, height, width, tuple(self.scale),
                                         tuple(self.ratio_range))

    def __call__(self, videos):
        return resized_crop_videos(videos, self.boxes(videos.shape[0], *videos.shape[2:4]), self.size)


# main class - LeVJEPA


def _check_range(name: str, key: str, value):
    """A (low, high) pair with 0 < low <= high."""
    if not isinstance(value, (tuple, list)) or len(value) != 2 or not 0 < value[0] <= value[1]:
        raise ValueError(f'{name}: {key}={value!r} must be a pair (low, high) with 0 < low <= high')


class LeVJEPA(nn.Module):
    encoder: nn.Module
    image_size: Any
    local_size: Any = 96
    num_local_views: int = 4
    num_classes_K: int = 256
    projection_hidden: int = 256
    local_crop_scale: tuple = (0.02, 0.4)
    global_crop_scale: tuple = (0.8, 1.0)
    drop_ratio: float | None = 0.95
    use_batch_norm: bool = True
    norm_fn: Callable | None = None
    use_weight_standardization: bool = False
    invariance_loss_weight: float = 1.0
    sigreg_loss_weight: float = 0.02
    sigreg_loss_kwargs: dict = dataclasses.field(default_factory=lambda: dict(num_proj=1024, knots=17))
    local_augment_fn: Callable | None = None
    global_augment_fn: Callable | None = None
    crop_ratio_range: tuple = (0.75, 1.3333)

    # what the trainer reads off an objective (vit_flax.training.objectives.Objective)
    encoder_keyword = 'encoder'
    encoder_path = ('encoder',)
    rng_streams = (CROP, AUGMENT, TOKEN_DROPPING, SIGREG)
    takes_labels = False

    def __post_init__(self):
        check_keywords(self)
        name = type(self).__name__
        for key in ('image_size', 'local_size'):
            value = getattr(self, key)
            if not all(isinstance(side, int) and not isinstance(side, bool) and side > 0 for side in sides(value)):
                raise ValueError(f'{name}: {key}={value!r} must be a positive int or a pair of them')
        if sides(self.local_size) != sides(self.image_size):
            raise ValueError(f'{name}: local_size={self.local_size!r} differs from image_size={self.image_size!r}: '
                             'vit-pytorch concatenates the global and local views along the batch, so they must have '
                             'one size')
        if not isinstance(self.num_local_views, int) or isinstance(self.num_local_views, bool) \
                or self.num_local_views < 1:
            raise ValueError(f'{name}: num_local_views={self.num_local_views!r} must be a positive integer')
        for key in ('local_crop_scale', 'global_crop_scale', 'crop_ratio_range'):
            _check_range(name, key, getattr(self, key))
        for key in ('local_augment_fn', 'global_augment_fn'):
            if getattr(self, key) is not None and not callable(getattr(self, key)):
                raise ValueError(f'{name}: {key}={getattr(self, key)!r} must be a callable or a Flax module')
        check_learner_config(self)
        super().__post_init__()

    def setup(self):
        # global view at full resolution, local views cropped + photometric
        self.global_crop = RandomVideoCrop(self.image_size, self.global_crop_scale, self.crop_ratio_range)
        self.local_crop = RandomVideoCrop(self.local_size, self.local_crop_scale, self.crop_ratio_range)
        if self.global_augment_fn is None:
            self.global_augment = NormalizeVideo()
        if self.local_augment_fn is None:
            self.local_augment = PhotometricAugment()
        # small projector, discarded after pretraining
        self.projector_0, self.projector_1, self.projector_3 = projector_layers(self)

    def _augments(self):
        """(global augmentation, local augmentation): the given functions, else the defaults."""
        return (self.global_augment_fn if exists(self.global_augment_fn) else self.global_augment,
                self.local_augment_fn if exists(self.local_augment_fn) else self.local_augment)

    def draws(self, video, train: bool = False) -> dict:
        """What a call on `video` (in mode `train`) draws with the same rngs, no parameters needed: the boxes
        `global_crop` and `local_crop` (per video, the local views video-major), the augmentations' draws where they
        have a `draws` method (`global_augment`, `local_augment`), the encoder's `token_noise` in training with a
        `drop_ratio`, and SIGReg's `sigreg` directions (num_classes_K, num_proj)."""
        batch, frames, height, width = video.shape[:4]
        count = batch * self.num_local_views
        out = dict(global_crop=self.global_crop.boxes(batch, height, width),
                   local_crop=self.local_crop.boxes(count, height, width))
        for key, augment, n in zip(('global_augment', 'local_augment'), self._augments(), (batch, count)):
            if hasattr(augment, 'draws'):
                out[key] = augment.draws(n)
        if train and exists(self.drop_ratio):
            (size_h, size_w), (patch_h, patch_w) = sides(self.image_size), pair(self.encoder.patch_size)
            num_patches = frames * (size_h // patch_h) * (size_w // patch_w)
            out['token_noise'] = self.encoder.token_noise(batch + count, num_patches)
        out['sigreg'] = sigreg_directions(self.make_rng(SIGREG), self.num_classes_K, sigreg_num_proj(self))
        return out

    def __call__(self, video, return_embedding: bool = False, return_loss_breakdown: bool = False,
                 train: bool = False):
        check_floating_input(self, 'video', video, 'videos')
        if video.ndim != 5:
            raise ValueError(f'{type(self).__name__} takes videos (batch, frames, height, width, channels) '
                             f'(channels-last), got shape {video.shape}')
        if return_embedding:
            return self.encoder(video, train=train)[:, 0]

        batch = video.shape[0]
        global_augment, local_augment = self._augments()

        global_view = global_augment(self.global_crop(video))

        local_views = repeat(video, 'b t h w c -> (b v) t h w c', v=self.num_local_views)
        local_views = local_augment(self.local_crop(local_views))

        views = jnp.concatenate((global_view, local_views.astype(global_view.dtype)), axis=0)
        tokens = self.encoder(views, drop_ratio=self.drop_ratio, train=train)
        projections = project(self, tokens[:, 0], train)

        invariance_loss, sigreg = weighted_losses(self, projections, batch, self.num_local_views + 1)
        total_loss = invariance_loss + sigreg
        if not return_loss_breakdown:
            return total_loss
        return total_loss, LeVJEPALosses(invariance_loss, sigreg)
