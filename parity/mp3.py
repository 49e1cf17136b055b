"""Parity with vit_pytorch.mp3: the test configurations and random-configuration sweeps of `mp3.ViT`, `mp3.MP3`."""

from unittest import mock

import jax
import numpy as np
import torch

from parity.spec import Spec
from vit_flax import mp3


def draws(model, inputs: tuple, seed: int = 0):
    """mp3.MP3 draws its masking permutation in every call: the Flax rngs for a call on `inputs`, and a context under
    which vit-pytorch's `torch.rand` (batch, n) returns the very uniform noise whose argsort is the Flax
    permutation."""
    rngs = {mp3.MASKING: jax.random.key(seed)}
    noise = np.asarray(model.apply({}, *inputs, rngs=rngs, method=type(model).masking_noise))

    def rand(*shape, device=None, **kwargs):
        shape = tuple(shape[0]) if len(shape) == 1 and not isinstance(shape[0], int) else shape
        assert shape == noise.shape, (shape, noise.shape)
        return torch.from_numpy(noise.copy()).to(device=device)

    return rngs, mock.patch.object(torch, 'rand', rand)


def random_vit_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random mp3.ViT (patch and image sizes, channels, heads, dim_head, depths, classes with 0, dropout) and
    images of any patch grid: the sin-cos embedding follows the input."""
    patch = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
    grid = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
    config = dict(num_classes=int(rng.integers(0, 5)), image_size=(patch[0] * grid[0], patch[1] * grid[1]),
                  patch_size=patch, dim=4 * int(rng.integers(2, 7)), depth=int(rng.integers(1, 3)),
                  heads=int(rng.integers(1, 6)), mlp_dim=int(rng.integers(1, 40)),
                  channels=int(rng.integers(1, 4)), dim_head=int(rng.integers(1, 12)),
                  dropout=float(rng.choice([0.0, 0.1])))
    input_grid = (int(rng.integers(1, 6)), int(rng.integers(1, 6)))
    shape = (2, input_grid[0] * patch[0], input_grid[1] * patch[1], config['channels'])
    return config, (rng.standard_normal(shape, dtype=np.float32),)


def random_mp3_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random MP3 (masking ratio) on a random mp3.ViT, and images of at most its patches: the head predicts
    one of `vit.num_patches` positions."""
    patch = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
    grid = (int(rng.integers(1, 5)), int(rng.integers(2, 5)))
    encoder = mp3.ViT(num_classes=int(rng.integers(0, 5)), image_size=(patch[0] * grid[0], patch[1] * grid[1]),
                      patch_size=patch, dim=4 * int(rng.integers(2, 7)), depth=int(rng.integers(1, 3)),
                      heads=int(rng.integers(1, 5)), mlp_dim=int(rng.integers(1, 40)),
                      channels=int(rng.integers(1, 4)), dim_head=int(rng.integers(1, 12)))
    config = dict(vit=encoder, masking_ratio=float(rng.uniform(0.05, 0.95)))
    input_grid = (int(rng.integers(1, grid[0] + 1)), int(rng.integers(1, grid[1] + 1)))
    shape = (2, input_grid[0] * patch[0], input_grid[1] * patch[1], encoder.channels)
    return config, (rng.standard_normal(shape, dtype=np.float32),)


SPECS = {
    'ViT': Spec(
        configs=(
            dict(num_classes=10, image_size=16, patch_size=4, dim=32, depth=2, heads=4, mlp_dim=64, dim_head=8),
            dict(num_classes=7, image_size=(24, 40), patch_size=(8, 4), dim=24, depth=1, heads=3, mlp_dim=32,
                 dim_head=12, channels=1, dropout=0.1),
            # one head with dim_head == dim: the output projection is kept, unlike vit.py
            dict(num_classes=3, image_size=(12, 16), patch_size=(4, 2), dim=16, depth=3, heads=1, mlp_dim=24,
                 dim_head=16, channels=2),
        ),
        notes="sin-cos position embedding from each input's patch grid; mean pooling; attention takes a `context` "
              '(separate to_q / to_kv) for the MP3 objective',
        random_configuration=random_vit_configuration,
    ),
    'MP3': Spec(
        draws=draws,
        random_configuration=random_mp3_configuration,
        sweep_draws=6,
        configs=(
            dict(vit=mp3.ViT(num_classes=10, image_size=16, patch_size=4, dim=32, depth=2, heads=4, mlp_dim=64,
                             dim_head=8), masking_ratio=0.5),
            dict(vit=mp3.ViT(num_classes=3, image_size=(12, 16), patch_size=(4, 2), dim=16, depth=1, heads=1,
                             mlp_dim=24, dim_head=16, channels=2, dropout=0.1), masking_ratio=0.75),
        ),
        notes="masked position prediction loss: tokens without position embedding attend to the unmasked ones "
              "(rng stream 'masking', even in eval mode) and predict their own index; `params['vit']` is a "
              "plain mp3.ViT's",
    ),
}
