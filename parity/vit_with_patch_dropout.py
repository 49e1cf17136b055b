"""Parity with vit_pytorch.vit_with_patch_dropout: the test configurations, the patch-dropout draws replayed in torch
and the random-configuration sweep of `vit_with_patch_dropout.ViT`."""

from unittest import mock

import jax
import numpy as np
import torch

from parity.spec import Spec
from parity.vit import random_plain_vit_keywords
from vit_flax.layers import PATCH_DROPOUT


def torch_randn_returns(noise):
    """A context under which `torch.randn(b, n, ...)` returns `noise` (numpy, (b, n)) in the dtype torch asks for:
    vit-pytorch's PatchDropout then keeps the patches the Flax call keeps. Any other shape asked for fails."""
    noise = np.asarray(noise, np.float32)

    def randn(*size, device=None, dtype=None, **kwargs):
        size = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else size
        if tuple(size) != noise.shape:
            raise AssertionError(f'torch.randn{tuple(size)} asked for, but the Flax draw has shape {noise.shape}')
        return torch.from_numpy(noise.copy()).to(device=device, dtype=dtype or torch.get_default_dtype())

    return mock.patch.object(torch, 'randn', randn)


def draws(model, inputs: tuple, seed: int = 0):
    """Patch dropout draws in training only (the parity tests run in eval mode, where it is the identity; the
    training-mode tests use this too): the Flax rngs for a call on `inputs`, and a context under which vit-pytorch's
    `torch.randn(batch, num_patches)` returns the very normals the Flax call ranks."""
    rngs = {PATCH_DROPOUT: jax.random.key(seed)}
    noise = np.asarray(model.apply({}, *inputs, rngs=rngs, method=type(model).patch_dropout_noise))
    return rngs, torch_randn_returns(noise)


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random ViT with patch dropout (both pools, any rate) and images of image_size (the position embedding is
    added whole, so only the configured patch count fits)."""
    config, patch, grid = random_plain_vit_keywords(rng)
    config.update(pool=str(rng.choice(['cls', 'mean'])), patch_dropout=float(rng.choice([0.0, 0.25, 0.5, 0.9])))
    shape = (2, grid[0] * patch[0], grid[1] * patch[1], config['channels'])
    return config, (rng.standard_normal(shape, dtype=np.float32),)


SPECS = {
    'ViT': Spec(
        configs=(
            dict(image_size=16, patch_size=4, num_classes=10, dim=32, depth=1, heads=4, mlp_dim=32, dim_head=8),
            dict(image_size=(24, 16), patch_size=(8, 4), num_classes=5, dim=24, depth=2, heads=2, mlp_dim=32,
                 dim_head=12, channels=1, pool='mean', patch_dropout=0.5, dropout=0.1, emb_dropout=0.1),
            dict(image_size=16, patch_size=4, num_classes=0, dim=16, depth=2, heads=1, mlp_dim=16, dim_head=16,
                 channels=2, patch_dropout=0.0),
        ),
        draws=draws,
        notes="patch dropout in training (rng stream 'patch_dropout'); patch embedding a bare Linear; no final "
              'transformer norm, LayerNorm in the head; the class token joins after the dropout, without a position',
        random_configuration=random_configuration,
        sweep_draws=6,
    ),
}
