"""ViT-5 (a modernised ViT: RMSNorm, query-key norm, layer scale, register tokens and 2D axial rotary embeddings),
mirroring vit_pytorch/vit_5.py.

Tokens are ordered class token, `num_registers` register tokens, patches; a learned position embedding covers all of
them. Every attention layer normalises its input, its queries and its keys with vit-pytorch's RMSNorm
(`normalize(x) * sqrt(dim) * g`, layers.RMSNorm) and rotates the queries and keys of every token but the class token
(vit_flax/rotary.py): the registers by a 1D table of base `reg_base`, the patches by an axial table of base `base`
(rows in the first half of each head's angles, columns in the second). Each residual branch is scaled by a learned
per-feature layer scale, starting at 1e-4.

Parameter tree = vit-pytorch's module tree: `transformer.layers.0.0.to_qkv.weight` lives at
`params/transformer/layers_0_0/to_qkv/kernel`, the layer scales `transformer.ls1.0` / `transformer.ls2.0` (torch
nn.ParameterLists) at `params/transformer/ls1_0/parameter_list_entry` (layers.ParameterListEntry), the RMSNorm
scales `...norm.g` at `.../norm/g`; the rotary frequencies, persistent buffers in torch, at
`buffers/rotary_emb/patch_inv_freq` and `buffers/rotary_emb/reg_inv_freq`, and the forward reads them from there
(`apply` needs the 'buffers' collection next to 'params').

Quirks of vit-pytorch kept so weights transfer:
- `num_classes=0` has no head and returns the transformer's (normalised) tokens, (batch, 1 + num_registers + n, dim).
- With `heads == 1 and dim_head == dim` the attention output projection (and its dropout) is dropped.
- An input smaller than `image_size` takes the first rows of the position embedding; only the token count has to fit.
- The rotary table is built for the square root of the patch count (`int(sqrt(n))` a side).

Refused here where vit-pytorch fails in its forward (a shape error): a patch grid that is not square (its rotary
table has `int(sqrt(n))**2` rows), at construction for `image_size` and at the call for the input, and a `dim_head`
that is not a multiple of 4 (the register and patch tables then differ in width, or miss the head's).

No random draws but dropout ('dropout' stream, in training).

JAX-only options (defaults keep vit-pytorch's behaviour and tree; see vit_flax/scan.py):
- `scan_layers=True` runs the layers as one `nn.scan`, parameters stacked on a leading axis under
  `params/transformer/layers_scan/{0,1}` and the layer scales under `params/transformer/ls{1,2}_scan`, which the
  converters map to torch's `transformer.layers.{i}.{0,1}` and `transformer.ls{1,2}.{i}`.
- `remat_policy`: a `jax.checkpoint_policies` name under which the backward pass recomputes each scanned layer
  (unscanned: each attention and feed-forward module).
- `attention_impl`: 'explicit' (vit-pytorch's softmax(q k^T) v, recorded by recorder.Recorder), or 'xla' / 'cudnn' /
  'auto' for jax.nn.dot_product_attention.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from einops import rearrange, repeat

from vit_flax.layers import (
    Linear, ParameterListEntry, RMSNorm, add_position_embedding, check_attention_impl,
    check_floating_input, check_keywords, gelu, multi_head_attention, pair, randn, residual_boundary,
)
from vit_flax.rotary import apply_rotary, interleave_pairs
from vit_flax.scan import check_remat_policy, layer_scan, remat, scanned_name
from vit_flax.vit import check_image_config, patchify

LAYER_SCALE_INIT = 1e-4


def inverse_frequencies(base: float, dim: int) -> np.ndarray:
    """`1 / base ** (arange(0, dim, 2) / dim)` in float32, as torch computes the buffers."""
    exponents = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
    return (np.float32(1.0) / (np.float32(base) ** exponents)).astype(np.float32)


def check_dim_head(dim_head: int):
    if dim_head % 4:
        raise ValueError(f'ViT-5 rotates each head by an axial rotary embedding: dim_head must be a multiple of 4, '
                         f'got dim_head={dim_head}')


def square_side(num_patches: int, what: str) -> int:
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(f'ViT-5 builds its axial rotary table for a square patch grid: {what} gives {num_patches} '
                         'patches, not a square number')
    return side


class AxialRotaryEmbedding(nn.Module):
    """The (sin, cos) tables, (1, 1, num_registers + n, dim), for the tokens after the class token: registers first
    (1D, base `reg_base`), then the n patches of a square grid (axial, base `base`)."""

    dim: int
    num_registers: int = 4
    base: int = 100000
    reg_base: int = 100

    @nn.compact
    def __call__(self, x):
        half_dim = self.dim // 2
        patch_inv_freq = self.variable('buffers', 'patch_inv_freq',
                                       lambda: jnp.asarray(inverse_frequencies(self.base, half_dim))).value
        reg_inv_freq = self.variable('buffers', 'reg_inv_freq',
                                     lambda: jnp.asarray(inverse_frequencies(self.reg_base, self.dim))).value
        dtype = jnp.promote_types(x.dtype, jnp.float32)
        num_patches = x.shape[-2] - self.num_registers
        n = square_side(num_patches, f'the input ({num_patches} patch tokens)')

        freqs = jnp.arange(n, dtype=dtype)[:, None] * patch_inv_freq.astype(dtype)[None, :]
        freqs_x = repeat(freqs, 'i d -> i j d', j=n)
        freqs_y = repeat(freqs, 'j d -> i j d', i=n)
        patch_freqs = rearrange(jnp.concatenate((freqs_x, freqs_y), axis=-1), 'i j d -> (i j) d')

        reg_freqs = jnp.arange(self.num_registers, dtype=dtype)[:, None] * reg_inv_freq.astype(dtype)[None, :]
        all_freqs = jnp.concatenate((reg_freqs, patch_freqs), axis=0)
        sin, cos = (interleave_pairs(t)[None, None] for t in (jnp.sin(all_freqs), jnp.cos(all_freqs)))
        return sin, cos


class FeedForward(nn.Module):
    dim: int
    hidden_dim: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = RMSNorm(self.dim, param_name='g', name='net_0')(x)
        x = gelu(Linear(self.hidden_dim, name='net_1')(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = Linear(self.dim, name='net_4')(x)
        return nn.Dropout(self.dropout, deterministic=not train)(x)


class Attention(nn.Module):
    dim: int
    heads: int = 8
    dim_head: int = 64
    dropout: float = 0.0
    attention_impl: str = 'explicit'  # JAX-only, see the module docstring

    @nn.compact
    def __call__(self, x, pos_emb=None, train: bool = False):
        inner_dim = self.dim_head * self.heads
        project_out = not (self.heads == 1 and self.dim_head == self.dim)

        x = RMSNorm(self.dim, param_name='g', name='norm')(x)
        qkv = jnp.split(Linear(inner_dim * 3, use_bias=False, name='to_qkv')(x), 3, axis=-1)
        q, k, v = (rearrange(t, 'b n (h d) -> b h n d', h=self.heads) for t in qkv)
        q = RMSNorm(self.dim_head, param_name='g', name='q_norm')(q)
        k = RMSNorm(self.dim_head, param_name='g', name='k_norm')(k)

        if pos_emb is not None:  # every token but the class token
            sin, cos = pos_emb
            q, k = (jnp.concatenate((t[:, :, :1], apply_rotary(t[:, :, 1:], sin, cos)), axis=2) for t in (q, k))

        q, k, v = (rearrange(t, 'b h n d -> b n (h d)') for t in (q, k, v))
        out = multi_head_attention(self, q, k, v, self.heads, self.dim_head**-0.5, self.attention_impl, self.dropout,
                                   train)
        if not project_out:
            return out
        out = Linear(self.dim, name='to_out_0')(out)
        return nn.Dropout(self.dropout, deterministic=not train)(out)


class Layer(nn.Module):
    """One layer (attention, then feed-forward, each scaled by its layer scale and added to the residual): the body of
    the layer scan, taking the layer's two scales and returning nn.scan's (carry, nothing per layer)."""

    dim: int
    heads: int
    dim_head: int
    mlp_dim: int
    dropout: float = 0.0
    attention_impl: str = 'explicit'

    @nn.compact
    def __call__(self, x, ls1, ls2, pos_emb, train: bool = False):
        x = Attention(self.dim, self.heads, self.dim_head, self.dropout, self.attention_impl, name='0')(
            x, pos_emb, train) * ls1 + x
        x = FeedForward(self.dim, self.mlp_dim, self.dropout, name='1')(x, train) * ls2 + x
        return x, None


class Transformer(nn.Module):
    dim: int
    depth: int
    heads: int
    dim_head: int
    mlp_dim: int
    dropout: float = 0.0
    scan_layers: bool = False  # JAX-only, see the module docstring
    remat_policy: str | None = None  # JAX-only
    attention_impl: str = 'explicit'  # JAX-only

    def __post_init__(self):
        check_remat_policy(self.remat_policy)
        check_attention_impl(self.attention_impl)
        super().__post_init__()

    @nn.compact
    def __call__(self, x, pos_emb=None, train: bool = False):
        scale_init = nn.initializers.constant(LAYER_SCALE_INIT)
        if self.scan_layers:
            ls1, ls2 = (ParameterListEntry((self.depth, self.dim), scale_init, name=scanned_name(name))()
                        for name in ('ls1', 'ls2'))
            # the layer scales enter as scanned inputs; the rotary tables and `train` are the same in every layer
            layers = layer_scan(Layer, self.depth, self.remat_policy, scanned=2, broadcast=1, flags=1)
            x, _ = layers(self.dim, self.heads, self.dim_head, self.mlp_dim, self.dropout, self.attention_impl,
                          name=scanned_name('layers'))(x, ls1, ls2, pos_emb, train)
        else:
            attention = remat(Attention, self.remat_policy, static_argnums=(3,))
            feed_forward = remat(FeedForward, self.remat_policy, static_argnums=(2,))
            for i in range(self.depth):
                ls1 = ParameterListEntry((self.dim,), scale_init, name=f'ls1_{i}')()
                ls2 = ParameterListEntry((self.dim,), scale_init, name=f'ls2_{i}')()
                x = attention(self.dim, self.heads, self.dim_head, self.dropout, self.attention_impl,
                              name=f'layers_{i}_0')(x, pos_emb, train) * ls1 + x
                x = residual_boundary(x)  # linear, not quadratic, backward work on CPU (layers.py)
                x = feed_forward(self.dim, self.mlp_dim, self.dropout, name=f'layers_{i}_1')(x, train) * ls2 + x
                x = residual_boundary(x)
        return RMSNorm(self.dim, param_name='g', name='norm')(x)


class ViT(nn.Module):
    image_size: int | tuple[int, int]
    patch_size: int | tuple[int, int]
    num_classes: int
    dim: int
    depth: int
    heads: int
    mlp_dim: int
    channels: int = 3
    dim_head: int = 64
    dropout: float = 0.0
    emb_dropout: float = 0.0
    num_registers: int = 4
    scan_layers: bool = False  # JAX-only, see the module docstring
    remat_policy: str | None = None  # JAX-only
    attention_impl: str = 'explicit'  # JAX-only

    def __post_init__(self):
        check_keywords(self)
        check_image_config(self.image_size, self.patch_size)
        check_dim_head(self.dim_head)
        square_side(self.num_patches, f'image_size={self.image_size} with patch_size={self.patch_size}')
        check_remat_policy(self.remat_policy)
        check_attention_impl(self.attention_impl)
        super().__post_init__()

    @property
    def num_patches(self) -> int:
        (image_height, image_width), (patch_height, patch_width) = pair(self.image_size), pair(self.patch_size)
        return (image_height // patch_height) * (image_width // patch_width)

    @nn.compact
    def __call__(self, img, train: bool = False):
        check_floating_input(self, 'img', img)
        batch = img.shape[0]
        x = Linear(self.dim, name='to_patch_embedding_1')(patchify(img, self.patch_size, self.channels))

        cls_token = self.param('cls_token', randn, (1, self.dim))
        tokens = [cls_token]
        if self.num_registers > 0:
            tokens.append(self.param('register_tokens', randn, (self.num_registers, self.dim)))
        prefix = jnp.concatenate(tokens, axis=0).astype(x.dtype)
        x = jnp.concatenate((jnp.broadcast_to(prefix, (batch, *prefix.shape)), x), axis=1)

        pos_embedding = self.param('pos_embedding', randn, (self.num_patches + 1 + self.num_registers, self.dim))
        x = add_position_embedding(x, pos_embedding, img.shape[1:3], self.image_size)
        x = nn.Dropout(self.emb_dropout, deterministic=not train)(x)

        pos_emb = AxialRotaryEmbedding(self.dim_head, num_registers=self.num_registers, name='rotary_emb')(x[:, 1:])
        x = Transformer(self.dim, self.depth, self.heads, self.dim_head, self.mlp_dim, self.dropout,
                        scan_layers=self.scan_layers, remat_policy=self.remat_policy,
                        attention_impl=self.attention_impl, name='transformer')(x, pos_emb, train)

        if self.num_classes <= 0:
            return x
        return Linear(self.num_classes, name='mlp_head')(x[:, 0])
