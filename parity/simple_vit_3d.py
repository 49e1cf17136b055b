"""Parity with vit_pytorch.simple_vit_3d: the test configurations and random-configuration sweep of
`simple_vit_3d.SimpleViT`."""

import numpy as np

from parity.spec import Spec


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random video SimpleViT (patch and frame patch sizes, int or pair sizes, dims outside 6..11 that vit-pytorch
    accepts, small ones padding the embedding, channels, heads, classes) and videos of any divisible size: the
    sin-cos embedding follows the input's own patch grid."""
    patch = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
    grid = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    frame_patch, frame_grid = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    dim = int(rng.choice([int(rng.integers(1, 6)), int(rng.integers(12, 41))], p=[0.15, 0.85]))
    config = dict(image_size=(patch[0] * grid[0], patch[1] * grid[1]), image_patch_size=patch,
                  frames=frame_patch * frame_grid, frame_patch_size=frame_patch, num_classes=int(rng.integers(0, 5)),
                  dim=dim, depth=int(rng.integers(1, 3)), heads=int(rng.integers(1, 4)),
                  mlp_dim=int(rng.integers(1, 40)), channels=int(rng.integers(1, 4)), dim_head=int(rng.integers(1, 12)))
    if rng.random() < 0.3:  # plain ints, as most users write them
        patch = (patch[0], patch[0])
        config.update(image_size=patch[0] * grid[0], image_patch_size=patch[0])
    frames, rows, columns = (int(rng.integers(1, 4)) for _ in range(3))
    shape = (2, frames * frame_patch, rows * patch[0], columns * patch[1], config['channels'])
    return config, (rng.standard_normal(shape, dtype=np.float32),)


SPECS = {
    'SimpleViT': Spec(
        configs=(
            dict(image_size=16, image_patch_size=8, frames=4, frame_patch_size=2, num_classes=10, dim=24, depth=2,
                 heads=4, mlp_dim=64, dim_head=8),
            # dim 32: dim // 6 = 5 frequencies per axis and 2 zero-padded features
            dict(image_size=(8, 12), image_patch_size=(4, 6), frames=3, frame_patch_size=3, num_classes=5, dim=32,
                 depth=1, heads=2, mlp_dim=32, dim_head=12, channels=1),
            dict(image_size=(4, 8), image_patch_size=(2, 4), frames=2, frame_patch_size=1, num_classes=3, dim=12,
                 depth=2, heads=1, mlp_dim=16, dim_head=12, channels=2),
        ),
        notes='fixed 3D sin-cos position embedding from the input\'s own patch grid (any divisible size), '
              'mean pooling',
        random_configuration=random_configuration,
        sweep_draws=6,
    ),
}
