"""SimpleViT with flash attention for videos and volumes, mirroring vit_pytorch/simple_flash_attn_vit_3d.py:
simple_flash_attn_vit.py's model on (frame, height, width) patches with simple_vit_3d's fixed 3D sin-cos position
embedding.

Input is channels-last (batch, frames, height, width, channels); vit-pytorch takes (batch, channels, frames, height,
width). Tokens are in vit-pytorch's order `(f h w)`, each patch flattened as `(pf p1 p2 c)` (vit_3d.patchify_3d).
The layers are simple_vit.py's and the Transformer (without a final LayerNorm) simple_flash_attn_vit.py's: vit-pytorch's
F.scaled_dot_product_attention is the same function as simple_vit's explicit attention, and the fused kernels are
this port's JAX-only `attention_impl`.

`use_flash_attn` is vit-pytorch's switch between F.scaled_dot_product_attention (True) and its own einsum attention
(False); both are meant to compute the same function, so here it changes nothing. Fix: as in simple_flash_attn_vit,
vit-pytorch 1.26.11's `use_flash_attn=False` path cannot run (`einsum` is not imported, and the keys' pattern drops
the heads axis); here it computes the attention it was written for (the parity reference patches vit-pytorch's
`Attend.forward` the same way).

Quirks of vit-pytorch kept so weights transfer:
- No final LayerNorm anywhere after the layers: the transformer has none, and unlike the 2-D file `linear_head` is
  a bare Linear, applied to the mean of the un-normalised tokens.
- The position embedding is built from the input's own patch grid, so any input whose frames, height and width
  divide by the patch sizes is taken; `image_size` and `frames` are only checked against the patch sizes.
- `dim // 6` frequencies per axis, zero-padded to `dim`: any dim works except 6 to 11 (torch's embedding is NaN
  there, refused here); below 6 the embedding is all zeros.
- `num_classes=0` keeps a `linear_head` with no outputs, returning (batch, 0).

No random draws: `train` is accepted for a uniform interface.

JAX-only options: `scan_layers`, `remat_policy` and `attention_impl`, simple_vit.py's, passed to its layers.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from vit_flax.layers import (
    LayerNorm, Linear, check_attention_impl, check_floating_input, check_keywords, check_sincos_3d_dim, pair,
    posemb_sincos_3d,
)
from vit_flax.scan import check_remat_policy
from vit_flax.simple_flash_attn_vit import Transformer, check_use_flash
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
    use_flash_attn: bool = True  # vit-pytorch's kernel switch: no effect here (see the module docstring)
    # JAX-only: simple_vit.py's layer scan, remat and attention switch, passed to its layers
    scan_layers: bool = False
    remat_policy: str | None = None
    attention_impl: str = 'explicit'

    def __post_init__(self):
        check_keywords(self)
        check_video_config(self.image_size, self.image_patch_size, self.frames, self.frame_patch_size)
        check_sincos_3d_dim(self.dim)
        check_use_flash(self, 'use_flash_attn', self.use_flash_attn)
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
