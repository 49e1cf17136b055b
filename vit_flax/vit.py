"""ViT (Dosovitskiy et al., 2020), mirroring vit_pytorch/vit.py.

Parameter tree = vit-pytorch's module tree: `transformer.layers.0.1.net.1.weight` lives at
`params/transformer/layers_0_1/net_1/kernel`.

Quirks of vit-pytorch kept so weights transfer:
- `pool='mean'` still owns a `cls_token` parameter, of shape (0, dim).
- An input smaller than `image_size` takes the first `seq` rows of the position embedding, whatever its
  height and width; only the token count has to fit.
- With `heads == 1 and dim_head == dim` the attention output projection (and its dropout) is dropped.
- `num_classes=0` has no head and returns the transformer's tokens, (batch, seq, dim).

JAX-only options (defaults keep vit-pytorch's behaviour and tree; see vit_flax/scan.py):
- `scan_layers=True` runs the `depth` layers as one `nn.scan` over `Layer`, parameters stacked on a leading axis
  under `params/transformer/layers_scan/{0,1}` (attention, feed-forward), which the converters map to torch's
  `transformer.layers.{i}.{0,1}`.
- `remat_policy`: None, or the name of a `jax.checkpoint_policies` policy ('nothing_saveable', 'dots_saveable' ...)
  under which the backward pass recomputes the activations of each scanned layer (unscanned: of each attention
  and feed-forward module) instead of keeping them.
- `attention_impl`: 'explicit' (default: vit-pytorch's softmax(q k^T) v, whose maps recorder.Recorder records), or
  'xla' / 'cudnn' / 'auto' for jax.nn.dot_product_attention (cuDNN's fused flash attention on GPU). Training with
  attention dropout > 0 keeps the explicit path, which the fused kernels cannot drop out.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax.numpy as jnp
from einops import rearrange, repeat

from vit_flax.layers import (
    LayerNorm, Linear, add_position_embedding, check_attention_impl, check_floating_input, check_keywords, gelu,
    multi_head_attention, pair, randn, residual_boundary,
)
from vit_flax.scan import check_remat_policy, layer_scan, remat, scanned_name


class FeedForward(nn.Module):
    dim: int
    hidden_dim: int
    dropout: float = 0.0
    norm: Callable[..., nn.Module] = LayerNorm  # the pre-norm's class (levjepa: torch's nn.RMSNorm)

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = self.norm(name='net_0')(x)
        x = Linear(self.hidden_dim, name='net_1')(x)
        x = gelu(x)
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
    def __call__(self, x, train: bool = False):
        inner_dim = self.dim_head * self.heads
        project_out = not (self.heads == 1 and self.dim_head == self.dim)

        x = LayerNorm(name='norm')(x)

        q, k, v = jnp.split(Linear(inner_dim * 3, use_bias=False, name='to_qkv')(x), 3, axis=-1)
        out = multi_head_attention(self, q, k, v, self.heads, self.dim_head**-0.5, self.attention_impl, self.dropout,
                                   train)
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
    attention_impl: str = 'explicit'

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = Attention(self.dim, self.heads, self.dim_head, self.dropout, self.attention_impl, name='0')(x, train) + x
        x = FeedForward(self.dim, self.mlp_dim, self.dropout, name='1')(x, train) + x
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
    def __call__(self, x, train: bool = False):
        return LayerNorm(name='norm')(self.run_layers(x, train))

    def run_layers(self, x, train: bool):
        """The `depth` layers, scanned or not (vit_3d.Transformer is this without the final LayerNorm)."""
        if self.scan_layers:
            layers = layer_scan(Layer, self.depth, self.remat_policy, flags=1)
            x, _ = layers(self.dim, self.heads, self.dim_head, self.mlp_dim, self.dropout, self.attention_impl,
                          name=scanned_name('layers'))(x, train)
        else:
            attention = remat(Attention, self.remat_policy, static_argnums=(2,))
            feed_forward = remat(FeedForward, self.remat_policy, static_argnums=(2,))
            for i in range(self.depth):
                x = attention(self.dim, self.heads, self.dim_head, self.dropout, self.attention_impl,
                              name=f'layers_{i}_0')(x, train) + x
                x = residual_boundary(x)  # linear, not quadratic, backward work on CPU (layers.py)
                x = feed_forward(self.dim, self.mlp_dim, self.dropout, name=f'layers_{i}_1')(x, train) + x
                x = residual_boundary(x)
        return x


def check_image_config(image_size, patch_size):
    """vit-pytorch's construction-time check, with the offending values in the message (the sizes' signs are
    layers.check_keywords')."""
    (image_height, image_width), (patch_height, patch_width) = pair(image_size), pair(patch_size)
    if image_height % patch_height or image_width % patch_width:
        raise ValueError(
            f'Image dimensions must be divisible by the patch size: image_size={(image_height, image_width)}, '
            f'patch_size={(patch_height, patch_width)}'
        )


