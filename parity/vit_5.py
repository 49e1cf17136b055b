"""Parity with vit_pytorch.vit_5: the test configurations and random-configuration sweep of `vit_5.ViT`."""

import numpy as np

from parity.spec import Spec


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random ViT-5 on a square patch grid (its rotary table needs one) of rectangular or int patches, with or
    without registers, heads with dim_head == dim sometimes, and square inputs up to image_size (smaller ones slice
    the position embedding)."""
    patch = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
    side = int(rng.integers(1, 5))
    heads = int(rng.integers(1, 4))
    dim = 4 * int(rng.integers(1, 7))
    config = dict(image_size=(side * patch[0], side * patch[1]), patch_size=patch, num_classes=int(rng.integers(0, 5)),
                  dim=dim, depth=int(rng.integers(1, 3)), heads=heads, mlp_dim=int(rng.integers(1, 40)),
                  channels=int(rng.integers(1, 4)), num_registers=int(rng.integers(0, 5)),
                  dim_head=dim if heads == 1 and rng.random() < 0.5 else 4 * int(rng.integers(1, 4)))
    if rng.random() < 0.3:  # plain ints
        patch = (patch[0], patch[0])
        config.update(image_size=side * patch[0], patch_size=patch[0])
    input_side = int(rng.integers(1, side + 1))
    shape = (2, input_side * patch[0], input_side * patch[1], config['channels'])
    return config, (rng.standard_normal(shape, dtype=np.float32),)


SPECS = {
    'ViT': Spec(
        configs=(
            dict(image_size=16, patch_size=4, num_classes=10, dim=32, depth=1, heads=2, mlp_dim=32, dim_head=8,
                 num_registers=2),
            dict(image_size=(16, 32), patch_size=(4, 8), num_classes=3, dim=16, depth=2, heads=1, mlp_dim=24,
                 dim_head=16, channels=1),
            dict(image_size=12, patch_size=4, num_classes=0, dim=24, depth=2, heads=3, mlp_dim=16, dim_head=4,
                 num_registers=0, channels=2),
        ),
        notes='RMSNorm, q/k norm, layer scale, register tokens, 2D axial rotary embeddings (square patch grids only); '
              '`num_classes=0` returns tokens',
        random_configuration=random_configuration,
        sweep_draws=8,
    ),
}
