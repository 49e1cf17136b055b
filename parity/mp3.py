"""Parity with vit_pytorch.mp3: the test configurations of `mp3.ViT`, `mp3.MP3`."""

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
    ),
    'MP3': Spec(
        draws=draws,
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
