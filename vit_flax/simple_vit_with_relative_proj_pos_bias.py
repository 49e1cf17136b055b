"""SimpleViT with a relative position bias from a learned distance basis projection (the "Inkling" bias, generalised
to N dimensions), mirroring vit_pytorch/simple_vit_with_relative_proj_pos_bias.py.

The tokens stay on their (h, w) patch grid through the transformer. Before each attention, `rel_pos_bias` projects
every query token (the layer's input, before its LayerNorm) to per-head weights over `num_distance_basis` learned
curves per grid axis (`distance_banks`, one value per relative distance in (-max_dist, max_dist)); the bias of a
(query, key) pair is the sum over axes of the query's curve at the pair's distance along that axis, added to the
attention logits. Pairs further apart than `max_dist - 1` along an axis get no bias.

The curves are gathered at the grid's distances before the projection weights are applied (vit-pytorch evaluates
every curve at all 2 * max_dist - 1 distances per query, then gathers): the same sums of the same products, without
the (axes, batch, heads, n, 2 * max_dist - 1) intermediate.

Quirks of vit-pytorch kept so weights transfer:
- The position embedding and the token grid are built for `image_size`: an input must give the same number of
  patches, which are laid out on the `image_size` grid whatever the input's height and width (vit-pytorch
  rearranges with its stored h and w).
- `num_classes=0` keeps a `linear_head` with no outputs, returning (batch, 0).

Nothing is random in the forward pass; `train` is accepted for a uniform interface.

JAX-only options (defaults keep vit-pytorch's behaviour and tree; see vit_flax/scan.py):
- `scan_layers=True` runs the `depth` layers as one `nn.scan` over `Layer`, parameters stacked on a leading axis
  under `params/transformer/layers_scan/{0,1}`, which the converters map to torch's `transformer.layers.{i}.{0,1}`.
- `remat_policy`: None, or a `jax.checkpoint_policies` name: the backward pass recomputes each scanned layer
  (unscanned: each attention and feed-forward block) instead of keeping its activations.
- `attention_impl`: 'explicit' (default, whose maps recorder.Recorder records) or 'xla' / 'cudnn' / 'auto' for
  jax.nn.dot_product_attention, the relative position bias passed as its bias.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from einops import rearrange

from vit_flax.layers import (
    LayerNorm, Linear, add_posemb_sincos_2d, check_attention_impl, check_floating_input, check_keywords,
    check_sincos_dim, fused_attention, pair, record_attention_map, residual_boundary, softmax, uses_fused_attention,
)
from vit_flax.scan import check_remat_policy, layer_scan, remat, scanned_name
from vit_flax.simple_vit import FeedForward
from vit_flax.vit import check_image_config, embed_patches


def relative_distance_indices(spatial_shape: tuple[int, ...], max_dist: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices (axes, n, n): the distance bank column of each (query, key) pair per grid axis, clamped into the
    bank; valid (n, n): whether every axis's distance is within the bank), for the row-major grid of
    `spatial_shape`."""
    grid = np.meshgrid(*(np.arange(s) for s in spatial_shape), indexing='ij')
    relative = np.stack([g.reshape(-1)[:, None] - g.reshape(-1)[None, :] + max_dist - 1 for g in grid])
    valid = ((relative >= 0) & (relative < 2 * max_dist - 1)).all(axis=0)
    return np.clip(relative, 0, 2 * max_dist - 2), valid


class RelativeProjPositionalBias(nn.Module):
    """(b, *spatial, dim) -> the attention bias (b, heads, n, n) of the flattened grid."""

    dim: int
    heads: int
    dim_pos: int = 2
    num_distance_basis: int = 16
    max_dist: int = 512

    @nn.compact
    def __call__(self, x):
        spatial_shape = x.shape[1:-1]
        if len(spatial_shape) != self.dim_pos:
            raise ValueError(f'expected input with {self.dim_pos} spatial dimensions, but got {len(spatial_shape)} '
                             f'(shape {x.shape})')
        weights = Linear(self.heads * self.dim_pos * self.num_distance_basis, name='to_distance_weights_0')(x)
        weights = rearrange(weights.reshape(x.shape[0], -1, weights.shape[-1]), 'b n (w h d) -> w b h n d',
                            w=self.dim_pos, h=self.heads)

        banks = self.param('distance_banks', nn.initializers.normal(0.02),
                           (self.dim_pos, self.num_distance_basis, 2 * self.max_dist - 1)).astype(x.dtype)
        indices, valid = relative_distance_indices(spatial_shape, self.max_dist)
        # each axis's curves at the pairs' distances: (w, d, i, j)
        axis, basis = np.arange(self.dim_pos)[:, None, None, None], np.arange(self.num_distance_basis)[:, None, None]
        gathered = banks[axis, basis, indices[:, None]]
        bias = jnp.einsum('wbhid,wdij->bhij', weights, gathered)
        return jnp.where(valid, bias, 0)


