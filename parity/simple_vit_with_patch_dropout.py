"""Parity with vit_pytorch.simple_vit_with_patch_dropout: the test configurations and random-configuration sweep of
`simple_vit_with_patch_dropout.SimpleViT`; its patch-dropout draws are replayed as vit_with_patch_dropout's."""

import numpy as np

from parity.spec import Spec
from parity.vit import random_plain_vit_keywords
from parity.vit_with_patch_dropout import draws


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random SimpleViT with patch dropout and images of any patch grid up to one more patch a side than
    image_size's (the sin-cos embedding follows the input's grid)."""
    config, patch, grid = random_plain_vit_keywords(rng)
    config['patch_dropout'] = float(rng.choice([0.0, 0.25, 0.5, 0.9]))
    input_grid = tuple(int(rng.integers(1, g + 2)) for g in grid)
    shape = (2, input_grid[0] * patch[0], input_grid[1] * patch[1], config['channels'])
    return config, (rng.standard_normal(shape, dtype=np.float32),)


SPECS = {
    'SimpleViT': Spec(
        configs=(
            dict(image_size=16, patch_size=4, num_classes=10, dim=32, depth=1, heads=4, mlp_dim=32, dim_head=8),
            dict(image_size=(24, 16), patch_size=(8, 4), num_classes=5, dim=24, depth=2, heads=2, mlp_dim=32,
                 dim_head=12, channels=1, patch_dropout=0.25),
            dict(image_size=16, patch_size=4, num_classes=0, dim=16, depth=2, heads=1, mlp_dim=16, dim_head=16,
                 channels=2, patch_dropout=0.0),
        ),
        draws=draws,
        notes="patch dropout in training (rng stream 'patch_dropout'); the sin-cos embedding follows the input's "
              'patch grid',
        random_configuration=random_configuration,
        sweep_draws=6,
    ),
}
