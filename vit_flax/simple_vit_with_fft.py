"""SimpleViT with a frequency branch, mirroring vit_pytorch/simple_vit_with_fft.py.

Beside SimpleViT's pixel patches, the 2D FFT of the image over height and width (per channel, real and imaginary
parts) is cut into `freq_patch_size` patches and embedded by its own LayerNorm - Linear - LayerNorm
(`to_freq_embedding`) with its own fixed 2D sin-cos embedding. The transformer attends over the frequency tokens
followed by the pixel tokens; only the pixel tokens are mean-pooled for the head.

The FFT is `jnp.fft.fft2` over the spatial axes, torch.fft.fft2's transform (unnormalised, complex64 for float32
images, complex128 for float64); a frequency patch is laid out `(p1 p2 ri c)` as vit-pytorch's `Rearrange` lays it.
Images of a narrower float type (bfloat16, float16) are transformed in float32, which jnp.fft needs, and the
spectrum cast back.

Quirks of vit-pytorch kept so weights transfer:
- Both position embeddings are built for `image_size`; an input must give the same numbers of pixel and frequency
  patches (torch adds them by broadcasting, so only the counts are checked).
- `num_classes=0` keeps a `linear_head` with no outputs, returning (batch, 0).

No random draws (no dropout): `train` is accepted for a uniform interface.

JAX-only options, as simple_vit.SimpleViT's (its Transformer is this file's): `scan_layers`, `remat_policy`,
`attention_impl` (see vit_flax/simple_vit.py and vit_flax/scan.py).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from einops import rearrange

from vit_flax.layers import (
    LayerNorm, Linear, add_posemb_sincos_2d, check_attention_impl, check_floating_input, check_keywords,
    check_sincos_dim, pair,
)
from vit_flax.scan import check_remat_policy
from vit_flax.simple_vit import Transformer
from vit_flax.vit import check_image_config, embed_patches


def check_freq_patch_config(image_size, freq_patch_size):
    (image_height, image_width), (patch_height, patch_width) = pair(image_size), pair(freq_patch_size)
    if image_height % patch_height or image_width % patch_width:
        raise ValueError(
            f'Image dimensions must be divisible by the freq patch size: image_size={(image_height, image_width)}, '
            f'freq_patch_size={(patch_height, patch_width)}'
        )


def fft_patches(img, freq_patch_size):
    """(b, H, W, c) images -> (b, (h w), (p1 p2 ri c)): torch.view_as_real(fft2(img)) cut into patches, in
    vit-pytorch's token order and patch layout."""
    patch_height, patch_width = pair(freq_patch_size)
    spectrum = jnp.fft.fft2(img.astype(jnp.promote_types(img.dtype, jnp.float32)), axes=(1, 2))
    freqs = jnp.stack((spectrum.real, spectrum.imag), axis=-1).astype(img.dtype)
    return rearrange(freqs, 'b (h p1) (w p2) c ri -> b (h w) (p1 p2 ri c)', p1=patch_height, p2=patch_width)


class SimpleViT(nn.Module):
    image_size: int | tuple[int, int]
    patch_size: int | tuple[int, int]
    freq_patch_size: int | tuple[int, int]
    num_classes: int
    dim: int
    depth: int
    heads: int
    mlp_dim: int
    channels: int = 3
    dim_head: int = 64
    scan_layers: bool = False  # JAX-only, see the module docstring
    remat_policy: str | None = None  # JAX-only
    attention_impl: str = 'explicit'  # JAX-only

    def __post_init__(self):
        check_keywords(self)
        check_image_config(self.image_size, self.patch_size)
        check_freq_patch_config(self.image_size, self.freq_patch_size)
        check_sincos_dim(self.dim)
        check_remat_policy(self.remat_policy)
        check_attention_impl(self.attention_impl)
        super().__post_init__()

    @nn.compact
    def __call__(self, img, train: bool = False):  # `train` accepted for a uniform interface; nothing is random
        check_floating_input(self, 'img', img)
        x = embed_patches(img, self.patch_size, self.channels, self.dim)

        # patchify has checked the layout and channels; the frequency patches must divide the image too
        (height, width), (freq_height, freq_width) = img.shape[1:3], pair(self.freq_patch_size)
        if height % freq_height or width % freq_width:
            raise ValueError(f'image of size {(height, width)} is not divisible by freq patch size '
                             f'{(freq_height, freq_width)}')
        f = fft_patches(img, self.freq_patch_size)
        f = LayerNorm(name='to_freq_embedding_1')(f)
        f = Linear(self.dim, name='to_freq_embedding_2')(f)
        f = LayerNorm(name='to_freq_embedding_3')(f)

        x = add_posemb_sincos_2d(x, img.shape[1:3], self.image_size, self.patch_size, self.dim)
        f = add_posemb_sincos_2d(f, img.shape[1:3], self.image_size, self.freq_patch_size, self.dim)

        num_freq_tokens = f.shape[1]
        x = jnp.concatenate((f, x), axis=1)
        x = Transformer(self.dim, self.depth, self.heads, self.dim_head, self.mlp_dim, scan_layers=self.scan_layers,
                        remat_policy=self.remat_policy, attention_impl=self.attention_impl, name='transformer')(x)
        x = x[:, num_freq_tokens:].mean(axis=1)
        return Linear(self.num_classes, name='linear_head')(x)
