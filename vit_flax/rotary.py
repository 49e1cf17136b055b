"""Rotary position embeddings as vit-pytorch applies them (vit_5, rvt): interleaved pairs of features rotated by
per-token angles given as sine and cosine tables, each angle repeated for the two features of its pair.

The frequency tables differ from file to file (vit_5: inverse powers of a base, with register tokens; rvt: a
linspace of scales on a [-1, 1] grid) and live in those files; the rotation is the same and lives here.
"""

from __future__ import annotations

import jax.numpy as jnp
from einops import rearrange, repeat


def rotate_every_two(x):
    """vit-pytorch's `rotate_every_two`: each pair (x1, x2) of the last axis becomes (-x2, x1)."""
    x = rearrange(x, '... (d j) -> ... d j', j=2)
    x1, x2 = x[..., 0], x[..., 1]
    return rearrange(jnp.stack((-x2, x1), axis=-1), '... d j -> ... (d j)')


def interleave_pairs(table):
    """(..., d) angles -> (..., 2 d), each repeated for the two features of its pair (`'n d -> n (d j)', j=2`)."""
    return repeat(table, '... d -> ... (d j)', j=2)


def apply_rotary(t, sin, cos):
    """`t * cos + rotate_every_two(t) * sin` on the first `sin.shape[-1]` features of t's last axis; the others pass
    unchanged (rvt's rotary dimension may be smaller than the head's). sin and cos broadcast against t."""
    dim_rotary = sin.shape[-1]
    t, t_pass = t[..., :dim_rotary], t[..., dim_rotary:]
    t = t * cos.astype(t.dtype) + rotate_every_two(t) * sin.astype(t.dtype)
    return jnp.concatenate((t, t_pass), axis=-1)
