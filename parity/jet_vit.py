"""Parity with vit_pytorch.jet_vit: the test configurations, random-configuration sweep and layer-choice replay of
`jet_vit.JetViT`. vit-pytorch draws a layer's attention with Python's `random.choice` in every call; `draws` makes it
return the options Flax draws from the same rngs (`JetViT.layer_choices`)."""

from unittest import mock

import jax
import numpy as np

from parity.spec import Spec
from vit_flax import converters
from vit_flax.jet_vit import LAYER_SELECTION, JetViT


class ReplayedChoices:
    """A stand-in for the `random` module whose `choice` returns the given options in turn."""

    def __init__(self, options):
        self.options = list(options)

    def choice(self, seq):
        option = self.options.pop(0)
        assert option in seq, (option, seq)
        return option


def draws(model, inputs: tuple, seed: int = 0):
    """The Flax rngs for a call and a context under which vit-pytorch's layers choose the options Flax draws."""
    rngs = {LAYER_SELECTION: jax.random.key(seed)}
    choices = np.asarray(model.apply({}, rngs=rngs, method=JetViT.layer_choices))
    drawn = [names[index] for names, index in zip(model.layer_options, choices) if len(names) > 1]
    jet_vit = converters.import_vit_pytorch('vit_pytorch.jet_vit')
    return rngs, mock.patch.object(jet_vit, 'random', ReplayedChoices(drawn))


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random JetViT: rectangular patch grids that the window divides, one to three layers each a single option or a
    tuple of two or three, channels, heads, a head or none."""
    window = int(rng.integers(1, 3))
    grid = (window * int(rng.integers(1, 3)), window * int(rng.integers(1, 3)))
    patch = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
    dim_head = int(rng.integers(1, 6))
    depth = int(rng.integers(1, 4))
    options = ['WA', 'LA', 'FA']
    attn_layers = tuple(str(rng.choice(options)) if rng.random() < 0.4 else
                        tuple(str(o) for o in rng.choice(options, int(rng.integers(2, 4)), replace=False))
                        for _ in range(depth))
    config = dict(image_size=(grid[0] * patch[0], grid[1] * patch[1]), patch_size=patch,
                  num_classes=int(rng.integers(0, 4)), dim=dim_head * int(rng.integers(1, 4)), depth=depth,
                  heads=int(rng.integers(1, 4)), mlp_dim=int(rng.integers(1, 24)), channels=int(rng.integers(1, 4)),
                  dim_head=dim_head, window_size=window, attn_layers=attn_layers)
    shape = (2, *config['image_size'], config['channels'])
    return config, (rng.standard_normal(shape, dtype=np.float32),)


SPECS = {
    'JetViT': Spec(
        configs=(
            # a 4 x 4 grid: a layer drawing among all three options, then a linear one
            dict(image_size=16, patch_size=4, num_classes=5, dim=16, depth=2, heads=2, mlp_dim=16, dim_head=8,
                 window_size=2, attn_layers=(('WA', 'LA', 'FA'), 'LA')),
            # the default (all full attention), no head
            dict(image_size=(8, 12), patch_size=(2, 4), num_classes=0, dim=12, depth=1, heads=3, mlp_dim=8,
                 dim_head=4, channels=1),
            dict(image_size=(12, 8), patch_size=2, num_classes=3, dim=8, depth=3, heads=1, mlp_dim=8, dim_head=8,
                 channels=2, window_size=2, attn_layers=('WA', ('FA', 'WA'), ('LA', 'WA'))),
        ),
        notes="each layer's attention is window, linear (+ squeeze dynamic conv) or full, or drawn among several "
              "from the 'layer_selection' rng stream in every call (vit-pytorch's random.choice, replayed)",
        draws=draws,
        random_configuration=random_configuration,
        sweep_draws=8,
    ),
}
