"""SimpleViT for 1-D series ("Better plain ViT baselines for ImageNet-1k", Beyer et al., 2022, on patches of a
sequence), mirroring vit_pytorch/simple_vit_1d.py: a fixed 1D sin-cos position embedding (no parameter), mean
pooling, no dropout, bias-free attention projections.

Input is channels-last, (batch, seq_len, channels); vit-pytorch takes (batch, channels, seq_len). Tokens are the
patches in order, each flattened as `(p c)` (vit_1d.patchify_1d). The Transformer (with its Attention and
FeedForward) is simple_vit.py's: vit-pytorch's copies are identical.

Quirks of vit-pytorch kept so weights transfer:
- The position embedding is built from the input's own patch count, so a series of any multiple of `patch_size`
  steps is taken; `seq_len` is only checked against the patch size.
- The embedding has `dim // 2` frequencies (sines, then cosines): `dim` must be even and at least 4 (torch's is NaN
  for dim 2, refused here).
- `num_classes=0` keeps a `linear_head` with no outputs, returning (batch, 0).

No random draws: `train` is accepted for a uniform interface.

JAX-only options: `scan_layers`, `remat_policy` and `attention_impl`, simple_vit.py's, passed to its Transformer.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from vit_flax.layers import (
    LayerNorm, Linear, check_attention_impl, check_floating_input, check_keywords, check_sincos_1d_dim,
    posemb_sincos_1d,
)
from vit_flax.scan import check_remat_policy
from vit_flax.simple_vit import Transformer
from vit_flax.vit_1d import check_series_config, patchify_1d


class SimpleViT(nn.Module):
    seq_len: int
    patch_size: int
    num_classes: int
    dim: int
    depth: int
    heads: int
    mlp_dim: int
    channels: int = 3
    dim_head: int = 64
    # JAX-only: simple_vit.py's layer scan, remat and attention switch, passed to its Transformer
    scan_layers: bool = False
    remat_policy: str | None = None
    attention_impl: str = 'explicit'

    def __post_init__(self):
        check_keywords(self)
        check_series_config(self.seq_len, self.patch_size)
        check_sincos_1d_dim(self.dim)
        check_remat_policy(self.remat_policy)
        check_attention_impl(self.attention_impl)
        super().__post_init__()

    @nn.compact
    def __call__(self, series, train: bool = False):  # `train` accepted for a uniform interface; nothing is random
        check_floating_input(self, 'series', series, what='series')
        x = patchify_1d(series, self.patch_size, self.channels)
        x = LayerNorm(name='to_patch_embedding_1')(x)
        x = Linear(self.dim, name='to_patch_embedding_2')(x)
        x = LayerNorm(name='to_patch_embedding_3')(x)
        x = x + jnp.asarray(posemb_sincos_1d(x.shape[1], self.dim), dtype=x.dtype)

        x = Transformer(self.dim, self.depth, self.heads, self.dim_head, self.mlp_dim, self.scan_layers,
                        self.remat_policy, self.attention_impl, name='transformer')(x)
        x = x.mean(axis=1)
        return Linear(self.num_classes, name='linear_head')(x)
