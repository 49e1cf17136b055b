"""ViTDetPool: a ViT that attends and pools only over an object mask (DetPool, table 1 of "Learning to Grasp
Anything By Playing with Random Toys", Niu et al., 2026), mirroring vit_pytorch/vit_detpool.py.

`model(img, object_mask)`: the mask is a boolean pixel mask (batch, height, width), reduced to the patches by max
(a patch counts when any of its pixels does), or a patch mask of `num_patches` entries per image ((batch, n), or any
(batch, ...) shape that flattens to it). Every key outside the mask is hidden from the attention (the class token is
always visible), and the classifier pools the masked mean of the patch tokens. Without a mask (and without a
`mask_generator`) it is a plain ViT: mean pooling over all patches.

Parameter tree = vit-pytorch's module tree, as vit.ViT's: `transformer.layers.0.0.to_qkv.weight` lives at
`params/transformer/layers_0_0/to_qkv/kernel`; the feed-forward is vit.py's.

Quirks of vit-pytorch kept so weights transfer:
- The class token (`use_cls_token`, shape (dim,)) gets no position embedding; it takes part in the attention but
  not in the pooling (the head reads the masked mean of the patch tokens), and with `num_classes=0` the model returns
  every token, class token included, (batch, 1 + n, dim), after the transformer's final norm.
- `cls_token` and `pos_embedding` start at `randn * 1e-2`.
- An image whose mask holds no patch pools to zeros (`sum / max(count, 1e-5)`); without a class token its queries
  see no key, and the attention averages every value uniformly (torch's `-finfo.max` fill).
- An input smaller than `image_size` takes the first rows of the position embedding; the mask must then match it.
- With `heads == 1 and dim_head == dim` the attention output projection (and its dropout) is dropped.

`mask_generator`: vit-pytorch's optional module that makes the mask from the image when none is given, run in eval
mode without gradients. Here it is any callable `img -> mask` (a function, or a Flax module, whose variables then
live under `mask_generator` like torch's submodule's), its output cut from the gradient. A torch module cannot be
passed, and the converters cannot build a vit-pytorch twin for a model with a generator (build the twin of the same
model without one: the weights are the same).

Refused here where vit-pytorch fails: an object mask that is not boolean (torch's `~mask` needs one), or of another
shape than the image's or the patches'.

No random draws but dropout ('dropout' stream, in training).

JAX-only options (defaults keep vit-pytorch's behaviour and tree; see vit_flax/scan.py): `scan_layers=True` (layers
stacked under `params/transformer/layers_scan/{0,1}`), `remat_policy`, and `attention_impl` ('explicit', vit-pytorch's
masked softmax(q k^T) v, or 'xla' / 'cudnn' / 'auto' for jax.nn.dot_product_attention; a query that may see no key,
only possible without a class token, then sees every key by its logits instead of uniformly).
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from einops import rearrange, reduce

from vit_flax.layers import (
    LayerNorm, Linear, add_position_embedding, check_attention_impl, check_floating_input,
    check_keywords, exists, multi_head_attention, pair, randn, residual_boundary,
)
from vit_flax.scan import check_remat_policy, layer_scan, remat, scanned_name
from vit_flax.vit import FeedForward, check_image_config, patchify


def masked_mean(t, mask, axis: int = 1, eps: float = 1e-5):
    """vit-pytorch's masked_mean: the mean of t over `axis` where mask (t's shape without the feature axis) holds,
    `sum / max(count, eps)`; the plain mean without a mask."""
    if not exists(mask):
        return t.mean(axis=axis)
    mask = mask[..., None]
    total = jnp.where(mask, t, 0).sum(axis=axis)
    return total / jnp.maximum(mask.sum(axis=axis), eps).astype(t.dtype)


class Attention(nn.Module):
    dim: int
    heads: int = 8
    dim_head: int = 64
    dropout: float = 0.0
    attention_impl: str = 'explicit'  # JAX-only, see the module docstring

    @nn.compact
    def __call__(self, x, mask=None, train: bool = False):
        inner_dim = self.dim_head * self.heads
        project_out = not (self.heads == 1 and self.dim_head == self.dim)

        x = LayerNorm(name='norm')(x)
        q, k, v = jnp.split(Linear(inner_dim * 3, use_bias=False, name='to_qkv')(x), 3, axis=-1)
        if exists(mask):
            mask = rearrange(mask, 'b j -> b 1 1 j')
        out = multi_head_attention(self, q, k, v, self.heads, self.dim_head**-0.5, self.attention_impl, self.dropout,
                                   train, mask)
        if not project_out:
            return out
        out = Linear(self.dim, name='to_out_0')(out)
        return nn.Dropout(self.dropout, deterministic=not train)(out)


class Layer(nn.Module):
    """One of vit-pytorch's `transformer.layers` (masked attention, then feed-forward, each with its residual): the
    body of the layer scan, returning nn.scan's (carry, nothing per layer)."""

    dim: int
    heads: int
    dim_head: int
    mlp_dim: int
    dropout: float = 0.0
    attention_impl: str = 'explicit'

    @nn.compact
    def __call__(self, x, mask=None, train: bool = False):
        x = Attention(self.dim, self.heads, self.dim_head, self.dropout, self.attention_impl, name='0')(
            x, mask, train) + x
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
    def __call__(self, x, mask=None, train: bool = False):
        config = (self.dim, self.heads, self.dim_head, self.mlp_dim, self.dropout, self.attention_impl)
        if self.scan_layers:
            # the mask and `train` are the same in every layer
            layers = layer_scan(Layer, self.depth, self.remat_policy, broadcast=1, flags=1)
            x, _ = layers(*config, name=scanned_name('layers'))(x, mask, train)
        else:
            attention = remat(Attention, self.remat_policy, static_argnums=(3,))
            feed_forward = remat(FeedForward, self.remat_policy, static_argnums=(2,))
            for i in range(self.depth):
                x = attention(self.dim, self.heads, self.dim_head, self.dropout, self.attention_impl,
                              name=f'layers_{i}_0')(x, mask, train) + x
                x = residual_boundary(x)  # linear, not quadratic, backward work on CPU (layers.py)
                x = feed_forward(self.dim, self.mlp_dim, self.dropout, name=f'layers_{i}_1')(x, train) + x
                x = residual_boundary(x)
        return LayerNorm(name='norm')(x)


