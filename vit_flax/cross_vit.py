"""CrossViT ("CrossViT: Cross-Attention Multi-Scale Vision Transformer", Chen et al., 2021), mirroring
vit_pytorch/cross_vit.py.

Two branches embed the same image with small (`sm_patch_size`) and large (`lg_patch_size`) patches. Each of the
`depth` multi-scale layers runs a transformer per branch, then `cross_attn_depth` cross-attention steps in which
each branch's cls token (projected to the other branch's width when the widths differ) attends to the other
branch's patch tokens. The logits are the sum of a head on each branch's cls token.

Parameter tree = vit-pytorch's module tree: `multi_scale_encoder.layers.0.2.layers.1.0.fn.to_kv.weight` lives at
`params/multi_scale_encoder/layers_0_2/layers_1_0/fn/to_kv/kernel`.

Quirks of vit-pytorch kept so weights transfer:
- `image_size`, `sm_patch_size` and `lg_patch_size` are plain ints (square images and patches); torch fails on
  tuples. `image_size` must be divisible by both patch sizes.
- `dropout=0.1` and `emb_dropout=0.1` by default (active only with `train=True`); `emb_dropout` acts on each
  branch's tokens after the position embedding, `dropout` on the attention maps, attention outputs and
  feed-forwards of both the branch transformers and the cross attention.
- Each ImageEmbedder's `pos_embedding` is (1, num_patches + 1, dim) and its `cls_token` (1, 1, dim), leading axes
  included. Any input divisible by both patch sizes whose patch grids give no more tokens than `image_size` does
  (smaller, or non-square, even wider or taller than `image_size`) takes the first `n + 1` rows of each branch's
  position embedding, whatever its height and width.
- Attention has separate `to_q` and `to_kv` projections (no biases) and always keeps its output projection
  `to_out.0`, even for one head with `dim_head == dim`.
- Cross attention: the query is the cls token alone; only it is layer-normalised (`norm`). The keys and values
  are the normalised cls token followed by the other branch's patch tokens *un-normalised* (`kv_include_self`).
  Only the cls tokens are updated (residually); the patch tokens pass through the CrossTransformer unchanged, and
  every cross step of a layer attends to the same patch tokens.
- `ProjectInOut`'s `project_in` / `project_out` Linears exist only when `sm_dim != lg_dim` (torch's Identity
  otherwise); with equal widths the cross attention has no projections at all.
- Every branch transformer ends with a LayerNorm (`norm`), also with `sm_enc_depth=0` / `lg_enc_depth=0`, where it
  is all the transformer does. `depth=0` and `cross_attn_depth=0` are accepted (no layers).
- The heads are LayerNorm + Linear (`sm_mlp_head.0/1`, `lg_mlp_head.0/1`); `num_classes=0` returns (batch, 0).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from einops import rearrange, repeat

from vit_flax.layers import (
    LayerNorm, Linear, add_position_embedding, attention_weights, check_floating_input, check_keywords, default, randn,
)
from vit_flax.vit import FeedForward, embed_patches


class Attention(nn.Module):
    dim: int
    heads: int = 8
    dim_head: int = 64
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, context=None, kv_include_self: bool = False, train: bool = False):
        inner_dim = self.dim_head * self.heads

        x = LayerNorm(name='norm')(x)
        context = default(context, x)

        if kv_include_self:
            # cross attention requires CLS token includes itself as key / value
            context = jnp.concatenate((x, context.astype(x.dtype)), axis=1)

        q = Linear(inner_dim, use_bias=False, name='to_q')(x)
        k, v = jnp.split(Linear(inner_dim * 2, use_bias=False, name='to_kv')(context), 2, axis=-1)
        q, k, v = (rearrange(t, 'b n (h d) -> b h n d', h=self.heads) for t in (q, k, v))

        attn = attention_weights(q, k, scale=self.dim_head**-0.5)
        attn = nn.Dropout(self.dropout, deterministic=not train)(attn)

        out = jnp.einsum('bhij,bhjd->bhid', attn, v)
        out = rearrange(out, 'b h n d -> b n (h d)')
        out = Linear(self.dim, name='to_out_0')(out)
        return nn.Dropout(self.dropout, deterministic=not train)(out)


class Transformer(nn.Module):
    """Transformer encoder, for small and large patches."""

    dim: int
    depth: int
    heads: int
    dim_head: int
    mlp_dim: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        for i in range(self.depth):
            attn = Attention(self.dim, heads=self.heads, dim_head=self.dim_head, dropout=self.dropout,
                             name=f'layers_{i}_0')
            x = attn(x, train=train) + x
            x = FeedForward(self.dim, self.mlp_dim, dropout=self.dropout, name=f'layers_{i}_1')(x, train) + x
        return LayerNorm(name='norm')(x)


class ProjectInOut(nn.Module):
    """Projects the cls token into `fn`'s width and back, when the small and large widths differ.

    `fn` is an unbound module (create it with `parent=None` inside another module's compact method); Flax adopts it
    as the child `fn`, as torch's attribute.
    """

    dim_in: int
    dim_out: int
    fn: nn.Module

    @nn.compact
    def __call__(self, x, *args, train: bool = False, **kwargs):
        need_projection = self.dim_in != self.dim_out
        if need_projection:
            x = Linear(self.dim_out, name='project_in')(x)
        x = self.fn(x, *args, train=train, **kwargs)
        if need_projection:
            x = Linear(self.dim_in, name='project_out')(x)
        return x


class CrossTransformer(nn.Module):
    """Cross attention between the cls token of one branch and the patch tokens of the other."""

    sm_dim: int
    lg_dim: int
    depth: int
    heads: int
    dim_head: int
    dropout: float

    @nn.compact
    def __call__(self, sm_tokens, lg_tokens, train: bool = False):
        (sm_cls, sm_patch_tokens), (lg_cls, lg_patch_tokens) = ((t[:, :1], t[:, 1:]) for t in (sm_tokens, lg_tokens))

        for i in range(self.depth):
            sm_attend_lg = ProjectInOut(
                self.sm_dim, self.lg_dim,
                Attention(self.lg_dim, heads=self.heads, dim_head=self.dim_head, dropout=self.dropout, parent=None),
                name=f'layers_{i}_0',
            )
            lg_attend_sm = ProjectInOut(
                self.lg_dim, self.sm_dim,
                Attention(self.sm_dim, heads=self.heads, dim_head=self.dim_head, dropout=self.dropout, parent=None),
                name=f'layers_{i}_1',
            )
            sm_cls = sm_attend_lg(sm_cls, context=lg_patch_tokens, kv_include_self=True, train=train) + sm_cls
            lg_cls = lg_attend_sm(lg_cls, context=sm_patch_tokens, kv_include_self=True, train=train) + lg_cls

        sm_tokens = jnp.concatenate((sm_cls, sm_patch_tokens), axis=1)
        lg_tokens = jnp.concatenate((lg_cls, lg_patch_tokens), axis=1)
        return sm_tokens, lg_tokens


class MultiScaleEncoder(nn.Module):
    depth: int
    sm_dim: int
    lg_dim: int
    sm_enc_params: dict
    lg_enc_params: dict
    cross_attn_heads: int
    cross_attn_depth: int
    cross_attn_dim_head: int = 64
    dropout: float = 0.0

    @nn.compact
    def __call__(self, sm_tokens, lg_tokens, train: bool = False):
        for i in range(self.depth):
            sm_enc = Transformer(dim=self.sm_dim, dropout=self.dropout, **self.sm_enc_params, name=f'layers_{i}_0')
            lg_enc = Transformer(dim=self.lg_dim, dropout=self.dropout, **self.lg_enc_params, name=f'layers_{i}_1')
            cross_attend = CrossTransformer(
                sm_dim=self.sm_dim, lg_dim=self.lg_dim, depth=self.cross_attn_depth, heads=self.cross_attn_heads,
                dim_head=self.cross_attn_dim_head, dropout=self.dropout, name=f'layers_{i}_2',
            )
            sm_tokens, lg_tokens = sm_enc(sm_tokens, train), lg_enc(lg_tokens, train)
            sm_tokens, lg_tokens = cross_attend(sm_tokens, lg_tokens, train)

        return sm_tokens, lg_tokens


class ImageEmbedder(nn.Module):
    """Patch-based image to token embedder: patches, LayerNorm, Linear, LayerNorm, cls token, position embedding."""

    dim: int
    image_size: int
    patch_size: int
    dropout: float = 0.0
    channels: int = 3

    def __post_init__(self):
        check_sizes(image_size=self.image_size, patch_size=self.patch_size)
        if self.channels < 1:
            raise ValueError(f'channels must be positive, got channels={self.channels}')
        super().__post_init__()

    @nn.compact
    def __call__(self, img, train: bool = False):
        num_patches = (self.image_size // self.patch_size) ** 2

        x = embed_patches(img, self.patch_size, self.channels, self.dim)
        b = x.shape[0]

        pos_embedding = self.param('pos_embedding', randn, (1, num_patches + 1, self.dim))
        cls_token = self.param('cls_token', randn, (1, 1, self.dim))

        cls_tokens = repeat(cls_token, '1 n d -> b n d', b=b)
        x = jnp.concatenate((cls_tokens.astype(x.dtype), x), axis=1)
        x = add_position_embedding(x, pos_embedding, img.shape[1:3], self.image_size)

        return nn.Dropout(self.dropout, deterministic=not train)(x)


def check_sizes(*, image_size, **patch_sizes):
    """vit-pytorch's `image_size % patch_size == 0` assert (torch fails on tuples), naming the values."""
    for name, value in (('image_size', image_size), *patch_sizes.items()):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f'CrossViT takes single int sizes (square images and patches), got {name}={value!r}')
        if value < 1:
            raise ValueError(f'{name} must be positive, got {name}={value}')
    for name, value in patch_sizes.items():
        if image_size % value:
            raise ValueError(
                f'Image dimensions must be divisible by the patch size: image_size={image_size}, {name}={value}'
            )


