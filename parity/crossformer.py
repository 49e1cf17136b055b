"""Parity with vit_pytorch.crossformer: the test configurations and random-configuration sweep of
`crossformer.CrossFormer`."""

import numpy as np

from parity.spec import Spec


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random CrossFormer (stage widths, one attention block, window sizes, kernel sets, strides, classes,
    channels) and images whose stage maps its windows divide."""
    strides = [int(rng.choice([2, 4]))] + [int(rng.choice([1, 2])) for _ in range(3)]
    grid = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
    size = (grid[0] * int(np.prod(strides)), grid[1] * int(np.prod(strides)))
    depth = [0, 0, 0, 0]
    depth[int(rng.integers(0, 4))] = 1  # one attention block per config keeps the sweep's compiles small
    dims, kernels, local, global_ = [], [], [], []
    height, width = size
    for stage, stride in enumerate(strides):
        height, width = height // stride, width // stride
        divisors = [d for d in range(1, min(height, width) + 1) if height % d == 0 and width % d == 0]
        local.append(int(rng.choice(divisors)))
        global_.append(int(rng.choice(divisors)))
        # kernels of the stride's parity, at least the stride: every scale gives the same map size
        candidates = [k for k in range(stride, stride + 7, 2)]
        count = int(rng.integers(1, 4))
        kernels.append(tuple(int(k) for k in rng.choice(candidates, size=count, replace=False)))
        dims.append(int(rng.choice([32, 40, 64])) if depth[stage] else int(rng.integers(count + 1, 24)))
    config = dict(dim=tuple(dims), depth=tuple(depth), local_window_size=tuple(local),
                  global_window_size=tuple(global_), cross_embed_kernel_sizes=tuple(kernels),
                  cross_embed_strides=tuple(strides), num_classes=int(rng.integers(0, 5)),
                  channels=int(rng.integers(1, 4)))
    return config, (rng.standard_normal((2, *size, config['channels']), dtype=np.float32),)


SPECS = {
    'CrossFormer': Spec(
        # every window is 1 x 1; windowed attention (parity, gradients) is tested in tests/test_crossformer.py
        configs=(
            dict(dim=32, depth=(1, 0, 0, 0), global_window_size=1, local_window_size=1,
                 cross_embed_kernel_sizes=((4, 8), (1, 3), (2, 4), (1, 3)), cross_embed_strides=(4, 1, 2, 1),
                 num_classes=10),
            dict(dim=(48, 40, 16, 64), depth=(0, 1, 0, 0), global_window_size=1, local_window_size=1,
                 cross_embed_kernel_sizes=((4, 6, 8, 12), (2, 4), (3, 5), (1, 3)), cross_embed_strides=(4, 2, 1, 1),
                 num_classes=7, channels=1, attn_dropout=0.1, ff_dropout=0.1),
            dict(dim=32, depth=(0, 0, 1, 0), global_window_size=1, local_window_size=1,
                 cross_embed_kernel_sizes=((4, 8, 16, 32), (2, 4), (2, 4), (1, 3)), cross_embed_strides=(4, 2, 2, 1),
                 num_classes=0, channels=2),
        ),
        notes='cross-scale conv embeddings, short / long distance windowed attention with a dynamic position bias '
              '(MLP), conv feed-forward, channel LayerNorm; dim_head fixed at 32; any image size the windows divide',
        random_configuration=random_configuration,
    ),
}
