"""ViTND, a ViT on inputs of 1 to 7 spatial dimensions, mirroring vit_pytorch/vit_nd.py (with the causal masks of
vit_flax/vit_nd_masking.py).

Input is channels-last, (batch, *input_shape, channels) (vit-pytorch: (batch, channels, *input_shape)), cut into
`patch_size` patches laid out `(p0 p1 ... c)`, tokens in row-major order of the patch grid (dimension 0 outermost).
`causal_dims` (an int, a tuple, or None) makes attention causal along those grid dimensions: a patch token attends to
the tokens that are not ahead of it along any of them; the class token attends to and is attended by every token.
vit-pytorch computes that with flex_attention (where its compiled kernel exists) or a dense masked softmax, the same
numbers; here a boolean mask built once from the grid, filled with the most negative float like its dense path.

`model.apply(variables, x, return_nd_patches=True)` returns (class token (batch, dim), patch embeddings): the patch
embeddings channels-last, (batch, *grid, dim), where vit-pytorch returns (batch, dim, *grid).

Quirks of vit-pytorch kept so weights transfer:
- The patch embedding is Linear then LayerNorm (`to_patch_embedding.1`, `.2`), with no LayerNorm on the raw patches.
- Position embedding (1, num_patches + 1, dim) and class token (1, 1, dim), with their leading 1; the input must have
  exactly `input_shape` (the whole table is added).
- With `heads == 1 and dim_head == dim` the attention output projection (and its dropout) is dropped.
- `num_classes=0` keeps an `mlp_head` with no outputs, returning (batch, 0).

Random draws: dropout only, from the 'dropout' stream (`train=True`).

JAX-only options (defaults keep vit-pytorch's behaviour and tree; see vit_flax/scan.py): `scan_layers=True` runs the
layers as one `nn.scan` over `Layer`, parameters stacked under `params/transformer/layers_scan/{0,1}` (torch's
`transformer.layers.{i}.{0,1}`); `remat_policy` recomputes each layer's (unscanned: each attention and feed-forward
module's) activations in the backward pass; `attention_impl` 'xla' / 'cudnn' / 'auto' call
jax.nn.dot_product_attention with the causal mask (training with attention dropout keeps the explicit path).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp
from einops import rearrange, repeat

from vit_flax.layers import (
    LayerNorm, Linear, attention_weights, check_attention_impl, check_floating_input, check_keywords, exists,
    fused_attention, randn, record_attention_map, residual_boundary, uses_fused_attention,
)
from vit_flax.scan import check_remat_policy, layer_scan, remat, scanned_name
from vit_flax.vit import FeedForward
from vit_flax.vit_nd_masking import causal_dims_tuple, check_causal_dims, nd_causal_mask

DIM_NAMES = 'fghijkl'


def ensure_tuple(t, length: int) -> tuple:
    """vit-pytorch's helper: an int repeated `length` times, or a tuple / list of that length."""
    if isinstance(t, (tuple, list)):
        if len(t) != length:
            raise ValueError(f'Expected tuple of length {length}, got {len(t)}: {tuple(t)}')
        return tuple(t)
    return (t,) * length


