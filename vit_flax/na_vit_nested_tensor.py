"""NaViT with qk normalisation, mirroring vit_pytorch/na_vit_nested_tensor.py.

vit-pytorch runs this variant on jagged nested tensors: every image is its own sequence, with no padding. JAX has
no ragged arrays, so the Flax twin packs the images like na_vit.NaViT does and masks attention to each image;
within an image the arithmetic is the same. `model.apply(variables, images)` takes a flat list of (height, width,
channels) images of any sizes (one row per image) and returns (len(images), num_classes); a `PackedBatch` from
`na_vit.pack` / `na_vit.packed_dataset` (several images per row) returns (rows, max_images, num_classes).

Differences from na_vit.py, all vit-pytorch's:
- torch's own LayerNorm without bias (`weight` only) before attention and feed-forward, and on the head; the
  patch embedding's first LayerNorm has a bias.
- separate `to_queries` / `to_keys` / `to_values`; `qk_rmsnorm` is a LayerNorm without bias over each head's
  features (not an RMSNorm, despite the name), then the usual dim_head ** -0.5 scale.
- the attention pool has no residual: the pooled token is the attention output itself.
- token dropout takes a constant `token_dropout_prob` only and keeps `max(1, int((1 - p) * n))` tokens, the product
  rounded in float32 as torch's tensor arithmetic does. With `token_dropout_prob=None` training keeps every token
  (vit-pytorch raises a TypeError comparing None with 0).

Not mirrored: vit-pytorch builds its jagged tensors with `torch.nested.nested_tensor`, which copies without autograd
history, so its patch embedding, position embeddings and pooling queries get no gradient and never train. Here
every parameter trains. The parity tests run vit-pytorch under `parity/na_vit_nested_tensor.py:
torch_keeps_gradients()` (`as_nested_tensor`, which keeps the history) to compare all gradients.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from einops import rearrange

from vit_flax import na_vit
from vit_flax.layers import (
    LayerNorm, Linear, attention_weights, check_floating_input, default, fused_attention, uses_fused_attention,
)
from vit_flax.na_vit import PackedBatch

NoBiasLayerNorm = functools.partial(LayerNorm, use_bias=False)


FeedForward = functools.partial(na_vit.FeedForward, norm=NoBiasLayerNorm)


class Attention(nn.Module):
    dim: int
    heads: int = 8
    dim_head: int = 64
    dropout: float = 0.0
    qk_norm: bool = True
    attention_impl: str = 'explicit'  # JAX-only: na_vit.py's

    @nn.compact
    def __call__(self, x, context=None, mask=None, train: bool = False):
        dim_inner = self.heads * self.dim_head
        x = NoBiasLayerNorm(name='norm')(x)
        context = default(context, x)

        split_heads = lambda t: rearrange(t, 'b n (h d) -> b n h d', h=self.heads)
        query = split_heads(Linear(dim_inner, use_bias=False, name='to_queries')(x))
        key = split_heads(Linear(dim_inner, use_bias=False, name='to_keys')(context))
        value = split_heads(Linear(dim_inner, use_bias=False, name='to_values')(context))
        if self.qk_norm:
            query = NoBiasLayerNorm(name='query_norm')(query)
            key = NoBiasLayerNorm(name='key_norm')(key)
        if uses_fused_attention(self.attention_impl, self.dropout, train):
            out = fused_attention(query, key, value, self.dim_head**-0.5, self.attention_impl, mask)
            out = rearrange(out, 'b n h d -> b n (h d)')
        else:
            query, key, value = (rearrange(t, 'b n h d -> b h n d') for t in (query, key, value))
            attn = attention_weights(query, key, scale=self.dim_head**-0.5, mask=mask)
            attn = nn.Dropout(self.dropout, deterministic=not train)(attn)
            out = rearrange(jnp.einsum('bhij,bhjd->bhid', attn, value), 'b h n d -> b n (h d)')
        return Linear(self.dim, use_bias=False, name='to_out')(out)


class Transformer(nn.Module):
    dim: int
    depth: int
    heads: int
    dim_head: int
    mlp_dim: int
    dropout: float = 0.0
    qk_norm: bool = True
    attention_impl: str = 'explicit'

    @nn.compact
    def __call__(self, x, mask=None, train: bool = False):
        for i in range(self.depth):
            attention = Attention(self.dim, self.heads, self.dim_head, self.dropout, self.qk_norm, self.attention_impl,
                                  name=f'layers_{i}_0')
            x = attention(x, mask=mask, train=train) + x
            x = FeedForward(self.dim, self.mlp_dim, self.dropout, name=f'layers_{i}_1')(x, train) + x
        return NoBiasLayerNorm(name='norm')(x)


class NaViT(na_vit.NaViT):
    qk_rmsnorm: bool = True
    token_dropout_prob: float | None = None

    def __post_init__(self):
        if callable(self.token_dropout_prob):
            raise ValueError('this NaViT takes a constant token_dropout_prob (vit-pytorch na_vit_nested_tensor), '
                             f'got {self.token_dropout_prob!r}')
        super().__post_init__()

    def kept_tokens(self, num_tokens: int, height: int, width: int) -> int | None:
        if not self.token_dropout_prob:
            return None
        return max(1, int(np.float32(1.0 - self.token_dropout_prob) * np.float32(num_tokens)))

    pool_residual = False

    @nn.nowrap
    def patch_embedding_norm(self, name: str) -> nn.Module:
        return LayerNorm(name=name)

    @nn.nowrap
    def norm(self, name: str) -> nn.Module:
        return NoBiasLayerNorm(name=name)

    @nn.nowrap
    def transformer(self) -> nn.Module:
        return Transformer(self.dim, self.depth, self.heads, self.dim_head, self.mlp_dim, self.dropout,
                           self.qk_rmsnorm, self.attention_impl, name='transformer')

    @nn.nowrap
    def attention_pool(self) -> nn.Module:
        return Attention(self.dim, self.heads, self.dim_head, attention_impl=self.attention_impl, name='attn_pool')

    def __call__(self, images, train: bool = False):
        if isinstance(images, PackedBatch):
            check_floating_input(self, 'images.patches', images.patches)
            return self._logits_per_slot(images, train)
        check_floating_input(self, 'images', images)
        if na_vit.is_image(images) or not len(images) or not all(na_vit.is_image(image) for image in images):
            raise ValueError('this NaViT takes a flat list of (height, width, channels) images or a PackedBatch')
        # one image per row: vit-pytorch's jagged batch, padded
        return super().__call__([[image] for image in images], train=train)
