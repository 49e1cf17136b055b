"""LeVJEPA for any number of dimensions (Kuhn et al., 2026, with SIGReg: Balestriero & LeCun, 2025), mirroring
vit_pytorch/levjepa_nd.py: levjepa.VideoTransformer generalised to inputs of 1 to 7 dimensions (`NDTransformer`),
and the learner that trains it on two augmentations of the input (`LeVJEPAND`).

    encoder = NDTransformer(ndim=3, input_shape=(8, 64, 64), patch_size=(1, 16, 16), dim=128, depth=2, heads=4,
                            mlp_dim=256)
    learner = LeVJEPAND(encoder, input_shape=(8, 64, 64), augment_src=augment, augment_tgt=augment)
    variables = learner.init({'params': key}, video)                       # video (2, 8, 64, 64, 3)
    loss, updates = learner.apply(variables, video, train=True, mutable=['batch_stats'],
                                  rngs={'augment': k1, 'token_dropping': k2, 'sigreg': k3})

Inputs are channels-last, (batch, *input_shape, channels) (vit-pytorch: (batch, channels, *input_shape)), exactly
`input_shape` (vit-pytorch reshapes the patch grid to its size), cut into `patch_size` patches laid out
`(c p0 p1 ...)` (channel first, as levjepa's video patches), tokens in row-major order of the grid after a class
token. The encoder is levjepa's (vit_flax/levjepa.py, whose pieces this file imports): bias-free LayerNorms around the
patch projection, factorised rotary embeddings over the tokens' `ndim` grid coordinates in [-1, 1) (`NDRotaryEmbedding`:
levjepa's VideoRotaryEmbedding on `ndim` coordinates, `dim_head // (2 * ndim)` frequencies per coordinate, the
persistent buffer `buffers/rotary_emb/scales`), RMSNorms, uniform token dropping with `drop_ratio` in training (the
'token_dropping' stream), and block-causal attention along `causal_dims`: a patch token sees the patches not ahead of
it along each of those grid dimensions, the class token sees every token and no patch sees it
(`levjepa.block_causal_mask` of the tokens' integer coordinates, the class token's -1, after token dropping).

`LeVJEPAND` encodes `augment_src(x)` and `augment_tgt` of `num_target_aug_views` copies of x at once (identities by
default; callables or Flax modules on channels-last inputs, which may draw from the 'augment' stream), projects the
class tokens and returns levjepa's weighted invariance + SIGReg loss (`return_loss_breakdown=True`: with
LeVJEPANDLosses), or with `return_embedding=True` the encoder's class token.

Random draws (`LeVJEPAND.rng_streams`): 'augment' (the augmentations', where they draw), 'token_dropping' (in
training), 'sigreg' (SIGReg's directions, in every call), 'dropout'. `LeVJEPAND.draws(x, train)` returns the token
noise and SIGReg directions a call with the same rngs draws, no parameters needed.

Parameter tree = vit-pytorch's module tree: `encoder/...` (a plain NDTransformer's), `projector_0`, `projector_1`
(with `batch_stats` for BatchNorm1d), `projector_3`, as levjepa.LeVJEPA's.

Quirks of vit-pytorch kept so weights and losses transfer:
- Patch tokens never attend to the class token; the projections are regrouped `'(b v) d -> b v d'` although the
  views are concatenated as [sources; targets] (levjepa's quirks, see vit_flax/levjepa.py).
- LeVJEPAND's `input_shape` is accepted and unused.
- `NDRotaryEmbedding` needs `dim_head >= 2 * ndim` (vit-pytorch asserts it): refused at construction here.
Refused here where vit-pytorch fails later: `causal_dims` None (vit-pytorch's `tuple(None)`), inputs of another shape.

vit-pytorch's attention (`nd_attention`) runs flex_attention with a block mask wherever `flex_attention_supported`
(CUDA, x86 CPUs with AVX2), falling back to a dense masked softmax elsewhere. Where flex_attention raises (on CPUs it
has no backward, so whenever gradients are asked for), nd_attention catches the error and computes the softmax with
NO mask, since it builds the dense mask only where it built no block mask: vit-pytorch then trains a bidirectional
encoder. vit-flax always applies the block-causal mask; the parity tests take vit-pytorch's dense path (its
`flex_attention_supported` patched to False, parity/levjepa_nd.py), whose forward equals flex_attention's.
"""

from __future__ import annotations

import dataclasses
import math
from collections import namedtuple
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from einops import rearrange, repeat

