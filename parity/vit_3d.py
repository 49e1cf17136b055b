"""Parity with vit_pytorch.vit_3d: the test configurations and random-configuration sweep of `vit_3d.ViT`."""

import numpy as np

from parity.spec import Spec


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random video ViT (patch and frame patch sizes, int or pair sizes, channels, heads, dim_head, pools, classes)
    and videos up to its frames and image size: smaller inputs slice the position embedding."""
    patch = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
    grid = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    frame_patch, frame_grid = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    heads = int(rng.integers(1, 4))
    dim = int(rng.integers(4, 25))
    config = dict(image_size=(patch[0] * grid[0], patch[1] * grid[1]), image_patch_size=patch,
                  frames=frame_patch * frame_grid, frame_patch_size=frame_patch, num_classes=int(rng.integers(0, 5)),
                  dim=dim, depth=int(rng.integers(1, 3)), heads=heads, mlp_dim=int(rng.integers(1, 40)),
                  pool=str(rng.choice(['cls', 'mean'])), channels=int(rng.integers(1, 4)),
                  dim_head=dim if heads == 1 and rng.random() < 0.5 else int(rng.integers(1, 12)))
    if rng.random() < 0.3:  # plain ints, as most users write them
        patch, grid = (patch[0], patch[0]), (grid[0], grid[0])
        config.update(image_size=patch[0] * grid[0], image_patch_size=patch[0])
    frames, rows, columns = (int(rng.integers(1, g + 1)) for g in (frame_grid, *grid))
    shape = (2, frames * frame_patch, rows * patch[0], columns * patch[1], config['channels'])
    return config, (rng.standard_normal(shape, dtype=np.float32),)


SPECS = {
    'ViT': Spec(
        configs=(
            dict(image_size=16, image_patch_size=8, frames=4, frame_patch_size=2, num_classes=10, dim=32, depth=2,
                 heads=4, mlp_dim=64, dim_head=8),
            dict(image_size=(8, 12), image_patch_size=(4, 6), frames=3, frame_patch_size=1, num_classes=7, dim=24,
                 depth=1, heads=2, mlp_dim=32, dim_head=12, channels=1, pool='mean'),
            # a single head with dim_head == dim: no attention output projection
            dict(image_size=8, image_patch_size=4, frames=4, frame_patch_size=4, num_classes=3, dim=16, depth=2,
                 heads=1, mlp_dim=32, dim_head=16, channels=2, dropout=0.1, emb_dropout=0.1),
        ),
        notes='tokens (f h w), patches (pf p1 p2 c); always a cls token (averaged in by pool="mean"); '
              'LayerNorm in the head, not the transformer; smaller inputs slice the position embedding',
        random_configuration=random_configuration,
        sweep_draws=6,
    ),
}
