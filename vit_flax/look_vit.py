"""LookViT ("LookupViT: Compressing visual information to a limited number of tokens", Koner et al., 2024),
mirroring vit_pytorch/look_vit.py.

Two token sets: high-resolution tokens from a convolution over `highres_patch_size` patches (plus a fixed 2D sin-cos
embedding), and a few main tokens, the high-resolution map bilinearly downsampled to `image_size // patch_size` a
side. In each layer the main tokens cross-attend to the high-resolution ones (the lookup), then self-attend and run
an MLP; the high-resolution tokens then attend back to the main ones through the lookup's transposed attention logits
(no queries or keys of their own), and run their own norm and MLP. The logits classify the sum of both sets' mean
tokens. Every LayerNorm is vit-pytorch's bias-free one with a unit offset: `LayerNorm(x) * (gamma + 1)`, gamma from 0.

Parameter tree = vit-pytorch's module tree: `layers.0.2.to_q.weight` lives at `params/layers_0/2/to_q/kernel`,
`layers.0.1.0.gamma` (the MLP's norm, an nn.Sequential) at `params/layers_0/1/0/gamma`, the patch convolution
`to_patches.1.weight` at `params/to_patches_1/kernel`.

Quirks of vit-pytorch kept so weights transfer:
- `pos_embedding` (num_patches, dim), drawn like torch.randn, is a parameter the forward never reads: the
  high-resolution tokens take the fixed sin-cos embedding (layers.posemb_sincos_2d) instead.
- High-resolution patches are flattened in `(p1 p2 c)` order as the convolution's input channels.
- `dropout` defaults to 0.1 (attention maps, MLP hidden and outputs, attention outputs), in training only.
- The main tokens' count is fixed by the image (`image_size // patch_size` a side); the input must be
  `image_size` x `image_size`, as vit-pytorch asserts.

Refused here where vit-pytorch computes NaN: `dim` < 8 (the sin-cos embedding divides by `dim // 4 - 1`).

No random draws but dropout ('dropout' stream, in training).

JAX-only options (defaults keep vit-pytorch's behaviour and tree; see vit_flax/scan.py):
- `scan_layers=True` runs the layers as one `nn.scan`, parameters stacked on a leading axis under
  `params/layers_scan/{0..5}`, which the converters map to torch's `layers.{i}.{0..5}`.
- `remat_policy`: a `jax.checkpoint_policies` name under which the backward pass recomputes each layer.
- `attention_impl`: the main tokens' self-attention only, 'explicit' (vit-pytorch's softmax(q k^T) v) or 'xla' /
  'cudnn' / 'auto' for jax.nn.dot_product_attention; the lookup and its reuse need the attention logits, which
  fused kernels do not return, so they always form them.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange

from vit_flax import layers
from vit_flax.layers import (
    Conv, Linear, check_attention_impl, check_floating_input, check_keywords, check_sincos_dim, exists,
    fused_attention, gelu, posemb_sincos_2d, randn, record_attention_map, residual_boundary, softmax,
    uses_fused_attention,
)
from vit_flax.scan import check_remat_policy, layer_scan, remat, scanned_name


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) weights of torch's bilinear interpolation along one axis (`align_corners=False`, output
    size given, no antialiasing): output i samples `(i + 0.5) * in / out - 0.5`, clamped at 0."""
    scale = in_size / out_size
    weights = np.zeros((out_size, in_size), np.float64)
    for i in range(out_size):
        source = max(scale * (i + 0.5) - 0.5, 0.0)
        i0 = int(source)
        i1 = i0 + (1 if i0 < in_size - 1 else 0)
        fraction = source - i0
        weights[i, i0] += 1.0 - fraction
        weights[i, i1] += fraction
    return weights


def interpolate_bilinear(x, size: int):
    """F.interpolate(mode='bilinear') of channels-last maps (b, h, w, d) to (b, size, size, d)."""
    rows = jnp.asarray(bilinear_matrix(x.shape[1], size), x.dtype)
    columns = jnp.asarray(bilinear_matrix(x.shape[2], size), x.dtype)
    return jnp.einsum('oh,pw,bhwd->bopd', rows, columns, x)


class LayerNorm(nn.Module):
    """Bias-free LayerNorm with a unit offset: torch's LayerNorm without affine parameters, times `gamma + 1`
    (`gamma` from zeros)."""

    dim: int

    @nn.compact
    def __call__(self, x):
        normed = layers.LayerNorm(use_bias=False, use_scale=False, name='ln')(x)
        gamma = self.param('gamma', nn.initializers.zeros, (self.dim,))
        return normed * (gamma + 1).astype(x.dtype)


