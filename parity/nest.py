"""Parity with vit_pytorch.nest: the test configurations and random-configuration sweep of `nest.NesT`."""

import numpy as np

from parity.spec import Spec


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random NesT (1 to 3 hierarchies, patch and block sizes, heads with widths not a multiple of them, block
    repeats with 0, channels) and images of image_size."""
    num_hierarchies = int(rng.integers(1, 4))
    patch_size = int(rng.integers(1, 4 - num_hierarchies // 2))
    per_block = int(rng.integers(1, 3))
    heads = int(rng.integers(1, 4))
    config = dict(
        image_size=patch_size * per_block * 2 ** (num_hierarchies - 1), patch_size=patch_size,
        num_classes=int(rng.integers(1, 6)), dim=int(rng.integers(heads, 13)), heads=heads,
        num_hierarchies=num_hierarchies, mlp_mult=int(rng.integers(1, 4)), channels=int(rng.integers(1, 4)),
        block_repeats=tuple(int(d) for d in rng.integers(0, 2, num_hierarchies)) if rng.random() < 0.5 else 1,
    )
    shape = (2, config['image_size'], config['image_size'], config['channels'])
    return config, (rng.standard_normal(shape, dtype=np.float32),)


SPECS = {
    'NesT': Spec(
        configs=(
            dict(image_size=16, patch_size=4, num_classes=10, dim=16, heads=2, num_hierarchies=2, block_repeats=1),
            dict(image_size=16, patch_size=2, num_classes=7, dim=12, heads=3, num_hierarchies=3,
                 block_repeats=(1, 2, 1), mlp_mult=2, channels=1, dim_head=5),
            dict(image_size=8, patch_size=2, num_classes=3, dim=20, heads=3, num_hierarchies=1, block_repeats=2,
                 channels=2, dropout=0.1),
        ),
        notes='hierarchies of local transformers over blocks, block aggregation (conv, channel LayerNorm, max pool); '
              '`dim_head` ignored (dim // heads); int image_size',
        random_configuration=random_configuration,
    ),
}
