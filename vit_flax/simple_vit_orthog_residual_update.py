"""SimpleViT with orthogonal residual updates ("Revisiting Residual Connections: Orthogonal Updates for Stable and
Efficient Deep Networks", Oh et al., 2025), mirroring vit_pytorch/simple_vit_orthog_residual_update.py.

Each attention and feed-forward block adds to the residual stream only the part of its output orthogonal to the
stream (per token): `x + (f(x) - <f(x), u> u)` with `u = normalize(x)`. With `learned=True` in
`orthog_residual_update_kwargs`, a `to_modulation` Linear(dim, 2) of the block's output gates the parallel and the
orthogonal parts by sigmoids, and both are added.

`orthog_residual_update_kwargs` takes vit-pytorch's `OrthogonalResidualUpdate` keywords `double_precision` (default
True) and `learned` (default False); any other key is refused at construction (`dim` is always the model's, as in
vit-pytorch, where passing it fails).

Fix: vit-pytorch computes the projection in float64 when `double_precision` (then casts back). JAX has no float64
unless `jax_enable_x64` is on: then the projection is float64 as in torch; otherwise it is computed in float32 (at
least: bfloat16 and float16 activations are promoted for it) and cast back. The float32 projection stays within the
parity tolerance of vit-pytorch's float64 reference.

Quirks of vit-pytorch kept so weights transfer:
- The position embedding is built for `image_size`; an input must give the same number of patches.
- `num_classes=0` keeps a `linear_head` with no outputs, returning (batch, 0).

Nothing is random in the forward pass; `train` is accepted for a uniform interface.

JAX-only options (defaults keep vit-pytorch's behaviour and tree; see vit_flax/scan.py):
- `scan_layers=True` runs the `depth` layers as one `nn.scan` over `Layer`, parameters stacked on a leading axis
  under `params/transformer/layers_scan/{0,1}` (the attention and feed-forward updates), which the converters map to
  torch's `transformer.layers.{i}.{0,1}`.
- `remat_policy`: None, or a `jax.checkpoint_policies` name: the backward pass recomputes each scanned layer
  (unscanned: each attention and feed-forward block) instead of keeping its activations.
- `attention_impl`: 'explicit' (default, whose maps recorder.Recorder records) or 'xla' / 'cudnn' / 'auto' for
  jax.nn.dot_product_attention.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_flax.layers import (
    LayerNorm, Linear, add_posemb_sincos_2d, check_attention_impl, check_floating_input, check_keywords,
    check_sincos_dim, l2_normalize, residual_boundary,
)
from vit_flax.scan import check_remat_policy, layer_scan, remat, scanned_name
from vit_flax.simple_vit import Attention, FeedForward
from vit_flax.vit import check_image_config, embed_patches

# vit-pytorch's OrthogonalResidualUpdate keywords a user may set through `orthog_residual_update_kwargs`
ORTHOG_RESIDUAL_UPDATE_KEYWORDS = {'double_precision': True, 'learned': False}


def check_orthog_residual_update_kwargs(kwargs) -> dict:
    """The keywords with their defaults filled in; unknown keys (and `dim`, which the model passes) refused."""
    unknown = sorted(set(kwargs) - set(ORTHOG_RESIDUAL_UPDATE_KEYWORDS))
    if unknown:
        raise ValueError(
            f'orthog_residual_update_kwargs={dict(kwargs)!r}: unknown keys {unknown}; it takes '
            f'{", ".join(ORTHOG_RESIDUAL_UPDATE_KEYWORDS)} (dim is always the model\'s)'
        )
    return {**ORTHOG_RESIDUAL_UPDATE_KEYWORDS, **kwargs}


def orthogonal_projection(block_out, residual, double_precision: bool):
    """(parallel, orthogonal) parts of `block_out` with respect to `residual` along the last axis, computed in float64
    when `double_precision` and JAX's x64 mode is on, else in float32 at least; returned in the residual's dtype."""
    dtype = residual.dtype
    x64 = jax.dtypes.canonicalize_dtype(jnp.float64) == jnp.float64  # jax_enable_x64, globally or in a context
    compute = jnp.float64 if double_precision and x64 else jnp.promote_types(dtype, jnp.float32)
    residual, block_out = residual.astype(compute), block_out.astype(compute)
    unit = l2_normalize(residual)
    parallel = jnp.sum(block_out * unit, axis=-1, keepdims=True) * unit
    orthogonal = block_out - parallel
    return parallel.astype(dtype), orthogonal.astype(dtype)


class OrthogonalResidualUpdate(nn.Module):
    block: nn.Module  # built with parent=None, adopted here as `block` (torch's attribute)
    dim: int | None = None
    double_precision: bool = True
    learned: bool = False

    def __post_init__(self):
        if self.learned and self.dim is None:
            raise ValueError('OrthogonalResidualUpdate: learned=True needs dim')
        super().__post_init__()

    @nn.compact
    def __call__(self, residual):
        block_out = self.block(residual)
        parallel_update, orthog_update = orthogonal_projection(block_out, residual, self.double_precision)
        if not self.learned:
            return residual + orthog_update
        modulation = nn.sigmoid(Linear(2, name='to_modulation')(block_out))
        parallel_mod, orthog_mod = jnp.split(modulation, 2, axis=-1)
        return residual + parallel_update * parallel_mod + orthog_update * orthog_mod


def _update_keywords(module) -> dict:
    return dict(dim=module.dim, double_precision=module.double_precision, learned=module.learned)


class Layer(nn.Module):
    """One of vit-pytorch's `transformer.layers` (the updates around attention, then feed-forward): the body of the
    layer scan, returning nn.scan's (carry, nothing per layer)."""

    dim: int
    heads: int
    dim_head: int
    mlp_dim: int
    double_precision: bool = True
    learned: bool = False
    attention_impl: str = 'explicit'

    @nn.compact
    def __call__(self, x):
        attention = Attention(self.dim, self.heads, self.dim_head, self.attention_impl, parent=None)
        x = OrthogonalResidualUpdate(attention, **_update_keywords(self), name='0')(x)
        feed_forward = FeedForward(self.dim, self.mlp_dim, parent=None)
        return OrthogonalResidualUpdate(feed_forward, **_update_keywords(self), name='1')(x), None


