"""Masked patch prediction (MPP; Dosovitskiy et al., 2020, section B.1.2), mirroring vit_pytorch/mpp.py.

    mpp = MPP(transformer=vit.ViT(...), patch_size=16, dim=1024, mask_prob=0.15, random_patch_prob=0.3,
              replace_prob=0.5)
    loss = mpp.apply(variables, img, train=True, rngs={'masking': key, 'dropout': key2})

`ceil(mask_prob * n)` of each image's n patches are chosen; of those, a patch is replaced by a random patch of
the same image with probability `random_patch_prob`, by the learned `mask_token` with probability
`replace_prob`, and kept otherwise (torch draws the random-patch decision with probability
`random_patch_prob / (1 - replace_prob)` and lets the mask token override it: the same thing). The encoder
(`transformer`, a vit.ViT) encodes the corrupted image; `to_bits` predicts, for every chosen patch, its mean
colour quantised to `output_channel_bits` per channel (one class of 2 ** (bits * channels)), after undoing the
input normalisation (`mean`, `std`, both or neither) and clamping at `max_pixel_val`. The loss is the cross
entropy over the chosen patches. The objective masks in eval mode too (as torch's forward does); `train` only
switches the encoder's dropout.

Randomness: every draw comes from the one rng stream 'masking' (`MPP.rng_streams`): `MPP.masking_draws` splits it
into the four draws torch makes in turn (uniform noise whose top `ceil(mask_prob * n)` per row are the chosen
patches, the random-patch decisions, the random patch indices, the mask-token decisions). One stream, because
the four are parts of one corruption and a caller reproduces or varies them together;
`model.apply({}, img, rngs=rngs, method=MPP.masking_draws)` returns exactly what a call with the same rngs uses,
and the parity tests make vit-pytorch's MPP draw the same (`parity/mpp.py: torch_draws`).

Parameter tree = vit-pytorch's module tree: `params/transformer` is exactly a plain vit.ViT's variables (its
`mlp_head` included, unused here as in torch), so after pretraining `params['transformer']` exports to
vit-pytorch as the encoder's own state dict. MPP's own: `mask_token` (1, 1, channels * patch_size ** 2) and
`to_bits`. torch's state dict also lists the encoder's patch-embedding layers a second time, as
`patch_to_emb.0.{1,2,3}.*` (`nn.Sequential(transformer.to_patch_embedding[1:])` shares them); the converters
write and check those aliases (`MPP.torch_aliases`).

How torch's MPP uses the encoder, mirrored here: it cuts the image into patches with the encoder's own layout
(`b c (h p1) (w p2) -> b (h w) (p1 p2 c)`), corrupts them in patch space (pixels, before the patch LayerNorm:
the mask token is a learned pixel patch), then runs the rest of the encoder's `to_patch_embedding` (LayerNorm,
Linear, LayerNorm), prepends its `cls_token`, adds its position embedding, applies its embedding dropout and
its `transformer` (final LayerNorm included) - the encoder's forward pass without pooling and `mlp_head`. Here
the corrupted patches are put back into an image (an exact permutation) and the encoder's own forward runs on
it, its transformer's tokens captured (`encoder_tokens`). `to_bits` sees every token; the cls token's
prediction is dropped. The image is detached (`input.clone().detach()`): no gradient reaches the input.

Quirks of vit-pytorch kept: targets are clamped at `max_pixel_val` only (a negative mean colour is class 0);
class edges are `arange(bin_size, max_pixel_val, bin_size)` and a value on an edge takes the lower class
(`bucketize`); channel 0 is the least significant digit of the class; `mean` / `std` count as absent when
empty or None (`if mean`); `to_bits` also runs on the cls token.

vit-pytorch 1.26.11 bugs, fixed here (torch is compared under `parity/mpp.py: torch_mpp_runs()`, the smallest patch
that lets its code run):
- MPP cannot run a forward pass with 1.26's ViT: it does `repeat(transformer.cls_token, '() n d -> b n d')` and
  `transformer.pos_embedding[:, :(n + 1)]`, written for the (1, 1, dim) / (1, N + 1, dim) parameters of older
  ViTs, while vit.ViT's are 2-D, so einops raises. Here the encoder's own parameters are used as its forward
  uses them (torch, given (1, ...) views of the same parameters, computes the same).
- pool='mean' (a ViT without cls token): torch drops the first token's prediction (`cls_logits[:, 1:]`), which
  then is the first patch's, and the shapes no longer match the mask. Here only cls tokens are dropped (none).
  With pool='mean', an input smaller than `image_size` gets the first n position embeddings (torch would add
  n + 1 to n tokens and fail).

Beyond vit-pytorch: `patch_size` may be a pair equal to the encoder's (torch's mask token needs an int).

Bad configurations raise ValueError: `transformer` not a vit.ViT, `patch_size` / `dim` / `channels` not the
encoder's, `mask_prob` outside (0, 1] (torch: NaN loss at 0, topk error above 1), `replace_prob` outside [0, 1],
`random_patch_prob` < 0, `replace_prob + random_patch_prob` > 1 (torch silently gives the random patches less
than `random_patch_prob`) or `random_patch_prob > 0` with `replace_prob == 1` (torch divides by zero),
`output_channel_bits` < 1, `max_pixel_val` <= 0, `mean` / `std` not of length 1 or `channels`.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange, reduce

from vit_flax import vit
from vit_flax.distill import cross_entropy
from vit_flax.layers import Linear, check_floating_input, check_keywords, pair, randn

MASKING = 'masking'

# helpers


class MaskingDraws(NamedTuple):
    """The random numbers of one MPP call, each (batch, num_patches), in the order vit-pytorch draws them."""

    mask_noise: jax.Array  # uniform [0, 1): the top ceil(mask_prob * n) of a row are its chosen patches
    random_patch_noise: jax.Array  # uniform: < random_patch_prob / (1 - replace_prob) -> a random patch
    random_patches: jax.Array  # int in [0, n): which patch of the same image
    replace_noise: jax.Array  # uniform: < replace_prob -> the mask token


def get_mask_subset_with_prob(noise, prob):
    """(batch, n) bool: the ceil(prob * n) patches of each row with the largest noise."""
    batch, seq_len = noise.shape
    max_masked = math.ceil(prob * seq_len)
    _, sampled_indices = jax.lax.top_k(noise, max_masked)
    return jnp.zeros((batch, seq_len), bool).at[jnp.arange(batch)[:, None], sampled_indices].set(True)


def encoder_tokens(encoder: vit.ViT, img, train: bool):
    """The encoder's tokens after its `transformer` (final LayerNorm included), before pooling and `mlp_head`:
    the encoder's own forward pass on `img`, its inner transformer's output captured with a method interceptor.

    vit-pytorch's MPP calls the encoder's pieces one by one; in Flax only the encoder's own compact `__call__` may
    create them, so it runs whole (its pooling and head are dead code under jit) and creates every encoder
    parameter where a plain ViT has it, `mlp_head` included.
    """
    captured = []
    inner = (*encoder.path, 'transformer')

    def capture(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == '__call__' and tuple(context.module.path) == inner:
            captured.append(out)
        return out

    with nn.intercept_methods(capture):
        encoder(img, train=train)
    (tokens,) = captured
    return tokens


def corrupt_patches(input, mask_token, draws: MaskingDraws, mask_prob, replace_prob, random_patch_prob):
    """(corrupted patches, mask): the chosen patches of `input` (batch, n, patch_dim), `mask` (batch, n), some
    replaced by a random patch of the same image, some by `mask_token`, as vit-pytorch's forward does."""
    mask = get_mask_subset_with_prob(draws.mask_noise, mask_prob)

    # mask input with mask patches with probability of `replace_prob` (keep patches the same with probability
    # 1 - replace_prob)
    masked_input = input

    # if random token probability > 0 for mpp
    if random_patch_prob > 0:
        random_patch_sampling_prob = random_patch_prob / (1 - replace_prob)
        bool_random_patch_prob = mask & (draws.random_patch_noise < random_patch_sampling_prob)
        randomized_input = jnp.take_along_axis(input, draws.random_patches[..., None], axis=1)
        masked_input = jnp.where(bool_random_patch_prob[..., None], randomized_input, masked_input)

    # [mask] input
    bool_mask_replace = mask & (draws.replace_noise < replace_prob)
    masked_input = jnp.where(bool_mask_replace[..., None], mask_token.astype(masked_input.dtype), masked_input)
    return masked_input, mask