class MLP(nn.Module):
    """vit-pytorch's `MLP(dim, factor)`, an nn.Sequential: LayerNorm `0`, Linear `1`, GELU, Dropout, Linear `4`,
    Dropout."""

    dim: int
    factor: float = 4
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = LayerNorm(self.dim, name='0')(x)
        x = gelu(Linear(int(self.dim * self.factor), name='1')(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = Linear(self.dim, name='4')(x)
        return nn.Dropout(self.dropout, deterministic=not train)(x)


class Attention(nn.Module):
    dim: int
    heads: int = 8
    dim_head: int = 64
    dropout: float = 0.0
    cross_attend: bool = False
    reuse_attention: bool = False
    attention_impl: str = 'explicit'  # JAX-only: fused kernels where the logits are neither returned nor given

    @nn.compact
    def __call__(self, x, context=None, return_qk_sim: bool = False, qk_sim=None, train: bool = False):
        inner_dim = self.dim_head * self.heads
        scale = self.dim_head**-0.5
        if not self.reuse_attention:
            x = LayerNorm(self.dim, name='norm')(x)
        if exists(context) != self.cross_attend:
            raise ValueError(f'a context is given if and only if the attention cross-attends (cross_attend='
                             f'{self.cross_attend})')
        context = LayerNorm(self.dim, name='norm_context')(context) if self.cross_attend else x

        split_heads = lambda t: rearrange(t, 'b n (h d) -> b h n d', h=self.heads)  # noqa: E731
        v = split_heads(Linear(inner_dim, use_bias=False, name='to_v')(context))

        if not self.reuse_attention:
            q = split_heads(Linear(inner_dim, use_bias=False, name='to_q')(x)) * scale
            k = split_heads(Linear(inner_dim, use_bias=False, name='to_k')(context))
            if not return_qk_sim and uses_fused_attention(self.attention_impl, self.dropout, train):
                q, k, v = (rearrange(t, 'b h n d -> b n h d') for t in (q, k, v))
                out = rearrange(fused_attention(q, k, v, 1.0, self.attention_impl), 'b n h d -> b n (h d)')
                return self._to_out(out, train)
            qk_sim = jnp.einsum('bhid,bhjd->bhij', q, k)
        elif qk_sim is None:
            raise ValueError('qk sim matrix must be passed in for reusing previous attention')

        attn = softmax(qk_sim, axis=-1)
        record_attention_map(self, attn)
        attn = nn.Dropout(self.dropout, deterministic=not train)(attn)
        out = rearrange(jnp.einsum('bhij,bhjd->bhid', attn, v), 'b h n d -> b n (h d)')
        out = self._to_out(out, train)
        return (out, qk_sim) if return_qk_sim else out

    def _to_out(self, out, train: bool):
        out = Linear(self.dim, use_bias=False, name='to_out_1')(out)
        return nn.Dropout(self.dropout, deterministic=not train)(out)


class Layer(nn.Module):
    """One of vit-pytorch's `layers` (its six modules `0` ... `5`) on the carry (main tokens, high-resolution tokens):
    the body of the layer scan, returning nn.scan's (carry, nothing per layer)."""

    dim: int
    heads: int
    dim_head: int
    mlp_factor: float
    highres_mlp_factor: float
    cross_attn_heads: int
    cross_attn_dim_head: int
    dropout: float
    attention_impl: str = 'explicit'

    @nn.compact
    def __call__(self, carry, train: bool = False):
        tokens, highres_tokens = carry
        cross = dict(dim_head=self.cross_attn_dim_head, heads=self.cross_attn_heads, dropout=self.dropout,
                     cross_attend=True)

        # the main tokens look up the high-resolution ones, keeping the attention logits to reuse
        lookup_out, qk_sim = Attention(self.dim, **cross, name='2')(tokens, highres_tokens, return_qk_sim=True,
                                                                      train=train)
        tokens = lookup_out + tokens
        tokens = Attention(self.dim, self.heads, self.dim_head, self.dropout, attention_impl=self.attention_impl,
                           name='0')(tokens, train=train) + tokens
        tokens = MLP(self.dim, self.mlp_factor, self.dropout, name='1')(tokens, train) + tokens

        # the high-resolution tokens attend back through the transposed logits
        qk_sim = rearrange(qk_sim, 'b h i j -> b h j i')
        highres_tokens = Attention(self.dim, **cross, reuse_attention=True, name='3')(
            highres_tokens, tokens, qk_sim=qk_sim, train=train) + highres_tokens
        highres_tokens = LayerNorm(self.dim, name='4')(highres_tokens)
        highres_tokens = MLP(self.dim, self.highres_mlp_factor, self.dropout, name='5')(highres_tokens, train) + \
            highres_tokens
        return (tokens, highres_tokens), None


class LookViT(nn.Module):
    dim: int
    image_size: int
    num_classes: int
    depth: int = 3
    patch_size: int = 16
    heads: int = 8
    mlp_factor: float = 4
    dim_head: int = 64
    highres_patch_size: int = 12
    highres_mlp_factor: float = 4
    cross_attn_heads: int = 8
    cross_attn_dim_head: int = 64
    patch_conv_kernel_size: int = 7
    dropout: float = 0.1
    channels: int = 3
    scan_layers: bool = False  # JAX-only, see the module docstring
    remat_policy: str | None = None  # JAX-only
    attention_impl: str = 'explicit'  # JAX-only

    def __post_init__(self):
        check_keywords(self)
        for name in ('image_size', 'patch_size', 'highres_patch_size'):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f'LookViT takes a single int {name} (square images and patches), got {name}={value!r}')
        for name in ('highres_patch_size', 'patch_size'):
            if self.image_size % getattr(self, name):
                raise ValueError(f'LookViT: image_size={self.image_size} must be divisible by {name}='
                                 f'{getattr(self, name)}')
        if self.patch_size <= self.highres_patch_size:
            raise ValueError('patch size of the main vision transformer should be larger than the highres patch size '
                             f'(that does the `lookup`): patch_size={self.patch_size}, highres_patch_size='
                             f'{self.highres_patch_size}')
        if self.patch_conv_kernel_size % 2 == 0:
            raise ValueError(f'LookViT: patch_conv_kernel_size={self.patch_conv_kernel_size} must be odd')
        check_sincos_dim(self.dim)
        check_remat_policy(self.remat_policy)
        check_attention_impl(self.attention_impl)
        super().__post_init__()

    @nn.compact
    def __call__(self, img, train: bool = False):
        check_floating_input(self, 'img', img)
        if img.ndim != 4 or img.shape[1:] != (self.image_size, self.image_size, self.channels):
            raise ValueError(f'LookViT takes images of shape (batch, {self.image_size}, {self.image_size}, '
                             f'{self.channels}), got {img.shape}')
        p = self.highres_patch_size
        kernel_size = self.patch_conv_kernel_size

        # to patch tokens and positions
        x = rearrange(img, 'b (h p1) (w p2) c -> b h w (p1 p2 c)', p1=p, p2=p)
        x = Conv(self.dim, kernel_size, padding=kernel_size // 2, name='to_patches_1')(x)
        highres_tokens = LayerNorm(self.dim, name='to_patches_3')(x)
        size = highres_tokens.shape[1]

        self.param('pos_embedding', randn, ((self.image_size // p) ** 2, self.dim))  # unused, as in vit-pytorch
        pos_emb = posemb_sincos_2d(size, highres_tokens.shape[2], self.dim)
        highres_tokens = highres_tokens + jnp.asarray(pos_emb, highres_tokens.dtype).reshape(highres_tokens.shape[1:])

        tokens = interpolate_bilinear(highres_tokens, img.shape[2] // self.patch_size)
        tokens = rearrange(tokens, 'b h w c -> b (h w) c')
        highres_tokens = rearrange(highres_tokens, 'b h w c -> b (h w) c')

        # attention and feedforwards
        config = (self.dim, self.heads, self.dim_head, self.mlp_factor, self.highres_mlp_factor, self.cross_attn_heads,
                  self.cross_attn_dim_head, self.dropout, self.attention_impl)
        carry = (tokens, highres_tokens)
        if self.scan_layers:
            carry, _ = layer_scan(Layer, self.depth, self.remat_policy, flags=1)(
                *config, name=scanned_name('layers'))(carry, train)
        else:
            layer = remat(Layer, self.remat_policy, static_argnums=(2,))
            for i in range(self.depth):
                carry, _ = layer(*config, name=f'layers_{i}')(carry, train)
                carry = jax.tree_util.tree_map(residual_boundary, carry)  # linear backward work on CPU (layers.py)
        tokens, highres_tokens = carry

        # to logits
        tokens = LayerNorm(self.dim, name='norm')(tokens).mean(axis=1)
        highres_tokens = LayerNorm(self.dim, name='highres_norm')(highres_tokens).mean(axis=1)
        return Linear(self.num_classes, use_bias=False, name='to_logits')(tokens + highres_tokens)
