"""SimMIM (Xie et al., 2021), mirroring vit_pytorch/simmim.py.

`SimMIM(encoder=vit.ViT(...), masking_ratio=0.5)` returns the masked-image-modelling loss of a batch of
channels-last images:

    loss = simmim.apply(variables, img, rngs={'masking': key})                       # eval mode
    loss = simmim.apply(variables, img, train=True, rngs={'masking': k1, 'dropout': k2})

`int(masking_ratio * num_patches)` patches per image are masked: those with the largest uniform noise drawn from
the 'masking' rng stream (torch: `torch.rand(batch, num_patches).topk(num_masked)`). Every patch is embedded and
gets its position embedding; the masked ones are replaced by a learned `mask_token` plus their position; the
encoder's transformer runs on all of them (no cls token, no embedding dropout, as vit-pytorch calls
`encoder.transformer` directly); a linear `to_pixels` predicts the masked patches' raw pixels in the encoder's patch
layout `(p1 p2 c)`. The loss is their mean absolute error divided once more by the number of masked patches, as
vit-pytorch computes it (`F.l1_loss(...) / num_masked`).

The encoder's variables live under `params['encoder']` and are exactly a plain `vit.ViT`'s (its `cls_token` and,
with `num_classes > 0`, its `mlp_head` too, which pretraining does not train): `{'params':
variables['params']['encoder']}` goes to vit-pytorch's ViT with `converters.to_torch(encoder, ...)`. SimMIM's own
variables are torch's: `mask_token` (dim,) and `to_pixels`. `SimMIM.masking_noise` returns the noise a call draws.

vit-pytorch 1.26.11 is broken here, and this port does what the code was written for: its ViT keeps a 2-D
`pos_embedding` (N + cls, dim), while SimMIM slices it as the older 3-D layout (`pos_embedding[:, 1:(num_patches +
1)]`, skipping a cls row), so the torch SimMIM fails on every ViT; a mean-pool encoder (no cls row) would lose its
first patch's position even in the 3-D layout. Here the patches get the rows after the cls row (pool='cls') or all
rows (pool='mean'), the positions vit.ViT gives them. The state dict is unchanged;
`parity/simmim.py: torch_runs_on_2d_pos_embedding()` is the context under which vit-pytorch's SimMIM runs on its own
ViT (for tests: it shows the encoder the 3-D view of the same parameter, with a zero row in place of a mean-pool
encoder's missing cls row).

Quirks of vit-pytorch kept so weights transfer: torch's state dict lists the encoder's patch embedding twice, also
as `patch_to_emb.{0,1,2}`; Flax holds it once, under the encoder, and `torch_aliases()` tells the converters to write
and check the second names. The loss keeps torch's extra division by `num_masked`.

Differences: a configuration that masks no patch raises a ValueError naming the counts (torch returns a NaN
loss); torch's asserts are ValueErrors naming the value. An image with fewer patches than `image_size` gives uses
the first patch position rows; a larger image is refused.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from einops import repeat

from vit_flax import vit
from vit_flax.layers import Linear, check_floating_input, check_keywords, pair, randn
from vit_flax.mae import (
    MASKING,
    WrapsEncoder,
    call_in_scope,
    check_encoder,
    create_head_at_init,
    encoder_transformer,
    gather_tokens,
    num_masked_patches,
    patch_positions,
)


class SimMIM(WrapsEncoder, nn.Module):
    encoder: vit.ViT
    masking_ratio: float = 0.5

    def __post_init__(self):
        check_keywords(self)
        check_encoder('SimMIM', self.encoder)
        super().__post_init__()

    def masking_noise(self, img):
        """The uniform noise (batch, num_patches) whose largest entries mask the patches of a call on `img` with
        the same rngs (no parameters needed): `simmim.apply({}, img, rngs=rngs, method=SimMIM.masking_noise)`."""
        (patch_height, patch_width), (batch, height, width) = pair(self.encoder.patch_size), img.shape[:3]
        shape = (batch, (height // patch_height) * (width // patch_width))
        return jax.random.uniform(self.make_rng(MASKING), shape, jnp.float32)

    @nn.compact
    def __call__(self, img, train: bool = False):
        check_floating_input(self, 'img', img)
        encoder = self.encoder
        patches = vit.patchify(img, encoder.patch_size, encoder.channels)
        batch, num_patches, pixel_values_per_patch = patches.shape

        mask_token = self.param('mask_token', randn, (encoder.dim,))

        # calculate of patches needed to be masked, and get positions (indices) to be masked

        num_masked = num_masked_patches('SimMIM', self.masking_ratio, num_patches)
        masked_indices = jax.lax.top_k(self.masking_noise(img), num_masked)[1]
        batch_range = jnp.arange(batch)[:, None]
        masked_bool_mask = jnp.zeros((batch, num_patches), bool).at[batch_range, masked_indices].set(True)

        def encode(encoder):
            tokens = encoder._to_patch_embedding(img, train)
            _, pos_embedding = encoder._cls_and_pos_embedding()
            create_head_at_init(encoder, tokens.dtype)

            # patch to encoder tokens and add positions; mask tokens get the same positions

            pos_emb = patch_positions(encoder, pos_embedding, num_patches, img.shape[1:3]).astype(tokens.dtype)
            tokens = tokens + pos_emb
            mask_tokens = repeat(mask_token.astype(tokens.dtype), 'd -> b n d', b=batch, n=num_patches) + pos_emb
            tokens = jnp.where(masked_bool_mask[..., None], mask_tokens, tokens)

            # attend with vision transformer

            return encoder_transformer(encoder)(tokens, train)

        encoded = call_in_scope(encoder, encode)

        # small linear projection of the masked tokens for predicted pixel values

        pred_pixel_values = Linear(pixel_values_per_patch, name='to_pixels')(gather_tokens(encoded, masked_indices))

        # the masked patches for the final reconstruction loss

        masked_patches = gather_tokens(patches, masked_indices).astype(pred_pixel_values.dtype)
        return jnp.mean(jnp.abs(pred_pixel_values - masked_patches)) / num_masked
