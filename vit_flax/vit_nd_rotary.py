"""ViTND with Golden Gate rotary embeddings (N-D RoPE, Jerry Xiong), mirroring vit_pytorch/vit_nd_rotary.py.

Input is channels-last, (batch, *input_shape, channels) (vit-pytorch: (batch, channels, *input_shape)), cut into
`patch_size` patches laid out `(p0 p1 ... c)` (vit_nd.nd_patch_tokens), tokens in row-major order of the patch grid.
There is no class token and no learned position embedding: every attention layer rotates its queries and keys by
angles `theta = freqs . pos`, pos the token's integer grid coordinates and `freqs` (heads, dim_head // 2, ndim) a
buffer of golden-ratio quasi-random unit directions (`make_directions`) scaled by frequencies log-spaced from
`rope_min_freq` to `rope_max_freq` (a proportion `rope_p_zero_freqs` of them zero). Each head's first half of
features (x) and second half (y) rotate as pairs: (x cos - y sin, x sin + y cos). `causal_dims` masks attention
causally along those grid dimensions (vit_flax/vit_nd_masking.py, without a class token). The logits pool the
tokens by their mean; `model.apply(variables, x, return_embed=True)` returns the normalised tokens as (batch, *grid,
dim), as vit-pytorch does.

Parameter tree = vit-pytorch's module tree; the frequency buffer lives at `buffers/rotary_emb/freqs` (`apply` needs
the 'buffers' collection next to 'params') and the forward reads it from there. vit-pytorch holds one
GoldenGateRoPENd module under the model and under every attention layer, so its state dict repeats the buffer as
`transformer.layers.{i}.0.rotary_emb.freqs`; Flax holds it once and `torch_aliases()` names the copies, which the
converters write and check.

Numerics: the angles reach |freqs| * grid side (up to 1e4 times the grid, by default), where float32 keeps only about
three decimals of an angle: vit-pytorch's float32 forward rotates by angles off by up to ~1e-3 rad. Here the angles
are reduced modulo 2 pi exactly in float32 (`golden_gate_angles`: the buffer's frequencies split into 12-bit pieces
whose products with the integer coordinates are exact), so the rotation matches vit-pytorch's float64 computation to
float32 precision.

Quirks of vit-pytorch kept so weights transfer:
- The patch embedding is Linear then LayerNorm (`to_patch_embedding.1`, `.2`), with no LayerNorm on the raw patches.
- Queries and keys come from `to_qk` (2 * inner, no bias), values from `to_v`; no dropout on the attention weights.
- With `heads == 1 and dim_head == dim` the attention output projection (and its dropout) is dropped.
- `num_classes=0` keeps an `mlp_head` with no outputs, returning (batch, 0).
- vit-pytorch's `muon_parameters()` (the weights a Muon optimiser takes) is not mirrored: it returns torch tensors;
  the same weights are `params/transformer/layers_{i}_0/to_v`, `.../to_out_0` and `layers_{i}_1/net_1`, `net_4`.
Refused here at construction where vit-pytorch fails in its forward: an odd `dim_head` (its halves differ in size).

Random draws: dropout only, from the 'dropout' stream (`train=True`).

JAX-only options (defaults keep vit-pytorch's behaviour and tree; see vit_flax/scan.py): `scan_layers=True` runs the
layers as one `nn.scan`, parameters stacked under `params/transformer/layers_scan/{0,1}` (torch's
`transformer.layers.{i}.{0,1}`); `remat_policy` recomputes each layer's (unscanned: each attention and feed-forward
module's) activations in the backward pass; `attention_impl` 'xla' / 'cudnn' / 'auto' call
jax.nn.dot_product_attention with the causal mask.
"""

from __future__ import annotations

import math
import statistics

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange

from vit_flax.layers import (
    LayerNorm, Linear, attention_weights, check_attention_impl, check_keywords, exists, fused_attention,
    record_attention_map, residual_boundary, torch_linspace, uses_fused_attention,
)
from vit_flax.scan import check_remat_policy, layer_scan, remat, scanned_name
from vit_flax.vit import FeedForward
from vit_flax.vit_nd import DIM_NAMES, check_nd_config, nd_patch_tokens, num_patches_per_dim
from vit_flax.vit_nd_masking import causal_dims_tuple, nd_causal_mask

# golden gate frequencies (https://jerryxio.ng/posts/nd-rope/), shared with vit_nd_pope


def _phi(m: int) -> float:
    """The generalised golden ratio of dimension m: the root of x ** (m + 1) = x + 1, by vit-pytorch's 10 steps."""
    x = 2.0
    for _ in range(10):
        x = (1 + x) ** (1.0 / (m + 1.0))
    return x


