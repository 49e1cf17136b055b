"""Parity with vit_pytorch.levit: the test configurations and random-configuration sweep of `levit.LeViT`."""

import numpy as np

from parity.spec import Spec


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random LeViT (1 to 3 stages, per-stage or shared widths, depths and heads, key and value widths, with or
    without a distillation head; feature maps of 1 to 3 tokens a side, so multi-token attention too) and RGB images
    of any side that gives its feature map."""
    stages = int(rng.integers(1, 4))
    fmap = int(rng.integers(1, 4))

    def per_stage(choices):
        values = tuple(int(v) for v in rng.choice(choices, size=int(rng.integers(1, stages + 1))))
        return values[0] if len(values) == 1 and rng.random() < 0.5 else values

    config = dict(
        image_size=16 * fmap,
        num_classes=int(rng.integers(1, 8)),
        dim=per_stage([8, 12, 16]),
        depth=per_stage([1, 1, 2]),
        heads=per_stage([1, 2, 3]),
        mlp_mult=int(rng.integers(1, 4)),
        stages=stages,
        dim_key=int(rng.choice([2, 4, 6])),
        dim_value=int(rng.choice([2, 4, 5])),
    )
    if rng.random() < 0.4:
        config['num_distill_classes'] = int(rng.integers(1, 5))
    side = int(rng.integers(16 * (fmap - 1) + 1, 16 * fmap + 1))
    return config, (rng.standard_normal((2, side, side, 3), dtype=np.float32),)


SPECS = {
    'LeViT': Spec(
        # image_size=16: every attention sees one key; multi-token maps (where the key BatchNorm's bias gets no
        # gradient) are tested in tests/test_levit.py
        configs=(
            dict(image_size=16, num_classes=10, dim=(16, 24), depth=(1, 2), heads=2, mlp_mult=2, stages=2, dim_key=8,
                 dim_value=8),
            dict(image_size=16, num_classes=7, dim=(16, 24, 32), depth=1, heads=(3, 1, 2), mlp_mult=1,
                 dim_key=4, dim_value=6, num_distill_classes=5),
            dict(image_size=16, num_classes=0, dim=20, depth=1, heads=5, mlp_mult=3, stages=1, dim_key=4, dim_value=4,
                 dropout=0.1, num_distill_classes=0),
        ),
        notes='conv embedding; attention with BatchNorm and learned relative-position biases (`pos_indices` buffer); '
              'downsampling attention between stages; int image_size, 3 channels; optional distillation head',
        random_configuration=random_configuration,
        sweep_draws=6,
    ),
}
