"""Parity with vit_pytorch.ats_vit: the test configurations of `ats_vit.ViT`."""

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
    ),
}