def num_patches_per_dim(input_shape, patch_size, ndim: int) -> tuple[int, ...]:
    """The patch grid: each input side over its patch side."""
    input_shape, patch_size = ensure_tuple(input_shape, ndim), ensure_tuple(patch_size, ndim)
    return tuple(side // patch for side, patch in zip(input_shape, patch_size))


def check_nd_config(module: nn.Module):
    """The N-D models' shared checks (vit_nd, vit_nd_rotary, vit_nd_pope): `ndim` in [1, 7], `input_shape` and
    `patch_size` ints or `ndim`-tuples, each input side divisible by its patch side, `causal_dims` within `ndim`."""
    if not 1 <= module.ndim <= 7:
        raise ValueError(f'ndim must be between 1 and 7, got ndim={module.ndim}')
    input_shape = ensure_tuple(module.input_shape, module.ndim)
    patch_size = ensure_tuple(module.patch_size, module.ndim)
    for i, (side, patch) in enumerate(zip(input_shape, patch_size)):
        if side % patch:
            raise ValueError(f'Input dimension {i} ({side}) must be divisible by patch size ({patch}): '
                             f'input_shape={input_shape}, patch_size={patch_size}')
    check_causal_dims(module.causal_dims, module.ndim)


def nd_patch_tokens(module: nn.Module, x, ndim: int | None = None, input_shape=None):
    """`module`'s channels-last input (batch, *input_shape, channels), checked, as patch tokens in row-major order of
    the grid, each patch laid out `(p0 p1 ... c)`: (batch, num_patches, patch_dim), vit-pytorch's `Rearrange`.
    `ndim` and `input_shape` default to the module's fields of those names."""
    check_floating_input(module, 'x', x, what='inputs')
    ndim = module.ndim if ndim is None else ndim
    input_shape = ensure_tuple(module.input_shape if input_shape is None else input_shape, ndim)
    patch_size = ensure_tuple(module.patch_size, ndim)
    expected = (*input_shape, module.channels)
    if x.ndim != ndim + 2 or tuple(x.shape[1:]) != expected:
        sizes = ', '.join(map(str, expected))
        raise ValueError(f'expected inputs of shape (batch, *input_shape, channels) = (batch, {sizes}) '
                         f'(channels-last), got shape {x.shape}')
    names = DIM_NAMES[:ndim]
    pattern = (f"b {' '.join(f'({d} p{i})' for i, d in enumerate(names))} c -> "
               f"b ({' '.join(names)}) ({' '.join(f'p{i}' for i in range(ndim))} c)")
    return rearrange(x, pattern, **{f'p{i}': p for i, p in enumerate(patch_size)})


class Attention(nn.Module):
    dim: int
    heads: int = 8
    dim_head: int = 64
    dropout: float = 0.0
    num_patches_per_dim: tuple[int, ...] = ()  # with causal_dims: the grid the causal mask is built for
    causal_dims: tuple[int, ...] | None = None
    attention_impl: str = 'explicit'  # JAX-only, see the module docstring

    @nn.compact
    def __call__(self, x, train: bool = False):
        inner_dim = self.dim_head * self.heads
        project_out = not (self.heads == 1 and self.dim_head == self.dim)
        scale = self.dim_head**-0.5

        x = LayerNorm(name='norm')(x)
        q, k, v = jnp.split(Linear(inner_dim * 3, use_bias=False, name='to_qkv')(x), 3, axis=-1)
        mask = None
        if exists(self.causal_dims):
            mask = jnp.asarray(nd_causal_mask(self.num_patches_per_dim, self.causal_dims, has_cls=True))

        if uses_fused_attention(self.attention_impl, self.dropout, train):
            q, k, v = (rearrange(t, 'b n (h d) -> b n h d', h=self.heads) for t in (q, k, v))
            out = fused_attention(q, k, v, scale, self.attention_impl, None if mask is None else mask[None, None])
            out = rearrange(out, 'b n h d -> b n (h d)')
        else:
            q, k, v = (rearrange(t, 'b n (h d) -> b h n d', h=self.heads) for t in (q, k, v))
            attn = attention_weights(q, k, scale, mask)
            record_attention_map(self, attn)
            attn = nn.Dropout(self.dropout, deterministic=not train)(attn)
            out = rearrange(jnp.einsum('bhij,bhjd->bhid', attn, v), 'b h n d -> b n (h d)')

        if not project_out:
            return out
        out = Linear(self.dim, name='to_out_0')(out)
        return nn.Dropout(self.dropout, deterministic=not train)(out)


class Layer(nn.Module):
    """One of vit-pytorch's `transformer.layers` (attention, then feed-forward, each with its residual): the body of
    the layer scan, returning nn.scan's (carry, nothing per layer)."""

    dim: int
    heads: int
    dim_head: int
    mlp_dim: int
    dropout: float = 0.0
    num_patches_per_dim: tuple[int, ...] = ()
    causal_dims: tuple[int, ...] | None = None
    attention_impl: str = 'explicit'

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = Attention(self.dim, self.heads, self.dim_head, self.dropout, self.num_patches_per_dim, self.causal_dims,
                      self.attention_impl, name='0')(x, train) + x
        x = FeedForward(self.dim, self.mlp_dim, self.dropout, name='1')(x, train) + x
        return x, None


class Transformer(nn.Module):
    dim: int
    depth: int
    heads: int
    dim_head: int
    mlp_dim: int
    dropout: float = 0.0
    num_patches_per_dim: tuple[int, ...] = ()
    causal_dims: tuple[int, ...] | None = None
    scan_layers: bool = False  # JAX-only, see the module docstring
    remat_policy: str | None = None  # JAX-only
    attention_impl: str = 'explicit'  # JAX-only

    @nn.compact
    def __call__(self, x, train: bool = False):
        attention_args = (self.dim, self.heads, self.dim_head)
        masking = (self.num_patches_per_dim, self.causal_dims, self.attention_impl)
        if self.scan_layers:
            layers = layer_scan(Layer, self.depth, self.remat_policy, flags=1)
            x, _ = layers(*attention_args, self.mlp_dim, self.dropout, *masking, name=scanned_name('layers'))(x, train)
        else:
            attention = remat(Attention, self.remat_policy, static_argnums=(2,))
            feed_forward = remat(FeedForward, self.remat_policy, static_argnums=(2,))
            for i in range(self.depth):
                x = attention(*attention_args, self.dropout, *masking, name=f'layers_{i}_0')(x, train) + x
                x = residual_boundary(x)  # linear, not quadratic, backward work on CPU (layers.py)
                x = feed_forward(self.dim, self.mlp_dim, self.dropout, name=f'layers_{i}_1')(x, train) + x
                x = residual_boundary(x)
        return LayerNorm(name='norm')(x)


class ViTND(nn.Module):
    ndim: int
    input_shape: int | tuple[int, ...]
    patch_size: int | tuple[int, ...]
    num_classes: int
    dim: int
    depth: int
    heads: int
    mlp_dim: int
    pool: str = 'cls'
    channels: int = 3
    dim_head: int = 64
    dropout: float = 0.0
    emb_dropout: float = 0.0
    causal_dims: int | tuple[int, ...] | None = None
    scan_layers: bool = False  # JAX-only, see the module docstring
    remat_policy: str | None = None  # JAX-only
    attention_impl: str = 'explicit'  # JAX-only

    def __post_init__(self):
        check_keywords(self)
        check_nd_config(self)
        if self.pool not in {'cls', 'mean'}:
            raise ValueError(f"pool type must be either cls (cls token) or mean (mean pooling), got pool={self.pool!r}")
        check_remat_policy(self.remat_policy)
        check_attention_impl(self.attention_impl)
        super().__post_init__()

    @property
    def num_patches_per_dim(self) -> tuple[int, ...]:
        return num_patches_per_dim(self.input_shape, self.patch_size, self.ndim)

    @nn.compact
    def __call__(self, x, return_nd_patches: bool = False, train: bool = False):
        x = nd_patch_tokens(self, x)
        names = DIM_NAMES[:self.ndim]
        x = Linear(self.dim, name='to_patch_embedding_1')(x)
        x = LayerNorm(name='to_patch_embedding_2')(x)
        b = x.shape[0]

        num_patches = math.prod(self.num_patches_per_dim)
        pos_embedding = self.param('pos_embedding', randn, (1, num_patches + 1, self.dim))
        cls_token = self.param('cls_token', randn, (1, 1, self.dim))

        x = jnp.concatenate((repeat(cls_token.astype(x.dtype), '1 1 d -> b 1 d', b=b), x), axis=1)
        x = x + pos_embedding.astype(x.dtype)
        x = nn.Dropout(self.emb_dropout, deterministic=not train)(x)

        transformer = Transformer(
            self.dim, self.depth, self.heads, self.dim_head, self.mlp_dim, self.dropout, self.num_patches_per_dim,
            causal_dims_tuple(self.causal_dims), scan_layers=self.scan_layers, remat_policy=self.remat_policy,
            attention_impl=self.attention_impl, name='transformer',
        )
        x = transformer(x, train)

        cls_token, patches = x[:, 0], x[:, 1:]
        if return_nd_patches:
            grid = dict(zip(names, self.num_patches_per_dim))
            return cls_token, rearrange(patches, f"b ({' '.join(names)}) d -> b {' '.join(names)} d", **grid)

        pooled = patches.mean(axis=1) if self.pool == 'mean' else cls_token
        return Linear(self.num_classes, name='mlp_head')(pooled)