class Attention(nn.Module):
    dim: int
    heads: int = 8
    dim_head: int = 64
    num_distance_basis: int = 16
    max_dist: int = 512
    attention_impl: str = 'explicit'  # JAX-only, see the module docstring

    @nn.compact
    def __call__(self, x):
        inner_dim = self.dim_head * self.heads
        bias = RelativeProjPositionalBias(self.dim, self.heads, 2, self.num_distance_basis, self.max_dist,
                                          name='rel_pos_bias')(x)

        grid_shape = x.shape
        x = LayerNorm(name='norm')(x.reshape(x.shape[0], -1, x.shape[-1]))
        q, k, v = jnp.split(Linear(inner_dim * 3, use_bias=False, name='to_qkv')(x), 3, axis=-1)
        q, k, v = (rearrange(t, 'b n (h d) -> b h n d', h=self.heads) for t in (q, k, v))

        if uses_fused_attention(self.attention_impl, 0.0, False):
            q, k, v = (rearrange(t, 'b h n d -> b n h d') for t in (q, k, v))
            out = fused_attention(q, k, v, self.dim_head**-0.5, self.attention_impl, bias=bias)
            out = rearrange(out, 'b n h d -> b n (h d)')
        else:
            dots = jnp.einsum('bhid,bhjd->bhij', q, k) * self.dim_head**-0.5 + bias
            attn = softmax(dots, axis=-1)
            record_attention_map(self, attn)
            out = rearrange(jnp.einsum('bhij,bhjd->bhid', attn, v), 'b h n d -> b n (h d)')
        out = Linear(self.dim, use_bias=False, name='to_out')(out)
        return out.reshape(*grid_shape[:-1], self.dim)


class Layer(nn.Module):
    """One of vit-pytorch's `transformer.layers` (attention, then feed-forward, each with its residual): the body of
    the layer scan, returning nn.scan's (carry, nothing per layer)."""

    dim: int
    heads: int
    dim_head: int
    mlp_dim: int
    num_distance_basis: int
    max_dist: int
    attention_impl: str = 'explicit'

    @nn.compact
    def __call__(self, x):
        x = Attention(self.dim, self.heads, self.dim_head, self.num_distance_basis, self.max_dist, self.attention_impl,
                      name='0')(x) + x
        return FeedForward(self.dim, self.mlp_dim, name='1')(x) + x, None


class Transformer(nn.Module):
    dim: int
    depth: int
    heads: int
    dim_head: int
    mlp_dim: int
    num_distance_basis: int = 16
    max_dist: int = 512
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
            x, _ = layers(self.dim, self.heads, self.dim_head, self.mlp_dim, self.num_distance_basis, self.max_dist,
                          self.attention_impl, name=scanned_name('layers'))(x)
        else:
            attention, feed_forward = remat(Attention, self.remat_policy), remat(FeedForward, self.remat_policy)
            for i in range(self.depth):
                x = attention(self.dim, self.heads, self.dim_head, self.num_distance_basis, self.max_dist,
                              self.attention_impl, name=f'layers_{i}_0')(x) + x
                x = residual_boundary(x)  # linear, not quadratic, backward work on CPU (layers.py)
                x = residual_boundary(feed_forward(self.dim, self.mlp_dim, name=f'layers_{i}_1')(x) + x)
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
    num_distance_basis: int = 16
    max_dist: int = 512
    scan_layers: bool = False  # JAX-only, see the module docstring
    remat_policy: str | None = None  # JAX-only
    attention_impl: str = 'explicit'  # JAX-only

    def __post_init__(self):
        check_keywords(self)
        check_image_config(self.image_size, self.patch_size)
        check_sincos_dim(self.dim)
        check_remat_policy(self.remat_policy)
        check_attention_impl(self.attention_impl)
        super().__post_init__()

    @nn.compact
    def __call__(self, img, train: bool = False):  # `train` accepted for a uniform interface; nothing is random
        check_floating_input(self, 'img', img)
        x = embed_patches(img, self.patch_size, self.channels, self.dim)
        x = add_posemb_sincos_2d(x, img.shape[1:3], self.image_size, self.patch_size, self.dim)

        (image_height, image_width), (patch_height, patch_width) = pair(self.image_size), pair(self.patch_size)
        x = rearrange(x, 'b (h w) d -> b h w d', h=image_height // patch_height, w=image_width // patch_width)

        x = Transformer(self.dim, self.depth, self.heads, self.dim_head, self.mlp_dim, self.num_distance_basis,
                        self.max_dist, scan_layers=self.scan_layers, remat_policy=self.remat_policy,
                        attention_impl=self.attention_impl, name='transformer')(x)
        return Linear(self.num_classes, name='linear_head')(x.mean(axis=(1, 2)))
