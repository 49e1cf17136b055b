"""Masked Autoencoders (He et al., 2021), mirroring vit_pytorch/mae.py.

`MAE(encoder=vit.ViT(...), decoder_dim, masking_ratio=0.75, decoder_depth=1, decoder_heads=8,
decoder_dim_head=64)` returns the reconstruction loss of a batch of channels-last images:

    loss = mae.apply(variables, img, rngs={'masking': key})                       # eval mode
    loss = mae.apply(variables, img, train=True, rngs={'masking': k1, 'dropout': k2})

`int(masking_ratio * num_patches)` patches per image are masked, picked by ranking uniform noise drawn from the
'masking' rng stream (torch: `torch.rand(batch, num_patches).argsort()`; the first `num_masked` are masked). The
encoder embeds the patches, adds their position embeddings and runs its transformer on the visible ones only (no
cls token, no embedding dropout, as vit-pytorch calls `encoder.transformer` directly); a small transformer decoder
sees the encoded tokens and a learned `mask_token` at the masked places, each with its `decoder_pos_emb`, and
`to_pixels` predicts the masked patches' raw pixels, in the encoder's patch layout `(p1 p2 c)`. The loss is their
mean squared error.

The encoder's variables live under `params['encoder']` and are exactly a plain `vit.ViT`'s (its `cls_token` and,
with `num_classes > 0`, its `mlp_head` too, which pretraining does not train), so after pretraining
`{'params': variables['params']['encoder']}` goes to vit-pytorch's ViT with `converters.to_torch(encoder, ...)`.
The MAE's own variables are torch's: `enc_to_dec` (none when `decoder_dim == encoder.dim`, torch's Identity),
`mask_token`, `decoder`, `decoder_pos_emb`, `to_pixels`.

For notebooks, `MAE.reconstruct` returns what the decoder predicts for an image and where:

    pred_pixel_values, masked_indices = mae.apply(variables, img, rngs={'masking': key}, method=MAE.reconstruct)
    shown = paste_patches(img, pred_pixel_values, masked_indices, mae.encoder.patch_size)   # (b, H, W, c)

`MAE.masking_noise` returns the noise a call draws (the same rngs give the same masks), so a test can hand
vit-pytorch the very draw.

vit-pytorch 1.26.11 is broken here, and this port does what the code was written for: its ViT keeps a 2-D
`pos_embedding` (N + 1, dim), while MAE indexes it as the older 3-D (1, N + 1, dim) layout
(`pos_embedding[:, 1:(num_patches + 1)]`), so the torch MAE fails on a cls-pool encoder (a mean-pool one runs).
Here the patches get the encoder's position rows that follow the cls row (all rows for pool='mean'), as with a
3-D layout. The state dict is unchanged; `parity/mae.py: torch_runs_on_2d_pos_embedding()` is the context under which
vit-pytorch's MAE runs on its own ViT (for tests: it shows the encoder the 3-D view of the same parameter).

Quirks of vit-pytorch kept so weights transfer:
- `decoder_pos_emb` has one row per row of the encoder's position embedding: N + 1 with pool='cls', whose last
  row no patch ever uses (it gets no gradient).
- The decoder is a `vit.Transformer` with `mlp_dim = 4 * decoder_dim` and no dropout.
- torch's state dict lists the encoder's patch embedding twice, also as `patch_to_emb.{0,1,2}` (MAE holds
  `nn.Sequential(*encoder.to_patch_embedding[1:])`); Flax holds it once, under the encoder, and `torch_aliases()`
  tells the converters to write and check the second names.
- An image with fewer patches than `image_size` gives uses the first position rows after the cls row, as torch
  does for pool='cls' (torch fails there with pool='mean'); a larger image is refused.

Differences: a configuration that masks no patch (`int(masking_ratio * num_patches) == 0`) raises a ValueError
naming the counts (torch returns a NaN loss); torch's asserts are ValueErrors naming the value.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from einops import rearrange

from vit_flax import vit
from vit_flax.layers import Embedding, Linear, check_floating_input, check_keywords, pair, randn

MASKING = 'masking'  # the rng stream of the masks

# helpers


def call_in_scope(module: nn.Module, fn, *args, **kwargs):
    """`fn(module, *args, **kwargs)`, run as one of `module`'s own `@nn.compact` methods.

    vit-pytorch's objectives reach into their encoder (`encoder.to_patch_embedding`, `encoder.transformer`); the
    Flax encoder's building blocks (vit.ViT's `_to_patch_embedding`, `_cls_and_pos_embedding`, ...) create their
    submodules and parameters inline, which Flax allows only inside the module's compact method. Running `fn`
    through Flax's own method wrapper gives it that context, so the parameters land under the encoder's name, in
    the encoder's tree, exactly where the encoder's own `__call__` puts them.
    """
    return module._call_wrapped_method(nn.compact(fn), args, kwargs)


def check_encoder(objective: str, encoder):
    if not isinstance(encoder, vit.ViT):
        raise ValueError(
            f'{objective} takes a vit_flax.vit.ViT encoder, got encoder={type(encoder).__module__}.'
            f'{type(encoder).__name__}'
        )


def num_masked_patches(objective: str, masking_ratio: float, num_patches: int) -> int:
    num_masked = int(masking_ratio * num_patches)
    if num_masked < 1:
        raise ValueError(
            f'{objective} with masking_ratio={masking_ratio} masks int({masking_ratio} * {num_patches}) = 0 of the '
            f'{num_patches} patches (vit-pytorch returns a NaN loss): use a larger ratio or more patches'
        )
    return num_masked


def patch_positions(encoder: vit.ViT, pos_embedding, num_patches: int, input_size):
    """The position rows of the patches: those after the cls row (pool='cls'), all of them (pool='mean'); the
    first `num_patches` for an input smaller than `image_size`."""
    num_cls_tokens = 1 if encoder.pool == 'cls' else 0
    rows = pos_embedding[num_cls_tokens:]
    if num_patches > rows.shape[0]:
        raise ValueError(
            f'input of size {tuple(input_size)} gives {num_patches} patches, more than the {rows.shape[0]} position '
            f'embeddings of image_size={encoder.image_size}'
        )
    return rows[:num_patches]


def create_head_at_init(encoder: vit.ViT, dtype):
    """The encoder's `mlp_head` (when it has one): not used by the objective, but part of the encoder's tree and
    of torch's state dict, so the encoder's variables stay a plain ViT's."""
    if encoder.is_initializing() and encoder.num_classes > 0:
        encoder._mlp_head(jnp.zeros((1, encoder.dim), dtype))


