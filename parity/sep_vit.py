"""Parity with vit_pytorch.sep_vit: the test configurations and random-configuration sweep of `sep_vit.SepViT`."""

import numpy as np

from parity.spec import Spec


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random SepViT (1 to 3 stages and their depths, head counts per stage, widths, channels, classes, the
    ignored window_size and dim_head) and images whose every stage map is a multiple of 7 (one or more windows): the
    last stage has 7a x 7b pixels, each earlier one twice as many per side, the image ceil-divides by 4."""
    num_stages = int(rng.integers(1, 4))
    heads = tuple(int(h) for h in rng.integers(1, 4, num_stages))
    config = dict(
        num_classes=int(rng.integers(0, 5)),
        dim=int(rng.integers(2, 9)),
        depth=tuple(int(d) for d in rng.random(num_stages) < 0.7),  # 0 or 1 layers: each costs compile time
        heads=heads if rng.random() < 0.5 else heads[0],
        ff_mult=float(rng.choice([0.5, 1, 2])),
        channels=int(rng.integers(1, 4)),
        window_size=int(rng.integers(1, 9)),  # ignored, as in torch
        dim_head=int(rng.integers(1, 9)),  # ignored, as in torch
    )
    windows = rng.integers(1, 3, 2) if num_stages < 3 else (1, 1)  # images up to 112 x 112
    size = tuple(int(4 * 7 * w * 2 ** (num_stages - 1) - rng.integers(0, 4)) for w in windows)
    return config, (rng.standard_normal((2, *size, config['channels']), dtype=np.float32),)


SPECS = {
    'SepViT': Spec(
        # vit-pytorch's DSSA always uses 7 x 7 windows: 28 x 28 per stage gives one window in the last stage and
        # 2 x 2, 4 x 4 ... windows before it, so both the early return and the point-wise attention are compared
        configs=(
            dict(num_classes=10, dim=16, depth=(1, 1), heads=(1, 2)),
            dict(num_classes=5, dim=24, depth=(2,), heads=3, channels=1, ff_mult=2, dim_head=16, window_size=4),
            dict(num_classes=3, dim=8, depth=(1, 0, 1), heads=(2, 1, 1), ff_mult=1.5, dropout=0.1,
                 window_size=(7, 5, 3)),
        ),
        notes='overlapping conv patch embedding + PEG per stage; depth-wise (windowed, with window tokens) then '
              'point-wise (among windows) attention; always 7 x 7 windows and dim_head 32 (`window_size` and '
              '`dim_head` are ignored, as in vit-pytorch); `depth` is a tuple',
        random_configuration=random_configuration,
    ),
}
