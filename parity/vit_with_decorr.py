"""Parity with vit_pytorch.vit_with_decorr: the test configurations and random-configuration sweep of
`vit_with_decorr.ViT`, and the replay of its token sampling."""

from unittest import mock

import jax
import numpy as np
import torch

from parity.spec import Spec
from parity.vit import random_plain_vit_keywords
from vit_flax import vit_with_decorr


def decorr_draws(model, inputs: tuple, seed: int = 0):
    """The Flax rngs for a call on `inputs` that returns the decorrelation loss, and a context under which
    vit-pytorch's `torch.randn(shape)` for the token sampling returns the very noise Flax draws with them."""
    rngs = {vit_with_decorr.DECORR: jax.random.key(seed)}
    noise = np.asarray(model.apply({}, *inputs, rngs=rngs, method=type(model).decorr_sampling_noise))
    randn = torch.randn

    def replayed(*size, **kwargs):
        size = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else size
        if tuple(size) != noise.shape:
            return randn(*size, **kwargs)
        return torch.from_numpy(noise.copy()).to(device=kwargs.get('device'), dtype=torch.get_default_dtype())

    return rngs, mock.patch.object(torch, 'randn', replayed)


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random ViT of either pool with random decorrelation settings, and images up to image_size."""
    config, patch, grid = random_plain_vit_keywords(rng)
    config.update(pool=str(rng.choice(['cls', 'mean'])), decorr_sample_frac=float(rng.choice([0.0, 0.5, 1.0])),
                  decorr_use_subspace=bool(rng.random() < 0.5), decorr_dim_subspace=int(rng.integers(2, 4)),
                  decorr_num_subspaces=int(rng.integers(1, 3)), decorr_mean_center=bool(rng.random() < 0.5),
                  decorr_layer_outputs_across_depth=bool(rng.random() < 0.3))
    input_grid = tuple(int(rng.integers(1, g + 1)) for g in grid)
    shape = (2, input_grid[0] * patch[0], input_grid[1] * patch[1], config['channels'])
    return config, (rng.standard_normal(shape, dtype=np.float32),)


SPECS = {
    'ViT': Spec(
        configs=(
            # a subspace projection buffer (the loss itself is computed in training: tests/test_vit_with_decorr.py)
            dict(image_size=16, patch_size=8, num_classes=5, dim=16, depth=1, heads=2, mlp_dim=32, dim_head=8,
                 decorr_use_subspace=True, decorr_dim_subspace=4, decorr_num_subspaces=2),
            dict(image_size=(24, 16), patch_size=(8, 4), num_classes=3, dim=24, depth=2, heads=3, mlp_dim=16,
                 dim_head=6, channels=1, pool='mean', decorr_sample_frac=0.5, decorr_mean_center=True),
            dict(image_size=8, patch_size=4, num_classes=0, dim=8, depth=2, heads=1, mlp_dim=8, dim_head=8,
                 channels=2, decorr_sample_frac=0.0),
        ),
        notes='returns (logits, decorrelation loss): the loss in training or with `return_decorr_aux_loss=True`, '
              "token sampling from rng stream 'decorr'; subspace projections as a buffer",
        random_configuration=random_configuration,
        sweep_draws=6,
    ),
}
