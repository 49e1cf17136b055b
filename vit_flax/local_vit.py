"""LocalViT ("LocalViT: Bringing Locality to Vision Transformers", Li et al., 2021), mirroring
vit_pytorch/local_vit.py.

A ViT whose feed-forward acts on the patch tokens as a feature map: 1 x 1 conv, Hardswish, a depth-wise 3 x 3 conv
(with a 1 x 1 conv after it), Hardswish, 1 x 1 conv. The class token skips the feed-forward (`ExcludeCLS`).

Fix of vit-pytorch's forward: its feed-forward applies `LayerNorm(dim)` to the (b, dim, h, w) map, normalising over
the map's width, not the channels: it fails on every input whose patch grid is not `dim` patches wide (on every
configuration of a reasonable size) and, where it runs, normalises the wrong axis. Here the LayerNorm normalises each
token's `dim` channels before the tokens become a map, as the paper (and vit-pytorch's intent, its LayerNorm being
`dim` wide) has it. The parameters are vit-pytorch's, so weights transfer both ways; the parity reference is
vit-pytorch's LocalViT with this one line patched (parity/local_vit.py).

Quirks of vit-pytorch kept so weights transfer:
- `image_size` and `patch_size` are single ints (square images and patches), as vit-pytorch's arithmetic needs.
- The feed-forward lays the n patch tokens out as an int(sqrt(n)) x int(sqrt(n)) map: an input must give a square
  number of patches (refused otherwise, naming the count). A smaller square input takes the first rows of the
  position embedding, as in vit.ViT.
- Position embedding (1, num_patches + 1, dim) and class token (1, 1, dim), with their leading 1.
- Each layer's modules sit inside vit-pytorch's wrappers: `transformer.layers.{i}.0.fn` (attention in a Residual) and
  `transformer.layers.{i}.1.fn.fn` (feed-forward in a Residual in an ExcludeCLS).

Random draws: dropout only, from the 'dropout' stream (`train=True`).

JAX-only options (defaults keep vit-pytorch's behaviour and tree; see vit_flax/scan.py): `scan_layers=True` runs the
layers as one `nn.scan` over `Layer`, parameters stacked under `params/transformer/layers_scan/{0,1}`, which the
converters map to torch's `transformer.layers.{i}.{0,1}`; `remat_policy` recomputes each layer's activations in the
backward pass; `attention_impl` 'xla' / 'cudnn' / 'auto' call jax.nn.dot_product_attention (training with attention
dropout keeps the explicit path). Unscanned, layer i is the module `transformer/layers_{i}` (children `0`, `1`).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp
from einops import rearrange, repeat

from vit_flax.layers import (
    Conv, LayerNorm, Linear, add_position_embedding, check_attention_impl, check_floating_input, check_keywords,
    check_square_image_config, multi_head_attention, randn, residual_boundary,
)
from vit_flax.scan import check_remat_policy, layer_scan, remat, scanned_name
from vit_flax.vit import embed_patches


class Residual(nn.Module):
    fn: nn.Module

    def __call__(self, x, train: bool = False):
        return self.fn(x, train) + x


class ExcludeCLS(nn.Module):
    fn: nn.Module

    def __call__(self, x, train: bool = False):
        cls_token, x = x[:, :1], x[:, 1:]
        return jnp.concatenate((cls_token, self.fn(x, train)), axis=1)


class DepthWiseConv2d(nn.Module):
    dim_in: int
    dim_out: int
    kernel_size: int
    padding: int
    stride: int = 1
    bias: bool = True

    @nn.compact
    def __call__(self, x):
        x = Conv(self.dim_in, self.kernel_size, self.stride, self.padding, groups=self.dim_in, use_bias=self.bias,
                 name='net_0')(x)
        return Conv(self.dim_out, 1, use_bias=self.bias, name='net_1')(x)


def patch_side(n: int) -> int:
    """The side of the square map vit-pytorch lays n patch tokens out as, int(sqrt(n)); n must be its square."""
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f'LocalViT lays its patch tokens out as a square map: the input gives {n} patches, '
                         'not a square number')
    return side


class FeedForward(nn.Module):
    dim: int
    hidden_dim: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        side = patch_side(x.shape[-2])
        x = LayerNorm(name='net_0')(x)  # over each token's channels: the fix (module docstring)
        x = rearrange(x, 'b (h w) c -> b h w c', h=side, w=side)
        x = nn.hard_swish(Conv(self.hidden_dim, 1, name='net_1')(x))
        x = nn.hard_swish(DepthWiseConv2d(self.hidden_dim, self.hidden_dim, 3, padding=1, name='net_3')(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = Conv(self.dim, 1, name='net_6')(x)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return rearrange(x, 'b h w c -> b (h w) c')


class Attention(nn.Module):
    dim: int
    heads: int = 8
    dim_head: int = 64
    dropout: float = 0.0
    attention_impl: str = 'explicit'  # JAX-only, see the module docstring

    @nn.compact
    def __call__(self, x, train: bool = False):
        inner_dim = self.dim_head * self.heads
        x = LayerNorm(name='norm')(x)
        q, k, v = jnp.split(Linear(inner_dim * 3, use_bias=False, name='to_qkv')(x), 3, axis=-1)
        out = multi_head_attention(self, q, k, v, self.heads, self.dim_head**-0.5, self.attention_impl, self.dropout,
                                   train)
        out = Linear(self.dim, name='to_out_0')(out)
        return nn.Dropout(self.dropout, deterministic=not train)(out)


class Layer(nn.Module):
    """One of vit-pytorch's `transformer.layers`: the attention in a Residual (`0`), the feed-forward in a Residual
    in an ExcludeCLS (`1`). Returns nn.scan's (carry, nothing per layer)."""

    dim: int
    heads: int
    dim_head: int
    mlp_dim: int
    dropout: float = 0.0
    attention_impl: str = 'explicit'

    @nn.compact
    def __call__(self, x, train: bool = False):
        # unbound (parent=None) wrapped modules are adopted by their wrapper as its `fn`, torch's attribute name
        attention = Attention(self.dim, self.heads, self.dim_head, self.dropout, self.attention_impl, parent=None)
        x = Residual(attention, name='0')(x, train)
        feed_forward = Residual(FeedForward(self.dim, self.mlp_dim, self.dropout, parent=None), parent=None)
        x = ExcludeCLS(feed_forward, name='1')(x, train)
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

    @nn.compact
    def __call__(self, x, train: bool = False):
        arguments = (self.dim, self.heads, self.dim_head, self.mlp_dim, self.dropout, self.attention_impl)
        if self.scan_layers:
            x, _ = layer_scan(Layer, self.depth, self.remat_policy, flags=1)(*arguments, name=scanned_name('layers'))(
                x, train)
            return x
        layer = remat(Layer, self.remat_policy, static_argnums=(2,))
        for i in range(self.depth):
            x, _ = layer(*arguments, name=f'layers_{i}')(x, train)
            x = residual_boundary(x)  # linear, not quadratic, backward work on CPU (layers.py)
        return x


