"""Parallel ViT ("Three things everyone should know about Vision Transformers", Touvron et al., 2022), mirroring
vit_pytorch/parallel_vit.py.

Each layer runs `num_parallel_branches` attention blocks side by side and sums them into the residual stream,
then does the same with feed-forward blocks. `Attention` and `FeedForward` are vit.py's (exact copies in torch).

Parameter tree = vit-pytorch's module tree: `transformer.layers.0.1.fns.1.net.1.weight` lives at
`params/transformer/layers_0_1/fns_1/net_1/kernel`.

Quirks of vit-pytorch kept so weights transfer:
- `pos_embedding` is (1, num_patches + 1, dim) and `cls_token` (1, 1, dim) (the pre-1.18 ViT layout), and
  `cls_token` exists even with `pool='mean'`, where it is still prepended and averaged with the patches.
- The patch embedding is a bare Linear (no LayerNorms around it, unlike vit.py), at `to_patch_embedding_1`.
- The transformer has no final LayerNorm; the head is LayerNorm + Linear (`mlp_head_0`, `mlp_head_1`).
- An input smaller than `image_size` takes the first `seq` position embeddings, whatever its height and width;
  only the token count has to fit.
- With `heads == 1 and dim_head == dim` the attention output projection (and its dropout) is dropped.
- `num_classes=0` keeps an `mlp_head` with no outputs, returning (batch, 0).
- `num_parallel_branches=0` makes every layer the identity (torch sums an empty list to 0); negative counts,
  which torch also treats as 0, are refused here.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
from einops import repeat

from vit_flax.layers import LayerNorm, Linear, add_position_embedding, check_floating_input, check_keywords, pair, randn
from vit_flax.vit import Attention, FeedForward, check_image_config, patchify


class Parallel(nn.Module):
    """The sum of `fns` applied to the same input; the branches are named `fns_0`, `fns_1`, ... like torch's."""

    fns: Sequence[nn.Module] = ()

    def __call__(self, x, train: bool = False):
        return sum([fn(x, train) for fn in self.fns])


class Transformer(nn.Module):
    dim: int
    depth: int
    heads: int
    dim_head: int
    mlp_dim: int
    num_parallel_branches: int = 2
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        # parent=None: the blocks are adopted by their Parallel (as fns_<j>), not by this module
        attn_block = lambda: Attention(self.dim, self.heads, self.dim_head, self.dropout, parent=None)
        ff_block = lambda: FeedForward(self.dim, self.mlp_dim, self.dropout, parent=None)
        branches = range(self.num_parallel_branches)
        for i in range(self.depth):
            attns = Parallel(tuple(attn_block() for _ in branches), name=f'layers_{i}_0')
            ffs = Parallel(tuple(ff_block() for _ in branches), name=f'layers_{i}_1')
            x = attns(x, train) + x
            x = ffs(x, train) + x
        return x


class ViT(nn.Module):
    image_size: int | tuple[int, int]
    patch_size: int | tuple[int, int]
    num_classes: int
    dim: int
    depth: int
    heads: int
    mlp_dim: int
    pool: str = 'cls'
    num_parallel_branches: int = 2
    channels: int = 3
    dim_head: int = 64
    dropout: float = 0.0
    emb_dropout: float = 0.0

    def __post_init__(self):
        check_keywords(self)
        check_image_config(self.image_size, self.patch_size)
        if self.pool not in {'cls', 'mean'}:
            raise ValueError(f"pool type must be either cls (cls token) or mean (mean pooling), got pool={self.pool!r}")
        super().__post_init__()

    @nn.compact
    def __call__(self, img, train: bool = False):
        check_floating_input(self, 'img', img)
        (image_height, image_width), (patch_height, patch_width) = pair(self.image_size), pair(self.patch_size)
        num_patches = (image_height // patch_height) * (image_width // patch_width)

        x = patchify(img, self.patch_size, self.channels)
        x = Linear(self.dim, name='to_patch_embedding_1')(x)
        b = x.shape[0]

        pos_embedding = self.param('pos_embedding', randn, (1, num_patches + 1, self.dim))
        cls_token = self.param('cls_token', randn, (1, 1, self.dim))

        cls_tokens = repeat(cls_token, '() n d -> b n d', b=b)
        x = jnp.concatenate((cls_tokens.astype(x.dtype), x), axis=1)
        x = add_position_embedding(x, pos_embedding, img.shape[1:3], self.image_size)
        x = nn.Dropout(self.emb_dropout, deterministic=not train)(x)

        x = Transformer(
            self.dim, self.depth, self.heads, self.dim_head, self.mlp_dim, self.num_parallel_branches, self.dropout,
            name='transformer',
        )(x, train)

        x = x.mean(axis=1) if self.pool == 'mean' else x[:, 0]

        x = LayerNorm(name='mlp_head_0')(x)
        return Linear(self.num_classes, name='mlp_head_1')(x)
