"""Parity with vit_pytorch.simple_vit_with_fft: the test configurations and random-configuration sweep of
`simple_vit_with_fft.SimpleViT`."""

import numpy as np

from parity.spec import Spec
from parity.vit import random_plain_vit_keywords


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random SimpleViT with an FFT branch whose frequency patches tile the image in another grid, on images of
    image_size."""
    config, patch, grid = random_plain_vit_keywords(rng)
    height, width = grid[0] * patch[0], grid[1] * patch[1]
    divisors = lambda n: [d for d in range(1, n + 1) if n % d == 0]  # noqa: E731
    config['freq_patch_size'] = (int(rng.choice(divisors(height))), int(rng.choice(divisors(width))))
    shape = (2, height, width, config['channels'])
    return config, (rng.standard_normal(shape, dtype=np.float32),)


SPECS = {
    'SimpleViT': Spec(
        configs=(
            dict(image_size=16, patch_size=8, freq_patch_size=4, num_classes=5, dim=16, depth=1, heads=2, mlp_dim=32,
                 dim_head=8),
            dict(image_size=(24, 16), patch_size=(8, 4), freq_patch_size=(6, 8), num_classes=0, dim=24, depth=2,
                 heads=3, mlp_dim=16, dim_head=4, channels=1),
            dict(image_size=8, patch_size=2, freq_patch_size=8, num_classes=3, dim=8, depth=1, heads=1, mlp_dim=8,
                 dim_head=8, channels=2),
        ),
        notes='SimpleViT attending over 2D FFT patch tokens (own embedding and sin-cos table) beside the pixel '
              'patches; pools the pixel tokens',
        random_configuration=random_configuration,
        sweep_draws=6,
    ),
}
