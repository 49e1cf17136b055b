"""Parity with vit_pytorch.vit: the test configurations and random-configuration sweep of `vit.ViT`."""

import numpy as np

from parity.spec import Spec


def random_plain_vit_keywords(rng: np.random.Generator) -> tuple[dict, tuple[int, int], tuple[int, int]]:
    """The keywords vit.ViT and simple_vit.SimpleViT share, drawn at random (rectangular or int patches and grids,
    channels, heads, dim_head == dim for one head sometimes, class counts with 0), with the patch size and the patch
    grid of image_size as (height, width) pairs."""
    patch = (int(rng.integers(1, 6)), int(rng.integers(1, 6)))
    grid = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
    heads = int(rng.integers(1, 4))
    dim = 4 * int(rng.integers(2, 7))  # SimpleViT's sin-cos embedding needs a multiple of 4
    config = dict(image_size=(patch[0] * grid[0], patch[1] * grid[1]), patch_size=patch,
                  num_classes=int(rng.integers(0, 5)), dim=dim, depth=int(rng.integers(1, 3)), heads=heads,
                  mlp_dim=int(rng.integers(1, 40)), channels=int(rng.integers(1, 4)),
                  dim_head=dim if heads == 1 and rng.random() < 0.5 else int(rng.integers(1, 12)))
    if rng.random() < 0.3:  # plain ints, as most users write them
        patch, grid = (patch[0], patch[0]), (grid[0], grid[0])
        config.update(image_size=patch[0] * grid[0], patch_size=patch[0])
    return config, patch, grid


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random ViT (both pools) and images up to image_size: smaller inputs slice the position embedding."""
    config, patch, grid = random_plain_vit_keywords(rng)
    config['pool'] = str(rng.choice(['cls', 'mean']))
    input_grid = tuple(int(rng.integers(1, g + 1)) for g in grid)
    shape = (2, input_grid[0] * patch[0], input_grid[1] * patch[1], config['channels'])
    return config, (rng.standard_normal(shape, dtype=np.float32),)


SPECS = {
    'ViT': Spec(
        configs=(
            dict(image_size=32, patch_size=8, num_classes=10, dim=32, depth=2, heads=4, mlp_dim=64, dim_head=8),
            dict(image_size=(24, 40), patch_size=(8, 4), num_classes=7, dim=24, depth=1, heads=2, mlp_dim=32,
                 dim_head=12, channels=1, pool='mean'),
            dict(image_size=16, patch_size=4, num_classes=3, dim=16, depth=2, heads=1, mlp_dim=32, dim_head=16,
                 channels=2),
            dict(image_size=(16, 24), patch_size=(4, 8), num_classes=0, dim=16, depth=1, heads=2, mlp_dim=16,
                 dim_head=4),
        ),
        notes='pool cls/mean; `num_classes=0` returns tokens; smaller inputs slice the position embedding',
        random_configuration=random_configuration,
        sweep_draws=12,
    ),
}
