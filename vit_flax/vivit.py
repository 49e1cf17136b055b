"""ViViT (Arnab et al., 2021), mirroring vit_pytorch/vivit.py: the factorised encoder (model 2) and factorised
self-attention (model 3) variants.

Videos are channels-last, (batch, frames, height, width, channels); vit-pytorch takes
(batch, channels, frames, height, width). Parameter tree = vit-pytorch's module tree:
`factorized_transformer.layers.0.1.to_qkv.weight` lives at `params/factorized_transformer/layers_0_1/to_qkv/kernel`.

The class is `ViViT`, as in vit-pytorch 1.26; vit-pytorch's README still writes `from vit_pytorch.vivit import ViT`
(the class's old name), so `ViT` is the same class under that name here. Neither is a top-level `vit_flax` name:
vit_pytorch's `__init__` exports only vit.ViT of the classes called ViT.

`FeedForward` is vit.py's (vivit.py's is an identical copy), the config checks and patch cutting vit_3d.py's (the
same Rearrange, tokens then split per frame patch). vivit.py's `Attention` and `Transformer` add a key
mask and the `use_flash_attn` switch, so they live here, with vit.py's parameter names.

Quirks of vit-pytorch kept so weights and outputs transfer:
- Tokens: each frame patch of `frame_patch_size` frames is cut into image patches laid out `(pf p1 p2 c)`,
  embedded by LayerNorm, Linear, LayerNorm, plus a (1, frame patches, image patches, dim) position embedding.
- `pool='cls'` prepends a spatial cls token to every frame patch; the factorised encoder reads it back per frame,
  then prepends a temporal cls token and reads that. Factorised self-attention has no temporal cls token: it
  returns the first frame patch's spatial cls token (`x[:, 0, 0]`), the other frames' cls tokens reaching it only
  through temporal attention.
- `pool='mean'` has no cls token parameters at all (unlike vit.ViT's empty (0, dim) one). The factorised encoder
  averages each frame patch's tokens, then all frame patches; factorised self-attention averages every token.
  Masked frames are averaged in like the others: the mask never touches pooling.
- `mask` (batch, frames) of bools: a frame patch is visible when all of its frames are True. Only temporal
  attention is masked (keys only); the temporal cls token is always visible.
- `use_flash_attn=True` (torch's `scaled_dot_product_attention`, whose softmax in torch 2.13 zeroes fully masked
  rows) gives a query that may see no key (every frame of a video masked, and no temporal cls token) all-zero
  attention weights; `use_flash_attn=False` fills masked logits with -max and so spreads such a query evenly over
  all keys. Both are kept.
- Not kept: with `use_flash_attn=True` vit-pytorch applies attention dropout in eval mode too (`dropout_p` is passed
  to `scaled_dot_product_attention` whatever `self.training`). Here dropout is on only with `train=True`, so for
  `dropout > 0` vit-pytorch's eval outputs match only with `use_flash_attn=False`.
- Inputs with fewer frames or smaller images than configured take the first frame-patch rows and the first `seq`
  image patches of the position embedding, whatever the input's height and width; only the counts must fit.
- Factorised self-attention needs `spatial_depth == temporal_depth`; the factorised encoder accepts
  `temporal_depth=0` (its temporal transformer is then only the final LayerNorm).
- `num_classes=0` keeps a Linear(dim, 0) head: the output is (batch, 0), not tokens as in vit.ViT.
- With `heads == 1 and dim_head == dim` the attention output projection (and its dropout) is dropped.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from einops import rearrange, reduce, repeat

from vit_flax.layers import (
    LayerNorm, Linear, attention_weights, check_floating_input, check_keywords, exists, pair, randn,
)
from vit_flax.vit import FeedForward
from vit_flax.vit_3d import check_video_config, patchify_3d

VARIANTS = ('factorized_encoder', 'factorized_self_attention')


class Attention(nn.Module):
    dim: int
    heads: int = 8
    dim_head: int = 64
    dropout: float = 0.0
    use_flash_attn: bool = True

    @nn.compact
    def __call__(self, x, mask=None, train: bool = False):
        inner_dim = self.dim_head * self.heads
        project_out = not (self.heads == 1 and self.dim_head == self.dim)

        x = LayerNorm(name='norm')(x)

        qkv = jnp.split(Linear(inner_dim * 3, use_bias=False, name='to_qkv')(x), 3, axis=-1)
        q, k, v = (rearrange(t, 'b n (h d) -> b h n d', h=self.heads) for t in qkv)

        if exists(mask):
            mask = rearrange(mask, 'b j -> b 1 1 j')

        attn = attention_weights(q, k, scale=self.dim_head**-0.5, mask=mask)
        if exists(mask) and self.use_flash_attn:
            # torch's scaled_dot_product_attention gives a query with no visible key zero weights
            attn = jnp.where(mask.any(axis=-1, keepdims=True), attn, 0.0)
        attn = nn.Dropout(self.dropout, deterministic=not train)(attn)

        out = jnp.einsum('bhij,bhjd->bhid', attn, v)
        out = rearrange(out, 'b h n d -> b n (h d)')
        if not project_out:
            return out
        out = Linear(self.dim, name='to_out_0')(out)
        return nn.Dropout(self.dropout, deterministic=not train)(out)


class Transformer(nn.Module):
    dim: int
    depth: int
    heads: int
    dim_head: int
    mlp_dim: int
    dropout: float = 0.0
    use_flash_attn: bool = True

    @nn.compact
    def __call__(self, x, mask=None, train: bool = False):
        for i in range(self.depth):
            attn = Attention(
                self.dim, self.heads, self.dim_head, self.dropout, self.use_flash_attn, name=f'layers_{i}_0'
            )
            x = attn(x, mask, train) + x
            x = FeedForward(self.dim, self.mlp_dim, self.dropout, name=f'layers_{i}_1')(x, train) + x
        return LayerNorm(name='norm')(x)


class FactorizedTransformer(nn.Module):
    """Per layer: attention across space within each frame patch, across time at each token position, then a
    feed-forward; x is (b, f, n, d)."""

    dim: int
    depth: int
    heads: int
    dim_head: int
    mlp_dim: int
    dropout: float = 0.0
    use_flash_attn: bool = True

    @nn.compact
    def __call__(self, x, mask=None, train: bool = False):
        batch, frames, seq, _ = x.shape

        if exists(mask):
            mask = repeat(mask, 'b ... -> (b space) ...', space=seq)

        for i in range(self.depth):
            attend = lambda j: Attention(
                self.dim, self.heads, self.dim_head, self.dropout, self.use_flash_attn, name=f'layers_{i}_{j}'
            )
            x = rearrange(x, 'b f n d -> (b f) n d')
            x = attend(0)(x, train=train) + x
            x = rearrange(x, '(b f) n d -> (b n) f d', b=batch, f=frames)
            x = attend(1)(x, mask, train) + x
            x = FeedForward(self.dim, self.mlp_dim, self.dropout, name=f'layers_{i}_2')(x, train) + x
            x = rearrange(x, '(b n) f d -> b f n d', b=batch, n=seq)

        return LayerNorm(name='norm')(x)


class ViViT(nn.Module):
    image_size: int | tuple[int, int]
    image_patch_size: int | tuple[int, int]
    frames: int
    frame_patch_size: int
    num_classes: int
    dim: int
    spatial_depth: int
    temporal_depth: int
    heads: int
    mlp_dim: int
    pool: str = 'cls'
    channels: int = 3
    dim_head: int = 64
    dropout: float = 0.0
    emb_dropout: float = 0.0
    variant: str = 'factorized_encoder'
    use_flash_attn: bool = True

    def __post_init__(self):
        check_keywords(self)
        # vit-pytorch's asserts, as ValueErrors naming the values
        check_video_config(self.image_size, self.image_patch_size, self.frames, self.frame_patch_size)
        if self.variant not in VARIANTS:
            raise ValueError(f'variant = {self.variant!r} is not implemented; choose one of {VARIANTS}')
        if self.pool not in {'cls', 'mean'}:
            raise ValueError(f"pool type must be either cls (cls token) or mean (mean pooling), got pool={self.pool!r}")
        if self.variant == 'factorized_self_attention' and self.spatial_depth != self.temporal_depth:
            raise ValueError(
                'Spatial and temporal depth must be the same for factorized self-attention: '
                f'spatial_depth={self.spatial_depth}, temporal_depth={self.temporal_depth}'
            )
        super().__post_init__()

    def _to_patch_embedding(self, video):
        x = patchify_3d(video, self.image_patch_size, self.frame_patch_size, self.channels)
        x = rearrange(x, 'b (f n) d -> b f n d', f=video.shape[1] // self.frame_patch_size)
        x = LayerNorm(name='to_patch_embedding_1')(x)
        x = Linear(self.dim, name='to_patch_embedding_2')(x)
        return LayerNorm(name='to_patch_embedding_3')(x)

    def _add_position_embedding(self, x, video_shape):
        (image_height, image_width), (patch_height, patch_width) = pair(self.image_size), pair(self.image_patch_size)
        num_image_patches = (image_height // patch_height) * (image_width // patch_width)
        num_frame_patches = self.frames // self.frame_patch_size
        pos_embedding = self.param('pos_embedding', randn, (1, num_frame_patches, num_image_patches, self.dim))

        _, frames, seq, _ = x.shape
        if frames > num_frame_patches or seq > num_image_patches:
            raise ValueError(
                f'video of shape {tuple(video_shape)} gives {frames} frame patches of {seq} image patches, more than '
                f'the position embedding of frames={self.frames}, image_size={self.image_size} '
                f'({num_frame_patches} of {num_image_patches})'
            )
        return x + pos_embedding[:, :frames, :seq].astype(x.dtype)

    def _temporal_mask(self, mask, video_shape):
        mask = jnp.asarray(mask)
        batch, frames = video_shape[:2]
        if mask.shape != (batch, frames):
            raise ValueError(
                f'expected a mask of shape (batch, frames) = {(batch, frames)} for videos of shape '
                f'{tuple(video_shape)}, got shape {mask.shape}'
            )
        return reduce(mask.astype(bool), 'b (f patch) -> b f', 'all', patch=self.frame_patch_size)

    @nn.compact
    def __call__(self, video, mask=None, train: bool = False):
        check_floating_input(self, 'video', video, what='videos')
        global_average_pool = self.pool == 'mean'
        transformer = lambda depth, name: Transformer(
            self.dim, depth, self.heads, self.dim_head, self.mlp_dim, self.dropout, self.use_flash_attn, name=name
        )

        x = self._to_patch_embedding(video)
        batch, frames, _, _ = x.shape

        x = self._add_position_embedding(x, video.shape)

        if not global_average_pool:
            spatial_cls_token = self.param('spatial_cls_token', randn, (1, 1, self.dim))
            spatial_cls_tokens = repeat(spatial_cls_token, '1 1 d -> b f 1 d', b=batch, f=frames)
            x = jnp.concatenate((spatial_cls_tokens.astype(x.dtype), x), axis=2)

        x = nn.Dropout(self.emb_dropout, deterministic=not train)(x)

        temporal_mask = self._temporal_mask(mask, video.shape) if exists(mask) else None

        if self.variant == 'factorized_encoder':
            x = rearrange(x, 'b f n d -> (b f) n d')
            x = transformer(self.spatial_depth, 'spatial_transformer')(x, train=train)
            x = rearrange(x, '(b f) n d -> b f n d', b=batch)

            x = x[:, :, 0] if not global_average_pool else reduce(x, 'b f n d -> b f d', 'mean')

            if not global_average_pool:
                temporal_cls_token = self.param('temporal_cls_token', randn, (1, 1, self.dim))
                temporal_cls_tokens = repeat(temporal_cls_token, '1 1 d -> b 1 d', b=batch)
                x = jnp.concatenate((temporal_cls_tokens.astype(x.dtype), x), axis=1)
                if exists(temporal_mask):
                    temporal_mask = jnp.pad(temporal_mask, ((0, 0), (1, 0)), constant_values=True)

            x = transformer(self.temporal_depth, 'temporal_transformer')(x, mask=temporal_mask, train=train)

            x = x[:, 0] if not global_average_pool else reduce(x, 'b f d -> b d', 'mean')
        else:
            factorized_transformer = FactorizedTransformer(
                self.dim, self.spatial_depth, self.heads, self.dim_head, self.mlp_dim, self.dropout,
                self.use_flash_attn, name='factorized_transformer',
            )
            x = factorized_transformer(x, mask=temporal_mask, train=train)

            x = x[:, 0, 0] if not global_average_pool else reduce(x, 'b f n d -> b d', 'mean')

        return Linear(self.num_classes, name='mlp_head')(x)


# the name vit-pytorch's README imports (`from vit_pytorch.vivit import ViT`), from before the class was renamed
ViT = ViViT
