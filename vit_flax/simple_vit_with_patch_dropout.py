"""SimpleViT with patch dropout ("PatchDropout: Economizing Vision Transformers Using Patch Dropout", Liu et al.,
2022), mirroring vit_pytorch/simple_vit_with_patch_dropout.py: simple_vit.py's model, where in training a random
subset of the patch tokens (after their sin-cos position embedding) goes into the transformer.

Parameter tree = vit-pytorch's module tree. The Transformer (with its Attention and FeedForward) is simple_vit.py's:
vit-pytorch's copies are identical.

Randomness: patch dropout draws from the rng stream 'patch_dropout' (layers.PATCH_DROPOUT), with `train=True` and
`patch_dropout > 0` only: one standard normal per patch token, the `max(1, int(n * (1 - patch_dropout)))` largest
kept, as vit-pytorch's `torch.randn(b, n).topk(k)`. `SimpleViT.patch_dropout_noise` returns the draw of a call (the
parity spec replays it in torch). Nothing else is random.

Quirks of vit-pytorch kept so weights transfer:
- The position embedding is built from the input's own patch grid (unlike simple_vit.py's, built for
  `image_size`), so any input whose sides divide by the patch size is taken; `image_size` is only checked against
  the patch size.
- `num_classes=0` keeps a `linear_head` with no outputs, returning (batch, 0).

JAX-only options: `scan_layers`, `remat_policy` and `attention_impl`, simple_vit.py's, passed to its Transformer.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from vit_flax.layers import (
    PATCH_DROPOUT, Linear, check_attention_impl, check_floating_input, check_keywords, check_sincos_dim,
    pair, patch_dropout, patch_dropout_noise, posemb_sincos_2d,
)
from vit_flax.scan import check_remat_policy
from vit_flax.simple_vit import Transformer
from vit_flax.vit import check_image_config, embed_patches


class SimpleViT(nn.Module):
    image_size: int | tuple[int, int]
    patch_size: int | tuple[int, int]
    num_classes: int
    dim: int
    depth: int
    heads: int
    mlp_dim: int
    channels: int = 3
    dim_head: int = 64
    patch_dropout: float = 0.5
    # JAX-only: simple_vit.py's layer scan, remat and attention switch, passed to its Transformer
    scan_layers: bool = False
    remat_policy: str | None = None
    attention_impl: str = 'explicit'

    rng_streams = (PATCH_DROPOUT,)  # drawn in training (the trainer passes it)

    def __post_init__(self):
        check_keywords(self)
        check_image_config(self.image_size, self.patch_size)
        check_sincos_dim(self.dim)
        check_remat_policy(self.remat_policy)
        check_attention_impl(self.attention_impl)
        super().__post_init__()

    def _grid(self, img) -> tuple[int, int]:
        patch_height, patch_width = pair(self.patch_size)
        return img.shape[1] // patch_height, img.shape[2] // patch_width

    @nn.nowrap
    def patch_dropout_noise(self, img):
        """The normals (batch, num_patches) whose largest pick the patches a training call on `img` keeps, with the
        same rngs (no parameters needed): `model.apply({}, img, rngs=rngs, method=SimpleViT.patch_dropout_noise)`."""
        height, width = self._grid(img)
        return patch_dropout_noise(self, img.shape[0], height * width)

    @nn.compact
    def __call__(self, img, train: bool = False):
        check_floating_input(self, 'img', img)
        x = embed_patches(img, self.patch_size, self.channels, self.dim)
        x = x + jnp.asarray(posemb_sincos_2d(*self._grid(img), self.dim), dtype=x.dtype)

        x = patch_dropout(self, x, self.patch_dropout, train)

        x = Transformer(self.dim, self.depth, self.heads, self.dim_head, self.mlp_dim, self.scan_layers,
                        self.remat_policy, self.attention_impl, name='transformer')(x)
        x = x.mean(axis=1)
        return Linear(self.num_classes, name='linear_head')(x)
