"""Parity with vit_pytorch.levjepa_nd: the test configurations and random-configuration sweeps of
`levjepa_nd.NDTransformer` and `levjepa_nd.LeVJEPAND`, and the attention path vit-pytorch runs on for the comparison.

vit-pytorch's nd_attention runs flex_attention wherever `flex_attention_supported` (x86 CPUs with AVX2 included), and
falls back to an UNMASKED softmax when flex_attention raises, which it does on CPUs whenever gradients are asked for
(see vit_flax/levjepa_nd.py). The reference therefore takes vit-pytorch's dense path, the softmax with its
block-causal mask (`flex_attention_supported` patched to False in vit_pytorch.levjepa_nd): flex_attention's forward,
with gradients (tests/test_levjepa_nd.py checks the flex forward against vit-flax too).
"""

from __future__ import annotations

import contextlib
from unittest import mock

import jax
import numpy as np

from parity.levjepa import torch_rand_returning
from parity.spec import Spec
from vit_flax import levjepa_nd
from vit_flax.converters import import_vit_pytorch
from vit_flax.vit_nd import ensure_tuple


def dense_attention():
    module = import_vit_pytorch('vit_pytorch.levjepa_nd')
    return mock.patch.object(module, 'flex_attention_supported', lambda device: False)


@contextlib.contextmanager
def replay(draws: dict):
    """A context under which vit-pytorch's LeVJEPAND draws the SIGReg directions (torch.randn) and, where drawn, the
    token noise (torch.rand) of the Flax call (`LeVJEPAND.draws`)."""
    draws = jax.tree_util.tree_map(np.asarray, draws)
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch_rand_returning('randn', draws['sigreg']))
        if 'token_noise' in draws:
            stack.enter_context(torch_rand_returning('rand', draws['token_noise']))
        yield


def draws(model, inputs: tuple, seed: int = 0, train: bool = False):
    """LeVJEPAND draws SIGReg's directions in every call: the Flax rngs for a call on `inputs` (in mode `train`), and
    a context under which vit-pytorch draws the very same numbers (identity augmentations: nothing else to replay)."""
    streams = model.rng_streams
    rngs = dict(zip(streams, jax.random.split(jax.random.key(seed), len(streams))))
    # jitted: eagerly, each of the draws' operations would compile on its own
    planned = jax.jit(lambda rngs, *inputs: model.apply({}, *inputs, train=train, rngs=rngs,
                                                        method=type(model).draws))(rngs, *inputs)
    return rngs, replay(planned)


# configurations


def random_encoder_config(rng: np.random.Generator) -> dict:
    """A random small NDTransformer of 1 to 4 dimensions (ints or tuples), causal along none (an empty tuple), one
    (an int) or several of them, rotary on 1 or 2 frequencies per coordinate."""
    ndim = int(rng.integers(1, 5))
    patch = tuple(int(p) for p in rng.integers(1, 3, ndim))
    grid = tuple(int(g) for g in rng.integers(1, 4 if ndim < 3 else 3, ndim))
    config = dict(ndim=ndim, input_shape=tuple(p * g for p, g in zip(patch, grid)), patch_size=patch,
                  dim=int(rng.integers(2, 25)), depth=int(rng.integers(1, 3)), heads=int(rng.integers(1, 4)),
                  mlp_dim=int(rng.integers(1, 33)), channels=int(rng.integers(1, 4)),
                  dim_head=2 * ndim * int(rng.integers(1, 3)) + int(rng.integers(0, 2 * ndim)),
                  rotary_max_freq=float(rng.uniform(2.0, 20.0)))
    if rng.random() < 0.3 and len(set(patch)) == 1 and len(set(grid)) == 1:  # plain ints
        config.update(input_shape=patch[0] * grid[0], patch_size=patch[0])
    kind = rng.random()
    if kind < 0.2:
        config['causal_dims'] = ()
    elif kind < 0.5:
        config['causal_dims'] = int(rng.integers(0, ndim))
    elif kind < 0.8:
        config['causal_dims'] = tuple(int(d) for d in rng.choice(ndim, int(rng.integers(1, ndim + 1)), replace=False))
    return config


def _inputs(rng: np.random.Generator, config: dict, batch: int) -> np.ndarray:
    shape = ensure_tuple(config['input_shape'], config['ndim'])
    return rng.standard_normal((batch, *shape, config.get('channels', 3)), dtype=np.float32)


def random_nd_transformer(rng: np.random.Generator) -> tuple[dict, tuple]:
    config = random_encoder_config(rng)
    return config, (_inputs(rng, config, 2),)


