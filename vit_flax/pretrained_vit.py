"""A ViT in the layout the published checkpoints were trained in: timm's `VisionTransformer` (issue 20).

Not a vit-pytorch file: vit-pytorch's `ViT` cannot hold timm, big_vision or Hugging Face weights exactly (two
LayerNorms around its patch embedding, no query bias, LayerNorm eps 1e-5), so this family mirrors
`timm.models.vision_transformer.VisionTransformer` instead: its constructor keywords (the subset the common
checkpoints use) with timm's defaults, and its module tree, so that the converters' naming rule maps our variables
to timm's state-dict keys mechanically:

| timm state-dict key | Flax variable path |
|---|---|
| `patch_embed.proj.weight` (Conv, bias unless `pre_norm`) | `params/patch_embed/proj/kernel` (HWIO) |
| `cls_token`, `reg_token`, `pos_embed` (1, n, dim) | `params/cls_token`, `reg_token`, `pos_embed`, same shape |
| `norm_pre`, `norm`, `fc_norm` (LayerNorm eps 1e-6) | same names, `scale` / `bias` |
| `blocks.3.attn.qkv.weight` | `params/blocks_3/attn/qkv/kernel` (transposed) |
| `blocks.3.attn.q_norm.weight` (qk_norm) | `params/blocks_3/attn/q_norm/scale` |
| `blocks.3.ls1.gamma` (LayerScale, `init_values`) | `params/blocks_3/ls1/gamma` |
| `blocks.3.mlp.fc1.weight` | `params/blocks_3/mlp/fc1/kernel` |
| `attn_pool.latent`, `.q`, `.kv`, `.proj`, `.norm`, `.mlp.fc1` (MAP head) | `params/attn_pool/...` |
| `pre_logits.fc.weight` (`representation_size`) | `params/pre_logits/fc/kernel` |
| `head.weight` | `params/head/kernel` |

Input is channels-last `(B, H, W, C)` like the rest of vit-flax. The output is timm's `forward`: logits
`(B, num_classes)`, pooled features where `num_classes=0`, and every token where `global_pool=''`.

`dynamic_img_size=True` takes any image whose sides are whole patches, resampling the position embedding to its grid
at every call as timm does (bicubic with antialiasing, `resample_abs_pos_embed`; shapes are static under jit, so the
resampling weights are constants of the program).

Left out (timm has them; no checkpoint family issue 20 names needs them): `dynamic_img_pad`, 'avgmax' / 'max' / 'prr'
pooling, `pos_embed='none'`, `proj_bias=False`, `scale_attn_norm` / `scale_mlp_norm`, patch dropout, stochastic
depth and dropout (forward in eval mode only).

`representation_size` is the pre-logits layer (Dense + tanh after pooling) of the original ViT's ImageNet-21k
checkpoints and of Hugging Face's `ViTModel` pooler. timm 1.0.31 dropped it (its loaders discard big_vision's
`pre_logits`), so a model with one holds those checkpoints exactly but cannot be exported to timm; its keys are
timm's former `pre_logits.fc.*`.

JAX-only keywords, as on vit.ViT (vit_flax/scan.py): `scan_layers=True` runs the blocks as one `nn.scan`, their
parameters stacked under `params/blocks_scan/...` (exported as timm's `blocks.{i}....`); `remat_policy` names a
`jax.checkpoint_policies` policy for each block, scanned or not; `attention_impl` as in layers.py.

Initialisers follow timm's default `weight_init=''`: Linear weights truncated normal (std 0.02, bounds +-2) with
zero biases, the patch Conv torch's default, `pos_embed` truncated normal 0.02, class and register tokens
normal(1e-6), LayerScale `init_values`, the MAP latent truncated normal (std latent_dim ** -0.5).
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_flax.layers import (
    Conv,
    LayerNorm,
    Linear,
    check_attention_impl,
    check_floating_input,
    check_keywords,
    gelu,
    gelu_tanh,
    multi_head_attention,
    pair,
    residual_boundary,
    trunc_normal,
)
from vit_flax.scan import check_remat_policy, layer_scan, remat, scanned_name

GLOBAL_POOLS = ('token', 'avg', 'map', '')
ACT_LAYERS = ('gelu', 'gelu_tanh')  # timm's names: nn.GELU() and nn.GELU(approximate='tanh')


def _activation(act_layer: str):
    return gelu if act_layer == 'gelu' else gelu_tanh


def _timm_linear(features: int, use_bias: bool = True, name: str | None = None) -> Linear:
    # timm's init_weights_vit_timm: trunc_normal_(std=.02) weights, zero biases
    return Linear(features, use_bias=use_bias, kernel_init=trunc_normal(0.02), bias_init=nn.initializers.zeros,
                  name=name)


class PatchEmbed(nn.Module):
    """timm's PatchEmbed: a Conv with stride = kernel = patch size, flattened to (B, h * w, dim)."""

    embed_dim: int
    patch_size: tuple[int, int]
    bias: bool = True

    @nn.compact
    def __call__(self, x):
        x = Conv(self.embed_dim, self.patch_size, stride=self.patch_size, use_bias=self.bias, name='proj')(x)
        return x.reshape(x.shape[0], -1, x.shape[-1])