from vit_flax.dino import AUGMENT
from vit_flax.layers import LayerNorm, Linear, TorchRMSNorm, check_floating_input, check_keywords, exists, randn
from vit_flax.levjepa import (
    SIGREG, TOKEN_DROPPING, Transformer, VideoRotaryEmbedding, WeightStandardizedLinear, block_causal_mask,
    check_learner_config, draw_token_noise, drop_tokens, normalised_coords, project, projector_layers,
    sigreg_directions, sigreg_loss, sigreg_num_proj, weighted_losses,
)
from vit_flax.vit_nd import DIM_NAMES, check_nd_config, ensure_tuple, num_patches_per_dim

__all__ = ['NDTransformer', 'LeVJEPAND', 'LeVJEPANDLosses', 'NDRotaryEmbedding', 'WeightStandardizedLinear',
           'sigreg_loss']


class NDRotaryEmbedding(VideoRotaryEmbedding):
    """vit-pytorch's NDRotaryEmbedding(dim, ndim, max_freq): levjepa's VideoRotaryEmbedding on `ndim` coordinates."""


def _causal_dims(causal_dims) -> tuple[int, ...]:
    return (causal_dims,) if isinstance(causal_dims, int) else tuple(causal_dims)


class NDTransformer(nn.Module):
    ndim: int
    input_shape: Any
    patch_size: Any
    dim: int
    depth: int
    heads: int
    mlp_dim: int
    channels: int = 3
    dim_head: int = 64
    dropout: float = 0.0
    emb_dropout: float = 0.0
    rotary_max_freq: float = 10.0
    causal_dims: Any = (0,)

    rng_streams = (TOKEN_DROPPING,)  # only with drop_ratio in training

    def __post_init__(self):
        check_keywords(self)
        if self.causal_dims is None:
            raise ValueError('NDTransformer: causal_dims=None: give an int or a tuple of ints (an empty tuple for no '
                             'causal dimension); vit-pytorch calls tuple() on it')
        check_nd_config(self)
        if self.dim_head // (2 * self.ndim) < 1:
            raise ValueError(f'NDTransformer: dim_head ({self.dim_head}) too small for rotary on {self.ndim} '
                             f'dimensions (at least 2 * ndim = {2 * self.ndim})')
        super().__post_init__()

    @nn.nowrap
    def token_noise(self, batch: int, num_patches: int):
        """The uniform noise (batch, num_patches) of a training call's token dropping (levjepa's)."""
        return draw_token_noise(self, batch, num_patches)

    @nn.compact
    def __call__(self, x, drop_ratio: float | None = None, train: bool = False):
        check_floating_input(self, 'x', x, what='inputs')
        input_shape = ensure_tuple(self.input_shape, self.ndim)
        patch_size = ensure_tuple(self.patch_size, self.ndim)
        expected = (*input_shape, self.channels)
        if x.ndim != self.ndim + 2 or tuple(x.shape[1:]) != expected:
            raise ValueError(f'NDTransformer takes inputs of shape (batch, *input_shape, channels) = (batch, '
                             f'{", ".join(map(str, expected))}) (channels-last), got shape {x.shape}')
        batch = x.shape[0]
        grid = num_patches_per_dim(input_shape, patch_size, self.ndim)

        # nd patch embedding, patches channel-first (c p0 p1 ...), tokens row-major across dims

        names = DIM_NAMES[:self.ndim]
        pattern = (f"b {' '.join(f'({d} p{i})' for i, d in enumerate(names))} c -> "
                   f"b ({' '.join(names)}) (c {' '.join(f'p{i}' for i in range(self.ndim))})")
        x = rearrange(x, pattern, **{f'p{i}': p for i, p in enumerate(patch_size)})
        x = LayerNorm(use_bias=False, name='to_patch_embedding_1')(x)
        x = Linear(self.dim, name='to_patch_embedding_2')(x)
        x = LayerNorm(use_bias=False, name='to_patch_embedding_3')(x)

        # nd coordinates: normalized [-1, 1) for rotary, raw (cls row -1) for causal masking

        coords_norm = jnp.asarray(normalised_coords(grid))[None]
        positions = np.stack(np.meshgrid(*(np.arange(n) for n in grid), indexing='ij'), axis=-1).reshape(-1, self.ndim)
        coords_raw = jnp.asarray(np.concatenate((np.full((1, self.ndim), -1), positions)))[None]

        # CLS token, never dropped

        x = nn.Dropout(self.emb_dropout, deterministic=not train)(x)
        cls_token = self.param('cls_token', randn, (self.dim,))
        x = jnp.concatenate((jnp.broadcast_to(cls_token.astype(x.dtype), (batch, 1, self.dim)), x), axis=1)

        # uniform random token dropping (training only)

        if exists(drop_ratio) and train:
            noise = self.token_noise(batch, x.shape[1] - 1)
            x, coords_norm, coords_raw = drop_tokens(noise, drop_ratio, x, coords_norm, coords_raw)

        # always block-causal along causal_dims

        mask = block_causal_mask(coords_raw, _causal_dims(self.causal_dims))
        sin, cos = NDRotaryEmbedding(self.dim_head, max_freq=self.rotary_max_freq, ndim=self.ndim,
                                     name='rotary_emb')(coords_norm)
        x = Transformer(self.dim, self.depth, self.heads, self.dim_head, self.mlp_dim, self.dropout,
                        name='transformer')(x, sin, cos, mask, train)
        return TorchRMSNorm(name='norm')(x)


