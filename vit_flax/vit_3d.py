"""ViT for videos and volumes, mirroring vit_pytorch/vit_3d.py: the ViT of vit.py on (frame, height, width) patches.

Input is channels-last (batch, frames, height, width, channels); vit-pytorch takes (batch, channels, frames, height,
width). Tokens are in vit-pytorch's order `(f h w)`, each patch flattened as `(pf p1 p2 c)`.

Parameter tree = vit-pytorch's module tree: `transformer.layers.0.1.net.1.weight` lives at
`params/transformer/layers_0_1/net_1/kernel`. Attention and FeedForward are vit.py's (vit-pytorch's copies are
identical); the Transformer is not, see below.

Quirks of vit-pytorch kept so weights transfer:
- The layout of vit-pytorch's older ViT: `cls_token` (1, 1, dim) and `pos_embedding` (1, num_patches + 1, dim).
- Every model has a cls token, also with `pool='mean'`, which then averages it with the patch tokens.
- The transformer has no final LayerNorm; it is the first layer of `mlp_head` (LayerNorm, Linear), after pooling.
- An input with fewer frames or a smaller image than configured takes the first `seq` rows of the position
  embedding, whatever its shape; only the token count has to fit.
- With `heads == 1 and dim_head == dim` the attention output projection (and its dropout) is dropped.
- `num_classes=0` keeps a head with no outputs, returning (batch, 0).

JAX-only options: `scan_layers`, `remat_policy` and `attention_impl`, vit.py's, passed to its Transformer.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from einops import rearrange, repeat

from vit_flax import vit
from vit_flax.layers import (
    LayerNorm, Linear, add_position_embedding, check_attention_impl, check_floating_input, check_keywords, pair, randn,
)
from vit_flax.scan import check_remat_policy
from vit_flax.vit import check_image_config


class Transformer(vit.Transformer):
    """vit.py's layers (and its JAX-only options) without the final LayerNorm: vit_3d's head normalises after
    pooling instead."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        return self.run_layers(x, train)


def check_video_config(image_size, image_patch_size, frames, frame_patch_size):
    """vit-pytorch's construction-time checks of the 3-D models, with the offending values in the message (the
    sizes' signs are layers.check_keywords')."""
    check_image_config(image_size, image_patch_size)
    if frames % frame_patch_size:
        raise ValueError(
            f'Frames must be divisible by the frame patch size: frames={frames}, frame_patch_size={frame_patch_size}'
        )


def patchify_3d(video, image_patch_size, frame_patch_size, channels):
    """(b, F, H, W, c) -> (b, (f h w), (pf p1 p2 c)): the token order and patch layout of vit_3d's Rearrange."""
    patch_height, patch_width = pair(image_patch_size)
    if video.ndim != 5:
        raise ValueError(
            f'expected videos of shape (batch, frames, height, width, channels), got shape {video.shape}'
        )
    _, frames, height, width, c = video.shape
    if c != channels:
        raise ValueError(f'expected {channels} channels (channels-last input), got shape {video.shape}')
    if frames % frame_patch_size or height % patch_height or width % patch_width:
        raise ValueError(
            f'video of size {(frames, height, width)} is not divisible by patch size '
            f'{(frame_patch_size, patch_height, patch_width)}'
        )
    return rearrange(
        video, 'b (f pf) (h p1) (w p2) c -> b (f h w) (pf p1 p2 c)', pf=frame_patch_size, p1=patch_height,
        p2=patch_width,
    )


class ViT(nn.Module):
    image_size: int | tuple[int, int]
    image_patch_size: int | tuple[int, int]
    frames: int
    frame_patch_size: int
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
    # JAX-only: vit.py's layer scan, remat and attention switch, passed to its Transformer
    scan_layers: bool = False
    remat_policy: str | None = None
    attention_impl: str = 'explicit'

    def __post_init__(self):
        check_keywords(self)
        check_video_config(self.image_size, self.image_patch_size, self.frames, self.frame_patch_size)
        check_remat_policy(self.remat_policy)
        check_attention_impl(self.attention_impl)
        if self.pool not in {'cls', 'mean'}:
            raise ValueError(f"pool type must be either cls (cls token) or mean (mean pooling), got pool={self.pool!r}")
        super().__post_init__()

    @nn.compact
    def __call__(self, video, train: bool = False):
        check_floating_input(self, 'video', video, what='videos')
        x = patchify_3d(video, self.image_patch_size, self.frame_patch_size, self.channels)
        x = LayerNorm(name='to_patch_embedding_1')(x)
        x = Linear(self.dim, name='to_patch_embedding_2')(x)
        x = LayerNorm(name='to_patch_embedding_3')(x)

        (image_height, image_width), (patch_height, patch_width) = pair(self.image_size), pair(self.image_patch_size)
        num_patches = (
            (image_height // patch_height) * (image_width // patch_width) * (self.frames // self.frame_patch_size)
        )
        pos_embedding = self.param('pos_embedding', randn, (1, num_patches + 1, self.dim))
        cls_token = self.param('cls_token', randn, (1, 1, self.dim))

        cls_tokens = repeat(cls_token, '1 1 d -> b 1 d', b=x.shape[0])
        x = jnp.concatenate((cls_tokens.astype(x.dtype), x), axis=1)
        # a larger input fails in torch's broadcast; the message names the configured size
        x = add_position_embedding(x, pos_embedding, video.shape[1:4], f'{self.image_size}, frames={self.frames}')
        x = nn.Dropout(self.emb_dropout, deterministic=not train)(x)

        transformer = Transformer(
            self.dim, self.depth, self.heads, self.dim_head, self.mlp_dim, self.dropout, scan_layers=self.scan_layers,
            remat_policy=self.remat_policy, attention_impl=self.attention_impl, name='transformer',
        )
        x = transformer(x, train)

        x = x.mean(axis=1) if self.pool == 'mean' else x[:, 0]
        x = LayerNorm(name='mlp_head_0')(x)
        return Linear(self.num_classes, name='mlp_head_1')(x)