def scaled_randn(scale: float):
    """`torch.randn(...) * scale`."""
    return lambda key, shape, dtype=jnp.float32: randn(key, shape, dtype) * scale


class ViTDetPool(nn.Module):
    image_size: int | tuple[int, int]
    patch_size: int | tuple[int, int]
    num_classes: int
    dim: int
    depth: int
    heads: int
    mlp_dim: int
    use_cls_token: bool = True
    channels: int = 3
    dim_head: int = 64
    dropout: float = 0.0
    emb_dropout: float = 0.0
    mask_generator: Callable | None = None
    scan_layers: bool = False  # JAX-only, see the module docstring
    remat_policy: str | None = None  # JAX-only
    attention_impl: str = 'explicit'  # JAX-only

    def __post_init__(self):
        check_keywords(self)
        check_image_config(self.image_size, self.patch_size)
        check_remat_policy(self.remat_policy)
        check_attention_impl(self.attention_impl)
        super().__post_init__()

    def patch_mask(self, object_mask, img_shape, seq: int):
        """The (batch, seq) patch mask of an object mask: a pixel mask reduced by max over each patch, or a patch
        mask flattened."""
        batch, height, width = img_shape[:3]
        if object_mask.dtype != jnp.bool_:
            raise TypeError(f'ViTDetPool: object_mask has dtype {object_mask.dtype}; pass a boolean mask')
        if object_mask.ndim not in (2, 3):
            raise ValueError(f'ViTDetPool: object_mask of shape {object_mask.shape} must have 2 or 3 dimensions')
        patch_height, patch_width = pair(self.patch_size)
        if object_mask.shape == (batch, height, width):
            mask = reduce(object_mask, 'b (h p1) (w p2) -> b (h w)', 'max', p1=patch_height, p2=patch_width)
        else:
            mask = rearrange(object_mask, 'b ... -> b (...)')
        if mask.shape != (batch, seq):
            raise ValueError(f'ViTDetPool: object_mask of shape {object_mask.shape} is neither a pixel mask '
                             f'{(batch, height, width)} nor a patch mask of {seq} patches per image')
        return mask

    @nn.compact
    def __call__(self, img, object_mask=None, train: bool = False):
        check_floating_input(self, 'img', img)
        if not exists(object_mask) and exists(self.mask_generator):
            object_mask = jax.lax.stop_gradient(self.mask_generator(img))

        batch = img.shape[0]
        x = patchify(img, self.patch_size, self.channels)
        x = LayerNorm(name='to_patch_embedding_1')(x)
        x = Linear(self.dim, name='to_patch_embedding_2')(x)
        tokens = LayerNorm(name='to_patch_embedding_3')(x)

        (image_height, image_width), (patch_height, patch_width) = pair(self.image_size), pair(self.patch_size)
        num_patches = (image_height // patch_height) * (image_width // patch_width)
        if self.use_cls_token:
            cls_token = self.param('cls_token', scaled_randn(1e-2), (self.dim,))
        pos_embedding = self.param('pos_embedding', scaled_randn(1e-2), (num_patches, self.dim))

        seq = tokens.shape[1]
        tokens = add_position_embedding(tokens, pos_embedding, img.shape[1:3], self.image_size, 'patches')
        if self.use_cls_token:
            cls_tokens = jnp.broadcast_to(cls_token.astype(tokens.dtype), (batch, 1, self.dim))
            tokens = jnp.concatenate((cls_tokens, tokens), axis=1)
        tokens = nn.Dropout(self.emb_dropout, deterministic=not train)(tokens)

        mask = None
        if exists(object_mask):
            mask = self.patch_mask(jnp.asarray(object_mask), img.shape, seq)
            if self.use_cls_token:
                mask = jnp.pad(mask, ((0, 0), (1, 0)), constant_values=True)

        tokens = Transformer(self.dim, self.depth, self.heads, self.dim_head, self.mlp_dim, self.dropout,
                             scan_layers=self.scan_layers, remat_policy=self.remat_policy,
                             attention_impl=self.attention_impl, name='transformer')(tokens, mask, train)

        if self.num_classes <= 0:
            return tokens

        if self.use_cls_token:  # the class token takes no part in the pooling
            tokens = tokens[:, 1:]
            if exists(mask):
                mask = mask[:, 1:]

        pooled = masked_mean(tokens, mask, axis=1)
        return Linear(self.num_classes, name='mlp_head')(pooled)
