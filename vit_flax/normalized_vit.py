"""nViT, the normalised vision transformer ("nGPT: Normalized Transformer with Representation Learning on the
Hypersphere", Loshchilov et al., 2024, for images), mirroring vit_pytorch/normalized_vit.py.

Every token lives on the unit sphere: after the patch embedding and after each attention and feed-forward branch
the tokens are l2-normalised, and each branch moves them towards its (normalised) output by a learned per-feature
interpolation (`lerp`) instead of adding a residual. Every Linear is a NormLinear, whose weight is l2-normalised along
its input features (or, with `norm_dim_in=False`, its output features). The attention has no softmax scale: the
queries and keys are normalised and scaled by learned `q_scale` / `k_scale` (starting at dim_head ** 0.25); the
feed-forward is a SwiGLU of width `int(mlp_dim * 2 / 3)`; the logits are scaled by a learned `logit_scale` and
sqrt(dim).

Normalised weights: vit-pytorch keeps them normalised with `torch.nn.utils.parametrize`, which stores the raw weight
(`to_q.linear.parametrizations.weight.original`) and normalises it at every use. The port does the same explicitly:
it stores the raw kernel, `params/.../to_q/linear/original_kernel` ((in, out), torch's weight transposed; the leaf
rule in converters/rules.py), and normalises it in the forward, so gradients flow through the normalisation as in
torch. (vit-pytorch's `norm_weights_()`, which writes the normalised weights back into the raw ones after an
optimiser step, is `norm_weights` here: a function of the params that returns new params; it changes no output.)

Parameter tree = vit-pytorch's module tree: `layers.0.0.q_scale` lives at `params/layers_0_0/q_scale`; the
residual interpolation weights `residual_lerp_scales.0.1` (nested torch nn.ParameterLists) at
`params/residual_lerp_scales_0_1/parameter_list_entry` (layers.ParameterListEntry).

Quirks of vit-pytorch kept so weights transfer:
- Patches are flattened in `(c p1 p2)` order (ViT's is `(p1 p2 c)`); `patch_size` is one int.
- The absolute position embedding is the (normalised) weight of a NormLinear(dim, num_patches) that is never applied
  as a layer: its first rows, one per patch of the input (an input smaller than `image_size` takes the first ones).
- `residual_lerp_scale_init=None` means 1 / depth; each interpolation weight is stored divided by sqrt(dim) and
  multiplied back in the forward.
- `num_classes=0` keeps an empty head, returning (batch, 0).

No random draws but attention and feed-forward dropout ('dropout' stream, in training).

JAX-only options (defaults keep vit-pytorch's behaviour and tree; see vit_flax/scan.py):
- `scan_layers=True` runs the layers as one `nn.scan`, parameters stacked on a leading axis under
  `params/layers_scan/{0,1}` and the interpolation weights under `params/residual_lerp_scales_scan/{0,1}`, which the
  converters map to torch's `layers.{i}.{0,1}` and `residual_lerp_scales.{i}.{0,1}`.
- `remat_policy`: a `jax.checkpoint_policies` name under which the backward pass recomputes each scanned layer
  (unscanned: each attention and feed-forward module).
- `attention_impl`: 'explicit' (softmax(q k^T) v, as torch's scaled_dot_product_attention computes on CPU) or 'xla' /
  'cudnn' / 'auto' for jax.nn.dot_product_attention.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from einops import rearrange
from flax import traverse_util

from vit_flax.layers import (
    ParameterListEntry, check_attention_impl, check_floating_input, check_keywords, default,
    l2_normalize, multi_head_attention, pair, residual_boundary, torch_uniform,
)
from vit_flax.scan import check_remat_policy, layer_scan, remat, scanned_name

ORIGINAL_KERNEL = 'original_kernel'


def normalized_kernel(kernel, norm_dim_in: bool = True):
    """A NormLinear's weight as torch's parametrization gives it: the raw (in, out) kernel l2-normalised along the
    input features (torch's weight's last axis), or along the output features with `norm_dim_in=False`."""
    return l2_normalize(kernel, axis=0 if norm_dim_in else 1)


class Linear(nn.Module):
    """The torch nn.Linear (no bias) inside a NormLinear, its raw weight under the name parametrize gives it."""

    features: int
    norm_dim_in: bool = True

    @nn.compact
    def weight(self, fan_in: int):
        """The normalised (in, out) kernel."""
        kernel = self.param(ORIGINAL_KERNEL, torch_uniform(fan_in), (fan_in, self.features))
        return normalized_kernel(kernel, self.norm_dim_in)

    def __call__(self, x):
        return jnp.dot(x, self.weight(x.shape[-1]).astype(x.dtype))


class NormLinear(nn.Module):
    dim: int
    dim_out: int
    norm_dim_in: bool = True

    def setup(self):
        self.linear = Linear(self.dim_out, self.norm_dim_in)

    def weight(self):
        """torch's layout, (out, in), normalised."""
        return self.linear.weight(self.dim).T

    def __call__(self, x):
        return self.linear(x)


