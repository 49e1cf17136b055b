"""Parity with vit_pytorch.vit_nd_pope: the test configurations and random-configuration sweep of
`vit_nd_pope.ViTND`, compared on vit-pytorch's dense masked attention path (flex_attention has no CPU backward; see
parity/vit_nd.py). vit-pytorch is built under torch.no_grad(), where its `pope_init_learned_bias_uniform=True`
constructor runs (outside it, the in-place uniform_ on a parameter fails)."""

import numpy as np
import torch

from parity.spec import Spec
from parity.vit_nd import dense_attention


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random golden gate PoPE ViTND of one to four dimensions (ints or tuples), causal along no dimension, one (an
    int) or several, with random frequency ranges, zero-frequency proportions and phase inits, on inputs of
    input_shape."""
    ndim = int(rng.integers(1, 5))
    patch = tuple(int(p) for p in rng.integers(1, 4, ndim))
    grid = tuple(int(g) for g in rng.integers(1, 5 if ndim < 3 else 3, ndim))
    heads = int(rng.integers(1, 4))
    dim = int(rng.integers(2, 25))
    config = dict(ndim=ndim, input_shape=tuple(p * g for p, g in zip(patch, grid)), patch_size=patch,
                  num_classes=int(rng.integers(0, 5)), dim=dim, depth=int(rng.integers(1, 3)), heads=heads,
                  mlp_dim=int(rng.integers(1, 40)), channels=int(rng.integers(1, 4)),
                  dim_head=dim if heads == 1 and rng.random() < 0.5 else int(rng.integers(1, 12)))
    if rng.random() < 0.3 and len(set(patch)) == 1 and len(set(grid)) == 1:  # plain ints
        config.update(input_shape=patch[0] * grid[0], patch_size=patch[0])
    if rng.random() < 0.5:
        min_freq = float(rng.uniform(0.1, 2))
        config.update(pope_min_freq=min_freq, pope_max_freq=float(min_freq * 10 ** rng.uniform(0, 5)),
                      pope_p_zero_freqs=float(rng.choice([0.0, 0.25, 0.5, 1.0])))
    if rng.random() < 0.3:
        config['pope_init_learned_bias_uniform'] = True
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
            # a larger grid: angles up to 7e4 rad at the default frequencies; an odd head width
            dict(ndim=2, input_shape=(16, 12), patch_size=2, num_classes=3, dim=16, depth=2, heads=2, mlp_dim=16,
                 dim_head=7, channels=1, pope_init_learned_bias_uniform=True),
            dict(ndim=1, input_shape=12, patch_size=3, num_classes=0, dim=12, depth=2, heads=1, mlp_dim=16,
                 dim_head=12, channels=2, pope_min_freq=0.5, pope_max_freq=100.0, pope_p_zero_freqs=0.5),
            dict(ndim=4, input_shape=(2, 4, 6, 4), patch_size=(1, 2, 3, 2), num_classes=3, dim=8, depth=2, heads=3,
                 mlp_dim=8, dim_head=5, channels=2, causal_dims=(0, 2), pope_p_zero_freqs=0.4),
        ),
        notes='channels-last inputs of 1 to 7 dimensions, no class token, golden gate N-D polar position embeddings '
              '(softplus magnitudes at angles reduced modulo 2 pi exactly, a learned key phase), optionally causal '
              'along some dimensions; `pope_init_learned_bias_uniform=True` fixed (vit-pytorch\'s constructor fails: '
              'the reference is built under torch.no_grad()); the reference takes vit-pytorch\'s dense masked path',
        torch_context=dense_attention,
        torch_construction=torch.no_grad,
        random_configuration=random_configuration,
        sweep_draws=8,
    ),
}
