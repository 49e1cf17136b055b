"""SimpleViT for videos and volumes, mirroring vit_pytorch/simple_vit_3d.py: simple_vit.py on (frame, height,
width) patches with a fixed 3D sin-cos position embedding (no parameter), mean pooling, no dropout.

Input is channels-last (batch, frames, height, width, channels); vit-pytorch takes (batch, channels, frames, height,
width). Tokens are in vit-pytorch's order `(f h w)`, each patch flattened as `(pf p1 p2 c)`. The Transformer (with
its Attention and FeedForward) is simple_vit.py's: vit-pytorch's copies are identical.

Quirks of vit-pytorch kept so weights transfer:
- The position embedding is built from the input's own patch grid, so any input whose frames, height and width
  divide by the patch sizes is taken; `image_size` and `frames` are only checked against the patch sizes.
- `dim // 6` frequencies per axis, zero-padded to `dim`: any dim works except 6 to 11 (torch's embedding is NaN
  there, refused here); below 6 the embedding is all zeros.
- The embedding's sin/cos blocks are in the order x, y, z (width, height, frames).
- `num_classes=0` keeps a `linear_head` with no outputs, returning (batch, 0).

JAX-only options: `scan_layers`, `remat_policy` and `attention_impl`, simple_vit.py's, passed to its Transformer.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from vit_flax.layers import (
    LayerNorm, Linear, check_attention_impl, check_floating_input, check_keywords, check_sincos_3d_dim, pair,
    posemb_sincos_3d,
)
from vit_flax.scan import check_remat_policy
from vit_flax.simple_vit import Transformer
from vit_flax.vit_3d import check_video_config, patchify_3d


class SimpleViT(nn.Module):
    image_size: int | tuple[int, int]
    image_patch_size: int | tuple[int, int]
    frames: int
    frame_patch_size: int
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
        check_video_config(self.image_size, self.image_patch_size, self.frames, self.frame_patch_size)
        check_sincos_3d_dim(self.dim)
        check_remat_policy(self.remat_policy)
        check_attention_impl(self.attention_impl)
        super().__post_init__()

    @nn.compact
    def __call__(self, video, train: bool = False):  # `train` accepted for a uniform interface; nothing is random
        check_floating_input(self, 'video', video, what='videos')
        x = patchify_3d(video, self.image_patch_size, self.frame_patch_size, self.channels)
        x = LayerNorm(name='to_patch_embedding_1')(x)
        x = Linear(self.dim, name='to_patch_embedding_2')(x)
        x = LayerNorm(name='to_patch_embedding_3')(x)

        patch_height, patch_width = pair(self.image_patch_size)
        _, frames, height, width, _ = video.shape
        pe = posemb_sincos_3d(frames // self.frame_patch_size, height // patch_height, width // patch_width, self.dim)
        x = x + jnp.asarray(pe, dtype=x.dtype)

        x = Transformer(self.dim, self.depth, self.heads, self.dim_head, self.mlp_dim, self.scan_layers,
                        self.remat_policy, self.attention_impl, name='transformer')(x)
        x = x.mean(axis=1)
        return Linear(self.num_classes, name='linear_head')(x)
