"""Parity with vit_pytorch.deepvit: the test configurations and random-configuration sweep of `deepvit.DeepViT`."""

import numpy as np

from parity.spec import Spec


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random DeepViT (int patch and image sizes, any dim, channels, heads, dim_head, both pools, class counts
    with 0) and images up to image_size, of any shape."""
    patch, grid = int(rng.integers(1, 6)), int(rng.integers(1, 5))
    config = dict(image_size=patch * grid, patch_size=patch, num_classes=int(rng.integers(0, 5)),
                  dim=int(rng.integers(2, 25)), depth=int(rng.integers(1, 3)), heads=int(rng.integers(1, 6)),
                  mlp_dim=int(rng.integers(1, 40)), channels=int(rng.integers(1, 4)),
                  dim_head=int(rng.integers(1, 12)), pool=str(rng.choice(['cls', 'mean'])))
    input_grid = (int(rng.integers(1, grid + 1)), int(rng.integers(1, grid + 1)))
    shape = (2, input_grid[0] * patch, input_grid[1] * patch, config['channels'])
    return config, (rng.standard_normal(shape, dtype=np.float32),)


SPECS = {
    'DeepViT': Spec(
        configs=(
            dict(image_size=16, patch_size=4, num_classes=10, dim=32, depth=2, heads=4, mlp_dim=64, dim_head=8),
            dict(image_size=24, patch_size=8, num_classes=7, dim=24, depth=1, heads=3, mlp_dim=32, dim_head=12,
                 channels=1, pool='mean'),
            # heads=1 (reattn_weights then gets no gradient) is tested in tests/test_deepvit.py
            dict(image_size=16, patch_size=4, num_classes=3, dim=16, depth=3, heads=2, mlp_dim=32, dim_head=16,
                 channels=2),
            dict(image_size=12, patch_size=2, num_classes=5, dim=20, depth=2, heads=5, mlp_dim=16, dim_head=4,
                 pool='mean'),
        ),
        notes='re-attention (learned head mixing + LayerNorm over heads); square int sizes; pool cls/mean',
        random_configuration=random_configuration,
    ),
}
