"""Block-causal attention masks over an N-D patch grid, mirroring vit_pytorch/vit_nd_masking.py (used by vit_nd,
vit_nd_rotary and vit_nd_pope).

Tokens are the patches of a grid `num_patches_per_dim` in row-major order (dimension 0 outermost), optionally after
one class token. Along each causal dimension a query may see only the keys whose coordinate there is not greater than
its own; the class token (`has_cls`) sees and is seen by every token.

vit-pytorch expresses the mask as a function of (batch, head, query index, key index) for flex_attention, or, where
the compiled flex kernel is missing, evaluates it densely and fills the masked scores with the most negative float.
JAX has no flex attention: here the mask is the dense (n, n) boolean array, True where a query may see a key, built
once in numpy from the static grid, for `layers.attention_weights` (which fills like vit-pytorch's dense path) or
jax.nn.dot_product_attention (`layers.fused_attention`). `nd_causal_mask` is vit-pytorch's `nd_causal_mask_fn`
evaluated over every pair, `get_nd_causal_mask` its `get_nd_causal_mask_fn` (None without causal dimensions).

Differences: a causal dimension outside [0, ndim) raises ValueError naming the value (vit-pytorch: an assert), and
`causal_dims` must hold ints.

No parameters and no random draws; not a model (no registry entry).
"""

from __future__ import annotations

import math

import numpy as np

from vit_flax.layers import exists


def causal_dims_tuple(causal_dims) -> tuple[int, ...] | None:
    """vit-pytorch's normalisation of `causal_dims`: None stays None, an int becomes a 1-tuple."""
    if causal_dims is None:
        return None
    return (causal_dims,) if isinstance(causal_dims, int) else tuple(causal_dims)


def check_causal_dims(causal_dims, ndim: int):
    """Each causal dimension an int in [0, ndim), as vit-pytorch asserts, else ValueError naming the value."""
    dims = causal_dims_tuple(causal_dims)
    if exists(dims) and not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and 0 <= d < ndim
                                for d in dims):
        raise ValueError(f'each causal dimension must be between 0 and {ndim - 1}, got causal_dims={causal_dims!r}')


def nd_causal_mask(num_patches_per_dim, causal_dims, has_cls: bool = False) -> np.ndarray:
    """vit-pytorch's `nd_causal_mask_fn(num_patches_per_dim, causal_dims, has_cls)` over every (query, key) pair of the
    token sequence: (n, n) booleans, n = prod(num_patches_per_dim) + has_cls, True where a query may see a key."""
    num_patches_per_dim = tuple(num_patches_per_dim)
    n = math.prod(num_patches_per_dim) + int(has_cls)
    q_idx, k_idx = np.arange(n)[:, None], np.arange(n)[None, :]
    if has_cls:
        q_is_cls, k_is_cls = q_idx == 0, k_idx == 0
        q_idx, k_idx = np.maximum(q_idx - 1, 0), np.maximum(k_idx - 1, 0)
    mask = np.ones((n, n), bool)
    for causal_dim in causal_dims:
        stride = math.prod(num_patches_per_dim[causal_dim + 1:])
        q_coord = (q_idx // stride) % num_patches_per_dim[causal_dim]
        k_coord = (k_idx // stride) % num_patches_per_dim[causal_dim]
        mask = mask & (q_coord >= k_coord)
    if has_cls:
        mask = mask | q_is_cls | k_is_cls
    return mask


def get_nd_causal_mask(num_patches_per_dim, causal_dims, ndim: int | None = None,
                       has_cls: bool = False) -> np.ndarray | None:
    """vit-pytorch's `get_nd_causal_mask_fn`, evaluated: None without `causal_dims`, else `nd_causal_mask` for them (an
    int or a tuple), after checking each lies in [0, ndim) when `ndim` is given."""
    causal_dims = causal_dims_tuple(causal_dims)
    if not exists(causal_dims):
        return None
    if exists(ndim):
        check_causal_dims(causal_dims, ndim)
    return nd_causal_mask(num_patches_per_dim, causal_dims, has_cls=has_cls)