def random_learner(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random LeVJEPAND (0 to 2 target views, projector with BatchNorm or RMSNorm, weight standardisation or not,
    loss weights, SIGReg's projections and knots) on a random NDTransformer, 2 or 3 inputs."""
    encoder = levjepa_nd.NDTransformer(**random_encoder_config(rng))
    config = dict(encoder=encoder, input_shape=encoder.input_shape, num_target_aug_views=int(rng.integers(0, 3)),
                  num_classes_K=int(rng.integers(2, 17)), projection_hidden=int(rng.integers(2, 17)),
                  drop_ratio=float(rng.uniform(0.0, 1.0)), use_batch_norm=bool(rng.random() < 0.5),
                  use_weight_standardization=bool(rng.random() < 0.5),
                  invariance_loss_weight=float(rng.uniform(0.1, 2.0)), sigreg_loss_weight=float(rng.uniform(0.01, 1.0)),
                  sigreg_loss_kwargs=dict(num_proj=int(rng.integers(1, 65)), knots=int(rng.integers(2, 20))))
    inputs = _inputs(rng, dict(ndim=encoder.ndim, input_shape=encoder.input_shape, channels=encoder.channels),
                     int(rng.integers(2, 4)))
    return config, (inputs,)


ENCODER = levjepa_nd.NDTransformer(ndim=3, input_shape=(2, 4, 4), patch_size=(1, 2, 2), dim=16, depth=1, heads=2,
                                   mlp_dim=16, dim_head=12)

SPECS = {
    'NDTransformer': Spec(
        configs=(
            # 3D, causal along the first (time) dimension, one rotary frequency per coordinate
            dict(ndim=3, input_shape=(2, 4, 4), patch_size=(1, 2, 2), dim=16, depth=1, heads=2, mlp_dim=16,
                 dim_head=12),
            # 1D, ints, causal (an int), two frequencies and unrotated features, dropout (eval)
            dict(ndim=1, input_shape=12, patch_size=3, dim=12, depth=2, heads=3, mlp_dim=16, dim_head=5, channels=1,
                 dropout=0.1, emb_dropout=0.1, causal_dims=0, rotary_max_freq=4.0),
            # 4D, causal along two dimensions
            dict(ndim=4, input_shape=(2, 4, 6, 4), patch_size=(1, 2, 3, 2), dim=8, depth=2, heads=1, mlp_dim=8,
                 dim_head=8, channels=2, causal_dims=(0, 2)),
            # 2D, no causal dimension: the class token still unseen by the patches
            dict(ndim=2, input_shape=(4, 6), patch_size=2, dim=12, depth=1, heads=2, mlp_dim=12, dim_head=6,
                 causal_dims=()),
        ),
        notes='channels-last inputs of 1 to 7 dimensions, (c p0 p1 ...) patches, levjepa\'s factorised rotary on '
              'N-D coordinates, block-causal along `causal_dims` (no patch sees the class token), training-only '
              'token dropping; the reference takes vit-pytorch\'s dense masked path (its flex path falls back to '
              'unmasked attention with gradients on CPUs)',
        torch_context=dense_attention,
        random_configuration=random_nd_transformer,
        sweep_draws=8,
    ),
    'LeVJEPAND': Spec(
        configs=(
            dict(encoder=ENCODER, input_shape=(2, 4, 4), num_classes_K=8, projection_hidden=8,
                 sigreg_loss_kwargs=dict(num_proj=16, knots=5)),
            # 2 target views, RMSNorm projector with weight standardisation, other weights, SIGReg's defaults
            dict(encoder=levjepa_nd.NDTransformer(ndim=2, input_shape=(4, 6), patch_size=2, dim=12, depth=1, heads=2,
                                                  mlp_dim=12, dim_head=8, channels=1, causal_dims=(1,)),
                 input_shape=(4, 6), num_target_aug_views=2, num_classes_K=6, projection_hidden=10,
                 use_batch_norm=False, use_weight_standardization=True, invariance_loss_weight=0.5,
                 sigreg_loss_weight=0.3),
        ),
        notes='the loss in every mode (SIGReg\'s directions from the \'sigreg\' stream; \'token_dropping\' in '
              'training; augmentations from \'augment\' where they draw): invariance + levjepa\'s SIGReg over the '
              'source and target views\' class tokens; `params[\'encoder\']` is the plain NDTransformer\'s',
        draws=draws,
        torch_context=dense_attention,
        random_configuration=random_learner,
        sweep_draws=6,
    ),
}