def encoder_transformer(encoder: vit.ViT) -> vit.Transformer:
    """The encoder's `transformer`, as vit.ViT's `_attend` creates it; vit-pytorch's objectives call it directly,
    without the embedding dropout `_attend` applies first. Create it inside `call_in_scope(encoder, ...)`."""
    return vit.Transformer(
        encoder.dim, encoder.depth, encoder.heads, encoder.dim_head, encoder.mlp_dim, encoder.dropout,
        scan_layers=encoder.scan_layers, remat_policy=encoder.remat_policy, attention_impl=encoder.attention_impl,
        name='transformer',
    )


def gather_tokens(x, indices):
    """x[batch_range, indices]: (b, n, ...) and (b, k) -> (b, k, ...)."""
    return jnp.take_along_axis(x, indices.reshape(*indices.shape, *([1] * (x.ndim - 2))), axis=1)


def paste_patches(img, patches, indices, patch_size):
    """`img` (b, H, W, c) with its patches at `indices` (b, k) replaced by `patches` (b, k, p1 * p2 * c), in the
    encoder's `(p1 p2 c)` layout: e.g. MAE.reconstruct's predictions put back into the image to look at."""
    patch_height, patch_width = pair(patch_size)
    _, height, width, channels = img.shape
    all_patches = jnp.asarray(vit.patchify(img, (patch_height, patch_width), channels))
    batch_range = jnp.arange(img.shape[0])[:, None]
    all_patches = all_patches.at[batch_range, indices].set(patches.astype(all_patches.dtype))
    return rearrange(
        all_patches, 'b (h w) (p1 p2 c) -> b (h p1) (w p2) c', h=height // patch_height, p1=patch_height,
        p2=patch_width,
    )


# vit-pytorch's objectives hold the encoder's patch embedding (LayerNorm, Linear, LayerNorm) a second time as
# `patch_to_emb = nn.Sequential(*encoder.to_patch_embedding[1:])`: the state dict lists those parameters under both
# names; Flax holds them once, under the encoder (the converters write and check the aliases)
PATCH_TO_EMB_ALIASES = {f'patch_to_emb.{i}.': f'encoder.to_patch_embedding.{i + 1}.' for i in range(3)}


class WrapsEncoder:
    """What MAE and SimMIM share as wrappers of a vit.ViT `encoder`: what the trainer reads off an objective
    (vit_flax.training.objectives.Objective: the encoder under `encoder`, masks from the 'masking' stream, no
    labels), torch's second names of its patch embedding (PATCH_TO_EMB_ALIASES), and its image keywords for the
    registry's example inputs and the converters."""

    encoder_keyword = 'encoder'
    encoder_path = ('encoder',)
    rng_streams = (MASKING,)
    takes_labels = False

    def torch_aliases(self) -> dict[str, str]:
        return dict(PATCH_TO_EMB_ALIASES)

    @property
    def image_size(self):
        return self.encoder.image_size

    @property
    def channels(self) -> int:
        return self.encoder.channels


# main class


