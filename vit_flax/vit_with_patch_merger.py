"""ViT with a PatchMerger ("Learning to Merge Tokens in Vision Transformers", Renggli et al., 2022), mirroring
vit_pytorch/vit_with_patch_merger.py.

A PatchMerger turns any number of tokens into `num_tokens_out`: learned queries attend (one head, no
projections, scale `dim ** -0.5`) over the layer-normalised tokens and return the weighted sums of them. The
ViT applies one after transformer layer `patch_merge_layer` (1-based), then carries on with the fewer tokens.

Parameter tree = vit-pytorch's module tree: `transformer.patch_merger.queries` lives at
`params/transformer/patch_merger/queries`, `transformer.layers.0.1.net.1.weight` at
`params/transformer/layers_0_1/net_1/kernel`.

Quirks of vit-pytorch kept so weights transfer:
- The merger runs after layer index `default(patch_merge_layer, depth // 2) - 1` (0-based). Where that index
  is no layer (`patch_merge_layer=0`, a negative one, one above `depth`, or the default with `depth < 2`) it
  never runs, but the model still owns its parameters (`norm`, `queries`), which then get no gradient.
- There is no cls token, yet `pos_embedding` is (1, num_patches + 1, dim), leading axis included: an input
  whose patch grid gives up to num_patches + 1 tokens (smaller, non-square, or one patch more) takes the first
  `n` rows, whatever its height and width.
- The head always mean-pools (no `pool` keyword) and is `mlp_head.1` (after a parameter-free Reduce);
  `num_classes=0` keeps an `mlp_head.1` with no outputs and returns (batch, 0), as torch does.
- `patch_merge_num_tokens` may exceed the token count (the merger then makes more tokens than it gets) and
  may be 0 (no tokens left: the mean pool gives NaN, as in torch).
- Attention and FeedForward are vit.py's (with a single head and `dim_head == dim` the attention output
  projection is dropped); `dim_head` and `heads` play no part in the merger.
- PatchMerger alone takes tokens (..., n, dim) with any leading axes, as torch's matmul broadcasts them.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from vit_flax.layers import (
    LayerNorm, Linear, add_position_embedding, attention_weights, check_floating_input, check_keywords, default, pair,
    randn,
)
from vit_flax.vit import Attention, FeedForward, check_image_config, embed_patches

# patch merger class


class PatchMerger(nn.Module):
    dim: int
    num_tokens_out: int

    def __post_init__(self):
        check_keywords(self)
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_floating_input(self, 'x', x, what='tokens')
        if x.ndim < 2 or x.shape[-1] != self.dim:
            raise ValueError(f'PatchMerger expects tokens (..., n, dim={self.dim}), got shape {x.shape}')
        x = LayerNorm(name='norm')(x)
        queries = self.param('queries', randn, (self.num_tokens_out, self.dim)).astype(x.dtype)
        queries = jnp.broadcast_to(queries, (*x.shape[:-2], *queries.shape))
        attn = attention_weights(queries, x, scale=self.dim**-0.5)
        return jnp.einsum('...ij,...jd->...id', attn, x)


# classes


class Transformer(nn.Module):
    dim: int
    depth: int
    heads: int
    dim_head: int
    mlp_dim: int
    dropout: float = 0.0
    patch_merge_layer: int | None = None
    patch_merge_num_tokens: int = 8

    @nn.compact
    def __call__(self, x, train: bool = False):
        # default to mid-way through the transformer, as in the paper; 1-based, so 0 (or depth < 2) never merges
        patch_merge_layer_index = default(self.patch_merge_layer, self.depth // 2) - 1
        patch_merger = PatchMerger(dim=self.dim, num_tokens_out=self.patch_merge_num_tokens, name='patch_merger')

        for i in range(self.depth):
            x = Attention(self.dim, self.heads, self.dim_head, self.dropout, name=f'layers_{i}_0')(x, train) + x
            x = FeedForward(self.dim, self.mlp_dim, self.dropout, name=f'layers_{i}_1')(x, train) + x
            if i == patch_merge_layer_index:
                x = patch_merger(x)

        if not 0 <= patch_merge_layer_index < self.depth and self.is_initializing():
            patch_merger(x)  # never applied, but torch owns its parameters: create them, discard the result

        return LayerNorm(name='norm')(x)


class ViT(nn.Module):
    image_size: int | tuple[int, int]
    patch_size: int | tuple[int, int]
    num_classes: int
    dim: int
    depth: int
    heads: int
    mlp_dim: int
    patch_merge_layer: int | None = None
    patch_merge_num_tokens: int = 8
    channels: int = 3
    dim_head: int = 64
    dropout: float = 0.0
    emb_dropout: float = 0.0

    def __post_init__(self):
        check_keywords(self)
        check_image_config(self.image_size, self.patch_size)
        super().__post_init__()

    @nn.compact
    def __call__(self, img, train: bool = False):
        check_floating_input(self, 'img', img)
        (image_height, image_width), (patch_height, patch_width) = pair(self.image_size), pair(self.patch_size)
        num_patches = (image_height // patch_height) * (image_width // patch_width)

        x = embed_patches(img, self.patch_size, self.channels, self.dim)

        pos_embedding = self.param('pos_embedding', randn, (1, num_patches + 1, self.dim))
        x = add_position_embedding(x, pos_embedding, img.shape[1:3], self.image_size)
        x = nn.Dropout(self.emb_dropout, deterministic=not train)(x)

        x = Transformer(self.dim, self.depth, self.heads, self.dim_head, self.mlp_dim, self.dropout,
                        self.patch_merge_layer, self.patch_merge_num_tokens, name='transformer')(x, train)

        x = x.mean(axis=1)
        return Linear(self.num_classes, name='mlp_head_1')(x)