def _erfinv(y: float) -> float:
    """The inverse error function in float64 (torch.erfinv's values): the normal quantile, polished by Newton steps."""
    if y <= -1.0 or y >= 1.0:
        return math.copysign(math.inf, y)
    x = statistics.NormalDist().inv_cdf((1.0 + y) / 2.0) / math.sqrt(2.0)
    for _ in range(2):
        x -= (math.erf(x) - y) / (2.0 / math.sqrt(math.pi) * math.exp(-x * x))
    return x


def make_directions(n: int, d: int) -> np.ndarray:
    """vit-pytorch's `make_directions`: n quasi-random unit vectors in d dimensions (a Kronecker sequence of the
    generalised golden ratio mapped through the normal quantile, normalised), computed in float64, as float32."""
    g = _phi(d)
    alpha = (1.0 / g) ** np.arange(1, d + 1, dtype=np.float64)
    i = np.arange(1, n + 1, dtype=np.float64)[:, None]
    z = np.fmod(i * alpha, 1.0)
    directions = np.vectorize(_erfinv, otypes=[np.float64])(2.0 * z - 1.0)
    norm = np.maximum(np.sqrt((directions**2).sum(-1, keepdims=True)), 1e-12)
    return (directions / norm).astype(np.float32)


def golden_gate_freqs(dim_pos: int, heads: int, n_freqs: int, min_freq: float, max_freq: float,
                      p_zero_freqs: float) -> np.ndarray:
    """The (heads, n_freqs, dim_pos) float32 frequency vectors of GoldenGateRoPENd / GoldenGatePoPENd: a direction per
    (head, frequency) scaled by `round(p_zero_freqs * n_freqs)` zeros, then frequencies log-spaced from min_freq to
    max_freq. Equal to vit-pytorch's buffer but for an occasional last-place difference of torch's float32 power."""
    n_zero_freqs = round(p_zero_freqs * n_freqs)
    spaced = np.float32(min_freq) * (np.float32(max_freq / min_freq) ** torch_linspace(0, 1, n_freqs - n_zero_freqs))
    omega = np.concatenate((np.zeros(n_zero_freqs, np.float32), spaced.astype(np.float32)))
    directions = rearrange(make_directions(heads * n_freqs, dim_pos), '(h f) p -> h f p', h=heads)
    return (directions * omega[:, None]).astype(np.float32)


def grid_positions(grid: tuple[int, ...]) -> np.ndarray:
    """(prod(grid), len(grid)) integer coordinates of the grid's cells in row-major order (vit-pytorch's meshgrid)."""
    return np.stack(np.meshgrid(*(np.arange(n) for n in grid), indexing='ij'), axis=-1).reshape(-1, len(grid))


_INV_2PI = 1.0 / (2.0 * math.pi)


def _high_bits(x):
    """x with only its 12 leading significant bits (the low 12 mantissa bits cleared): x - _high_bits(x) is exact and
    has at most 12 significant bits too, so either piece times an integer below 2 ** 12 is exact in float32."""
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    return jax.lax.bitcast_convert_type(bits & jnp.uint32(0xFFFFF000), jnp.float32)


def _high_bits_np(x: float) -> np.float32:
    """_high_bits of the float32 nearest x, in numpy (for constants)."""
    return (np.array(x, np.float32).view(np.uint32) & np.uint32(0xFFFFF000)).view(np.float32)[()]


def _frac(x):
    """x minus its nearest integer, exact in float32."""
    return x - jnp.round(x)


def golden_gate_angles(freqs, positions: np.ndarray):
    """`sum_p freqs[..., p] * positions[n, p]` (vit-pytorch's theta, (..., n) per frequency), reduced to [-pi, pi]
    with float32 round-off of the exact angle: freqs (h, f, p) float32, positions (n, p) small non-negative integers.

    theta / 2 pi = sum_p (freqs_p / 2 pi) * pos_p: 1 / 2 pi is taken as three float32 pieces (hi, mid: 12 bits each,
    lo: the rest), each frequency as two 12-bit pieces, so each product of pieces is exact; each of those times an
    integer coordinate is split again into exact 12-bit products, whose fractional parts are exact. Only the
    fractional parts add up (each sum kept in [-1/2, 1/2]), so the reduced angle carries about 1e-7 rad of round-off
    where float32's plain product carries |theta| * 6e-8."""
    freqs = jnp.asarray(freqs, jnp.float32)
    inv_hi = _high_bits_np(_INV_2PI)
    inv_mid = _high_bits_np(_INV_2PI - float(inv_hi))
    inv_lo = np.float32(_INV_2PI - float(inv_hi) - float(inv_mid))

    freqs_hi = _high_bits(freqs)
    freqs_lo = freqs - freqs_hi
    exact_turns = [f * c for f in (freqs_hi, freqs_lo) for c in (inv_hi, inv_mid)]  # each exact
    rest = freqs * inv_lo  # about 2 ** -24 of the turns: its own round-off is negligible

    positions = jnp.asarray(positions, jnp.float32)  # (n, p), exact small integers
    turns = jnp.zeros((*freqs.shape[:-1], positions.shape[0]), jnp.float32)
    for p in range(freqs.shape[-1]):
        pos = positions[:, p]
        for t in exact_turns:
            t_hi = _high_bits(t)
            for piece in (t_hi, t - t_hi):
                turns = _frac(turns + _frac(piece[..., p, None] * pos))
        turns = _frac(turns + rest[..., p, None] * pos)
    return 2 * jnp.pi * turns


