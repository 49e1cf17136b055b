"""The ViT of MP3 ("Position Prediction as an Effective Pretraining Strategy", Zhai et al., 2022), mirroring
vit_pytorch/mp3.py.

A SimpleViT-like classifier (2D sin-cos position embedding, mean pooling) whose attention layers can attend to
a `context` (cross-attention): MP3 runs `vit.transformer(tokens, context=unmasked_tokens)` and predicts each
token's position. `ViT.to_patch_embedding` and `ViT.transformer` are exposed for that objective, as in torch.

Parameter tree = vit-pytorch's module tree: `transformer.layers.0.0.to_kv.weight` lives at
`params/transformer/layers_0_0/to_kv/kernel`.

Quirks of vit-pytorch kept so weights transfer:
- The position embedding is computed from each input's own patch grid, not from `image_size`: any input whose
  sides are divisible by the patch size is accepted (larger, smaller, another aspect ratio). `image_size` only
  has to be divisible by the patch size.
- Attention has separate `to_q` and `to_kv` projections (no biases), and the context is normalised by the
  same `norm` as the queries. The output projection `to_out` is always kept (even for one head with
  `dim_head == dim`), unlike vit.py.
- The transformer has no final LayerNorm; the head has its own (`linear_head.0`), then `linear_head.1`.
- `num_classes=0` keeps a `linear_head.1` with no outputs, returning (batch, 0).
- There is no `pool` or `emb_dropout` keyword; `dropout` applies to attention maps, projections and MLPs.
- torch checks `dim % 4 == 0` only in the forward pass and returns NaN for `dim=4`; here `dim` must be a
  multiple of 4 and at least 8 at construction.

MP3, the objective: `MP3(vit=ViT(...), masking_ratio=0.75)(img)` returns the scalar loss, as torch's forward.
The patch tokens get no position embedding; a random `int(masking_ratio * n)` of the n tokens are masked and
every token attends (in every layer) only to the unmasked ones, as context; the head `mlp_head` (LayerNorm +
Linear to `vit.num_patches` classes) predicts each token's own index in the (h w) token order, cross entropy
averaged over batch and tokens.

Randomness: the masking draws uniform noise (batch, n) from the rng stream 'masking' even in eval mode, as
torch draws `torch.rand(batch, n)` in every forward, and argsorts it; the last `n - num_masked` of the order are
the context. `MP3.masking_noise` returns the noise a call draws with the same rngs (no parameters needed):
vit-pytorch given that tensor as its `torch.rand` computes the same loss. During `init` without that stream
Flax falls back on 'params'. Dropout (the vit's) uses 'dropout' in training only.

Parameter tree = torch's MP3: `params['vit']` is exactly a plain `ViT`'s params (its `linear_head` included,
which the objective never uses, so it gets zero gradients, as in torch), `params['mlp_head_0']` and
`params['mlp_head_1']`; `params['vit']` exports to vit_pytorch.mp3.ViT as is.

Quirks of vit-pytorch's MP3 mirrored:
- The masking is a permutation of the input's own tokens and the labels are the token indices of the input's
  own (h w) grid: an input smaller than `image_size` works, its labels being row-major indices of its own
  grid, not positions in the full grid. An input with more patches than `vit.num_patches` has labels beyond
  the head's classes (torch fails in `cross_entropy`): a ValueError naming the shape here.
- `num_masked` may be 0 (a small ratio on few tokens): every token is then context.
- Only the unmasked set matters (attention over the context is order-free), so the loss is the same whatever
  order the context tokens are in.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from einops import rearrange, repeat

from vit_flax.layers import (
    LayerNorm, Linear, attention_weights, check_floating_input, check_keywords, check_sincos_dim, exists, pair,
    posemb_sincos_2d, record_attention_map,
)
from vit_flax.distill import cross_entropy
from vit_flax.vit import FeedForward, check_image_config, patchify  # mp3's FeedForward is vit.py's

MASKING = 'masking'  # the rng stream of the masking permutation


class Attention(nn.Module):
    """Self-attention, or cross-attention to `context` (b, m, dim) when one is given."""

    dim: int
    heads: int = 8
    dim_head: int = 64
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, context=None, train: bool = False):
        inner_dim = self.dim_head * self.heads
        norm = LayerNorm(name='norm')

        x = norm(x)
        context = norm(context) if exists(context) else x

        q = Linear(inner_dim, use_bias=False, name='to_q')(x)
        k, v = jnp.split(Linear(inner_dim * 2, use_bias=False, name='to_kv')(context), 2, axis=-1)
        q, k, v = (rearrange(t, 'b n (h d) -> b h n d', h=self.heads) for t in (q, k, v))

        attn = attention_weights(q, k, scale=self.dim_head**-0.5)
        record_attention_map(self, attn)
        attn = nn.Dropout(self.dropout, deterministic=not train)(attn)

        out = jnp.einsum('bhij,bhjd->bhid', attn, v)
        out = rearrange(out, 'b h n d -> b n (h d)')
        out = Linear(self.dim, name='to_out_0')(out)
        return nn.Dropout(self.dropout, deterministic=not train)(out)


class Transformer(nn.Module):
    """Pre-norm layers without a final LayerNorm; every attention layer attends to the same `context`."""

    dim: int
    depth: int
    heads: int
    dim_head: int
    mlp_dim: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, context=None, train: bool = False):
        for i in range(self.depth):
            attention = Attention(self.dim, self.heads, self.dim_head, self.dropout, name=f'layers_{i}_0')
            x = attention(x, context=context, train=train) + x
            x = FeedForward(self.dim, self.mlp_dim, self.dropout, name=f'layers_{i}_1')(x, train) + x
        return x


class ViT(nn.Module):
    num_classes: int
    image_size: int | tuple[int, int]
    patch_size: int | tuple[int, int]
    dim: int
    depth: int
    heads: int
    mlp_dim: int
    channels: int = 3
    dim_head: int = 64
    dropout: float = 0.0

    def __post_init__(self):
        check_keywords(self)
        check_image_config(self.image_size, self.patch_size)
        check_sincos_dim(self.dim)
        super().__post_init__()

    @property
    def num_patches(self) -> int:
        """Patches of an `image_size` image, as torch's `vit.num_patches` (MP3's number of position classes)."""
        (image_height, image_width), (patch_height, patch_width) = pair(self.image_size), pair(self.patch_size)
        return (image_height // patch_height) * (image_width // patch_width)

    def setup(self):
        self.to_patch_embedding_1 = LayerNorm()
        self.to_patch_embedding_2 = Linear(self.dim)
        self.to_patch_embedding_3 = LayerNorm()
        self.transformer = Transformer(self.dim, self.depth, self.heads, self.dim_head, self.mlp_dim, self.dropout)
        self.linear_head_0 = LayerNorm()
        self.linear_head_1 = Linear(self.num_classes)

    def to_patch_embedding(self, img):
        """(b, H, W, c) -> patch tokens on their grid, (b, H / p1, W / p2, dim), as torch's `to_patch_embedding`."""
        patch_height, patch_width = pair(self.patch_size)
        x = patchify(img, self.patch_size, self.channels)  # checks rank, channels and divisibility
        x = rearrange(x, 'b (h w) d -> b h w d', h=img.shape[1] // patch_height, w=img.shape[2] // patch_width)
        x = self.to_patch_embedding_1(x)
        x = self.to_patch_embedding_2(x)
        return self.to_patch_embedding_3(x)

    def __call__(self, img, train: bool = False):
        check_floating_input(self, 'img', img)
        x = self.to_patch_embedding(img)
        _, h, w, _ = x.shape
        x = rearrange(x, 'b h w d -> b (h w) d') + jnp.asarray(posemb_sincos_2d(h, w, self.dim), dtype=x.dtype)

        x = self.transformer(x, train=train)
        x = x.mean(axis=1)
        return self.linear_head_1(self.linear_head_0(x))


# Masked Position Prediction Pre-Training


class MP3(nn.Module):
    vit: ViT
    masking_ratio: float

    # what the trainer reads off an objective (vit_flax.training.objectives.Objective)
    encoder_keyword = 'vit'
    encoder_path = ('vit',)
    rng_streams = (MASKING,)
    takes_labels = False

    def __post_init__(self):
        check_keywords(self)
        if not isinstance(self.vit, ViT):
            raise ValueError(
                f'vit must be a vit_flax.mp3.ViT, got vit={type(self.vit).__module__}.{type(self.vit).__name__}'
            )
        super().__post_init__()

    @property
    def image_size(self):
        return self.vit.image_size

    @property
    def channels(self) -> int:
        return self.vit.channels

    def _num_tokens(self, img) -> int:
        """The input's patch count (checking its rank, channels and divisibility), at most `vit.num_patches`."""
        num_patches = patchify(img, self.vit.patch_size, self.vit.channels).shape[1]
        if num_patches > self.vit.num_patches:
            raise ValueError(
                f'input of shape {img.shape} has {num_patches} patches, more than the {self.vit.num_patches} '
                f'positions the head predicts (vit.num_patches, from image_size={self.vit.image_size})'
            )
        return num_patches

    def masking_noise(self, img):
        """The uniform noise (batch, n) whose argsort is a call's masking permutation (torch's `torch.rand`).

        With the same rngs, `model.apply({}, img, rngs=rngs, method=MP3.masking_noise)` returns the noise that
        `model.apply(variables, img, rngs=rngs)` uses.
        """
        return jax.random.uniform(self.make_rng(MASKING), (img.shape[0], self._num_tokens(img)))

    @nn.compact
    def __call__(self, img, train: bool = False):
        check_floating_input(self, 'img', img)
        vit = self.vit
        noise = self.masking_noise(img)
        if self.is_initializing():
            vit(img)  # creates the encoder's own head, which torch's MP3 state dict holds too

        tokens = rearrange(vit.to_patch_embedding(img), 'b h w d -> b (h w) d')
        batch, num_patches = tokens.shape[:2]

        # masking
        num_masked = int(self.masking_ratio * num_patches)
        rand_indices = jnp.argsort(noise, axis=-1)
        unmasked_indices = rand_indices[:, num_masked:]
        tokens_unmasked = jnp.take_along_axis(tokens, unmasked_indices[..., None], axis=1)

        attended_tokens = vit.transformer(tokens, tokens_unmasked, train=train)
        x = LayerNorm(name='mlp_head_0')(attended_tokens)
        logits = rearrange(Linear(vit.num_patches, name='mlp_head_1')(x), 'b n d -> (b n) d')

        # every token's label is its own index
        labels = repeat(jnp.arange(num_patches), 'n -> (b n)', b=batch)
        return cross_entropy(logits, labels)
