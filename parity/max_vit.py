"""Parity with vit_pytorch.max_vit: the test configurations and random-configuration sweep of `max_vit.MaxViT`."""

import numpy as np

from parity.spec import Spec


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random MaxViT (stage counts and depths, windows, heads, stem width, MBConv rates, dropout, channels,
    classes) and images whose every stage map the window divides."""
    dim_head = int(rng.choice([2, 4, 8]))
    num_stages = int(rng.choice([1, 1, 2, 3]))
    window = int(rng.integers(1, 4))
    config = dict(
        num_classes=int(rng.integers(0, 5)), dim=dim_head * int(rng.integers(1, 4)), dim_head=dim_head,
        depth=tuple(int(rng.integers(1, 3)) if i == 0 else 1 for i in range(num_stages)), window_size=window,
        dim_conv_stem=None if rng.random() < 0.5 else int(rng.integers(2, 12)),
        mbconv_expansion_rate=float(rng.choice([1, 1.5, 2, 4])), mbconv_shrinkage_rate=float(rng.choice([0.25, 0.5])),
        dropout=float(rng.choice([0.0, 0.1])), channels=int(rng.integers(1, 4)),
    )
    # stride 2 rounds up, so one pixel less than a multiple of 2^(stages + 1) * window still divides
    size = tuple(int(window * rng.integers(1, 3) * 2 ** (num_stages + 1) - rng.integers(0, 2)) for _ in range(2))
    return config, (rng.standard_normal((2, *size, config['channels']), dtype=np.float32),)


SPECS = {
    'MaxViT': Spec(
        # (32, 64) -> stem 16 x 32 -> stages 8 x 16, 4 x 8; windows of one pixel (no gradient for the queries,
        # keys and position bias), three stages and other sizes are tested in tests/test_max_vit.py
        configs=(
            dict(num_classes=10, dim=16, depth=(1, 1), dim_head=8, window_size=2, dropout=0.0),
            dict(num_classes=7, dim=24, depth=(2,), dim_head=8, window_size=4, dim_conv_stem=12,
                 mbconv_expansion_rate=2, mbconv_shrinkage_rate=0.5, channels=1),
            dict(num_classes=3, dim=16, depth=(1,), dim_head=16, window_size=8, mbconv_expansion_rate=1.5,
                 channels=2),
        ),
        notes='conv stem; MBConv (BatchNorm, depth-wise conv, squeeze-excitation) + block and grid window attention '
              'with relative position bias per block; any image size whose feature maps the window size divides',
        random_configuration=random_configuration,
    ),
}
