"""Parity with vit_pytorch.vit_detpool: the test configurations and random-configuration sweep of
`vit_detpool.ViTDetPool`."""

import numpy as np

from parity.spec import Spec
from parity.vit import random_plain_vit_keywords


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random ViTDetPool (with and without class token, class counts with 0) and images up to image_size with a
    pixel mask, a (batch, n) patch mask, a (batch, rows, columns) patch mask, or an empty mask for one image."""
    config, patch, grid = random_plain_vit_keywords(rng)
    config['use_cls_token'] = bool(rng.random() < 0.7)
    input_grid = tuple(int(rng.integers(1, g + 1)) for g in grid)
    shape = (2, input_grid[0] * patch[0], input_grid[1] * patch[1], config['channels'])
    images = rng.standard_normal(shape, dtype=np.float32)
    kind = int(rng.integers(0, 4))
    if kind == 0:
        mask = rng.random(shape[:3]) < 0.2
    elif kind == 1:
        mask = rng.random((2, input_grid[0] * input_grid[1])) < 0.5
    elif kind == 2:
        mask = rng.random((2, *input_grid)) < 0.5
    else:
        mask = np.zeros(shape[:3], bool)
        mask[1, : patch[0], : patch[1]] = True  # image 0 has no object
    return config, (images, mask)


SPECS = {
    'ViTDetPool': Spec(
        configs=(
            dict(image_size=16, patch_size=4, num_classes=10, dim=32, depth=1, heads=4, mlp_dim=32, dim_head=8),
            dict(image_size=(24, 16), patch_size=(8, 4), num_classes=5, dim=24, depth=2, heads=2, mlp_dim=32,
                 dim_head=12, channels=1, use_cls_token=False),
            dict(image_size=16, patch_size=4, num_classes=0, dim=16, depth=2, heads=1, mlp_dim=16, dim_head=16,
                 channels=2),
        ),
        notes='object mask (pixels or patches) hides keys from the attention and restricts the mean pooling; '
              '`num_classes=0` returns tokens; `mask_generator` a JAX callable',
        random_configuration=random_configuration,
        sweep_draws=8,
    ),
}
