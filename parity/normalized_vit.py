"""Parity with vit_pytorch.normalized_vit: the test configurations and random-configuration sweep of
`normalized_vit.nViT`."""

import numpy as np

from parity.spec import Spec


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random nViT (rectangular or square images, an explicit interpolation init sometimes) and inputs up to
    image_size: smaller ones take the first rows of the position embedding."""
    patch = int(rng.integers(1, 5))
    grid = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    config = dict(image_size=(grid[0] * patch, grid[1] * patch), patch_size=patch, num_classes=int(rng.integers(0, 5)),
                  dim=int(rng.integers(2, 25)), depth=int(rng.integers(1, 3)), heads=int(rng.integers(1, 4)),
                  mlp_dim=int(rng.integers(2, 40)), channels=int(rng.integers(1, 4)),
                  dim_head=int(rng.integers(1, 12)))
    if rng.random() < 0.3:
        config['residual_lerp_scale_init'] = float(rng.uniform(0.05, 1.0))
    if rng.random() < 0.3 and grid[0] == grid[1]:
        config['image_size'] = grid[0] * patch
    input_grid = tuple(int(rng.integers(1, g + 1)) for g in grid)
    shape = (2, input_grid[0] * patch, input_grid[1] * patch, config['channels'])
    return config, (rng.standard_normal(shape, dtype=np.float32),)


SPECS = {
    'nViT': Spec(
        configs=(
            dict(image_size=16, patch_size=4, num_classes=10, dim=32, depth=1, heads=2, mlp_dim=48, dim_head=8),
            dict(image_size=(12, 20), patch_size=4, num_classes=3, dim=24, depth=1, heads=1, mlp_dim=32, dim_head=24,
                 channels=1, residual_lerp_scale_init=0.3),
            dict(image_size=8, patch_size=2, num_classes=4, dim=16, depth=2, heads=3, mlp_dim=20, dim_head=5,
                 channels=2),
        ),
        notes='tokens and NormLinear weights on the unit sphere (raw weights stored as torch parametrize does, '
              'normalised in the forward), lerp residuals, SwiGLU',
        random_configuration=random_configuration,
        sweep_draws=8,
    ),
}