class CrossViT(nn.Module):
    image_size: int
    num_classes: int
    sm_dim: int
    lg_dim: int
    sm_patch_size: int = 12
    sm_enc_depth: int = 1
    sm_enc_heads: int = 8
    sm_enc_mlp_dim: int = 2048
    sm_enc_dim_head: int = 64
    lg_patch_size: int = 16
    lg_enc_depth: int = 4
    lg_enc_heads: int = 8
    lg_enc_mlp_dim: int = 2048
    lg_enc_dim_head: int = 64
    cross_attn_depth: int = 2
    cross_attn_heads: int = 8
    cross_attn_dim_head: int = 64
    depth: int = 3
    dropout: float = 0.1
    emb_dropout: float = 0.1
    channels: int = 3

    def __post_init__(self):
        check_keywords(self)
        check_sizes(image_size=self.image_size, sm_patch_size=self.sm_patch_size, lg_patch_size=self.lg_patch_size)
        super().__post_init__()

    @nn.compact
    def __call__(self, img, train: bool = False):
        check_floating_input(self, 'img', img)
        sm_image_embedder = ImageEmbedder(dim=self.sm_dim, channels=self.channels, image_size=self.image_size,
                                          patch_size=self.sm_patch_size, dropout=self.emb_dropout,
                                          name='sm_image_embedder')
        lg_image_embedder = ImageEmbedder(dim=self.lg_dim, channels=self.channels, image_size=self.image_size,
                                          patch_size=self.lg_patch_size, dropout=self.emb_dropout,
                                          name='lg_image_embedder')

        multi_scale_encoder = MultiScaleEncoder(
            depth=self.depth,
            sm_dim=self.sm_dim,
            lg_dim=self.lg_dim,
            cross_attn_heads=self.cross_attn_heads,
            cross_attn_dim_head=self.cross_attn_dim_head,
            cross_attn_depth=self.cross_attn_depth,
            sm_enc_params=dict(
                depth=self.sm_enc_depth,
                heads=self.sm_enc_heads,
                mlp_dim=self.sm_enc_mlp_dim,
                dim_head=self.sm_enc_dim_head,
            ),
            lg_enc_params=dict(
                depth=self.lg_enc_depth,
                heads=self.lg_enc_heads,
                mlp_dim=self.lg_enc_mlp_dim,
                dim_head=self.lg_enc_dim_head,
            ),
            dropout=self.dropout,
            name='multi_scale_encoder',
        )

        sm_tokens = sm_image_embedder(img, train)
        lg_tokens = lg_image_embedder(img, train)

        sm_tokens, lg_tokens = multi_scale_encoder(sm_tokens, lg_tokens, train)

        sm_cls, lg_cls = (t[:, 0] for t in (sm_tokens, lg_tokens))

        sm_logits = Linear(self.num_classes, name='sm_mlp_head_1')(LayerNorm(name='sm_mlp_head_0')(sm_cls))
        lg_logits = Linear(self.num_classes, name='lg_mlp_head_1')(LayerNorm(name='lg_mlp_head_0')(lg_cls))

        return sm_logits + lg_logits
