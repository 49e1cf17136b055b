"""Parity with vit_pytorch.vit_nd: the test configurations and random-configuration sweep of `vit_nd.ViTND`, and the
attention path the comparison runs vit-pytorch on.

vit-pytorch's nd_attention runs flex_attention wherever its compiled kernel exists (x86 CPUs with AVX2 included), and
flex_attention has no backward on CPU. The reference therefore takes vit-pytorch's other path, the dense softmax with
the same causal mask (`flex_attention_supported` patched to False): the same computation, with gradients.
tests/test_vit_nd.py checks the flex_attention forward against vit-flax too.
"""

import contextlib
from unittest import mock

import numpy as np

from parity.spec import Spec
from vit_flax import converters


@contextlib.contextmanager
def dense_attention():
    masking = converters.import_vit_pytorch('vit_pytorch.vit_nd_masking')
    with mock.patch.object(masking, 'flex_attention_supported', lambda device: False):
        yield


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random ViTND of one to four dimensions (ints or tuples), either pool, causal along no dimension, one (an int)
    or several, on inputs of input_shape."""
    ndim = int(rng.integers(1, 5))
    patch = tuple(int(p) for p in rng.integers(1, 4, ndim))
    grid = tuple(int(g) for g in rng.integers(1, 4, ndim))
    heads = int(rng.integers(1, 4))
    dim = int(rng.integers(2, 25))
    config = dict(ndim=ndim, input_shape=tuple(p * g for p, g in zip(patch, grid)), patch_size=patch,
                  num_classes=int(rng.integers(0, 5)), dim=dim, depth=int(rng.integers(1, 3)), heads=heads,
                  mlp_dim=int(rng.integers(1, 40)), pool=str(rng.choice(['cls', 'mean'])),
                  channels=int(rng.integers(1, 4)),
                  dim_head=dim if heads == 1 and rng.random() < 0.5 else int(rng.integers(1, 12)))
    if rng.random() < 0.3 and len(set(patch)) == 1 and len(set(grid)) == 1:  # plain ints
        config.update(input_shape=patch[0] * grid[0], patch_size=patch[0])
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
            dict(ndim=1, input_shape=12, patch_size=3, num_classes=0, dim=12, depth=2, heads=3, mlp_dim=16,
                 dim_head=4, channels=1, pool='mean'),
            dict(ndim=4, input_shape=(2, 4, 6, 4), patch_size=(1, 2, 3, 2), num_classes=3, dim=8, depth=2, heads=1,
                 mlp_dim=8, dim_head=8, channels=2, causal_dims=(0, 2)),
            dict(ndim=2, input_shape=(8, 12), patch_size=4, num_classes=4, dim=16, depth=1, heads=2, mlp_dim=16,
                 dim_head=8, causal_dims=1, pool='mean'),
        ),
        notes='channels-last inputs of 1 to 7 dimensions, optionally causal along some (the class token sees and is '
              'seen by all); the reference takes vit-pytorch\'s dense masked path (flex_attention has no CPU backward)',
        torch_context=dense_attention,
        random_configuration=random_configuration,
        sweep_draws=8,
    ),
}
