"""Parity with vit_pytorch.simple_uvit: the test configurations and random-configuration sweep of
`simple_uvit.SimpleUViT`."""

import numpy as np

from parity.spec import Spec
from parity.vit import random_plain_vit_keywords


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random SimpleUViT of one to five layers (odd depths have a middle layer without a skip), with zero to three
    register tokens, on images of image_size."""
    config, patch, grid = random_plain_vit_keywords(rng)
    config.update(depth=int(rng.integers(1, 6)), num_register_tokens=int(rng.integers(0, 4)))
    shape = (2, grid[0] * patch[0], grid[1] * patch[1], config['channels'])
    return config, (rng.standard_normal(shape, dtype=np.float32),)


SPECS = {
    'SimpleUViT': Spec(
        configs=(
            # depth 3: a layer that keeps its input, a middle layer, a layer that takes it back
            dict(image_size=16, patch_size=8, num_classes=5, dim=16, depth=3, heads=2, mlp_dim=32, dim_head=8,
                 num_register_tokens=2),
            dict(image_size=(24, 16), patch_size=(8, 4), num_classes=0, dim=24, depth=4, heads=3, mlp_dim=16,
                 dim_head=4, channels=1),
            dict(image_size=8, patch_size=4, num_classes=3, dim=8, depth=1, heads=1, mlp_dim=8, dim_head=8,
                 channels=2, num_register_tokens=0),
        ),
        notes='U-ViT long skips (first half kept, concatenated and projected in the second half), register tokens, '
              'fixed 2D sin-cos position embedding',
        random_configuration=random_configuration,
        sweep_draws=6,
    ),
}