class LayerScale(nn.Module):
    """timm's LayerScale: x * gamma, gamma a parameter named `gamma` (not `scale`, which Flax norms own)."""

    init_values: float

    @nn.compact
    def __call__(self, x):
        gamma = self.param('gamma', nn.initializers.constant(self.init_values), (x.shape[-1],))
        return x * gamma.astype(x.dtype)


class Mlp(nn.Module):
    """timm's Mlp: fc1, activation, fc2."""

    hidden_features: int
    out_features: int
    act_layer: str = 'gelu'

    @nn.compact
    def __call__(self, x):
        x = _activation(self.act_layer)(_timm_linear(self.hidden_features, name='fc1')(x))
        return _timm_linear(self.out_features, name='fc2')(x)


def _per_head_norm(norm: nn.Module, t, heads: int):
    # timm normalises q and k over head_dim, per head: (b, n, h * d) -> (b, n, h, d) -> back
    b, n, _ = t.shape
    return norm(t.reshape(b, n, heads, -1)).reshape(b, n, -1)


class Attention(nn.Module):
    """timm's Attention: one `qkv` Linear laid out (3, heads, head_dim), optional per-head q / k LayerNorm, `proj`."""

    dim: int
    num_heads: int
    qkv_bias: bool = False
    qk_norm: bool = False
    norm_eps: float = 1e-6
    attention_impl: str = 'explicit'

    @nn.compact
    def __call__(self, x):
        q, k, v = jnp.split(_timm_linear(3 * self.dim, use_bias=self.qkv_bias, name='qkv')(x), 3, axis=-1)
        if self.qk_norm:
            q = _per_head_norm(LayerNorm(self.norm_eps, name='q_norm'), q, self.num_heads)
            k = _per_head_norm(LayerNorm(self.norm_eps, name='k_norm'), k, self.num_heads)
        scale = (self.dim // self.num_heads) ** -0.5
        x = multi_head_attention(self, q, k, v, self.num_heads, scale, self.attention_impl)
        return _timm_linear(self.dim, name='proj')(x)


class Block(nn.Module):
    """timm's pre-norm Block: x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x)))."""

    dim: int
    num_heads: int
    mlp_ratio: float = 4.0
    qkv_bias: bool = False
    qk_norm: bool = False
    init_values: float | None = None
    act_layer: str = 'gelu'
    norm_eps: float = 1e-6
    attention_impl: str = 'explicit'

    @nn.compact
    def __call__(self, x):
        # timm builds LayerScale only for a truthy init_values (0 and None both mean none)
        ls1 = LayerScale(self.init_values, name='ls1') if self.init_values else (lambda t: t)
        ls2 = LayerScale(self.init_values, name='ls2') if self.init_values else (lambda t: t)
        attn = Attention(self.dim, self.num_heads, self.qkv_bias, self.qk_norm, self.norm_eps, self.attention_impl,
                         name='attn')
        x = x + ls1(attn(LayerNorm(self.norm_eps, name='norm1')(x)))
        mlp = Mlp(int(self.dim * self.mlp_ratio), self.dim, self.act_layer, name='mlp')
        return x + ls2(mlp(LayerNorm(self.norm_eps, name='norm2')(x)))


class ScannedBlock(Block):
    """A Block as the body of the layer scan: nn.scan's (carry, nothing per layer)."""

    def __call__(self, x):
        return super().__call__(x), None


class AttentionPoolLatent(nn.Module):
    """timm's AttentionPoolLatent as VisionTransformer builds it for `global_pool='map'` (SigLIP): one learned latent
    query attends over the tokens (`q`, `kv`), then `proj`, a residual Mlp after `norm`; the latent's output."""

    dim: int
    num_heads: int
    mlp_ratio: float = 4.0
    act_layer: str = 'gelu'
    norm_eps: float = 1e-6
    attention_impl: str = 'explicit'

    @nn.compact
    def __call__(self, x):
        latent = self.param('latent', trunc_normal(self.dim ** -0.5), (1, 1, self.dim))
        q = _timm_linear(self.dim, name='q')(jnp.broadcast_to(latent.astype(x.dtype), (x.shape[0], 1, self.dim)))
        k, v = jnp.split(_timm_linear(2 * self.dim, name='kv')(x), 2, axis=-1)
        scale = (self.dim // self.num_heads) ** -0.5
        x = _timm_linear(self.dim, name='proj')(multi_head_attention(self, q, k, v, self.num_heads, scale,
                                                                     self.attention_impl))
        mlp = Mlp(int(self.dim * self.mlp_ratio), self.dim, self.act_layer, name='mlp')
        x = x + mlp(LayerNorm(self.norm_eps, name='norm')(x))
        return x[:, 0]  # timm's pool_type 'token': the (only) latent


class PreLogits(nn.Module):
    """The original ViT's representation layer (timm's former `pre_logits`, Hugging Face's pooler): tanh(fc(x))."""

    features: int

    @nn.compact
    def __call__(self, x):
        return jnp.tanh(_timm_linear(self.features, name='fc')(x))


class VisionTransformer(nn.Module):
    """timm's VisionTransformer, keyword for keyword (see the module docstring for the subset and the layout).

    `act_layer` is timm's string name ('gelu' or 'gelu_tanh'); `norm_eps` is the eps of every LayerNorm (timm's
    `partial(LayerNorm, eps=1e-6)` default; a JAX-side keyword, as timm takes a norm class instead). `fc_norm=None`
    means timm's default: a norm after 'avg' pooling instead of before pooling.
    """

    img_size: int | Sequence[int] = 224
    patch_size: int | Sequence[int] = 16
    in_chans: int = 3
    num_classes: int = 1000
    global_pool: str = 'token'
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    qk_norm: bool = False
    init_values: float | None = None
    class_token: bool = True
    no_embed_class: bool = False
    reg_tokens: int = 0
    pre_norm: bool = False
    final_norm: bool = True
    fc_norm: bool | None = None
    representation_size: int | None = None
    act_layer: str = 'gelu'
    norm_eps: float = 1e-6
    dynamic_img_size: bool = False
    scan_layers: bool = False  # JAX-only, see the module docstring
    remat_policy: str | None = None  # JAX-only
    attention_impl: str = 'explicit'  # JAX-only

    def __post_init__(self):
        check_keywords(self)
        name = type(self).__name__
        if self.global_pool not in GLOBAL_POOLS:
            raise ValueError(f'{name}: global_pool={self.global_pool!r} must be one of {GLOBAL_POOLS}')
        if self.global_pool == 'token' and not self.class_token:
            raise ValueError(f"{name}: global_pool='token' needs the class token (class_token=True)")
        if self.act_layer not in ACT_LAYERS:
            raise ValueError(f'{name}: act_layer={self.act_layer!r} must be one of {ACT_LAYERS}')
        if self.embed_dim % self.num_heads:
            raise ValueError(f'{name}: embed_dim={self.embed_dim} must be divisible by num_heads={self.num_heads}')
        if any(i % p for i, p in zip(pair(self.img_size), pair(self.patch_size))):
            raise ValueError(f'{name}: img_size={self.img_size} must be divisible by patch_size={self.patch_size}')
        check_attention_impl(self.attention_impl)
        check_remat_policy(self.remat_policy)
        super().__post_init__()

    @property
    def grid_size(self) -> tuple[int, int]:
        (h, w), (ph, pw) = pair(self.img_size), pair(self.patch_size)
        return h // ph, w // pw

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.class_token) + self.reg_tokens

    @property
    def uses_fc_norm(self) -> bool:
        return self.global_pool == 'avg' if self.fc_norm is None else self.fc_norm

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_floating_input(self, 'x', x)
        if x.ndim != 4 or x.shape[-1] != self.in_chans:
            raise ValueError(f'{type(self).__name__} expects images (B, H, W, {self.in_chans}), got shape {x.shape}')
        if self.dynamic_img_size:
            if any(side % p for side, p in zip(x.shape[1:3], pair(self.patch_size))):
                raise ValueError(f'{type(self).__name__}: input of size {tuple(x.shape[1:3])} is not a whole number '
                                 f'of {tuple(pair(self.patch_size))} patches')
        elif tuple(x.shape[1:3]) != tuple(pair(self.img_size)):
            # timm's PatchEmbed is strict about the size without dynamic_img_size; resample_abs_pos_embed and a
            # model built for the new size take another resolution
            raise ValueError(f'{type(self).__name__}: input of size {tuple(x.shape[1:3])} is not '
                             f'img_size={tuple(pair(self.img_size))}')
        dim, batch = self.embed_dim, x.shape[0]
        grid = tuple(side // p for side, p in zip(x.shape[1:3], pair(self.patch_size)))
        # a pre-norm ViT (CLIP) has no patch embedding bias, as in timm
        x = PatchEmbed(dim, tuple(pair(self.patch_size)), bias=not self.pre_norm, name='patch_embed')(x)

        prefix = []
        if self.class_token:
            cls_token = self.param('cls_token', nn.initializers.normal(1e-6), (1, 1, dim))
            prefix.append(jnp.broadcast_to(cls_token.astype(x.dtype), (batch, 1, dim)))
        if self.reg_tokens:
            reg_token = self.param('reg_token', nn.initializers.normal(1e-6), (1, self.reg_tokens, dim))
            prefix.append(jnp.broadcast_to(reg_token.astype(x.dtype), (batch, self.reg_tokens, dim)))
        num_patches = math.prod(self.grid_size)
        embed_len = num_patches if self.no_embed_class else num_patches + self.num_prefix_tokens
        pos_embed = self.param('pos_embed', trunc_normal(0.02), (1, embed_len, dim))
        if grid != self.grid_size:  # dynamic_img_size: timm resamples in float32, then casts
            pos_embed = resample_abs_pos_embed(pos_embed, grid, self.grid_size,
                                               0 if self.no_embed_class else self.num_prefix_tokens)
        pos_embed = pos_embed.astype(x.dtype)
        if self.no_embed_class:
            # DeiT-3, big_vision: the position embedding covers the patches only; add, then prepend the tokens
            x = jnp.concatenate([*prefix, x + pos_embed], axis=1)
        else:
            # original ViT, DeiT: one row per token, class and register tokens included
            x = jnp.concatenate([*prefix, x], axis=1) + pos_embed
        if self.pre_norm:
            x = LayerNorm(self.norm_eps, name='norm_pre')(x)

        block_keywords = (dim, self.num_heads, self.mlp_ratio, self.qkv_bias, self.qk_norm, self.init_values,
                          self.act_layer, self.norm_eps, self.attention_impl)
        if self.scan_layers:
            blocks = layer_scan(ScannedBlock, self.depth, self.remat_policy)
            x, _ = blocks(*block_keywords, name=scanned_name('blocks'))(x)
        else:
            block = remat(Block, self.remat_policy)
            for i in range(self.depth):
                x = block(*block_keywords, name=f'blocks_{i}')(x)
                x = residual_boundary(x)  # linear, not quadratic, backward work on CPU (layers.py)
        if self.final_norm and not self.uses_fc_norm:
            x = LayerNorm(self.norm_eps, name='norm')(x)

        if self.global_pool == 'map':
            x = AttentionPoolLatent(dim, self.num_heads, self.mlp_ratio, self.act_layer, self.norm_eps,
                                    self.attention_impl, name='attn_pool')(x[:, self.num_prefix_tokens:])
        elif self.global_pool == 'token':
            x = x[:, 0]
        elif self.global_pool == 'avg':
            x = jnp.mean(x[:, self.num_prefix_tokens:], axis=1)
        if self.final_norm and self.uses_fc_norm:
            x = LayerNorm(self.norm_eps, name='fc_norm')(x)
        if self.representation_size:
            x = PreLogits(self.representation_size, name='pre_logits')(x)
        if self.num_classes > 0:
            x = _timm_linear(self.num_classes, name='head')(x)
        return x


# position embedding resampling, as timm's resample_abs_pos_embed


def _cubic(t, a: float):
    """The cubic convolution kernel with parameter a (torch: -0.75 plain bicubic, -0.5 antialiased, as PIL)."""
    t = np.abs(t)
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def _bicubic_matrix(n_in: int, n_out: int, antialias: bool) -> np.ndarray:
    """(n_out, n_in) float64 weights of torch's F.interpolate(mode='bicubic', align_corners=False) along one axis.

    Plain: torch's upsample_bicubic2d, taps floor(src) - 1 ... + 2 of the source coordinate (dst + 0.5) * scale - 0.5,
    indices clamped to the border, a = -0.75. Antialiased: torch's _upsample_bicubic2d_aa, PIL's resampling: a = -0.5,
    the kernel stretched by the scale when downsampling, taps cut at the border and the weights renormalised."""
    scale = n_in / n_out
    weights = np.zeros((n_out, n_in))
    for i in range(n_out):
        if antialias:
            support = 2.0 * max(scale, 1.0)
            center = scale * (i + 0.5)
            lo = max(int(center - support + 0.5), 0)
            hi = min(int(center + support + 0.5), n_in)
            taps = np.arange(lo, hi)
            w = _cubic((taps - center + 0.5) / max(scale, 1.0), -0.5)
            weights[i, taps] += w / w.sum()
        else:
            src = (i + 0.5) * scale - 0.5
            floor = math.floor(src)
            t = src - floor
            for offset in range(-1, 3):
                weights[i, min(max(floor + offset, 0), n_in - 1)] += _cubic(np.array(t - offset), -0.75)
    return weights


def resample_abs_pos_embed(posemb, new_size: Sequence[int], old_size: Sequence[int] | None = None,
                           num_prefix_tokens: int = 1, antialias: bool = True):
    """timm's `resample_abs_pos_embed` (bicubic; its default antialias=True; timm's checkpoint loader passes its
    own `antialias`): a (1, prefix + h * w, dim) position embedding resampled to the grid `new_size`, the prefix rows
    (class, register tokens) kept. `old_size` None means a square grid. numpy or JAX arrays (traceable); the
    weights are float64 matrices applied in float32 at least, as timm interpolates in float32."""
    return _resample_grid(posemb, new_size, old_size, num_prefix_tokens,
                          lambda n_in, n_out: _bicubic_matrix(n_in, n_out, antialias))


def _linear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float64 weights of scipy.ndimage.zoom(order=1) along one axis: linear interpolation with the
    corners aligned (output i samples the input at i * (n_in - 1) / (n_out - 1))."""
    weights = np.zeros((n_out, n_in))
    scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    for i in range(n_out):
        src = i * scale
        lo = min(int(math.floor(src)), n_in - 1)
        t = src - lo
        weights[i, lo] += 1 - t
        if t:
            weights[i, lo + 1] += t
    return weights


def resample_posemb_big_vision(posemb, new_size: Sequence[int], old_size: Sequence[int] | None = None,
                               num_prefix_tokens: int = 0):
    """big_vision's `resample_posemb` ("high-res fine-tuning"): the grid zoomed as scipy.ndimage.zoom(order=1) does,
    linear interpolation with aligned corners. The prefix rows are kept (big_vision's own embeddings have none);
    `old_size` None means a square grid."""
    return _resample_grid(posemb, new_size, old_size, num_prefix_tokens, _linear_matrix)


def _resample_grid(posemb, new_size, old_size, num_prefix_tokens: int, axis_matrix):
    """`posemb` (1, prefix + h * w, dim) with its grid resampled to `new_size` by the separable (n_out, n_in)
    weights `axis_matrix(n_in, n_out)` per axis, the prefix rows kept; numpy or JAX arrays (traceable), computed in
    the embedding's dtype at least float32."""
    new_size = tuple(new_size)
    n_tokens = posemb.shape[1]
    if old_size is None:
        side = int(math.sqrt(n_tokens - num_prefix_tokens))
        old_size = (side, side)
    old_size = tuple(old_size)
    if old_size[0] * old_size[1] + num_prefix_tokens != n_tokens:
        raise ValueError(f'position embedding of {n_tokens} rows is not {num_prefix_tokens} prefix rows and a '
                         f'{old_size[0]}x{old_size[1]} grid')
    if old_size == new_size:
        return posemb  # timm and big_vision return their input unchanged here too
    xp = jnp if isinstance(posemb, jax.Array) else np
    prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    compute = np.promote_types(grid.dtype, np.float32)
    grid = grid.reshape(old_size[0], old_size[1], -1).astype(compute)
    rows = axis_matrix(old_size[0], new_size[0]).astype(compute)
    cols = axis_matrix(old_size[1], new_size[1]).astype(compute)
    grid = xp.einsum('ih,jw,hwc->ijc', rows, cols, grid)
    grid = grid.reshape(1, new_size[0] * new_size[1], -1).astype(posemb.dtype)
    return xp.concatenate([prefix, grid], axis=1)