def patchify(img, patch_size, channels):
    """(b, H, W, c) -> (b, (h w), (p1 p2 c)), the token order and patch layout of vit-pytorch's Rearrange."""
    patch_height, patch_width = pair(patch_size)
    if img.ndim != 4:
        raise ValueError(f'expected images of shape (batch, height, width, channels), got shape {img.shape}')
    _, height, width, c = img.shape
    if c != channels:
        raise ValueError(f'expected {channels} channels (channels-last input), got shape {img.shape}')
    if height % patch_height or width % patch_width:
        raise ValueError(
            f'image of size {(height, width)} is not divisible by patch size {(patch_height, patch_width)}'
        )
    return rearrange(img, 'b (h p1) (w p2) c -> b (h w) (p1 p2 c)', p1=patch_height, p2=patch_width)


def embed_patches(img, patch_size, channels, dim: int):
    """vit-pytorch's `to_patch_embedding` of ViT, SimpleViT and their variants, `Sequential(Rearrange, LayerNorm,
    Linear, LayerNorm)`: the patches, normalised, projected to `dim` and normalised, as submodules
    `to_patch_embedding_{1,2,3}` of the module calling it."""
    x = patchify(img, patch_size, channels)
    x = LayerNorm(name='to_patch_embedding_1')(x)
    x = Linear(dim, name='to_patch_embedding_2')(x)
    return LayerNorm(name='to_patch_embedding_3')(x)


class ViT(nn.Module):
    image_size: int | tuple[int, int]
    patch_size: int | tuple[int, int]
    num_classes: int
    dim: int
    depth: int
    heads: int
    mlp_dim: int
    pool: str = 'cls'
    channels: int = 3
    dim_head: int = 64
    dropout: float = 0.0
    emb_dropout: float = 0.0
    scan_layers: bool = False  # JAX-only, see the module docstring
    remat_policy: str | None = None  # JAX-only
    attention_impl: str = 'explicit'  # JAX-only

    def __post_init__(self):
        check_keywords(self)
        check_image_config(self.image_size, self.patch_size)
        check_remat_policy(self.remat_policy)
        check_attention_impl(self.attention_impl)
        if self.pool not in {'cls', 'mean'}:
            raise ValueError(f"pool type must be either cls (cls token) or mean (mean pooling), got pool={self.pool!r}")
        super().__post_init__()

    # the pieces of the forward pass, shared with distill.DistillableViT

    def _to_patch_embedding(self, img, train: bool):
        return embed_patches(img, self.patch_size, self.channels, self.dim)

    def _cls_and_pos_embedding(self):
        (image_height, image_width), (patch_height, patch_width) = pair(self.image_size), pair(self.patch_size)
        num_patches = (image_height // patch_height) * (image_width // patch_width)
        num_cls_tokens = 1 if self.pool == 'cls' else 0
        cls_token = self.param('cls_token', randn, (num_cls_tokens, self.dim))
        pos_embedding = self.param('pos_embedding', randn, (num_patches + num_cls_tokens, self.dim))
        return cls_token, pos_embedding

    def _attend(self, x, train: bool):
        x = nn.Dropout(self.emb_dropout, deterministic=not train)(x)
        transformer = Transformer(
            self.dim, self.depth, self.heads, self.dim_head, self.mlp_dim, self.dropout,
            scan_layers=self.scan_layers, remat_policy=self.remat_policy, attention_impl=self.attention_impl,
            name='transformer',
        )
        return transformer(x, train)

    def _mlp_head(self, x):
        return Linear(self.num_classes, name='mlp_head')(x)

    @nn.compact
    def __call__(self, img, train: bool = False):
        check_floating_input(self, 'img', img)
        x = self._to_patch_embedding(img, train)
        cls_token, pos_embedding = self._cls_and_pos_embedding()

        cls_tokens = repeat(cls_token, 'n d -> b n d', b=x.shape[0])
        x = jnp.concatenate((cls_tokens.astype(x.dtype), x), axis=1)
        x = add_position_embedding(x, pos_embedding, img.shape[1:3], self.image_size)
        x = self._attend(x, train)

        if self.num_classes <= 0:
            return x

        x = x.mean(axis=1) if self.pool == 'mean' else x[:, 0]
        return self._mlp_head(x)
