"""ViT with patch dropout ("PatchDropout: Economizing Vision Transformers Using Patch Dropout", Liu et al., 2022),
mirroring vit_pytorch/vit_with_patch_dropout.py: in training, a random subset of the patch tokens (with their
position embeddings) goes into the transformer; the class token always does.

Parameter tree = vit-pytorch's module tree: `transformer.layers.0.1.net.1.weight` lives at
`params/transformer/layers_0_1/net_1/kernel`. Attention, FeedForward and the layer stack are vit.py's (vit-pytorch's
copies are identical); the Transformer has no final LayerNorm (vit_3d.Transformer).

Randomness: patch dropout draws from the rng stream 'patch_dropout' (layers.PATCH_DROPOUT), with `train=True` and
`patch_dropout > 0` only: one standard normal per patch token, the `max(1, int(n * (1 - patch_dropout)))` largest
kept, as vit-pytorch's `torch.randn(b, n).topk(k)`. `ViT.patch_dropout_noise` returns the draw of a call (the
parity spec replays it in torch). Dropout uses 'dropout'.

Quirks of vit-pytorch kept so weights transfer:
- The patch embedding is a bare Linear (`to_patch_embedding.1`), without vit.py's LayerNorms.
- `pos_embedding` is (num_patches, dim), without a class-token row; the class token, (1, 1, dim), is added after the
  patch dropout and gets no position embedding. It exists with `pool='mean'` too, which then averages it in.
- The position embedding is added to the patches as a whole (torch's in-place `+=`), so an input must give exactly
  `num_patches` patches, whatever its height and width.
- The transformer has no final LayerNorm; `mlp_head` starts with one, after pooling.
- With `heads == 1 and dim_head == dim` the attention output projection (and its dropout) is dropped.
- `num_classes=0` keeps a head with no outputs, returning (batch, 0).

JAX-only options: `scan_layers`, `remat_policy` and `attention_impl`, vit.py's, passed to its layers.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from einops import repeat

from vit_flax.layers import (
    PATCH_DROPOUT, LayerNorm, Linear, check_attention_impl, check_floating_input, check_keywords, check_patch_count,
    pair, patch_dropout, patch_dropout_noise, randn,
)
from vit_flax.scan import check_remat_policy
from vit_flax.vit import check_image_config, patchify
from vit_flax.vit_3d import Transformer


class ViT(nn.Module):
    image_size: int | tuple[int, int]
    patch_size: int | tuple[int, int]
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
    patch_dropout: float = 0.25
    # JAX-only: vit.py's layer scan, remat and attention switch, passed to its layers
    scan_layers: bool = False
    remat_policy: str | None = None
    attention_impl: str = 'explicit'

    rng_streams = (PATCH_DROPOUT,)  # drawn in training (the trainer passes it)

    def __post_init__(self):
        check_keywords(self)
        check_image_config(self.image_size, self.patch_size)
        check_remat_policy(self.remat_policy)
        check_attention_impl(self.attention_impl)
        if self.pool not in {'cls', 'mean'}:
            raise ValueError(f"pool type must be either cls (cls token) or mean (mean pooling), got pool={self.pool!r}")
        super().__post_init__()

    def _num_patches(self) -> int:
        (image_height, image_width), (patch_height, patch_width) = pair(self.image_size), pair(self.patch_size)
        return (image_height // patch_height) * (image_width // patch_width)

    @nn.nowrap
    def patch_dropout_noise(self, img):
        """The normals (batch, num_patches) whose largest pick the patches a training call on `img` keeps, with the
        same rngs (no parameters needed): `model.apply({}, img, rngs=rngs, method=ViT.patch_dropout_noise)`."""
        return patch_dropout_noise(self, img.shape[0], self._num_patches())

    @nn.compact
    def __call__(self, img, train: bool = False):
        check_floating_input(self, 'img', img)
        x = patchify(img, self.patch_size, self.channels)
        x = Linear(self.dim, name='to_patch_embedding_1')(x)

        num_patches = self._num_patches()
        pos_embedding = self.param('pos_embedding', randn, (num_patches, self.dim))
        cls_token = self.param('cls_token', randn, (1, 1, self.dim))

        check_patch_count(x, num_patches, img.shape[1:3], self.image_size)
        x = x + pos_embedding.astype(x.dtype)

        x = patch_dropout(self, x, self.patch_dropout, train)

        cls_tokens = repeat(cls_token, '1 1 d -> b 1 d', b=x.shape[0])
        x = jnp.concatenate((cls_tokens.astype(x.dtype), x), axis=1)
        x = nn.Dropout(self.emb_dropout, deterministic=not train)(x)

        transformer = Transformer(
            self.dim, self.depth, self.heads, self.dim_head, self.mlp_dim, self.dropout, scan_layers=self.scan_layers,
            remat_policy=self.remat_policy, attention_impl=self.attention_impl, name='transformer',
        )
        x = transformer(x, train)

        x = x.mean(axis=1) if self.pool == 'mean' else x[:, 0]
        x = LayerNorm(name='mlp_head_0')(x)
        return Linear(self.num_classes, name='mlp_head_1')(x)
