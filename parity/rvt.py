"""Parity with vit_pytorch.rvt: the test configurations and random-configuration sweep of `rvt.RvT`."""

import numpy as np

from parity.spec import Spec


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random RvT (every switch, dim_head not a multiple of 4 sometimes: partial rotation, inner width equal to
    dim sometimes: no class-token projection) and an input of any patch grid it takes: square with rotary
    embeddings, any without, smaller or larger than image_size (only the rotary scales depend on it)."""
    patch = int(rng.integers(1, 5))
    heads = int(rng.integers(1, 4))
    dim_head = int(rng.integers(1, 11))
    dim = heads * dim_head if rng.random() < 0.3 else int(rng.integers(2, 25))
    config = dict(image_size=patch * int(rng.integers(1, 5)), patch_size=patch, num_classes=int(rng.integers(0, 5)),
                  dim=dim, depth=int(rng.integers(1, 3)), heads=heads, mlp_dim=int(rng.integers(1, 33)),
                  channels=int(rng.integers(1, 4)), dim_head=dim_head, use_rotary=bool(rng.random() < 0.7),
                  use_ds_conv=bool(rng.random() < 0.7), use_glu=bool(rng.random() < 0.7))
    rows = int(rng.integers(1, 6))
    columns = rows if config['use_rotary'] else int(rng.integers(1, 6))
    shape = (2, rows * patch, columns * patch, config['channels'])
    return config, (rng.standard_normal(shape, dtype=np.float32),)


SPECS = {
    'RvT': Spec(
        configs=(
            dict(image_size=16, patch_size=4, num_classes=10, dim=32, depth=1, heads=2, mlp_dim=32, dim_head=8),
            dict(image_size=24, patch_size=8, num_classes=3, dim=12, depth=2, heads=2, mlp_dim=24, dim_head=6,
                 channels=1, use_glu=False),
            dict(image_size=12, patch_size=4, num_classes=0, dim=16, depth=2, heads=1, mlp_dim=16, dim_head=16,
                 channels=2, use_rotary=False, use_ds_conv=False),
        ),
        notes='2D axial rotary embeddings (square patch grids), depth-wise conv queries, GEGLU; `emb_dropout` unused; '
              'any input size that divides into patches',
        random_configuration=random_configuration,
        sweep_draws=8,
    ),
}