# main class - LeVJEPA for any number of dimensions

LeVJEPANDLosses = namedtuple('LeVJEPANDLosses', ['invariance_loss', 'sigreg_loss'])


class LeVJEPAND(nn.Module):
    encoder: nn.Module
    input_shape: Any
    augment_src: Callable | None = None
    augment_tgt: Callable | None = None
    num_target_aug_views: int = 1
    num_classes_K: int = 256
    projection_hidden: int = 256
    drop_ratio: float | None = 0.95
    use_batch_norm: bool = True
    norm_fn: Callable | None = None
    use_weight_standardization: bool = False
    invariance_loss_weight: float = 1.0
    sigreg_loss_weight: float = 0.02
    sigreg_loss_kwargs: dict = dataclasses.field(default_factory=lambda: dict(num_proj=1024, knots=17))

    # what the trainer reads off an objective (vit_flax.training.objectives.Objective)
    encoder_keyword = 'encoder'
    encoder_path = ('encoder',)
    rng_streams = (AUGMENT, TOKEN_DROPPING, SIGREG)
    takes_labels = False

    def __post_init__(self):
        check_keywords(self)
        views = self.num_target_aug_views
        if not isinstance(views, int) or isinstance(views, bool) or views < 0:
            raise ValueError(f'LeVJEPAND: num_target_aug_views={views!r} must be a non-negative integer')
        for key in ('augment_src', 'augment_tgt'):
            if getattr(self, key) is not None and not callable(getattr(self, key)):
                raise ValueError(f'LeVJEPAND: {key}={getattr(self, key)!r} must be a callable or a Flax module')
        check_learner_config(self)
        super().__post_init__()

    def setup(self):
        # small projector, discarded after pretraining
        self.projector_0, self.projector_1, self.projector_3 = projector_layers(self)

    def _num_tokens(self) -> int:
        grid = num_patches_per_dim(self.encoder.input_shape, self.encoder.patch_size, self.encoder.ndim)
        return math.prod(grid)

    def draws(self, x, train: bool = False) -> dict:
        """What a call on `x` (in mode `train`) draws besides the augmentations', no parameters needed: the
        encoder's `token_noise` (sources and targets) in training with a `drop_ratio`, and SIGReg's `sigreg`
        directions (num_classes_K, num_proj)."""
        out = {}
        if train and exists(self.drop_ratio):
            rows = x.shape[0] * (self.num_target_aug_views + 1)
            out['token_noise'] = self.encoder.token_noise(rows, self._num_tokens())
        out['sigreg'] = sigreg_directions(self.make_rng(SIGREG), self.num_classes_K, sigreg_num_proj(self))
        return out

    def __call__(self, x, return_embedding: bool = False, return_loss_breakdown: bool = False, train: bool = False):
        check_floating_input(self, 'x', x, what='inputs')
        if return_embedding:
            return self.encoder(x, train=train)[:, 0]

        batch = x.shape[0]

        # source and target views, augmented independently

        src_view = self.augment_src(x) if exists(self.augment_src) else x
        tgt_views = repeat(x, 'b ... -> (b v) ...', v=self.num_target_aug_views)
        tgt_views = self.augment_tgt(tgt_views) if exists(self.augment_tgt) else tgt_views

        tokens = self.encoder(jnp.concatenate((src_view, tgt_views.astype(src_view.dtype)), axis=0),
                              drop_ratio=self.drop_ratio, train=train)
        projections = project(self, tokens[:, 0], train)

        invariance_loss, sigreg = weighted_losses(self, projections, batch, self.num_target_aug_views + 1)
        total_loss = invariance_loss + sigreg
        if not return_loss_breakdown:
            return total_loss
        return total_loss, LeVJEPANDLosses(invariance_loss, sigreg)