class Attention(nn.Module):
    dim: int
    dim_head: int = 64
    heads: int = 8
    dropout: float = 0.0
    attention_impl: str = 'explicit'  # JAX-only, see the module docstring

    @nn.compact
    def __call__(self, x, train: bool = False):
        dim_inner = self.dim_head * self.heads
        q, k, v = (NormLinear(self.dim, dim_inner, name=name)(x) for name in ('to_q', 'to_k', 'to_v'))
        q, k = (rearrange(t, 'b n (h d) -> b h n d', h=self.heads) for t in (q, k))
        scale_init = nn.initializers.constant(self.dim_head**0.25)
        q_scale = self.param('q_scale', scale_init, (self.heads, 1, self.dim_head))
        k_scale = self.param('k_scale', scale_init, (self.heads, 1, self.dim_head))
        q = l2_normalize(q) * q_scale.astype(q.dtype)
        k = l2_normalize(k) * k_scale.astype(k.dtype)
        q, k = (rearrange(t, 'b h n d -> b n (h d)') for t in (q, k))
        # scale 1: the dim_head ** -0.5 is folded into q_scale * k_scale
        out = multi_head_attention(self, q, k, v, self.heads, 1.0, self.attention_impl, self.dropout, train)
        return NormLinear(dim_inner, self.dim, norm_dim_in=False, name='to_out')(out)


class FeedForward(nn.Module):
    dim: int
    dim_inner: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        dim_inner = int(self.dim_inner * 2 / 3)
        hidden = NormLinear(self.dim, dim_inner, name='to_hidden')(x)
        gate = NormLinear(self.dim, dim_inner, name='to_gate')(x)
        hidden = hidden * self.param('hidden_scale', nn.initializers.ones, (dim_inner,)).astype(x.dtype)
        gate = gate * self.param('gate_scale', nn.initializers.ones, (dim_inner,)).astype(x.dtype) * self.dim**0.5
        hidden = jax.nn.silu(gate) * hidden
        hidden = nn.Dropout(self.dropout, deterministic=not train)(hidden)
        return NormLinear(dim_inner, self.dim, norm_dim_in=False, name='to_out')(hidden)


def lerp(start, end, weight):
    """torch.lerp: start + weight * (end - start)."""
    return start + weight * (end - start)


class Layer(nn.Module):
    """One layer (attention, then feed-forward, each interpolated into the normalised tokens): the body of the layer
    scan, taking the layer's two interpolation weights and returning nn.scan's (carry, nothing per layer)."""

    dim: int
    heads: int
    dim_head: int
    mlp_dim: int
    dropout: float = 0.0
    attention_impl: str = 'explicit'

    @nn.compact
    def __call__(self, tokens, attn_alpha, ff_alpha, train: bool = False):
        scale = self.dim**0.5
        attn_out = l2_normalize(Attention(self.dim, self.dim_head, self.heads, self.dropout, self.attention_impl,
                                          name='0')(tokens, train))
        tokens = l2_normalize(lerp(tokens, attn_out, attn_alpha.astype(tokens.dtype) * scale))
        ff_out = l2_normalize(FeedForward(self.dim, self.mlp_dim, self.dropout, name='1')(tokens, train))
        return l2_normalize(lerp(tokens, ff_out, ff_alpha.astype(tokens.dtype) * scale)), None


class LerpScales(nn.Module):
    """torch's inner nn.ParameterList `residual_lerp_scales.{i}`: entries `0` (attention) and `1` (feed-forward) of
    `shape` ((dim,), or (depth, dim) for a scanned stack)."""

    shape: tuple[int, ...]
    value: float

    @nn.compact
    def __call__(self):
        init = nn.initializers.constant(self.value)
        return ParameterListEntry(self.shape, init, name='0')(), ParameterListEntry(self.shape, init, name='1')()


