"""Parity with vit_pytorch.ats_vit: the test configurations and random-configuration sweep of `ats_vit.ViT`."""

from unittest import mock

import jax
import numpy as np
import torch

from parity.spec import Spec
from vit_flax import ats_vit
from vit_flax.converters import import_vit_pytorch


def draws(model, inputs: tuple, seed: int = 0):
    """ats_vit.ViT draws Gumbel noise to sample tokens even in eval mode: the Flax rngs for a call on `inputs`, and a
    context under which vit-pytorch's `sample_gumbel` returns the very noise Flax draws with them. Flax draws over
    fixed token slots; torch asks a layer of budget k for (batch, k, n) and gets the first n columns."""
    rngs = {ats_vit.TOKEN_SAMPLING: jax.random.key(seed)}
    noise = model.apply({}, *inputs, rngs=rngs, method=type(model).token_sampling_noise)
    by_budget = {}  # a budget's first layer is the only one that can sample
    for layer_noise in noise:
        if layer_noise is not None:
            by_budget.setdefault(layer_noise.shape[1], np.asarray(layer_noise))

    def sample_gumbel(shape, device, dtype, eps=1e-6):
        batch, budget, n = shape
        assert n <= by_budget[budget].shape[-1], (shape, by_budget[budget].shape)
        return torch.from_numpy(by_budget[budget][:, :, :n].copy()).to(device=device, dtype=dtype)

    return rngs, mock.patch.object(import_vit_pytorch('vit_pytorch.ats_vit'), 'sample_gumbel', sample_gumbel)


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random ATS ViT (rectangular patches and grids, channels, heads, dim_head, one or two layers, budgets from
    one token to more than the patch count) and a batch of three images up to image_size: which tokens a layer
    keeps, and so whether the next one samples, depends on the batch."""
    patch = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    grid = (int(rng.integers(1, 5)), int(rng.integers(2, 5)))
    depth = int(rng.integers(1, 3))
    budgets = tuple(sorted((int(rng.integers(1, grid[0] * grid[1] + 2)) for _ in range(depth)), reverse=True))
    config = dict(image_size=(patch[0] * grid[0], patch[1] * grid[1]), patch_size=patch,
                  num_classes=int(rng.integers(0, 5)), dim=int(rng.integers(2, 25)), depth=depth,
                  max_tokens_per_depth=budgets, heads=int(rng.integers(1, 5)), mlp_dim=int(rng.integers(1, 33)),
                  channels=int(rng.integers(1, 4)), dim_head=int(rng.integers(1, 10)))
    input_rows = int(rng.integers(1, grid[0] + 1))
    shape = (3, input_rows * patch[0], grid[1] * patch[1], config['channels'])
    return config, (rng.standard_normal(shape, dtype=np.float32),)


SPECS = {
    'ViT': Spec(
        draws=draws,
        configs=(
            dict(image_size=16, patch_size=4, num_classes=10, dim=32, depth=2, max_tokens_per_depth=(8, 4), heads=4,
                 mlp_dim=64, dim_head=8),
            # a budget above the patch count: no layer samples
            dict(image_size=(16, 8), patch_size=(4, 2), num_classes=3, dim=16, depth=1, max_tokens_per_depth=(20,),
                 heads=1, mlp_dim=32, dim_head=16, channels=2),
            # 9 patches; the second layer never samples (its budget equals the first's), the third only when the
            # batch kept more than 4 tokens (tests/test_ats_vit.py checks both branches)
            dict(image_size=(12, 6), patch_size=(4, 2), num_classes=5, dim=24, depth=3, max_tokens_per_depth=(6, 6, 4),
                 heads=3, mlp_dim=16, dim_head=5, channels=1, dropout=0.1, emb_dropout=0.1),
        ),
        notes="adaptive token sampling (Gumbel-max from the cls attention, rng stream 'token_sampling', even in "
              'eval mode); fixed token slots + padding mask instead of per-batch padding; '
              '`return_sampled_token_ids`',
        random_configuration=random_configuration,
        # the first eleven draws from the sweep's seed reach every case tests/test_ats_vit.py asks of them, the
        # eleventh the only one where vit-pytorch samples in two layers
        sweep_draws=12,
    ),
}
