"""RvT, a Rotary Vision Transformer: 2D axial rotary position embeddings (RoFormer, Su et al., 2021) with
depth-wise convolutional queries and GEGLU feed-forwards, mirroring vit_pytorch/rvt.py.

Each attention layer rotates its queries and keys (all tokens but the class token) by a 2D axial rotary embedding
(vit_flax/rotary.py) whose angles are `pi * linspace(-1, 1, side) * scales`, `scales = linspace(1, image_size / 2,
dim_head // 4)`; when dim_head is not a multiple of 4 the last `dim_head % 4` features of each head pass unrotated.
With `use_ds_conv` the queries come from a depth-wise then point-wise convolution over the patch map (the class
token through a Linear), with `use_glu` the feed-forward is a GEGLU.

Parameter tree = vit-pytorch's module tree: `transformer.layers.0.0.to_q.conv.net.0.weight` (OIHW) lives at
`params/transformer/layers_0_0/to_q/conv/net_0/kernel` (HWIO); the rotary scales, a persistent buffer in torch, at
`buffers/transformer/pos_emb/scales`, and the forward reads them from there (`apply` needs the 'buffers' collection
next to 'params').

Quirks of vit-pytorch kept so weights transfer:
- `emb_dropout` is accepted and unused (vit-pytorch never builds an embedding dropout).
- There is no position embedding besides the rotary one and nothing is sized by `image_size` but the rotary scales
  (`image_size / 2` is the largest): any input whose sides are multiples of `patch_size` runs (with a square patch
  grid when `use_rotary`).
- The transformer has no final norm; the head is LayerNorm then Linear on the class token.
- The depth-wise query convolution has kernel 5 (vit-pytorch's `conv_query_kernel` default, which RvT does not pass
  on) and no biases; its class-token projection has a bias, and is the identity when `heads * dim_head == dim`.

Refused here where vit-pytorch fails: `image_size` and `patch_size` must be ints (its divisibility check and patch
rearrange take one side), and with `use_rotary` an input whose patch grid is not square (its rotary table has
`int(sqrt(n))**2` rows: a shape error in torch).

No random draws but dropout ('dropout' stream, in training).

JAX-only options (defaults keep vit-pytorch's behaviour and tree; see vit_flax/scan.py): `scan_layers=True` (layers
stacked under `params/transformer/layers_scan/{0,1}`), `remat_policy`, and `attention_impl` ('explicit', vit-pytorch's
softmax(q k^T) v, or 'xla' / 'cudnn' / 'auto' for jax.nn.dot_product_attention).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from einops import rearrange, repeat

from vit_flax.layers import (
    Conv, LayerNorm, Linear, check_attention_impl, check_floating_input, check_keywords,
    check_square_image_config, gelu, multi_head_attention, randn, residual_boundary, torch_linspace,
)
from vit_flax.rotary import apply_rotary, interleave_pairs
from vit_flax.scan import check_remat_policy, layer_scan, remat, scanned_name
from vit_flax.vit import patchify

CONV_QUERY_KERNEL = 5  # Attention's default, which RvT's Transformer does not override


class AxialRotaryEmbedding(nn.Module):
    """The (sin, cos) tables, (1, side * side, 4 * (dim // 4)), for the patch tokens of a square grid."""

    dim: int
    max_freq: int = 10

    @nn.compact
    def __call__(self, x, table: bool = True):
        """The tables for the tokens x (b, n, d), or None without `table` (the buffer is made either way)."""
        scales = self.variable(
            'buffers', 'scales',
            lambda: jnp.asarray(torch_linspace(1.0, self.max_freq / 2, self.dim // 4)),
        ).value
        if not table:
            return None
        num_patches = x.shape[-2]
        n = math.isqrt(num_patches)
        if n * n != num_patches:
            raise ValueError('RvT builds its axial rotary table for a square patch grid: the input gives '
                             f'{num_patches} patches, not a square number')
        dtype = jnp.promote_types(x.dtype, jnp.float32)
        seq = jnp.asarray(np.linspace(-1.0, 1.0, n), dtype)[:, None]
        seq = seq * scales.astype(dtype)[None, :] * math.pi
        x_sinu = repeat(seq, 'i d -> i j d', j=n)
        y_sinu = repeat(seq, 'j d -> i j d', i=n)
        sin = jnp.concatenate((jnp.sin(x_sinu), jnp.sin(y_sinu)), axis=-1)
        cos = jnp.concatenate((jnp.cos(x_sinu), jnp.cos(y_sinu)), axis=-1)
        sin, cos = (interleave_pairs(rearrange(t, 'i j d -> (i j) d'))[None] for t in (sin, cos))
        return sin, cos


class DepthWiseConv2d(nn.Module):
    dim_in: int
    dim_out: int
    kernel_size: int
    padding: int
    stride: int = 1
    bias: bool = True

    @nn.compact
    def __call__(self, x):
        x = Conv(self.dim_in, self.kernel_size, stride=self.stride, padding=self.padding, groups=self.dim_in,
                 use_bias=self.bias, name='net_0')(x)
        return Conv(self.dim_out, 1, use_bias=self.bias, name='net_1')(x)


class SpatialConv(nn.Module):
    """Queries from a depth-wise convolution over the patch map; the class token through a Linear (when the widths
    differ)."""

    dim_in: int
    dim_out: int
    kernel: int

    @nn.compact
    def __call__(self, x, fmap_dims: tuple[int, int]):
        cls_token, x = x[:, :1], x[:, 1:]
        h, w = fmap_dims
        x = rearrange(x, 'b (h w) d -> b h w d', h=h, w=w)
        x = DepthWiseConv2d(self.dim_in, self.dim_out, self.kernel, padding=self.kernel // 2, bias=False,
                            name='conv')(x)
        x = rearrange(x, 'b h w d -> b (h w) d')
        if self.dim_in != self.dim_out:
            cls_token = Linear(self.dim_out, name='cls_proj')(cls_token)
        return jnp.concatenate((cls_token, x), axis=1)


class FeedForward(nn.Module):
    dim: int
    hidden_dim: int
    dropout: float = 0.0
    use_glu: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = LayerNorm(name='net_0')(x)
        x = Linear(self.hidden_dim * 2 if self.use_glu else self.hidden_dim, name='net_1')(x)
        if self.use_glu:  # GEGLU
            x, gates = jnp.split(x, 2, axis=-1)
            x = gelu(gates) * x
        else:
            x = gelu(x)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = Linear(self.dim, name='net_4')(x)
        return nn.Dropout(self.dropout, deterministic=not train)(x)


class Attention(nn.Module):
    dim: int
    heads: int = 8
    dim_head: int = 64
    dropout: float = 0.0
    use_rotary: bool = True
    use_ds_conv: bool = True
    conv_query_kernel: int = CONV_QUERY_KERNEL
    attention_impl: str = 'explicit'  # JAX-only, see the module docstring

    @nn.compact
    def __call__(self, x, pos_emb, fmap_dims: tuple[int, int], train: bool = False):
        inner_dim = self.dim_head * self.heads
        x = LayerNorm(name='norm')(x)
        if self.use_ds_conv:
            q = SpatialConv(self.dim, inner_dim, self.conv_query_kernel, name='to_q')(x, fmap_dims)
        else:
            q = Linear(inner_dim, use_bias=False, name='to_q')(x)
        k, v = jnp.split(Linear(inner_dim * 2, use_bias=False, name='to_kv')(x), 2, axis=-1)

        if self.use_rotary:  # every token but the class token, on the first 4 * (dim_head // 4) features of a head
            sin, cos = pos_emb
            q, k = (rearrange(t, 'b n (h d) -> b h n d', h=self.heads) for t in (q, k))
            q, k = (jnp.concatenate((t[:, :, :1], apply_rotary(t[:, :, 1:], sin, cos)), axis=2) for t in (q, k))
            q, k = (rearrange(t, 'b h n d -> b n (h d)') for t in (q, k))

        out = multi_head_attention(self, q, k, v, self.heads, self.dim_head**-0.5, self.attention_impl, self.dropout,
                                   train)
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
    use_rotary: bool = True
    use_ds_conv: bool = True
    use_glu: bool = True
    attention_impl: str = 'explicit'

    @nn.compact
    def __call__(self, x, pos_emb, fmap_dims: tuple[int, int], train: bool = False):
        x = Attention(self.dim, self.heads, self.dim_head, self.dropout, self.use_rotary, self.use_ds_conv,
                      attention_impl=self.attention_impl, name='0')(x, pos_emb, fmap_dims, train) + x
        x = FeedForward(self.dim, self.mlp_dim, self.dropout, self.use_glu, name='1')(x, train) + x
        return x, None


class Transformer(nn.Module):
    dim: int
    depth: int
    heads: int
    dim_head: int
    mlp_dim: int
    image_size: int
    dropout: float = 0.0
    use_rotary: bool = True
    use_ds_conv: bool = True
    use_glu: bool = True
    scan_layers: bool = False  # JAX-only, see the module docstring
    remat_policy: str | None = None  # JAX-only
    attention_impl: str = 'explicit'  # JAX-only

    def __post_init__(self):
        check_remat_policy(self.remat_policy)
        check_attention_impl(self.attention_impl)
        super().__post_init__()

    @nn.compact
    def __call__(self, x, fmap_dims: tuple[int, int], train: bool = False):
        # the table is built only where it is used (vit-pytorch builds it either way; without rotation the patch
        # grid need not be square)
        pos_emb = AxialRotaryEmbedding(self.dim_head, max_freq=self.image_size, name='pos_emb')(
            x[:, 1:], table=self.use_rotary)
        flags = (self.dim, self.heads, self.dim_head, self.mlp_dim, self.dropout, self.use_rotary, self.use_ds_conv,
                 self.use_glu, self.attention_impl)
        if self.scan_layers:
            # the rotary tables are the same in every layer; the map size and `train` are Python values
            layers = layer_scan(Layer, self.depth, self.remat_policy, broadcast=1, flags=2)
            x, _ = layers(*flags, name=scanned_name('layers'))(x, pos_emb, fmap_dims, train)
        else:
            attention = remat(Attention, self.remat_policy, static_argnums=(3, 4))
            feed_forward = remat(FeedForward, self.remat_policy, static_argnums=(2,))
            for i in range(self.depth):
                x = attention(self.dim, self.heads, self.dim_head, self.dropout, self.use_rotary, self.use_ds_conv,
                              attention_impl=self.attention_impl, name=f'layers_{i}_0')(x, pos_emb, fmap_dims,
                                                                                         train) + x
                x = residual_boundary(x)  # linear, not quadratic, backward work on CPU (layers.py)
                x = feed_forward(self.dim, self.mlp_dim, self.dropout, self.use_glu, name=f'layers_{i}_1')(x, train) + x
                x = residual_boundary(x)
        return x


class RvT(nn.Module):
    image_size: int
    patch_size: int
    num_classes: int
    dim: int
    depth: int
    heads: int
    mlp_dim: int
    channels: int = 3
    dim_head: int = 64
    dropout: float = 0.0
    emb_dropout: float = 0.0  # unused, as in vit-pytorch
    use_rotary: bool = True
    use_ds_conv: bool = True
    use_glu: bool = True
    scan_layers: bool = False  # JAX-only, see the module docstring
    remat_policy: str | None = None  # JAX-only
    attention_impl: str = 'explicit'  # JAX-only

    def __post_init__(self):
        check_keywords(self)
        check_square_image_config('RvT', self.image_size, self.patch_size)
        check_remat_policy(self.remat_policy)
        check_attention_impl(self.attention_impl)
        super().__post_init__()

    @nn.compact
    def __call__(self, img, train: bool = False):
        check_floating_input(self, 'img', img)
        _, h, w, _ = img.shape
        p = self.patch_size
        x = Linear(self.dim, name='to_patch_embedding_1')(patchify(img, p, self.channels))

        cls_token = self.param('cls_token', randn, (1, 1, self.dim))
        x = jnp.concatenate((jnp.broadcast_to(cls_token.astype(x.dtype), (x.shape[0], 1, self.dim)), x), axis=1)

        x = Transformer(self.dim, self.depth, self.heads, self.dim_head, self.mlp_dim, self.image_size, self.dropout,
                        self.use_rotary, self.use_ds_conv, self.use_glu, scan_layers=self.scan_layers,
                        remat_policy=self.remat_policy, attention_impl=self.attention_impl,
                        name='transformer')(x, (h // p, w // p), train)

        x = LayerNorm(name='mlp_head_0')(x[:, 0])
        return Linear(self.num_classes, name='mlp_head_1')(x)
