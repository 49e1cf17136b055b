"""Parity with vit_pytorch.simple_vit_with_value_residual: the test configurations and random-configuration sweep of
`simple_vit_with_value_residual.SimpleViT`."""

import numpy as np

from parity.spec import Spec
from parity.vit import random_plain_vit_keywords


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random SimpleViT of one to three layers (two or more mix their values with the first's), on images of
    image_size."""
    config, patch, grid = random_plain_vit_keywords(rng)
    config['depth'] = int(rng.integers(1, 4))
    shape = (2, grid[0] * patch[0], grid[1] * patch[1], config['channels'])
    return config, (rng.standard_normal(shape, dtype=np.float32),)


SPECS = {
    'SimpleViT': Spec(
        configs=(
            # depth 2: the second layer mixes its values with the first's through its learned gate
            dict(image_size=16, patch_size=4, num_classes=5, dim=16, depth=2, heads=2, mlp_dim=32, dim_head=8),
            dict(image_size=(24, 16), patch_size=(8, 4), num_classes=0, dim=24, depth=3, heads=3, mlp_dim=16,
                 dim_head=4, channels=1),
            dict(image_size=8, patch_size=4, num_classes=3, dim=8, depth=1, heads=1, mlp_dim=8, dim_head=8,
                 channels=2),
        ),
        notes='SimpleViT whose later layers gate their attention values with the first layer\'s (learned per-head mix)',
        random_configuration=random_configuration,
        sweep_draws=6,
    ),
}
