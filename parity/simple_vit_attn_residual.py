"""Parity with vit_pytorch.simple_vit_attn_residual: the test configurations and random-configuration sweep of
`simple_vit_attn_residual.SimpleViTAttnResidual`."""

import numpy as np

from parity.spec import Spec
from parity.vit import random_plain_vit_keywords


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random model of either query kind and images of image_size (its fixed position embedding takes no other
    patch count)."""
    config, patch, grid = random_plain_vit_keywords(rng)
    config['learned_query'] = bool(rng.random() < 0.5)
    shape = (2, grid[0] * patch[0], grid[1] * patch[1], config['channels'])
    return config, (rng.standard_normal(shape, dtype=np.float32),)


SPECS = {
    'SimpleViTAttnResidual': Spec(
        configs=(
            # one layer: its attention residual is disabled, its feed-forward's pools over two entries
            dict(image_size=16, patch_size=8, num_classes=5, dim=16, depth=1, heads=2, mlp_dim=32, dim_head=8),
            dict(image_size=(24, 16), patch_size=(8, 4), num_classes=3, dim=24, depth=3, heads=3, mlp_dim=16,
                 dim_head=6, channels=1, learned_query=False),
            dict(image_size=8, patch_size=4, num_classes=0, dim=8, depth=0, heads=1, mlp_dim=8, dim_head=8,
                 channels=2),
        ),
        notes='each block reads an attention pool over all earlier outputs (learned or latest query); '
              '`return_history` / `history`',
        random_configuration=random_configuration,
        sweep_draws=6,
    ),
}
