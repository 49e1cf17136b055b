"""Parity with vit_pytorch.simple_vit: the test configurations and random-configuration sweep of
`simple_vit.SimpleViT`."""

import numpy as np

from parity.spec import Spec
from parity.vit import random_plain_vit_keywords


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random SimpleViT and images of image_size (its fixed position embedding takes no other patch count)."""
    config, patch, grid = random_plain_vit_keywords(rng)
    shape = (2, grid[0] * patch[0], grid[1] * patch[1], config['channels'])
    return config, (rng.standard_normal(shape, dtype=np.float32),)


SPECS = {
    'SimpleViT': Spec(
        configs=(
            dict(image_size=32, patch_size=8, num_classes=10, dim=32, depth=2, heads=4, mlp_dim=64, dim_head=8),
            dict(image_size=(24, 40), patch_size=(8, 4), num_classes=5, dim=24, depth=1, heads=2, mlp_dim=32,
                 dim_head=12, channels=1),
            dict(image_size=16, patch_size=4, num_classes=0, dim=16, depth=2, heads=1, mlp_dim=32, dim_head=16,
                 channels=2),
        ),
        notes='fixed 2D sin-cos position embedding, mean pooling',
        random_configuration=random_configuration,
        sweep_draws=12,
    ),
}