class Transformer(nn.Module):
    dim: int
    depth: int
    heads: int
    dim_head: int
    mlp_dim: int
    double_precision: bool = True
    learned: bool = False
    scan_layers: bool = False  # JAX-only, see the module docstring
    remat_policy: str | None = None  # JAX-only
    attention_impl: str = 'explicit'  # JAX-only

    def __post_init__(self):
        check_remat_policy(self.remat_policy)
        check_attention_impl(self.attention_impl)
        super().__post_init__()

    @nn.compact
    def __call__(self, x):
        if self.scan_layers:
            layers = layer_scan(Layer, self.depth, self.remat_policy)
            x, _ = layers(self.dim, self.heads, self.dim_head, self.mlp_dim, self.double_precision, self.learned,
                          self.attention_impl, name=scanned_name('layers'))(x)
        else:
            attention, feed_forward = remat(Attention, self.remat_policy), remat(FeedForward, self.remat_policy)
            for i in range(self.depth):
                block = attention(self.dim, self.heads, self.dim_head, self.attention_impl, parent=None)
                x = OrthogonalResidualUpdate(block, **_update_keywords(self), name=f'layers_{i}_0')(x)
                x = residual_boundary(x)  # linear, not quadratic, backward work on CPU (layers.py)
                block = feed_forward(self.dim, self.mlp_dim, parent=None)
                x = OrthogonalResidualUpdate(block, **_update_keywords(self), name=f'layers_{i}_1')(x)
                x = residual_boundary(x)
        return LayerNorm(name='norm')(x)


class SimpleViT(nn.Module):
    image_size: int | tuple[int, int]
    patch_size: int | tuple[int, int]
    num_classes: int
    dim: int
    depth: int
    heads: int
    mlp_dim: int
    channels: int = 3
    dim_head: int = 64
    orthog_residual_update_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    scan_layers: bool = False  # JAX-only, see the module docstring
    remat_policy: str | None = None  # JAX-only
    attention_impl: str = 'explicit'  # JAX-only

    def __post_init__(self):
        check_keywords(self)
        check_image_config(self.image_size, self.patch_size)
        check_sincos_dim(self.dim)
        check_orthog_residual_update_kwargs(self.orthog_residual_update_kwargs)
        check_remat_policy(self.remat_policy)
        check_attention_impl(self.attention_impl)
        super().__post_init__()

    @nn.compact
    def __call__(self, img, train: bool = False):  # `train` accepted for a uniform interface; nothing is random
        check_floating_input(self, 'img', img)
        x = embed_patches(img, self.patch_size, self.channels, self.dim)
        x = add_posemb_sincos_2d(x, img.shape[1:3], self.image_size, self.patch_size, self.dim)

        update = check_orthog_residual_update_kwargs(self.orthog_residual_update_kwargs)
        x = Transformer(self.dim, self.depth, self.heads, self.dim_head, self.mlp_dim, **update,
                        scan_layers=self.scan_layers, remat_policy=self.remat_policy,
                        attention_impl=self.attention_impl, name='transformer')(x)
        return Linear(self.num_classes, name='linear_head')(x.mean(axis=1))
