"""Parity with vit_pytorch.mobile_vit: the test configurations and random-configuration sweep of
`mobile_vit.MobileViT`."""

import numpy as np

from parity.spec import Spec


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random MobileViT (stage widths, odd ones too, for the depth-wise convs; fractional expansion, patch shapes,
    depths with 0, image sizes) and RGB images of image_size."""
    c = [int(v) for v in rng.integers(2, 9, 7)]
    channels = (c[0], c[1], c[2], c[2], c[3], c[3], c[4], c[4], c[5], c[5], c[6])
    patch = tuple(int(v) for v in rng.integers(1, 3, 2))
    image_size = (32 * patch[0] * int(rng.integers(1, 3)), 32 * patch[1] * int(rng.integers(1, 3)))
    config = dict(image_size=image_size, dims=tuple(int(v) for v in rng.integers(2, 13, 3)), channels=channels,
                  num_classes=int(rng.integers(1, 6)), expansion=float(rng.choice([1, 1.5, 2])), patch_size=patch,
                  depths=tuple(int(v) for v in rng.integers(0, 2, 3)))
    return config, (rng.standard_normal((2, *image_size, 3), dtype=np.float32),)


SPECS = {
    'MobileViT': Spec(
        # the last MobileViT block sees a 1/32 map: every config keeps >= 2 tokens per patch position there
        configs=(
            dict(image_size=(64, 64), dims=(8, 12, 16), channels=(4, 4, 8, 8, 8, 8, 12, 12, 16, 16, 24),
                 num_classes=5, expansion=2, patch_size=(1, 1), depths=(1, 1, 1)),
            dict(image_size=(64, 128), dims=(12, 8, 20), channels=(8, 8, 6, 6, 8, 8, 10, 10, 12, 12, 16),
                 num_classes=3, expansion=1, depths=(1, 2, 1)),
            dict(image_size=(128, 32), dims=(16, 8, 12), channels=(4, 6, 6, 6, 8, 8, 8, 8, 12, 12, 20),
                 num_classes=7, expansion=1.5, patch_size=(2, 1), depths=(2, 1, 1)),
        ),
        notes='MobileNetV2 blocks (BatchNorm, SiLU, depth-wise convs) + unfold / transformer / fold blocks; '
              '`channels` are stage widths, input is always RGB; 4 heads of 8 dims fixed',
        random_configuration=random_configuration,
        sweep_draws=6,
    ),
}
