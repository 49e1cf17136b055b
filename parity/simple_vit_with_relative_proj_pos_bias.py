"""Parity with vit_pytorch.simple_vit_with_relative_proj_pos_bias: the test configurations and random-configuration
sweep of `simple_vit_with_relative_proj_pos_bias.SimpleViT`."""

import numpy as np

from parity.spec import Spec
from parity.vit import random_plain_vit_keywords


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random model (distance basis 1 to 6 curves, max_dist from 1, every pair out of range, to past the grid)
    and images of image_size (its fixed position embedding and grid take no other patch count)."""
    config, patch, grid = random_plain_vit_keywords(rng)
    config.update(num_distance_basis=int(rng.integers(1, 7)), max_dist=int(rng.integers(1, 6)))
    shape = (2, grid[0] * patch[0], grid[1] * patch[1], config['channels'])
    return config, (rng.standard_normal(shape, dtype=np.float32),)


SPECS = {
    'SimpleViT': Spec(
        configs=(
            # a 3 x 3 grid with max_dist 2: corner pairs lie out of range and get no bias
            dict(image_size=12, patch_size=4, num_classes=5, dim=16, depth=1, heads=2, mlp_dim=32, dim_head=8,
                 num_distance_basis=4, max_dist=2),
            dict(image_size=(24, 16), patch_size=(8, 4), num_classes=3, dim=24, depth=2, heads=3, mlp_dim=16,
                 dim_head=6, channels=1, num_distance_basis=3, max_dist=8),
            dict(image_size=8, patch_size=4, num_classes=0, dim=8, depth=2, heads=1, mlp_dim=8, dim_head=8,
                 channels=2, num_distance_basis=2),
        ),
        notes='relative position bias per head from query-projected weights over learned distance curves on the '
              'patch grid; fixed 2D sin-cos position embedding, mean pooling',
        random_configuration=random_configuration,
        sweep_draws=6,
    ),
}
