"""ViTND with Golden Gate PoPE (polar position embeddings in N dimensions), mirroring vit_pytorch/vit_nd_pope.py.

The same model as vit_nd_rotary.ViTND (channels-last N-D patches, no class token, mean pooling, optional causal
dimensions, `return_embed=True` for the (batch, *grid, dim) tokens) with the golden gate frequencies used in polar
form (Gopalakrishnan et al., 2025, https://arxiv.org/abs/2509.10534): each head's features become magnitudes
`softplus(q)` at angles `theta = freqs . pos` (freqs (heads, dim_head, ndim), pos the integer grid coordinates), so
queries and keys are `(softplus(t) cos theta, softplus(t) sin theta)`, twice dim_head wide; the keys' angles are
shifted by a learned per-head, per-feature phase `learned_bias` (zeros; clamped to [-2 pi, 0] in the forward).
Values stay dim_head wide and the attention scale is dim_head ** -0.5.

Parameter tree = vit-pytorch's module tree; the phase lives at `params/polar_emb/learned_bias` and the frequency
buffer at `buffers/polar_emb/freqs` (`apply` needs the 'buffers' collection). vit-pytorch holds one GoldenGatePoPENd
under the model and under the transformer, so its state dict repeats both as `transformer.polar_emb.*`; Flax holds
them once and `torch_aliases()` names the copies, which the converters write and check.

Numerics: the angles are reduced modulo 2 pi exactly in float32 (vit_nd_rotary.golden_gate_angles), matching
vit-pytorch's float64 computation where its float32 forward is off by up to ~1e-3 rad. The clamp passes the phase's
gradient on the closed interval [-2 pi, 0], as torch's clamp does (so a phase at its initial 0 learns).

Quirks of vit-pytorch kept so weights transfer: those of vit_nd_rotary (Linear-then-LayerNorm patch embedding,
`to_qk` / `to_v`, no attention-weight dropout, no output projection for one head of width dim, `num_classes=0`
keeping an empty head; `muon_parameters()` not mirrored).
Fixed: `pope_init_learned_bias_uniform=True` makes vit-pytorch's constructor fail (an in-place `uniform_` on a leaf
that requires grad); here it draws the phase uniformly from [-2 pi, 0) ('params' stream), and the parity reference
builds vit-pytorch's model under torch.no_grad(), where that draw runs.

Random draws: the phase's uniform init ('params', with `pope_init_learned_bias_uniform`); dropout from the 'dropout'
stream (`train=True`).

JAX-only options as vit_nd_rotary.ViTND's: `scan_layers`, `remat_policy`, `attention_impl` (the fused kernels take
the values zero-padded to the keys' width, the output cut back).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange

from vit_flax import vit_nd_rotary
from vit_flax.layers import check_attention_impl, check_keywords
from vit_flax.scan import check_remat_policy
from vit_flax.vit_nd import check_nd_config, num_patches_per_dim
from vit_flax.vit_nd_rotary import golden_gate_angles, golden_gate_freqs, nd_forward


def torch_clamp(t, low: float, high: float):
    """torch.clamp: t limited to [low, high], its gradient passed where low <= t <= high (ends included)."""
    return jnp.where((t >= low) & (t <= high), t, jnp.clip(t, low, high))


def uniform_phase(key, shape, dtype=jnp.float32):
    """torch's `uniform_(-2 pi, 0)`."""
    return jax.random.uniform(key, shape, dtype, -2.0 * math.pi, 0.0)


class GoldenGatePoPENd(nn.Module):
    """The polar tables for the tokens at integer grid `positions`: (cos theta, sin theta) for the queries and
    (cos(theta + phase), sin(theta + phase)) for the keys, each (1, heads, n, dim_head)."""

    dim_pos: int
    heads: int
    dim_head: int
    min_freq: float = 1.0
    max_freq: float = 10000.0
    p_zero_freqs: float = 0.0
    init_learned_bias_uniform: bool = False

    @nn.compact
    def __call__(self, positions: np.ndarray):
        freqs = self.variable('buffers', 'freqs', lambda: jnp.asarray(golden_gate_freqs(
            self.dim_pos, self.heads, self.dim_head, self.min_freq, self.max_freq, self.p_zero_freqs))).value
        learned_bias = self.param('learned_bias', uniform_phase if self.init_learned_bias_uniform else
                                  nn.initializers.zeros, (self.heads, self.dim_head))
        theta = rearrange(golden_gate_angles(freqs, positions), 'h f n -> 1 h n f')
        bias = rearrange(torch_clamp(learned_bias.astype(jnp.float32), -2.0 * math.pi, 0.0), 'h d -> 1 h 1 d')
        return jnp.cos(theta), jnp.sin(theta), jnp.cos(theta + bias), jnp.sin(theta + bias)


def apply_polar_pos_emb(t, cos, sin):
    """vit-pytorch's apply_polar_pos_emb on t (b, h, n, d): (softplus(t) cos, softplus(t) sin), (b, h, n, 2 d),
    computed in float32 (or wider) and cast back to t's dtype."""
    dtype = jnp.promote_types(t.dtype, jnp.float32)
    magnitude = jax.nn.softplus(t.astype(dtype))
    return jnp.concatenate((magnitude * cos.astype(dtype), magnitude * sin.astype(dtype)), axis=-1).astype(t.dtype)


class Attention(vit_nd_rotary.Attention):
    def embed_positions(self, q, k, pos_emb):
        """Queries at the angles theta, keys at theta plus the learned phase, in polar form."""
        cos_q, sin_q, cos_k, sin_k = pos_emb
        return apply_polar_pos_emb(q, cos_q, sin_q), apply_polar_pos_emb(k, cos_k, sin_k)


class Layer(vit_nd_rotary.Layer):
    attention_class = Attention


class Transformer(vit_nd_rotary.Transformer):
    layer_class = Layer


class ViTND(nn.Module):
    ndim: int
    input_shape: int | tuple[int, ...]
    patch_size: int | tuple[int, ...]
    num_classes: int
    dim: int
    depth: int
    heads: int
    mlp_dim: int
    channels: int = 3
    dim_head: int = 64
    dropout: float = 0.0
    emb_dropout: float = 0.0
    pope_min_freq: float = 1.0
    pope_max_freq: float = 10000.0
    pope_p_zero_freqs: float = 0.0
    pope_init_learned_bias_uniform: bool = False
    causal_dims: int | tuple[int, ...] | None = None
    scan_layers: bool = False  # JAX-only, see the module docstring
    remat_policy: str | None = None  # JAX-only
    attention_impl: str = 'explicit'  # JAX-only

    def __post_init__(self):
        check_keywords(self)
        check_nd_config(self)
        check_remat_policy(self.remat_policy)
        check_attention_impl(self.attention_impl)
        super().__post_init__()

    def torch_aliases(self) -> dict[str, str]:
        """vit-pytorch's second name of the shared polar embedding module."""
        return {'transformer.polar_emb.': 'polar_emb.'}

    @property
    def num_patches_per_dim(self) -> tuple[int, ...]:
        return num_patches_per_dim(self.input_shape, self.patch_size, self.ndim)

    @nn.compact
    def __call__(self, x, return_embed: bool = False, train: bool = False):
        polar_emb = GoldenGatePoPENd(self.ndim, self.heads, self.dim_head, self.pope_min_freq, self.pope_max_freq,
                                     self.pope_p_zero_freqs, self.pope_init_learned_bias_uniform, name='polar_emb')
        return nd_forward(self, x, polar_emb, Transformer, return_embed, train)