# mpp loss


class MPPLoss(nn.Module):
    patch_size: int | tuple[int, int]
    channels: int
    output_channel_bits: int
    max_pixel_val: float
    mean: Sequence[float] | None
    std: Sequence[float] | None

    def __call__(self, predicted_patches, target, mask):
        """Cross entropy of `predicted_patches` (batch, n, 2 ** (bits * c)) at the `mask`ed patches of `target`
        (batch, H, W, c): each patch's mean colour, quantised per channel."""
        (p1, p2), c, mpv, bits = pair(self.patch_size), self.channels, self.max_pixel_val, self.output_channel_bits
        bin_size = mpv / (2**bits)

        # un-normalize input (torch: `if mean` / `if std`, so an empty sequence counts as none)
        if self.mean and self.std:
            target = target * jnp.asarray(self.std, jnp.float32) + jnp.asarray(self.mean, jnp.float32)

        # reshape target to patches
        target = jnp.minimum(target, mpv)  # clamp just in case
        avg_target = reduce(target, 'b (h p1) (w p2) c -> b (h w) c', 'mean', p1=p1, p2=p2)

        # torch.arange(bin_size, mpv, bin_size): values start + i * step in double, then float32
        channel_bins = np.arange(bin_size, mpv, bin_size).astype(np.float32)
        # torch.bucketize (right=False): the number of bin edges strictly below the value
        discretized_target = jnp.sum(avg_target[..., None] > channel_bins, axis=-1)

        bin_mask = (2**bits) ** np.arange(0, c)
        target_label = jnp.sum(bin_mask * discretized_target, axis=-1)

        # F.cross_entropy(predicted_patches[mask], target_label[mask]): the mean over the masked patches
        labels = jnp.where(mask, target_label, -100).reshape(-1)
        return cross_entropy(predicted_patches.reshape(-1, predicted_patches.shape[-1]), labels)