class MAE(WrapsEncoder, nn.Module):
    encoder: vit.ViT
    decoder_dim: int
    masking_ratio: float = 0.75
    decoder_depth: int = 1
    decoder_heads: int = 8
    decoder_dim_head: int = 64

    def __post_init__(self):
        check_keywords(self)
        check_encoder('MAE', self.encoder)
        super().__post_init__()

    def setup(self):
        encoder = self.encoder
        (patch_height, patch_width), (image_height, image_width) = pair(encoder.patch_size), pair(encoder.image_size)
        num_cls_tokens = 1 if encoder.pool == 'cls' else 0
        num_positions = (image_height // patch_height) * (image_width // patch_width) + num_cls_tokens
        pixel_values_per_patch = patch_height * patch_width * encoder.channels

        if encoder.dim != self.decoder_dim:
            self.enc_to_dec = Linear(self.decoder_dim)
        self.mask_token = self.param('mask_token', randn, (self.decoder_dim,))
        self.decoder = vit.Transformer(
            dim=self.decoder_dim, depth=self.decoder_depth, heads=self.decoder_heads, dim_head=self.decoder_dim_head,
            mlp_dim=self.decoder_dim * 4,
        )
        self.decoder_pos_emb = Embedding(num_positions, self.decoder_dim)
        self.to_pixels = Linear(pixel_values_per_patch)

    @nn.nowrap  # runs without setup(), so without parameters
    def masking_noise(self, img):
        """The uniform noise (batch, num_patches) whose ranking masks the patches of a call on `img` with the same
        rngs (no parameters needed): `mae.apply({}, img, rngs=rngs, method=MAE.masking_noise)`."""
        (patch_height, patch_width), (batch, height, width) = pair(self.encoder.patch_size), img.shape[:3]
        shape = (batch, (height // patch_height) * (width // patch_width))
        return jax.random.uniform(self.make_rng(MASKING), shape, jnp.float32)

    def _reconstruction(self, img, train: bool):
        """(pred_pixel_values, masked_patches, masked_indices) as vit-pytorch's forward computes them."""
        check_floating_input(self, 'img', img)
        encoder = self.encoder
        patches = vit.patchify(img, encoder.patch_size, encoder.channels)
        batch, num_patches = patches.shape[:2]

        # calculate of patches needed to be masked, and get random indices, dividing it up for mask vs unmasked

        num_masked = num_masked_patches('MAE', self.masking_ratio, num_patches)
        rand_indices = jnp.argsort(self.masking_noise(img), axis=-1)
        masked_indices, unmasked_indices = rand_indices[:, :num_masked], rand_indices[:, num_masked:]

        # patch to encoder tokens and add positions; attend with the encoder's transformer on the unmasked ones

        def encode_unmasked(encoder):
            tokens = encoder._to_patch_embedding(img, train)
            _, pos_embedding = encoder._cls_and_pos_embedding()
            create_head_at_init(encoder, tokens.dtype)
            tokens = tokens + patch_positions(encoder, pos_embedding, num_patches, img.shape[1:3]).astype(tokens.dtype)
            tokens = gather_tokens(tokens, unmasked_indices)
            return encoder_transformer(encoder)(tokens, train)

        encoded_tokens = call_in_scope(encoder, encode_unmasked)

        # get the patches to be masked for the final reconstruction loss

        masked_patches = gather_tokens(patches, masked_indices)

        # project encoder to decoder dimensions, if they are not equal

        decoder_tokens = self.enc_to_dec(encoded_tokens) if encoder.dim != self.decoder_dim else encoded_tokens

        # reapply decoder position embedding to unmasked tokens; mask tokens at the masked positions

        unmasked_decoder_tokens = decoder_tokens + self.decoder_pos_emb(unmasked_indices).astype(decoder_tokens.dtype)
        mask_tokens = self.mask_token.astype(decoder_tokens.dtype) + self.decoder_pos_emb(masked_indices).astype(
            decoder_tokens.dtype
        )

        # put every token back at its patch's place (torch scatters; the inverse permutation gathers the same)

        by_rank = jnp.concatenate((mask_tokens, unmasked_decoder_tokens), axis=1)  # in rand_indices' order
        decoder_tokens = gather_tokens(by_rank, jnp.argsort(rand_indices, axis=-1))
        decoded_tokens = self.decoder(decoder_tokens, train)

        # splice out the mask tokens and project to pixel values

        pred_pixel_values = self.to_pixels(gather_tokens(decoded_tokens, masked_indices))
        return pred_pixel_values, masked_patches, masked_indices

    def reconstruct(self, img, train: bool = False):
        """(pred_pixel_values, masked_indices) for `img` (b, H, W, c): the decoder's pixels for the masked patches,
        (b, num_masked, p1 * p2 * c) in the encoder's `(p1 p2 c)` patch layout, and the indices of those patches
        in row-major patch order, (b, num_masked). Call it with `method=MAE.reconstruct` and the 'masking' rng of
        the call to look at; `paste_patches` puts the predictions back into the image."""
        pred_pixel_values, _, masked_indices = self._reconstruction(img, train)
        return pred_pixel_values, masked_indices

    def __call__(self, img, train: bool = False):
        pred_pixel_values, masked_patches, _ = self._reconstruction(img, train)
        return jnp.mean(jnp.square(pred_pixel_values - masked_patches.astype(pred_pixel_values.dtype)))
