"""Parity with vit_pytorch.scalable_vit: the test configurations and random-configuration sweep of
`scalable_vit.ScalableViT`."""

import math

import numpy as np

from parity.spec import Spec


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random ScalableViT (stage counts and depths, per-stage heads, reduction factors, windows and key / value
    dims, channels, classes) and images whose stage maps its windows divide and its reduction factors fit."""
    num_stages = int(rng.integers(1, 3))
    height, width = int(rng.integers(5, 49)), int(rng.integers(5, 49))
    if rng.random() < 0.5:  # maps with common divisors, for windows larger than one pixel
        height, width = 8 * int(rng.integers(1, 7)), 8 * int(rng.integers(1, 7))
    maps, h, w = [], math.ceil(height / 4), math.ceil(width / 4)
    for _ in range(num_stages):
        maps.append((h, w))
        h, w = math.ceil(h / 2), math.ceil(w / 2)

    def per_stage(draw):
        values = tuple(draw(m) for m in maps)
        return values[0] if len(set(values)) == 1 and rng.random() < 0.5 else values

    def window(m):
        divisors = [d for d in range(2, math.gcd(*m) + 1) if math.gcd(*m) % d == 0] or [1]
        return None if rng.random() < 0.3 else int(rng.choice(divisors))

    config = dict(
        num_classes=int(rng.integers(0, 5)), dim=int(rng.integers(2, 9)),
        depth=tuple(int(rng.choice([0, 1, 1, 1, 2])) for _ in maps),
        heads=per_stage(lambda m: int(rng.integers(1, 4))),
        reduction_factor=per_stage(lambda m: int(rng.integers(1, min(m) + 1))),
        window_size=per_stage(window),
        iwsa_dim_key=per_stage(lambda m: int(rng.integers(1, 6))),
        iwsa_dim_value=per_stage(lambda m: int(rng.integers(1, 6))),
        ssa_dim_key=int(rng.integers(1, 6)), ssa_dim_value=int(rng.integers(1, 6)),
        ff_expansion_factor=int(rng.integers(1, 3)), channels=int(rng.integers(1, 4)),
    )
    return config, (rng.standard_normal((2, height, width, config['channels']), dtype=np.float32),)


SPECS = {
    'ScalableViT': Spec(
        # every attention sees at least two keys; a single key is tested in tests/test_scalable_vit.py
        configs=(
            dict(num_classes=10, dim=16, depth=(1, 1), heads=2, reduction_factor=2, window_size=(2, None),
                 iwsa_dim_key=8, iwsa_dim_value=8, ssa_dim_key=8, ssa_dim_value=8, ff_expansion_factor=2),
            dict(num_classes=7, dim=8, depth=(1, 0), heads=(3, 1), reduction_factor=(2, 1),
                 iwsa_dim_key=5, iwsa_dim_value=3, ssa_dim_key=4, ssa_dim_value=6, ff_expansion_factor=1,
                 channels=1, dropout=0.1),
            dict(num_classes=3, dim=12, depth=(2,), heads=3, reduction_factor=4, window_size=2, iwsa_dim_key=4,
                 iwsa_dim_value=4, ssa_dim_key=4, ssa_dim_value=4, ff_expansion_factor=1, channels=2),
        ),
        notes='conv stem; stages of scalable self-attention (strided keys / values), PEG, interactive windowed '
              'attention with a local conv (`window_size=None`: whole map); any image size',
        random_configuration=random_configuration,
    ),
}