# main class


class MPP(nn.Module):
    transformer: vit.ViT
    patch_size: int | tuple[int, int]
    dim: int
    output_channel_bits: int = 3
    channels: int = 3
    max_pixel_val: float = 1.0
    mask_prob: float = 0.15
    replace_prob: float = 0.5
    random_patch_prob: float = 0.5
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None

    # what the trainer reads off an objective (vit_flax.training.objectives.Objective)
    encoder_keyword = 'transformer'
    encoder_path = ('transformer',)
    rng_streams = (MASKING,)
    takes_labels = False

    def __post_init__(self):
        check_keywords(self)
        self._check_config()
        super().__post_init__()

    def _check_config(self):
        t = self.transformer
        if not isinstance(t, vit.ViT):
            raise ValueError(f'transformer must be a vit_flax.vit.ViT, got {type(t).__module__}.{type(t).__name__}')
        if pair(self.patch_size) != pair(t.patch_size):
            raise ValueError(
                f"patch_size must be the transformer's, got patch_size={self.patch_size} and the transformer's "
                f'{t.patch_size}'
            )
        if self.dim != t.dim:
            raise ValueError(f"dim must be the transformer's, got dim={self.dim} and the transformer's {t.dim}")
        if self.channels != t.channels:
            raise ValueError(
                f"channels must be the transformer's, got channels={self.channels} and the transformer's {t.channels}"
            )
        if not 0 < self.mask_prob <= 1:
            raise ValueError(f'mask_prob must be in (0, 1], got mask_prob={self.mask_prob}')
        if self.random_patch_prob > 0 and self.replace_prob + self.random_patch_prob > 1 + 1e-9:
            raise ValueError(
                f'replace_prob + random_patch_prob must be at most 1 (they share the masked patches), got '
                f'replace_prob={self.replace_prob}, random_patch_prob={self.random_patch_prob}'
            )
        if self.random_patch_prob > 0 and self.replace_prob >= 1:
            raise ValueError(
                f'random_patch_prob={self.random_patch_prob} needs replace_prob < 1, got replace_prob='
                f'{self.replace_prob} (vit-pytorch divides by 1 - replace_prob)'
            )
        for name in ('mean', 'std'):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (list, tuple)) or len(value) not in (0, 1, self.channels)):
                raise ValueError(
                    f'{name} must be a sequence of 1 or channels={self.channels} values, got {name}={value!r}'
                )

    @property
    def image_size(self):
        return self.transformer.image_size

    @nn.nowrap
    def torch_aliases(self) -> dict[str, str]:
        """torch's `patch_to_emb.0.{1,2,3}` is the encoder's `to_patch_embedding.{1,2,3}` (converters)."""
        return {'patch_to_emb.0.': 'transformer.to_patch_embedding.'}

    def masking_draws(self, img) -> MaskingDraws:
        """The random numbers a call on `img` uses, from the 'masking' stream (no parameters needed):
        `model.apply({}, img, rngs=rngs, method=MPP.masking_draws)` returns what `model.apply(variables, img,
        rngs=rngs)` draws. The random-patch draws are made (and unused) when `random_patch_prob` is 0."""
        (patch_height, patch_width), (batch, height, width) = pair(self.patch_size), img.shape[:3]
        n = (height // patch_height) * (width // patch_width)
        if not self.is_initializing() and not self.has_rng(MASKING):
            raise ValueError(
                f"MPP draws its masks in every call from the {MASKING!r} rng stream: pass rngs={{'{MASKING}': key}}"
            )
        keys = jax.random.split(self.make_rng(MASKING), 4)
        return MaskingDraws(
            mask_noise=jax.random.uniform(keys[0], (batch, n)),
            random_patch_noise=jax.random.uniform(keys[1], (batch, n)),
            random_patches=jax.random.randint(keys[2], (batch, n), 0, n),
            replace_noise=jax.random.uniform(keys[3], (batch, n)),
        )

    @nn.compact
    def __call__(self, img, train: bool = False):
        # clone original image for loss; no gradient reaches the input (torch: input.clone().detach())
        check_floating_input(self, 'img', img)
        img = jax.lax.stop_gradient(img)

        # reshape raw image to patches, the encoder's layout (its own checks name a wrong shape)
        p1, p2 = pair(self.patch_size)
        input = vit.patchify(img, self.patch_size, self.channels)
        draws = self.masking_draws(img)

        mask_token = self.param('mask_token', randn, (1, 1, self.channels * p1 * p2))
        masked_input, mask = corrupt_patches(
            input, mask_token, draws, self.mask_prob, self.replace_prob, self.random_patch_prob
        )

        # the encoder's patch embedding, cls token, position embedding, dropout and transformer, on the
        # corrupted patches put back in place
        masked_img = rearrange(
            masked_input, 'b (h w) (p1 p2 c) -> b (h p1) (w p2) c', h=img.shape[1] // p1, p1=p1, p2=p2
        )
        tokens = encoder_tokens(self.transformer, masked_img, train)

        # get generator output and get mpp loss
        cls_logits = Linear(2 ** (self.output_channel_bits * self.channels), name='to_bits')(tokens)
        num_cls_tokens = 1 if self.transformer.pool == 'cls' else 0
        logits = cls_logits[:, num_cls_tokens:, :]

        loss = MPPLoss(
            self.patch_size, self.channels, self.output_channel_bits, self.max_pixel_val, self.mean, self.std,
            name='loss',
        )
        return loss(logits, img, mask)
