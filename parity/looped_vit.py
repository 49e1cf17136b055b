"""Parity with vit_pytorch.looped_vit: the test configurations and random-configuration sweep of
`looped_vit.LoopedViT`. The registry tests run the default forward (the last loop's logits);
tests/test_looped_vit.py compares every loop's logits, the exit benefits and the adaptive exit."""

import numpy as np

from parity.spec import Spec


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random LoopedViT on images (image_size) or 1 to 3 dimensional inputs (input_shape, a tuple or an int with
    ndim), small stacks of any depth (zero included), one to three loops, either pool, with or without the exit
    gate and a head."""
    ndim = int(rng.integers(1, 4))
    patch = tuple(int(p) for p in rng.integers(1, 4, ndim))
    grid = tuple(int(g) for g in rng.integers(1, 4, ndim))
    shape = tuple(p * g for p, g in zip(patch, grid))
    dim = int(rng.integers(2, 25))
    config = dict(num_classes=int(rng.integers(0, 5)), dim=dim, patch_size=patch,
                  pre_loop_depth=int(rng.integers(0, 2)), num_looped_blocks=int(rng.integers(1, 3)),
                  post_loop_depth=int(rng.integers(0, 2)), loop_depth=int(rng.integers(1, 4)),
                  pool=str(rng.choice(['cls', 'mean'])), heads=int(rng.integers(1, 4)),
                  dim_head=int(rng.integers(1, 10)), mlp_dim=int(rng.integers(1, 32)),
                  channels=int(rng.integers(1, 4)), adaptive_loop=bool(rng.random() < 0.5),
                  deep_supervision_weighting=str(rng.choice(['final', 'exponential', 'final_mean'])))
    kind = rng.random()
    if kind < 0.3:
        config['input_shape'] = shape
    elif kind < 0.6 and len(set(patch)) == 1 and len(set(grid)) == 1:
        config.update(ndim=ndim, input_shape=shape[0], patch_size=patch[0])
    elif ndim == 2:
        config['image_size'] = shape
    else:
        config['input_shape'] = shape
    inputs = rng.standard_normal((2, *shape, config['channels']), dtype=np.float32)
    return config, (inputs,)


SPECS = {
    'LoopedViT': Spec(
        configs=(
            # two loops of one block, the exit gate registered
            dict(num_classes=5, dim=16, image_size=8, patch_size=4, pre_loop_depth=1, num_looped_blocks=1,
                 post_loop_depth=1, loop_depth=2, heads=2, dim_head=8, mlp_dim=16, adaptive_loop=True),
            # 3D inputs, mean pooling, three loops of two blocks, no head
            dict(num_classes=0, dim=12, input_shape=(2, 6, 4), patch_size=(1, 3, 2), pre_loop_depth=0,
                 num_looped_blocks=2, post_loop_depth=2, loop_depth=3, pool='mean', heads=3, dim_head=4, mlp_dim=8,
                 channels=2, deep_supervision_weighting=(0.2, 0.3, 0.5)),
            # 1D inputs given by ndim and an int
            dict(num_classes=3, dim=8, ndim=1, input_shape=12, patch_size=3, pre_loop_depth=2, num_looped_blocks=1,
                 post_loop_depth=1, loop_depth=1, heads=1, dim_head=8, mlp_dim=16, channels=1,
                 deep_supervision_weighting='exponential'),
        ),
        notes='channels-last inputs of 1 to 7 dimensions; the looped stack\'s weights shared across loops; gated '
              'exclusive self-attention; the adaptive exit traced under jit (every loop computed, the exit loop\'s '
              'outputs kept, stacks padded by repeating them)',
        random_configuration=random_configuration,
        sweep_draws=8,
    ),
}
