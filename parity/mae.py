"""Parity with vit_pytorch.mae: the test configurations and random-configuration sweep of `mae.MAE`."""

from unittest import mock

import jax
import numpy as np
import torch

from parity.spec import Spec
from vit_flax import mae
from vit_flax.converters import import_vit_pytorch
from vit_flax.vit import ViT


def torch_uses_3d_pos_embedding(torch_class, pad_mean_pool: bool = False):
    """A context under which vit-pytorch's `torch_class` (MAE, SimMIM) reads its encoder's 2-D `pos_embedding`
    (N + cls, dim) as the 3-D (1, N + cls, dim) it was written for; with `pad_mean_pool`, a mean-pool encoder's
    table gets a leading zero row in place of the cls row it lacks (SimMIM skips one row). Views of the same
    parameter, so gradients reach it; the state dict is untouched."""
    forward = torch_class.forward

    def fixed_forward(self, *args, **kwargs):
        encoder = self.encoder
        table = encoder.pos_embedding
        if pad_mean_pool and encoder.pool == 'mean':
            table = torch.cat((table.new_zeros(1, table.shape[-1]), table))
        encoder.__dict__['pos_embedding'] = table[None]  # found before the registered parameter
        try:
            return forward(self, *args, **kwargs)
        finally:
            del encoder.__dict__['pos_embedding']

    return mock.patch.object(torch_class, 'forward', fixed_forward)


def torch_runs_on_2d_pos_embedding():
    """A context under which vit-pytorch 1.26.11's MAE runs on its own ViT (see the module docstring)."""
    return torch_uses_3d_pos_embedding(import_vit_pytorch('vit_pytorch.mae').MAE)


def torch_draws(noise):
    """A context under which `torch.rand` returns `noise` (numpy, (batch, num_patches)): vit-pytorch's MAE and
    SimMIM then mask what the Flax objective masks with the rngs that drew it (`masking_noise`). Reusable: each
    entry replays the same noise, in the dtype torch asks for."""
    noise = np.asarray(noise, np.float32)

    def rand(*size, device=None, dtype=None, **kwargs):
        size = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else size
        if tuple(size) != noise.shape:
            raise AssertionError(f'torch.rand{tuple(size)} asked for, but the Flax draw has shape {noise.shape}')
        return torch.from_numpy(noise.copy()).to(device=device, dtype=dtype or torch.get_default_dtype())

    return mock.patch.object(torch, 'rand', rand)


def draws(model, inputs: tuple, seed: int = 0):
    """MAE and SimMIM mask patches in every call: the Flax rngs for a call on `inputs`, and a context under which
    vit-pytorch's `torch.rand(batch, num_patches)` returns the very noise that masks the Flax call."""
    rngs = {mae.MASKING: jax.random.key(seed)}
    noise = np.asarray(model.apply({}, *inputs, rngs=rngs, method=type(model).masking_noise))
    return rngs, torch_draws(noise)


def random_encoder(rng: np.random.Generator) -> ViT:
    """A random small vit.ViT of either pool, 4 to 9 patches of 1 to 3 pixels a side."""
    patch = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    grid = (int(rng.integers(2, 4)), int(rng.integers(2, 4)))
    return ViT(image_size=(grid[0] * patch[0], grid[1] * patch[1]), patch_size=patch,
               num_classes=int(rng.integers(0, 5)), dim=int(rng.integers(4, 25)), depth=int(rng.integers(1, 3)),
               heads=int(rng.integers(1, 4)), mlp_dim=int(rng.integers(4, 33)), dim_head=int(rng.integers(2, 9)),
               channels=int(rng.integers(1, 4)), pool=('cls', 'mean')[int(rng.integers(2))])


def encoder_images(rng: np.random.Generator, encoder: ViT, batch: int = 2) -> np.ndarray:
    """Random images at the encoder's image_size and channels."""
    return rng.standard_normal((batch, *encoder.image_size, encoder.channels), dtype=np.float32)


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random MAE (masking ratio, decoder width, depth, heads; enc_to_dec or none) on a random encoder, and
    images of its image_size."""
    encoder = random_encoder(rng)
    config = dict(encoder=encoder, decoder_dim=int(rng.integers(4, 25)), masking_ratio=float(rng.uniform(0.3, 0.9)),
                  decoder_depth=int(rng.integers(1, 3)), decoder_heads=int(rng.integers(1, 4)),
                  decoder_dim_head=int(rng.integers(2, 9)))
    return config, (encoder_images(rng, encoder),)


SPECS = {
    'MAE': Spec(
        configs=(
            dict(encoder=ViT(image_size=16, patch_size=4, num_classes=10, dim=32, depth=1, heads=2, mlp_dim=32,
                             dim_head=8), decoder_dim=16, decoder_heads=2, decoder_dim_head=8),
            # mean pool, no head, decoder_dim == dim (no enc_to_dec), non-square patches
            dict(encoder=ViT(image_size=(12, 8), patch_size=(4, 2), num_classes=0, dim=16, depth=2, heads=1, mlp_dim=24,
                             dim_head=16, channels=2, pool='mean'), decoder_dim=16, masking_ratio=0.5,
                 decoder_depth=2, decoder_heads=2, decoder_dim_head=4),
        ),
        draws=draws,
        torch_context=torch_runs_on_2d_pos_embedding,
        random_configuration=random_configuration,
        sweep_draws=6,
        notes="masked autoencoder loss (rng stream 'masking', even in eval mode): the encoder's transformer sees the "
              "visible patches, a transformer decoder predicts the masked pixels; `params['encoder']` is a plain "
              "vit.ViT's; `MAE.reconstruct`; vit-pytorch's pool='cls' fails on its 2-D pos_embedding (fixed here)",
    ),
}
