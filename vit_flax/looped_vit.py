"""LoopedViT (the Looped Diffusion Transformer of Chng et al., 2026, as a classifier: a block stack run several times
between a pre-loop and a post-loop stack, with deep supervision and an adaptive exit gate), mirroring
vit_pytorch/looped_vit.py.

Input is channels-last, (batch, *input_shape, channels) (vit-pytorch: (batch, channels, *input_shape)), of `ndim`
spatial dimensions (`input_shape`, or `image_size`, an int or a tuple; a tuple sets ndim), cut into `patch_size`
patches laid out `(p0 p1 ... c)`. A class token and a learned position embedding are added; `pre_loop` runs once,
then the `looped` stack (shared weights) runs `loop_depth` times (the forward's `loop_depth` overrides it), and after a
loop `decode` (the `post_loop` stack and a LayerNorm) and the head give that loop's logits. Every attention layer is
exclusive self-attention (the output's component along each token's own normalised value removed) gated per head by
`sigmoid(to_gate(x))`.

Forward options, as vit-pytorch's: `return_all_logits=True` returns every loop's logits (loops, batch, classes) for
deep supervision (`deep_supervision_loss`); `return_exit_benefits=True` also returns the exit gate's predicted benefit
of looping on, (loops - 1, batch), after every loop but the last (needs `adaptive_loop=True`; train it towards
`adaptive_exit_targets`); `adaptive_exit=True` stops at the first loop whose benefit is at most `exit_threshold` for
the whole batch.

Under jit the exit is traced, not Python control flow: every loop up to `loop_depth` is computed (no compute is
saved) and the outputs are those of the exit loop. Shapes are static: with `return_all_logits` / `return_exit_benefits`
the stacks keep all `loop_depth` (resp. `loop_depth - 1`) entries, those after the exit repeating the exit loop's,
where vit-pytorch's stacks end at the exit. Without an exit before the last loop the outputs are vit-pytorch's.

Parameter tree = vit-pytorch's module tree (`pre_loop.layers.0.0.to_qkv.weight` at
`params/pre_loop/layers_0_0/to_qkv/kernel`, the gate at `params/exit_gate/...`, present only with
`adaptive_loop=True`, as vit-pytorch registers it only then). vit-pytorch's `loop_weights` is a non-persistent buffer
(not in its state dict): here `deep_supervision_weights(loop_depth, deep_supervision_weighting)`, a property.

Quirks of vit-pytorch kept: `num_classes=0` has no head and returns the pooled features; `pool='mean'` averages the
patch tokens (not the class token); the input must have exactly `input_shape` (the whole position table is added).
Refused here at construction, where vit-pytorch asserts: no `input_shape` nor `image_size`, ndim outside [1, 7], a
size not divisible by its patch, an unknown pool or deep supervision weighting, weights not one per loop; at the call:
`loop_depth < 1`, and exit benefits asked of a model without the gate or with a single loop.

Random draws: dropout only, from the 'dropout' stream (`train=True`; attention dropout too, as torch's
scaled_dot_product_attention applies it in training).

JAX-only options (defaults keep vit-pytorch's behaviour and tree; see vit_flax/scan.py): `scan_layers=True` runs each
stack's layers as one `nn.scan`, parameters stacked under `params/<stack>/layers_scan/{0,1}`; `remat_policy`
recomputes each layer's (unscanned: each attention and feed-forward module's) activations in the backward pass;
`attention_impl` 'xla' / 'cudnn' / 'auto' compute the stacks' attention with jax.nn.dot_product_attention.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange, repeat

from vit_flax.layers import (
    LayerNorm, Linear, check_attention_impl, check_keywords, default, exists, gelu, l2_normalize,
    multi_head_attention, randn, residual_boundary, softmax,
)
from vit_flax.scan import check_remat_policy, layer_scan, remat, scanned_name
from vit_flax.vit import FeedForward
from vit_flax.vit_nd import ensure_tuple, nd_patch_tokens

# deep supervision

DEEP_SUPERVISION_WEIGHTINGS = dict(
    final=lambda n: np.concatenate((np.zeros(n - 1), np.ones(1))).astype(np.float32),
    exponential=lambda n: (2.0 ** (np.arange(n) - (n - 1))).astype(np.float32),
    final_mean=lambda n: np.concatenate((np.full((n - 1,), 1.0 / max(n - 1, 1)), np.ones(1))).astype(np.float32),
)


def deep_supervision_weights(num_loops: int, weighting='final_mean') -> np.ndarray:
    """vit-pytorch's per-loop loss weights: a named weighting ('final', 'exponential', 'final_mean') or one weight
    per loop, float32 (num_loops,)."""
    if isinstance(weighting, str):
        if weighting not in DEEP_SUPERVISION_WEIGHTINGS:
            raise ValueError(f'unknown weighting {weighting!r}: use one of {", ".join(DEEP_SUPERVISION_WEIGHTINGS)} '
                             'or one weight per loop')
        return DEEP_SUPERVISION_WEIGHTINGS[weighting](num_loops)
    weights = np.asarray(weighting, np.float32)
    if weights.shape != (num_loops,):
        raise ValueError(f'expected {num_loops} loop weights, one per loop, got shape {weights.shape}')
    return weights


def cross_entropy(logits, labels, label_smoothing: float = 0.0):
    """torch's F.cross_entropy(reduction='none') on logits (..., classes) and integer labels (...)."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), axis=-1)
    nll = -jnp.take_along_axis(log_probs, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    if label_smoothing == 0:
        return nll
    return (1 - label_smoothing) * nll - label_smoothing * log_probs.mean(axis=-1)


def per_loop_losses(logits, labels, label_smoothing: float = 0.0):
    """Cross-entropy of every loop's logits (loops, batch, classes), or one loop's (batch, classes): (loops, batch)."""
    if logits.ndim == 2:
        logits = logits[None]
    return cross_entropy(logits, jnp.broadcast_to(labels, logits.shape[:2]), label_smoothing)


def deep_supervision_loss(logits, labels, weighting='final_mean', label_smoothing: float = 0.0):
    """vit-pytorch's deep supervision loss: the loops' cross-entropies weighted by `deep_supervision_weights`, summed
    over loops and averaged over the batch (for (batch, classes) logits, their mean cross-entropy)."""
    if logits.ndim == 2:
        return cross_entropy(logits, labels, label_smoothing).mean()
    losses = per_loop_losses(logits, labels, label_smoothing)
    weights = jnp.asarray(deep_supervision_weights(logits.shape[0], weighting), losses.dtype)
    return (losses * weights[:, None]).sum(axis=0).mean()


def adaptive_exit_targets(logits, labels, label_smoothing: float = 0.0):
    """vit-pytorch's targets for the exit gate, (loops - 1, batch), without gradient: after loop r, the largest
    per-loop loss decrease `(loss_r - loss_k) / (k - r)` over later loops k, at least 0."""
    loops = logits.shape[0]
    if loops <= 1:
        raise ValueError('need at least 2 loops to compute adaptive exit targets')
    losses = jax.lax.stop_gradient(per_loop_losses(logits, labels, label_smoothing))
    loop_index = np.arange(loops)
    r, k = loop_index[:, None, None], loop_index[None, :, None]
    diffs = losses[:, None, :] - losses[None, :, :]
    gains = jnp.where(k > r, diffs / np.maximum(k - r, 1), 0.0)
    return jnp.maximum(gains, 0.0).max(axis=1)[:-1]


# classes


class Attention(nn.Module):
    dim: int
    heads: int = 8
    dim_head: int = 64
    dropout: float = 0.0
    attention_impl: str = 'explicit'  # JAX-only, see the module docstring

    @nn.compact
    def __call__(self, x, train: bool = False):
        inner_dim = self.heads * self.dim_head
        normed = LayerNorm(name='norm')(x)
        q, k, v = jnp.split(Linear(inner_dim * 3, use_bias=False, name='to_qkv')(normed), 3, axis=-1)
        out = multi_head_attention(self, q, k, v, self.heads, self.dim_head**-0.5, self.attention_impl,
                                   self.dropout, train)
        out, v = (rearrange(t, 'b n (h d) -> b h n d', h=self.heads) for t in (out, v))

        # exclusive self-attention
        v_hat = l2_normalize(v)
        out = out - (out * v_hat).sum(axis=-1, keepdims=True) * v_hat

        # headwise gate
        gate = jax.nn.sigmoid(Linear(self.heads, use_bias=False, name='to_gate')(normed))
        out = out * rearrange(gate, 'b n h -> b h n 1')

        out = Linear(self.dim, use_bias=False, name='to_out_0')(rearrange(out, 'b h n d -> b n (h d)'))
        return nn.Dropout(self.dropout, deterministic=not train)(out)


class Layer(nn.Module):
    """One of vit-pytorch's `layers` (attention, then feed-forward, each with its residual): the body of the layer
    scan, returning nn.scan's (carry, nothing per layer)."""

    dim: int
    heads: int
    dim_head: int
    mlp_dim: int
    dropout: float = 0.0
    attention_impl: str = 'explicit'

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = Attention(self.dim, self.heads, self.dim_head, self.dropout, self.attention_impl, name='0')(x, train) + x
        x = FeedForward(self.dim, self.mlp_dim, self.dropout, name='1')(x, train) + x
        return x, None


class Transformer(nn.Module):
    dim: int
    depth: int
    heads: int = 8
    dim_head: int = 64
    mlp_dim: int = 2048
    dropout: float = 0.0
    scan_layers: bool = False  # JAX-only, see the module docstring
    remat_policy: str | None = None  # JAX-only
    attention_impl: str = 'explicit'  # JAX-only

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.scan_layers:
            layers = layer_scan(Layer, self.depth, self.remat_policy, flags=1)
            x, _ = layers(self.dim, self.heads, self.dim_head, self.mlp_dim, self.dropout, self.attention_impl,
                          name=scanned_name('layers'))(x, train)
            return x
        attention = remat(Attention, self.remat_policy, static_argnums=(2,))
        feed_forward = remat(FeedForward, self.remat_policy, static_argnums=(2,))
        for i in range(self.depth):
            x = attention(self.dim, self.heads, self.dim_head, self.dropout, self.attention_impl,
                          name=f'layers_{i}_0')(x, train) + x
            x = residual_boundary(x)  # linear, not quadratic, backward work on CPU (layers.py)
            x = feed_forward(self.dim, self.mlp_dim, self.dropout, name=f'layers_{i}_1')(x, train) + x
            x = residual_boundary(x)
        return x


class AdaptiveLoopGate(nn.Module):
    """The exit gate: `num_queries` learned queries per head attend to the decoded tokens; their mean, through an
    MLP, is the predicted benefit of looping on, (batch,)."""

    dim: int
    heads: int = 8
    dim_head: int = 64
    num_queries: int = 4
    mlp_mult: int = 2
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        inner_dim = self.heads * self.dim_head
        queries = self.param('queries', nn.initializers.normal(stddev=self.dim_head**-0.5),
                             (self.heads, self.num_queries, self.dim_head))
        q = repeat(queries.astype(x.dtype), 'h q d -> b h q d', b=x.shape[0])
        k, v = jnp.split(Linear(inner_dim * 2, use_bias=False, name='to_kv')(LayerNorm(name='norm_kv')(x)), 2,
                         axis=-1)
        k, v = (rearrange(t, 'b n (h d) -> b h n d', h=self.heads) for t in (k, v))
        attn = softmax(jnp.einsum('bhqd,bhnd->bhqn', q, k) * self.dim_head**-0.5, axis=-1)
        attn = nn.Dropout(self.dropout, deterministic=not train)(attn)
        out = rearrange(jnp.einsum('bhqn,bhnd->bhqd', attn, v), 'b h q d -> b q (h d)')
        out = Linear(self.dim, use_bias=False, name='to_out')(out).mean(axis=1)

        out = LayerNorm(name='mlp_0')(out)
        out = gelu(Linear(self.dim * self.mlp_mult, name='mlp_1')(out))
        out = nn.Dropout(self.dropout, deterministic=not train)(out)
        return Linear(1, name='mlp_4')(out)[..., 0]


class LoopedViT(nn.Module):
    num_classes: int
    dim: int
    ndim: int = 2
    input_shape: int | tuple[int, ...] | None = None
    patch_size: int | tuple[int, ...] | None = None
    image_size: int | tuple[int, ...] | None = None
    pre_loop_depth: int = 6
    num_looped_blocks: int = 5
    post_loop_depth: int = 6
    loop_depth: int = 4
    deep_supervision_weighting: str | tuple[float, ...] = 'final_mean'
    pool: str = 'cls'
    heads: int = 8
    dim_head: int = 64
    mlp_dim: int = 2048
    channels: int = 3
    dropout: float = 0.0
    emb_dropout: float = 0.0
    adaptive_loop: bool = False
    exit_threshold: float = 0.0
    scan_layers: bool = False  # JAX-only, see the module docstring
    remat_policy: str | None = None  # JAX-only
    attention_impl: str = 'explicit'  # JAX-only

    def __post_init__(self):
        check_keywords(self)
        if not exists(default(self.input_shape, self.image_size)):
            raise ValueError('input_shape (or image_size) must be specified')
        if not 1 <= self.spatial_ndim <= 7:
            raise ValueError(f'ndim must be between 1 and 7, got ndim={self.spatial_ndim}')
        if self.pool not in {'cls', 'mean'}:
            raise ValueError(f"pool must be cls (cls token) or mean (mean pooling), got pool={self.pool!r}")
        if self.patch_size is None:
            raise ValueError('patch_size must be specified')
        input_shape = self.resolved_input_shape
        patch_size = ensure_tuple(self.patch_size, self.spatial_ndim)
        if any(side % patch for side, patch in zip(input_shape, patch_size)):
            raise ValueError(f'input dimensions must be divisible by the patch sizes: input_shape={input_shape}, '
                             f'patch_size={patch_size}')
        deep_supervision_weights(self.loop_depth, self.deep_supervision_weighting)
        check_remat_policy(self.remat_policy)
        check_attention_impl(self.attention_impl)
        super().__post_init__()

    @property
    def spatial_ndim(self) -> int:
        """`ndim`, or the length of a tuple `input_shape` (`image_size`), as vit-pytorch derives it."""
        input_shape = default(self.input_shape, self.image_size)
        return len(input_shape) if isinstance(input_shape, (tuple, list)) else self.ndim

    @property
    def resolved_input_shape(self) -> tuple[int, ...]:
        """The input's spatial shape, one entry per dimension."""
        return ensure_tuple(default(self.input_shape, self.image_size), self.spatial_ndim)

    @property
    def loop_weights(self) -> np.ndarray:
        """vit-pytorch's non-persistent `loop_weights` buffer."""
        return deep_supervision_weights(self.loop_depth, self.deep_supervision_weighting)

    def setup(self):
        stack = dict(heads=self.heads, dim_head=self.dim_head, mlp_dim=self.mlp_dim, dropout=self.dropout,
                     scan_layers=self.scan_layers, remat_policy=self.remat_policy, attention_impl=self.attention_impl)
        self.to_patch_embedding_1 = Linear(self.dim)
        self.to_patch_embedding_2 = LayerNorm()
        num_patches = math.prod(side // patch for side, patch in
                                zip(self.resolved_input_shape, ensure_tuple(self.patch_size, self.spatial_ndim)))
        self.cls_token = self.param('cls_token', randn, (1, 1, self.dim))
        self.pos_embedding = self.param('pos_embedding', randn, (1, num_patches + 1, self.dim))
        self.embedding_dropout = nn.Dropout(self.emb_dropout)
        self.pre_loop = Transformer(self.dim, self.pre_loop_depth, **stack)
        self.looped = Transformer(self.dim, self.num_looped_blocks, **stack)
        self.post_loop = Transformer(self.dim, self.post_loop_depth, **stack)
        self.norm = LayerNorm()
        if self.num_classes > 0:
            self.mlp_head = Linear(self.num_classes)
        if self.adaptive_loop:
            self.exit_gate = AdaptiveLoopGate(self.dim, heads=self.heads, dim_head=self.dim_head, dropout=self.dropout)

    def decode(self, x, train: bool = False):
        return self.norm(self.post_loop(x, train))

    def __call__(self, x, loop_depth: int | None = None, return_all_logits: bool = False,
                 return_exit_benefits: bool = False, adaptive_exit: bool = False, exit_threshold: float | None = None,
                 train: bool = False):
        max_loops = default(loop_depth, self.loop_depth)
        threshold = default(exit_threshold, self.exit_threshold)
        if max_loops < 1:
            raise ValueError(f'loop depth must be at least 1, got loop_depth={max_loops}')
        needs_benefits = adaptive_exit or return_exit_benefits
        if needs_benefits:
            if not self.adaptive_loop:
                raise ValueError('exit gate requires adaptive_loop = True on init')
            if max_loops <= 1:
                raise ValueError('adaptive looping with a single loop has nothing to gate')

        x = nd_patch_tokens(self, x, self.spatial_ndim, self.resolved_input_shape)
        x = self.to_patch_embedding_2(self.to_patch_embedding_1(x))
        cls_tokens = repeat(self.cls_token.astype(x.dtype), '1 1 d -> b 1 d', b=x.shape[0])
        x = jnp.concatenate((cls_tokens, x), axis=1)
        x = self.embedding_dropout(x + self.pos_embedding.astype(x.dtype), deterministic=not train)
        x = self.pre_loop(x, train)
        if self.adaptive_loop and self.is_initializing():
            self.exit_gate(x)  # vit-pytorch registers the gate's parameters whether a call uses it or not

        logits_per_loop, exit_benefits = [], []
        running = jnp.asarray(True)  # no exit yet (adaptive_exit): a traced flag, not Python control flow
        for loop in range(max_loops):
            x = self.looped(x, train)
            is_last = loop == max_loops - 1
            if not (is_last or needs_benefits or return_all_logits):
                continue

            decoded = self.decode(x, train)
            pooled = decoded[:, 1:].mean(axis=1) if self.pool == 'mean' else decoded[:, 0]
            logits = self.mlp_head(pooled) if self.num_classes > 0 else pooled
            if adaptive_exit and logits_per_loop:  # after an exit, repeat the exit loop's logits
                logits = jnp.where(running, logits, logits_per_loop[-1])
            logits_per_loop.append(logits)

            if is_last or not needs_benefits:
                continue
            benefit = self.exit_gate(decoded, train)
            if adaptive_exit:
                if exit_benefits:
                    benefit = jnp.where(running, benefit, exit_benefits[-1])
                running = running & (benefit.max() > threshold)
            exit_benefits.append(benefit)

        logits = jnp.stack(logits_per_loop) if return_all_logits else logits_per_loop[-1]
        return (logits, jnp.stack(exit_benefits)) if return_exit_benefits else logits

