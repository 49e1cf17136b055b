"""SimpleViT with register tokens ("Vision Transformers Need Registers", Darcet et al., 2023), mirroring
vit_pytorch/simple_vit_with_register_tokens.py: simple_vit.py's model, with `num_register_tokens` learned tokens
packed after the patch tokens for the transformer and dropped before the mean pooling (layers.append_register_tokens).

Parameter tree = vit-pytorch's module tree; the registers are the parameter `register_tokens`,
(num_register_tokens, dim), drawn like torch.randn. The Transformer (with its Attention and FeedForward) is
simple_vit.py's: vit-pytorch's copies are identical.

Quirks of vit-pytorch kept so weights transfer:
- The position embedding is built for `image_size` and added to the patches only (the registers have none); an
  input must give the same number of patches (torch adds the embedding by broadcasting, so only the count is
  checked, not the height and width).
- `num_register_tokens=0` is plain SimpleViT with an empty (0, dim) `register_tokens`.
- `num_classes=0` keeps a `linear_head` with no outputs, returning (batch, 0).

No random draws: `train` is accepted for a uniform interface.

JAX-only options: `scan_layers`, `remat_policy` and `attention_impl`, simple_vit.py's, passed to its Transformer.
Attention maps (recorder.Recorder) cover the patches and the registers, (n + num_register_tokens) a side.
"""

from __future__ import annotations

import flax.linen as nn

from vit_flax.layers import (
    Linear, add_posemb_sincos_2d, append_register_tokens, check_attention_impl, check_floating_input,
    check_keywords, check_sincos_dim, drop_register_tokens,
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
    num_register_tokens: int = 4
    channels: int = 3
    dim_head: int = 64
    # JAX-only: simple_vit.py's layer scan, remat and attention switch, passed to its Transformer
    scan_layers: bool = False
    remat_policy: str | None = None
    attention_impl: str = 'explicit'

    def __post_init__(self):
        check_keywords(self)
        check_image_config(self.image_size, self.patch_size)
        check_sincos_dim(self.dim)
        check_remat_policy(self.remat_policy)
        check_attention_impl(self.attention_impl)
        super().__post_init__()

    @nn.compact
    def __call__(self, img, train: bool = False):  # `train` accepted for a uniform interface; nothing is random
        check_floating_input(self, 'img', img)
        x = embed_patches(img, self.patch_size, self.channels, self.dim)
        x = add_posemb_sincos_2d(x, img.shape[1:3], self.image_size, self.patch_size, self.dim)

        x = append_register_tokens(self, x, self.num_register_tokens)
        x = Transformer(self.dim, self.depth, self.heads, self.dim_head, self.mlp_dim, self.scan_layers,
                        self.remat_policy, self.attention_impl, name='transformer')(x)
        x = drop_register_tokens(x, self.num_register_tokens)

        x = x.mean(axis=1)
        return Linear(self.num_classes, name='linear_head')(x)
