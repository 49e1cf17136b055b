"""Parity with vit_pytorch.simple_vit_with_hyper_connections: the test configurations and random-configuration sweep
of `simple_vit_with_hyper_connections.SimpleViT`."""

import numpy as np

from parity.spec import Spec
from parity.vit import random_plain_vit_keywords


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random SimpleViT with one to four residual streams and zero to three register tokens, and images of
    image_size (its fixed position embedding takes no other patch count)."""
    config, patch, grid = random_plain_vit_keywords(rng)
    config.update(num_residual_streams=int(rng.integers(1, 5)), num_register_tokens=int(rng.integers(0, 4)))
    shape = (2, grid[0] * patch[0], grid[1] * patch[1], config['channels'])
    return config, (rng.standard_normal(shape, dtype=np.float32),)


SPECS = {
    'SimpleViT': Spec(
        configs=(
            # two streams and two registers (tests/test_simple_vit_with_hyper_connections.py checks how each layer's
            # static_alpha starts, and deeper stacks)
            dict(image_size=16, patch_size=8, num_classes=5, dim=16, depth=1, heads=2, mlp_dim=32, dim_head=8,
                 num_residual_streams=2, num_register_tokens=2),
            dict(image_size=(24, 16), patch_size=(8, 4), num_classes=3, dim=24, depth=3, heads=3, mlp_dim=16,
                 dim_head=6, channels=1, num_residual_streams=3),
            dict(image_size=8, patch_size=4, num_classes=0, dim=8, depth=1, heads=1, mlp_dim=8, dim_head=8,
                 channels=2, num_residual_streams=1, num_register_tokens=0),
        ),
        notes='residual stream widened to `num_residual_streams`, mixed by dynamic hyper-connections; register '
              'tokens; fixed 2D sin-cos position embedding, mean pooling',
        random_configuration=random_configuration,
        sweep_draws=6,
    ),
}
