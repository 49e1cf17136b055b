"""Parity with vit_pytorch.lejepa: the test configurations and random-configuration sweep of `lejepa.LeJEPA`."""

import contextlib
import functools
from unittest import mock

import jax
import numpy as np
import torch

from parity import dino as dino_spec
from parity.dino import IDENTITY_AUGMENTS
from parity.spec import Spec
from vit_flax.lejepa import LeJEPA
from vit_flax.vit import ViT

MODULES = ('vit_pytorch.lejepa',)

# vit-pytorch's LeJEPA under the torchvision stand-in of parity/dino.py: its constructor builds DEFAULT_AUG and the
# crops and runs a mock forward (the crops take the whole image when no boxes are planned)
torch_transforms = functools.partial(dino_spec.torch_transforms, modules=MODULES)


def torch_randn_returns(draws):
    """A context under which `torch.randn` returns `draws` (numpy, (num_slices, dim)): vit-pytorch's `sigreg_loss`
    then projects on the directions of the Flax call that drew them (`LeJEPA.sigreg_draws`), in the dtype torch asks
    for (float64 in the reference, the same numbers). Reusable; every call returns the same draws."""
    draws = np.asarray(draws, np.float32)

    def randn(*size, device=None, dtype=None, **kwargs):
        size = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else size
        if tuple(size) != draws.shape:
            raise AssertionError(f'torch.randn{tuple(size)} asked for, but the Flax draw has shape {draws.shape}')
        return torch.from_numpy(draws.copy()).to(device=device, dtype=dtype or torch.get_default_dtype())

    return mock.patch.object(torch, 'randn', randn)


class torch_draws:
    """The crops (the torchvision stand-in cutting the planned boxes) and, where given, SIGReg's directions of one
    Flax call, for vit-pytorch's LeJEPA while open. Re-entrant in sequence."""

    def __init__(self, boxes, sigreg_draws=None):
        self.boxes, self.sigreg_draws = boxes, sigreg_draws

    def __enter__(self):
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(torch_transforms(self.boxes))
        if self.sigreg_draws is not None:
            self._stack.enter_context(torch_randn_returns(self.sigreg_draws))
        return self

    def __exit__(self, *exc):
        return self._stack.__exit__(*exc)


def draws(model, inputs: tuple, seed: int = 0):
    """LeJEPA crops, augments and (with SIGReg) projects on random directions in every call: the Flax rngs for a
    call on `inputs`, and a context under which vit-pytorch cuts the very boxes of the Flax call and its
    `torch.randn` gives the very SIGReg draws. Parity needs identity augmentations on both sides (the
    configurations' `RandomApply(L2Norm(), p=0.)`)."""
    streams = model.rng_streams
    rngs = dict(zip(streams, jax.random.split(jax.random.key(seed), len(streams))))
    boxes = np.asarray(model.apply({}, *inputs, rngs=rngs, method=LeJEPA.crop_boxes))
    sigreg = np.asarray(model.apply({}, rngs=rngs, method=LeJEPA.sigreg_draws)) if model.has_sigreg_loss else None
    return rngs, torch_draws(boxes, sigreg)


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random LeJEPA on parity.dino's random encoders and hidden layers (a ViT hooked at its pooled token, its
    transformer, one of its blocks or its logits, by name or index, or a CvT at its feature map), crop scales,
    projector and K; every combination of use_ema / use_sigreg / moving_average_decay (given or not), the loss
    weights (SIGReg's zero or not) and SIGReg's keywords. Images of any size."""
    config, inputs = dino_spec.random_configuration(rng)
    for name in ('student_temp', 'teacher_temp'):  # Dino's, no LeJEPA keyword
        del config[name]
    flag = lambda: (None, True, False)[int(rng.integers(3))]  # noqa: E731
    config.update(
        use_ema=flag(), use_sigreg=flag(),
        moving_average_decay=None if rng.random() < 0.5 else float(rng.uniform(0.5, 1.0)),
        target_loss_weight=float(rng.uniform(0.1, 2.0)),
        sigreg_loss_weight=0.0 if rng.random() < 0.2 else float(rng.uniform(0.1, 2.0)),
        sigreg_loss_kwargs=dict(num_slices=int(rng.integers(1, 65)),
                                domain=(-float(rng.uniform(1.0, 6.0)), float(rng.uniform(1.0, 6.0))),
                                num_knots=int(rng.integers(2, 22))),
    )
    return config, inputs


VIT = dict(image_size=16, patch_size=8, num_classes=5, dim=16, depth=1, heads=2, mlp_dim=16, dim_head=8)

SPECS = {
    'LeJEPA': Spec(
        draws=draws,
        torch_construction=torch_transforms,
        # augmentation off on both sides (RandomApply(L2Norm(), p=0.) is the identity in vit-pytorch too); crops
        # shared through CroppedImages, SIGReg's directions through torch.randn
        configs=(
            # the default: SIGReg (num_slices=1024, domain (-5, 5), 17 knots), the online encoder as its own target
            dict(net=ViT(**VIT), image_size=16, hidden_layer='to_latent', projection_hidden_size=16,
                 projection_layers=2, num_classes_K=32, **IDENTITY_AUGMENTS),
            # a decay alone resolves to the EMA target without SIGReg; mean pool, the default hidden layer (-2:
            # to_latent), a 3-layer projector, another target weight and crop scales
            dict(net=ViT(image_size=12, patch_size=4, num_classes=3, dim=12, depth=2, heads=3, mlp_dim=16, dim_head=4,
                         pool='mean'),
                 image_size=12, projection_hidden_size=8, projection_layers=3, num_classes_K=24,
                 moving_average_decay=0.9, target_loss_weight=0.5, local_upper_crop_scale=0.3,
                 global_lower_crop_scale=0.6, **IDENTITY_AUGMENTS),
            # EMA target and SIGReg together, SIGReg's keywords and weight; the transformer's tokens as embedding
            dict(net=ViT(**VIT), image_size=16, hidden_layer='transformer', projection_hidden_size=12,
                 projection_layers=2, num_classes_K=20, use_ema=True, use_sigreg=True, sigreg_loss_weight=0.3,
                 sigreg_loss_kwargs=dict(num_slices=16, domain=(-3.0, 4.0), num_knots=9), **IDENTITY_AUGMENTS),
            # neither: the MSE against the online encoder alone; the logits (-1) through a one-layer projector
            dict(net=ViT(**VIT), image_size=16, hidden_layer=-1, projection_hidden_size=5, projection_layers=1,
                 num_classes_K=12, use_ema=False, use_sigreg=False, target_loss_weight=2.0, **IDENTITY_AUGMENTS),
        ),
        random_configuration=random_configuration,
        sweep_draws=3,
        notes="JEPA loss (rng streams 'augment', 'crop' and 'sigreg', even in eval mode): per-image JAX augmentations "
              "and random resized crops, MSE of local to global projections, SIGReg or an EMA target "
              "(`update_moving_average`, `trainable_mask`) or both, as vit-pytorch resolves its flags; "
              "`params['encoder']['net']` is the plain encoder's; hidden layer as dino.Dino's",
    ),
}
