"""SimpleViT ("Better plain ViT baselines for ImageNet-1k", Beyer et al., 2022), mirroring vit_pytorch/simple_vit.py.

Fixed 2D sin-cos position embedding (no parameter), mean pooling, no dropout, bias-free attention projections.

Quirks of vit-pytorch kept so weights transfer:
- The position embedding is built for `image_size`; an input must give the same number of patches (torch
  adds the embedding by broadcasting, so only the count is checked, not the height and width).
- `num_classes=0` keeps a `linear_head` with no outputs, returning (batch, 0).
- The attention output projection is kept even for a single head with `dim_head == dim`.

JAX-only options (defaults keep vit-pytorch's behaviour and tree; see vit_flax/scan.py):
- `scan_layers=True` runs the `depth` layers as one `nn.scan` over `Layer`, parameters stacked on a leading axis
  under `params/transformer/layers_scan/{0,1}` (attention, feed-forward), which the converters map to torch's
  `transformer.layers.{i}.{0,1}`.
- `remat_policy`: None, or the name of a `jax.checkpoint_policies` policy ('nothing_saveable', 'dots_saveable' ...)
  under which the backward pass recomputes the activations of each scanned layer (unscanned: of each attention
  and feed-forward module) instead of keeping them.
- `attention_impl`: 'explicit' (default: vit-pytorch's softmax(q k^T) v, whose maps recorder.Recorder records), or
  'xla' / 'cudnn' / 'auto' for jax.nn.dot_product_attention (cuDNN's fused flash attention on GPU).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from vit_flax.layers import (
    LayerNorm, Linear, add_posemb_sincos_2d, check_attention_impl, check_floating_input, check_keywords,
    check_sincos_dim, gelu, multi_head_attention, residual_boundary,
)
from vit_flax.scan import check_remat_policy, layer_scan, remat, scanned_name
from vit_flax.vit import check_image_config, embed_patches


class FeedForward(nn.Module):
    dim: int
    hidden_dim: int

    @nn.compact
    def __call__(self, x):
        x = LayerNorm(name='net_0')(x)
        x = Linear(self.hidden_dim, name='net_1')(x)
        x = gelu(x)
        return Linear(self.dim, name='net_3')(x)


class Attention(nn.Module):
    dim: int
    heads: int = 8
    dim_head: int = 64
    attention_impl: str = 'explicit'  # JAX-only, see the module docstring

    @nn.compact
    def __call__(self, x):
        inner_dim = self.dim_head * self.heads
        x = LayerNorm(name='norm')(x)

        q, k, v = jnp.split(Linear(inner_dim * 3, use_bias=False, name='to_qkv')(x), 3, axis=-1)
        out = multi_head_attention(self, q, k, v, self.heads, self.dim_head**-0.5, self.attention_impl)
        return Linear(self.dim, use_bias=False, name='to_out')(out)


class Layer(nn.Module):
    """One of vit-pytorch's `transformer.layers` (attention, then feed-forward, each with its residual): the body of
    the layer scan, returning nn.scan's (carry, nothing per layer)."""

    dim: int
    heads: int
    dim_head: int
    mlp_dim: int
    attention_impl: str = 'explicit'

    # not fields: a variant whose layer differs only in its attention (simple_vit_with_qk_norm) subclasses Layer and
    # Transformer with its own class here, and keeps the stack, its scan and its tree
    attention_class = Attention

    @nn.compact
    def __call__(self, x):
        x = self.attention_class(self.dim, self.heads, self.dim_head, self.attention_impl, name='0')(x) + x
        x = FeedForward(self.dim, self.mlp_dim, name='1')(x) + x
        return x, None


class Transformer(nn.Module):
    dim: int
    depth: int
    heads: int
    dim_head: int
    mlp_dim: int
    scan_layers: bool = False  # JAX-only, see the module docstring
    remat_policy: str | None = None  # JAX-only
    attention_impl: str = 'explicit'  # JAX-only

    layer_class = Layer  # not a field: see Layer.attention_class

    def __post_init__(self):
        check_remat_policy(self.remat_policy)
        check_attention_impl(self.attention_impl)
        super().__post_init__()

    @nn.compact
    def __call__(self, x):
        return LayerNorm(name='norm')(self.run_layers(x))

    def run_layers(self, x):
        """The `depth` layers, scanned or not (simple_flash_attn_vit.Transformer is this without the final
        LayerNorm)."""
        if self.scan_layers:
            layers = layer_scan(self.layer_class, self.depth, self.remat_policy)
            x, _ = layers(self.dim, self.heads, self.dim_head, self.mlp_dim, self.attention_impl,
                          name=scanned_name('layers'))(x)
        else:
            attention = remat(self.layer_class.attention_class, self.remat_policy)
            feed_forward = remat(FeedForward, self.remat_policy)
            for i in range(self.depth):
                x = attention(self.dim, self.heads, self.dim_head, self.attention_impl, name=f'layers_{i}_0')(x) + x
                x = residual_boundary(x)  # linear, not quadratic, backward work on CPU (layers.py)
                x = feed_forward(self.dim, self.mlp_dim, name=f'layers_{i}_1')(x) + x
                x = residual_boundary(x)
        return x


class SimpleViT(nn.Module):
    image_size: int | tuple[int, int]
    patch_size: int | tuple[int, int]
    num_classes: int
    dim: int
    depth: int
    heads: int
    mlp_dim: int
    channels: int = 3
    dim_head: int = 64
    scan_layers: bool = False  # JAX-only, see the module docstring
    remat_policy: str | None = None  # JAX-only
    attention_impl: str = 'explicit'  # JAX-only

    transformer_class = Transformer  # not a field: see Layer.attention_class

    def __post_init__(self):
        check_keywords(self)
        check_image_config(self.image_size, self.patch_size)
        check_sincos_dim(self.dim)
        check_remat_policy(self.remat_policy)
        check_attention_impl(self.attention_impl)
        super().__post_init__()

    @nn.compact
    def __call__(self, img, train: bool = False):  # `train` accepted for a uniform interface; nothing is random
        check_floating_input(self, 'img', img)
        x = embed_patches(img, self.patch_size, self.channels, self.dim)
        x = add_posemb_sincos_2d(x, img.shape[1:3], self.image_size, self.patch_size, self.dim)

        x = self.transformer_class(self.dim, self.depth, self.heads, self.dim_head, self.mlp_dim,
                                   scan_layers=self.scan_layers, remat_policy=self.remat_policy,
                                   attention_impl=self.attention_impl, name='transformer')(x)
        x = x.mean(axis=1)
        return Linear(self.num_classes, name='linear_head')(x)