class nViT(nn.Module):  # noqa: N801 (vit-pytorch's name)
    image_size: int | tuple[int, int]
    patch_size: int
    num_classes: int
    dim: int
    depth: int
    heads: int
    mlp_dim: int
    dropout: float = 0.0
    channels: int = 3
    dim_head: int = 64
    residual_lerp_scale_init: float | None = None
    scan_layers: bool = False  # JAX-only, see the module docstring
    remat_policy: str | None = None  # JAX-only
    attention_impl: str = 'explicit'  # JAX-only

    def __post_init__(self):
        check_keywords(self)
        if isinstance(self.patch_size, bool) or not isinstance(self.patch_size, int):
            raise ValueError(f'nViT takes a single int patch_size (square patches), got patch_size={self.patch_size!r}')
        image_height, image_width = pair(self.image_size)
        if image_height % self.patch_size or image_width % self.patch_size:
            raise ValueError(f'Image dimensions must be divisible by the patch size: image_size={self.image_size}, '
                             f'patch_size={self.patch_size}')
        check_remat_policy(self.remat_policy)
        check_attention_impl(self.attention_impl)
        super().__post_init__()

    @property
    def num_patches(self) -> int:
        image_height, image_width = pair(self.image_size)
        return (image_height // self.patch_size) * (image_width // self.patch_size)

    @nn.compact
    def __call__(self, images, train: bool = False):
        check_floating_input(self, 'images', images)
        p = self.patch_size
        if images.ndim != 4 or images.shape[-1] != self.channels:
            raise ValueError(f'expected images of shape (batch, height, width, {self.channels}), got {images.shape}')
        if images.shape[1] % p or images.shape[2] % p:
            raise ValueError(f'image of size {images.shape[1:3]} is not divisible by patch size {p}')
        patches = rearrange(images, 'b (h p1) (w p2) c -> b (h w) (c p1 p2)', p1=p, p2=p)
        tokens = NormLinear(patches.shape[-1], self.dim, norm_dim_in=False, name='to_patch_embedding_1')(patches)

        seq_len = tokens.shape[-2]
        abs_pos_emb = NormLinear(self.dim, self.num_patches, name='abs_pos_emb')
        if seq_len > self.num_patches:
            raise ValueError(f'input of size {images.shape[1:3]} gives {seq_len} patches, more than the '
                             f'{self.num_patches} position embeddings of image_size={self.image_size}')
        pos_emb = abs_pos_emb.weight()[:seq_len]
        tokens = l2_normalize(tokens + pos_emb.astype(tokens.dtype))

        scale = self.dim**0.5
        lerp_init = default(self.residual_lerp_scale_init, 1.0 / self.depth) / scale
        if self.scan_layers:
            alphas = LerpScales((self.depth, self.dim), lerp_init, name=scanned_name('residual_lerp_scales'))()
            layers = layer_scan(Layer, self.depth, self.remat_policy, scanned=2, flags=1)
            tokens, _ = layers(self.dim, self.heads, self.dim_head, self.mlp_dim, self.dropout, self.attention_impl,
                               name=scanned_name('layers'))(tokens, *alphas, train)
        else:
            layer = remat(Layer, self.remat_policy, static_argnums=(4,))
            for i in range(self.depth):
                attn_alpha, ff_alpha = (ParameterListEntry((self.dim,), nn.initializers.constant(lerp_init),
                                                           name=f'residual_lerp_scales_{i}_{j}')() for j in (0, 1))
                tokens, _ = layer(self.dim, self.heads, self.dim_head, self.mlp_dim, self.dropout,
                                  self.attention_impl, name=f'layers_{i}')(tokens, attn_alpha, ff_alpha, train)
                tokens = residual_boundary(tokens)  # linear, not quadratic, backward work on CPU (layers.py)

        pooled = tokens.mean(axis=1)
        logits = NormLinear(self.dim, self.num_classes, name='to_pred')(pooled)
        logit_scale = self.param('logit_scale', nn.initializers.ones, (self.num_classes,))
        return logits * logit_scale.astype(logits.dtype) * scale


def norm_weights(params):
    """vit-pytorch's `norm_weights_()`: every NormLinear's raw kernel replaced by its normalised self (new params; the
    outputs do not change). Works on scanned stacks too: normalisation acts on each layer's (in, out) axes."""
    flat = traverse_util.flatten_dict(params)
    out = {}
    for path, leaf in flat.items():
        if path[-1] == ORIGINAL_KERNEL:
            norm_dim_in = path[-3] not in ('to_out', 'to_patch_embedding_1')
            leaf = l2_normalize(leaf, axis=-2 if norm_dim_in else -1)
        out[path] = leaf
    return traverse_util.unflatten_dict(out)
