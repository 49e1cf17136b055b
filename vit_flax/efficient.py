"""ViT with any transformer plugged in ("efficient" attention), mirroring vit_pytorch/efficient.py.

vit-pytorch's efficient.ViT is a ViT shell (patch embedding, cls token, position embedding, head) around a
`transformer` module of your choice, meant for efficient-attention transformers (Linformer, Nystromformer,
Performer, ...). Here `transformer` is any (unbound) Flax linen module mapping tokens (batch, seq, dim) to
(batch, seq, dim). It becomes the child `transformer`, so its variables live under `params/transformer` like the
torch module's state under `transformer.`. It is called as `transformer(x, train=train)` when its `__call__`
takes a `train` keyword (or `**kwargs`), else as `transformer(x)`. Create it outside any other module (or with
`parent=None`), as with any Flax module handed to another as an attribute.

This file also holds one efficient transformer of its own (not part of vit-pytorch), `LinearTransformer`: the
ViT transformer with linear attention (Katharopoulos et al., 2020, "Transformers are RNNs") in place of softmax
attention, O(n) in the number of tokens:

    from vit_flax.efficient import LinearTransformer, ViT

    model = ViT(image_size=224, patch_size=16, num_classes=1000, dim=512,
                transformer=LinearTransformer(dim=512, depth=6, heads=8, dim_head=64, mlp_dim=1024))
    variables = model.init(jax.random.key(0), images)          # images: (batch, 224, 224, 3)
    logits = model.apply(variables, images)                   # (batch, 1000)

Any vit-pytorch-compatible transformer works the same way, e.g. `vit_flax.vit.Transformer(...)`, whose weights
then transfer to `vit_pytorch.efficient.ViT(transformer=vit_pytorch.vit.Transformer(...))` and back.

Quirks of vit-pytorch kept so weights transfer:
- `patch_size` is a single int (torch divides by it directly); `image_size` may be an int or (height, width).
- `pos_embedding` is (1, n + 1, dim) and `cls_token` is (1, 1, dim); the cls token is always prepended, and
  `pool='mean'` averages it with the patch tokens.
- An input smaller than `image_size` takes the first `n + 1` rows of the position embedding, whatever its shape.
- No dropout anywhere (no `dropout` / `emb_dropout` keywords); the head is LayerNorm + Linear (`mlp_head.0`,
  `mlp_head.1`).
- `num_classes=0` keeps an `mlp_head` with no outputs and returns (batch, 0), as torch does.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from einops import rearrange, repeat

from vit_flax.layers import (
    LayerNorm, Linear, add_position_embedding, call_plugged_in, check_floating_input, check_keywords, pair, randn,
)
from vit_flax.vit import FeedForward, check_image_config, patchify


def check_efficient_config(image_size, patch_size, pool, transformer):
    if isinstance(patch_size, bool) or not isinstance(patch_size, int):
        raise ValueError(f'efficient.ViT takes a single int patch_size, got patch_size={patch_size!r}')
    check_image_config(image_size, patch_size)
    if pool not in {'cls', 'mean'}:
        raise ValueError(f"pool type must be either cls (cls token) or mean (mean pooling), got pool={pool!r}")
    if not isinstance(transformer, nn.Module):
        raise ValueError(f'transformer must be a Flax linen Module, got {type(transformer).__name__}')


class ViT(nn.Module):
    image_size: int | tuple[int, int]
    patch_size: int
    num_classes: int
    dim: int
    transformer: nn.Module
    pool: str = 'cls'
    channels: int = 3

    def __post_init__(self):
        check_keywords(self)
        check_efficient_config(self.image_size, self.patch_size, self.pool, self.transformer)
        super().__post_init__()

    # the pieces of the forward pass, shared with distill.DistillableEfficientViT

    def _num_patches(self):
        image_height, image_width = pair(self.image_size)
        return (image_height // self.patch_size) * (image_width // self.patch_size)

    def _to_patch_embedding(self, img, train: bool):
        x = patchify(img, self.patch_size, self.channels)
        x = LayerNorm(name='to_patch_embedding_1')(x)
        x = Linear(self.dim, name='to_patch_embedding_2')(x)
        return LayerNorm(name='to_patch_embedding_3')(x)

    def _cls_and_pos_embedding(self):
        pos_embedding = self.param('pos_embedding', randn, (1, self._num_patches() + 1, self.dim))
        cls_token = self.param('cls_token', randn, (1, 1, self.dim))
        return cls_token, pos_embedding

    def _attend(self, x, train: bool):
        return call_plugged_in(self.transformer, x, train)

    def _mlp_head(self, x):
        x = LayerNorm(name='mlp_head_0')(x)
        return Linear(self.num_classes, name='mlp_head_1')(x)

    @nn.compact
    def __call__(self, img, train: bool = False):
        check_floating_input(self, 'img', img)
        x = self._to_patch_embedding(img, train)
        b = x.shape[0]

        cls_token, pos_embedding = self._cls_and_pos_embedding()
        cls_tokens = repeat(cls_token, '() n d -> b n d', b=b)
        x = jnp.concatenate((cls_tokens.astype(x.dtype), x), axis=1)
        x = add_position_embedding(x, pos_embedding, img.shape[1:3], self.image_size)
        x = self._attend(x, train)

        x = x.mean(axis=1) if self.pool == 'mean' else x[:, 0]
        return self._mlp_head(x)


# an efficient transformer of our own (not in vit-pytorch): linear attention


def elu_feature_map(x):
    """phi(x) = elu(x) + 1 > 0, the feature map of Katharopoulos et al. (2020)."""
    return jax.nn.elu(x) + 1


def linear_attention(q, k, v, eps: float = 1e-6):
    """Non-causal linear attention, (..., n, d) each: out_i = phi(q_i) S / (phi(q_i) z + eps) with
    S = sum_j phi(k_j)^T v_j and z = sum_j phi(k_j), i.e. softmax(q k^T) replaced by the normalised kernel
    phi(q_i) . phi(k_j), computed in O(n d^2) instead of O(n^2 d)."""
    q, k = elu_feature_map(q), elu_feature_map(k)
    context = jnp.einsum('...nd,...ne->...de', k, v)
    normaliser = jnp.einsum('...nd,...d->...n', q, k.sum(axis=-2))
    return jnp.einsum('...nd,...de->...ne', q, context) / (normaliser[..., None] + eps)


class LinearAttention(nn.Module):
    """vit.Attention's layout (`norm`, `to_qkv`, `to_out.0`) with linear attention; the output projection is
    always kept."""

    dim: int
    heads: int = 8
    dim_head: int = 64
    dropout: float = 0.0
    eps: float = 1e-6

    @nn.compact
    def __call__(self, x, train: bool = False):
        inner_dim = self.dim_head * self.heads
        x = LayerNorm(name='norm')(x)
        qkv = jnp.split(Linear(inner_dim * 3, use_bias=False, name='to_qkv')(x), 3, axis=-1)
        q, k, v = (rearrange(t, 'b n (h d) -> b h n d', h=self.heads) for t in qkv)
        out = linear_attention(q, k, v, self.eps)
        out = rearrange(out, 'b h n d -> b n (h d)')
        out = Linear(self.dim, name='to_out_0')(out)
        return nn.Dropout(self.dropout, deterministic=not train)(out)


class LinearTransformer(nn.Module):
    """vit.Transformer with LinearAttention: pre-norm residual blocks and a final LayerNorm; same tree."""

    dim: int
    depth: int
    heads: int
    dim_head: int
    mlp_dim: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        for i in range(self.depth):
            x = LinearAttention(self.dim, self.heads, self.dim_head, self.dropout, name=f'layers_{i}_0')(x, train) + x
            x = FeedForward(self.dim, self.mlp_dim, self.dropout, name=f'layers_{i}_1')(x, train) + x
        return LayerNorm(name='norm')(x)
