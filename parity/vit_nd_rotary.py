"""Parity with vit_pytorch.vit_nd_rotary: the test configurations and random-configuration sweep of
`vit_nd_rotary.ViTND`, compared on vit-pytorch's dense masked attention path (flex_attention has no CPU backward; see
parity/vit_nd.py)."""

import numpy as np

from parity.spec import Spec
from parity.vit_nd import dense_attention


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random golden gate ViTND of one to four dimensions (ints or tuples), causal along no dimension, one (an int)
    or several, with random frequency ranges and zero-frequency proportions, on inputs of input_shape."""
    ndim = int(rng.integers(1, 5))
    patch = tuple(int(p) for p in rng.integers(1, 4, ndim))
    grid = tuple(int(g) for g in rng.integers(1, 5 if ndim < 3 else 3, ndim))
    heads = int(rng.integers(1, 4))
    dim = int(rng.integers(2, 25))
    config = dict(ndim=ndim, input_shape=tuple(p * g for p, g in zip(patch, grid)), patch_size=patch,
                  num_classes=int(rng.integers(0, 5)), dim=dim, depth=int(rng.integers(1, 3)), heads=heads,
                  mlp_dim=int(rng.integers(1, 40)), channels=int(rng.integers(1, 4)),
                  dim_head=dim if heads == 1 and dim % 2 == 0 and rng.random() < 0.5 else 2 * int(rng.integers(1, 7)))
    if rng.random() < 0.3 and len(set(patch)) == 1 and len(set(grid)) == 1:  # plain ints
        config.update(input_shape=patch[0] * grid[0], patch_size=patch[0])
    if rng.random() < 0.5:
        min_freq = float(rng.uniform(0.1, 2))
        config.update(rope_min_freq=min_freq, rope_max_freq=float(min_freq * 10 ** rng.uniform(0, 5)),
                      rope_p_zero_freqs=float(rng.choice([0.0, 0.25, 0.5, 1.0])))
    kind = rng.random()
    if kind < 0.3:
        config['causal_dims'] = int(rng.integers(0, ndim))
    elif kind < 0.7:
        config['causal_dims'] = tuple(int(d) for d in rng.choice(ndim, int(rng.integers(1, ndim + 1)), replace=False))
    shape = (2, *(p * g for p, g in zip(patch, grid)), config['channels'])
    return config, (rng.standard_normal(shape, dtype=np.float32),)


SPECS = {
    'ViTND': Spec(
        configs=(
            # 3D, causal along the first (time) dimension
            dict(ndim=3, input_shape=(4, 8, 8), patch_size=(2, 4, 4), num_classes=5, dim=16, depth=1, heads=2,
                 mlp_dim=32, dim_head=8, causal_dims=(0,)),
            # a larger grid: angles up to 7e4 rad at the default frequencies
            dict(ndim=2, input_shape=(16, 12), patch_size=2, num_classes=3, dim=16, depth=2, heads=2, mlp_dim=16,
                 dim_head=8, channels=1),
            dict(ndim=1, input_shape=12, patch_size=3, num_classes=0, dim=12, depth=2, heads=1, mlp_dim=16,
                 dim_head=12, channels=2, rope_min_freq=0.5, rope_max_freq=100.0, rope_p_zero_freqs=0.5),
            dict(ndim=4, input_shape=(2, 4, 6, 4), patch_size=(1, 2, 3, 2), num_classes=3, dim=8, depth=2, heads=3,
                 mlp_dim=8, dim_head=6, channels=2, causal_dims=(0, 2), rope_p_zero_freqs=0.34),
        ),
        notes='channels-last inputs of 1 to 7 dimensions, no class token, golden gate N-D rotary queries and keys '
              '(angles reduced modulo 2 pi exactly: float32 keeps vit-pytorch\'s float64 angles), optionally causal '
              'along some dimensions; the reference takes vit-pytorch\'s dense masked path',
        torch_context=dense_attention,
        random_configuration=random_configuration,
        sweep_draws=8,
    ),
}
