"""Parity with vit_pytorch.simple_vit_with_register_tokens: the test configurations and random-configuration sweep
of `simple_vit_with_register_tokens.SimpleViT`."""

import numpy as np

from parity.simple_vit import random_configuration as random_simple_vit
from parity.spec import Spec


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random SimpleViT (images of image_size) with 0 to 5 register tokens."""
    config, inputs = random_simple_vit(rng)
    return {**config, 'num_register_tokens': int(rng.integers(0, 6))}, inputs


SPECS = {
    'SimpleViT': Spec(
        configs=(
            dict(image_size=16, patch_size=4, num_classes=10, dim=32, depth=1, heads=4, mlp_dim=32, dim_head=8),
            dict(image_size=(24, 16), patch_size=(8, 4), num_classes=5, dim=24, depth=2, heads=2, mlp_dim=32,
                 dim_head=12, channels=1, num_register_tokens=1),
            dict(image_size=16, patch_size=4, num_classes=0, dim=16, depth=2, heads=1, mlp_dim=16, dim_head=16,
                 channels=2, num_register_tokens=0),
        ),
        notes='`num_register_tokens` learned tokens after the patches, dropped before the mean pooling',
        random_configuration=random_configuration,
        sweep_draws=6,
    ),
}
