"""Parity with vit_pytorch.vit_for_small_dataset: the test configurations of `vit_for_small_dataset.ViT` (and its
random-configuration sweep), `vit_for_small_dataset.SPT`."""

import numpy as np

from parity.spec import Spec


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random ViT for small datasets (int patch size, as vit-pytorch takes it; rectangular or int image_size,
    channels, heads, dim_head == dim for one head sometimes, both pools) and images up to image_size."""
    patch = int(rng.integers(1, 5))
    grid = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
    heads = int(rng.integers(1, 5))
    dim = int(rng.integers(4, 25))
    if rng.random() < 0.6:
        image_size = (patch * grid[0], patch * grid[1])
    else:  # a plain int, as most users write it
        grid = (grid[0], grid[0])
        image_size = patch * grid[0]
    config = dict(image_size=image_size, patch_size=patch, num_classes=int(rng.integers(1, 6)), dim=dim,
                  depth=int(rng.integers(1, 3)), heads=heads, mlp_dim=int(rng.integers(1, 40)),
                  channels=int(rng.integers(1, 4)), pool=str(rng.choice(['cls', 'mean'])),
                  dim_head=dim if heads == 1 and rng.random() < 0.3 else int(rng.integers(1, 12)))
    input_grid = tuple(int(rng.integers(1, g + 1)) for g in grid)
    shape = (2, input_grid[0] * patch, input_grid[1] * patch, config['channels'])
    return config, (rng.standard_normal(shape, dtype=np.float32),)


SPECS = {
    'ViT': Spec(
        configs=(
            dict(image_size=32, patch_size=8, num_classes=10, dim=32, depth=2, heads=4, mlp_dim=64, dim_head=8),
            dict(image_size=(24, 40), patch_size=8, num_classes=7, dim=24, depth=1, heads=3, mlp_dim=32,
                 dim_head=12, channels=1, pool='mean'),
            dict(image_size=16, patch_size=4, num_classes=3, dim=16, depth=2, heads=1, mlp_dim=32, dim_head=16,
                 channels=2),
            dict(image_size=(6, 10), patch_size=2, num_classes=5, dim=20, depth=1, heads=5, mlp_dim=16,
                 dim_head=4, dropout=0.1, emb_dropout=0.1),
        ),
        notes='shifted patch tokens (SPT), locality self-attention (learned temperature, no self-attention); '
              'int patch_size only; mean pooling includes the cls token',
        random_configuration=random_configuration,
    ),
    'SPT': Spec(
        configs=(
            dict(dim=32, patch_size=4),
            dict(dim=12, patch_size=3, channels=1),
            dict(dim=20, patch_size=1, channels=2),
        ),
        notes='the shifted patch tokenizer alone: images (b, H, W, c) -> tokens (b, n, dim)',
        no_random_configuration="the tokenizer alone: vit_for_small_dataset.ViT's sweep runs it on random patch "
                                'sizes, channels, widths and input sizes',
    ),
}