class GoldenGateRoPENd(nn.Module):
    """The rotary tables (cos, sin), (1, heads, n, dim_head // 2), for the tokens at integer grid `positions`, from
    the `freqs` buffer (heads, dim_head // 2, dim_pos)."""

    dim_pos: int
    heads: int
    dim_head: int
    rope_min_freq: float = 1.0
    rope_max_freq: float = 10000.0
    rope_p_zero_freqs: float = 0.0

    @nn.compact
    def __call__(self, positions: np.ndarray):
        freqs = self.variable('buffers', 'freqs', lambda: jnp.asarray(golden_gate_freqs(
            self.dim_pos, self.heads, self.dim_head // 2, self.rope_min_freq, self.rope_max_freq,
            self.rope_p_zero_freqs))).value
        theta = rearrange(golden_gate_angles(freqs, positions), 'h f n -> 1 h n f')
        return jnp.cos(theta), jnp.sin(theta)


def apply_golden_gate_rotary(t, cos, sin):
    """vit-pytorch's GoldenGateRoPENd.forward on t (b, h, n, d): the first and second halves of each head's features
    rotated as pairs, computed in float32 (or wider) and cast back to t's dtype."""
    dtype = jnp.promote_types(t.dtype, jnp.float32)
    x, y = jnp.split(t.astype(dtype), 2, axis=-1)
    cos, sin = cos.astype(dtype), sin.astype(dtype)
    return jnp.concatenate((x * cos - y * sin, x * sin + y * cos), axis=-1).astype(t.dtype)