class LocalViT(nn.Module):
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
    emb_dropout: float = 0.0
    scan_layers: bool = False  # JAX-only, see the module docstring
    remat_policy: str | None = None  # JAX-only
    attention_impl: str = 'explicit'  # JAX-only

    def __post_init__(self):
        check_keywords(self)
        check_square_image_config('LocalViT', self.image_size, self.patch_size)
        check_remat_policy(self.remat_policy)
        check_attention_impl(self.attention_impl)
        super().__post_init__()

    @nn.compact
    def __call__(self, img, train: bool = False):
        check_floating_input(self, 'img', img)
        x = embed_patches(img, self.patch_size, self.channels, self.dim)
        patch_side(x.shape[1])

        num_patches = (self.image_size // self.patch_size) ** 2
        pos_embedding = self.param('pos_embedding', randn, (1, num_patches + 1, self.dim))
        cls_token = self.param('cls_token', randn, (1, 1, self.dim))

        cls_tokens = repeat(cls_token.astype(x.dtype), '1 n d -> b n d', b=x.shape[0])
        x = jnp.concatenate((cls_tokens, x), axis=1)
        x = add_position_embedding(x, pos_embedding, img.shape[1:3], self.image_size)
        x = nn.Dropout(self.emb_dropout, deterministic=not train)(x)

        x = Transformer(self.dim, self.depth, self.heads, self.dim_head, self.mlp_dim, self.dropout,
                        scan_layers=self.scan_layers, remat_policy=self.remat_policy,
                        attention_impl=self.attention_impl, name='transformer')(x, train)

        x = LayerNorm(name='mlp_head_0')(x[:, 0])
        return Linear(self.num_classes, name='mlp_head_1')(x)