class Attention(nn.Module):
    dim: int
    heads: int = 8
    dim_head: int = 64
    dropout: float = 0.0
    num_patches_per_dim: tuple[int, ...] = ()  # with causal_dims: the grid the causal mask is built for
    causal_dims: tuple[int, ...] | None = None
    attention_impl: str = 'explicit'  # JAX-only, see the module docstring

    def embed_positions(self, q, k, pos_emb):
        """Queries and keys (b, h, n, d) with their positions: rotated by the (cos, sin) tables."""
        return apply_golden_gate_rotary(q, *pos_emb), apply_golden_gate_rotary(k, *pos_emb)

    @nn.compact
    def __call__(self, x, pos_emb=None, train: bool = False):
        inner_dim = self.dim_head * self.heads
        project_out = not (self.heads == 1 and self.dim_head == self.dim)
        scale = self.dim_head**-0.5

        x = LayerNorm(name='norm')(x)
        q, k = jnp.split(Linear(inner_dim * 2, use_bias=False, name='to_qk')(x), 2, axis=-1)
        v = Linear(inner_dim, use_bias=False, name='to_v')(x)
        q, k, v = (rearrange(t, 'b n (h d) -> b h n d', h=self.heads) for t in (q, k, v))
        if exists(pos_emb):
            q, k = self.embed_positions(q, k, pos_emb)

        mask = None
        if exists(self.causal_dims):
            mask = jnp.asarray(nd_causal_mask(self.num_patches_per_dim, self.causal_dims))

        if uses_fused_attention(self.attention_impl, 0.0, train):
            q, k, v = (rearrange(t, 'b h n d -> b n h d') for t in (q, k, v))
            # jax.nn.dot_product_attention wants values as wide as the keys (vit_nd_pope's are twice as wide):
            # zero features added to the values come out as zero features of the output
            dim_v = v.shape[-1]
            v = jnp.pad(v, ((0, 0), (0, 0), (0, 0), (0, q.shape[-1] - dim_v)))
            out = fused_attention(q, k, v, scale, self.attention_impl, None if mask is None else mask[None, None])
            out = rearrange(out[..., :dim_v], 'b n h d -> b n (h d)')
        else:
            attn = attention_weights(q, k, scale, mask)
            record_attention_map(self, attn)
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
    attention_class = Attention  # vit_nd_pope's attention embeds positions its own way

    @nn.compact
    def __call__(self, x, pos_emb, train: bool = False):
        x = self.attention_class(self.dim, self.heads, self.dim_head, self.dropout, self.num_patches_per_dim,
                                 self.causal_dims, self.attention_impl, name='0')(x, pos_emb, train) + x
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
    layer_class = Layer

    @nn.compact
    def __call__(self, x, pos_emb, train: bool = False):
        attention_args = (self.dim, self.heads, self.dim_head)
        masking = (self.num_patches_per_dim, self.causal_dims, self.attention_impl)
        if self.scan_layers:
            # the position tables are the same in every layer; `train` is a Python value
            layers = layer_scan(self.layer_class, self.depth, self.remat_policy, broadcast=1, flags=1)
            x, _ = layers(*attention_args, self.mlp_dim, self.dropout, *masking, name=scanned_name('layers'))(
                x, pos_emb, train)
        else:
            attention = remat(self.layer_class.attention_class, self.remat_policy, static_argnums=(3,))
            feed_forward = remat(FeedForward, self.remat_policy, static_argnums=(2,))
            for i in range(self.depth):
                x = attention(*attention_args, self.dropout, *masking, name=f'layers_{i}_0')(x, pos_emb, train) + x
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
    channels: int = 3
    dim_head: int = 64
    dropout: float = 0.0
    emb_dropout: float = 0.0
    rope_min_freq: float = 1.0
    rope_max_freq: float = 10000.0
    rope_p_zero_freqs: float = 0.0
    causal_dims: int | tuple[int, ...] | None = None
    scan_layers: bool = False  # JAX-only, see the module docstring
    remat_policy: str | None = None  # JAX-only
    attention_impl: str = 'explicit'  # JAX-only

    def __post_init__(self):
        check_keywords(self)
        check_nd_config(self)
        if self.dim_head % 2:
            raise ValueError(f'the golden gate rotary embedding rotates the two halves of each head as pairs: '
                             f'dim_head must be even, got dim_head={self.dim_head}')
        check_remat_policy(self.remat_policy)
        check_attention_impl(self.attention_impl)
        super().__post_init__()

    def torch_aliases(self) -> dict[str, str]:
        """vit-pytorch's second names of the shared rotary module: one per attention layer."""
        return {f'transformer.layers.{i}.0.rotary_emb.': 'rotary_emb.' for i in range(self.depth)}

    @property
    def num_patches_per_dim(self) -> tuple[int, ...]:
        return num_patches_per_dim(self.input_shape, self.patch_size, self.ndim)

    @nn.compact
    def __call__(self, x, return_embed: bool = False, train: bool = False):
        rotary_emb = GoldenGateRoPENd(self.ndim, self.heads, self.dim_head, self.rope_min_freq, self.rope_max_freq,
                                      self.rope_p_zero_freqs, name='rotary_emb')
        return nd_forward(self, x, rotary_emb, Transformer, return_embed, train)


def nd_forward(model: nn.Module, x, position_embedding: nn.Module, transformer_class: type[nn.Module],
               return_embed: bool, train: bool):
    """The forward of vit_nd_rotary's and vit_nd_pope's ViTND, inside `model`'s compact call: patch tokens, the
    position tables of `position_embedding` for the grid, the transformer, then the mean-pooled logits or the tokens
    as (batch, *grid, dim)."""
    x = nd_patch_tokens(model, x)
    x = Linear(model.dim, name='to_patch_embedding_1')(x)
    x = LayerNorm(name='to_patch_embedding_2')(x)
    x = nn.Dropout(model.emb_dropout, deterministic=not train)(x)

    grid = model.num_patches_per_dim
    pos_emb = position_embedding(grid_positions(grid))
    transformer = transformer_class(
        model.dim, model.depth, model.heads, model.dim_head, model.mlp_dim, model.dropout, grid,
        causal_dims_tuple(model.causal_dims), scan_layers=model.scan_layers, remat_policy=model.remat_policy,
        attention_impl=model.attention_impl, name='transformer',
    )
    embed = transformer(x, pos_emb, train)

    if return_embed:
        names = DIM_NAMES[:model.ndim]
        return rearrange(embed, f"b ({' '.join(names)}) d -> b {' '.join(names)} d", **dict(zip(names, grid)))
    return Linear(model.num_classes, name='mlp_head')(embed.mean(axis=1))
