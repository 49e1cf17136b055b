"""Parity with vit_pytorch.pit: the test configurations and random-configuration sweep of `pit.PiT`."""

import math

import numpy as np

from parity.spec import Spec
from vit_flax.pit import conv_output_size


def input_is_accepted(config: dict, size: tuple[int, int]) -> bool:
    """Whether vit-pytorch's forward runs on images of `size` (height, width): enough pixels for a patch, no more
    tokens than image_size gives, and every Pool can fold its tokens into int(sqrt(n)) rows."""
    p, s = config['patch_size'], config['patch_size'] // 2
    if min(size) < p:
        return False
    grid = [(side - p) // s + 1 for side in size]
    limit = conv_output_size(config['image_size'], p, s) ** 2
    n = grid[0] * grid[1]
    if n > limit:
        return False
    heads = config['heads'] if isinstance(config['heads'], tuple) else (config['heads'],) * len(config['depth'])
    stages = min(len(config['depth']), len(heads))
    pools = sum(1 for ind in range(stages) if ind < len(config['depth']) - 1)
    for _ in range(pools):
        rows = int(math.sqrt(n))
        if n % rows:
            return False
        n = -(-rows // 2) * -(-(n // rows) // 2)
    return True


def random_configuration_and_input_size(rng: np.random.Generator) -> tuple[dict, tuple[int, int]]:
    """A random PiT (int patch and image sizes, stage depths with empty stages, shared heads or one per stage,
    sometimes one too few or too many, channels, class counts with 0) and an input size (height, width) around
    image_size, which vit-pytorch may refuse."""
    patch = int(rng.integers(2, 8))
    image_size = patch * int(rng.integers(1, 4))
    depth = tuple(int(d) for d in rng.integers(0, 3, size=int(rng.integers(1, 4))))
    if rng.random() < 0.5:
        heads = int(rng.integers(1, 6))
    else:
        heads = tuple(int(h) for h in rng.integers(1, 6, size=max(1, len(depth) + int(rng.integers(-1, 2)))))
    config = dict(image_size=image_size, patch_size=patch, num_classes=int(rng.integers(0, 5)),
                  dim=int(rng.integers(2, 17)), depth=depth, heads=heads, mlp_dim=int(rng.integers(1, 25)),
                  dim_head=int(rng.integers(1, 9)), channels=int(rng.integers(1, 4)))
    size = tuple(int(v) for v in rng.integers(patch - 1, image_size + 3, size=2))
    return config, size


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random PiT and images of the drawn size where vit-pytorch accepts it, of image_size where it refuses it
    (tests/test_pit.py checks that we refuse those sizes too)."""
    config, size = random_configuration_and_input_size(rng)
    if not input_is_accepted(config, size):
        size = (config['image_size'],) * 2
    return config, (rng.standard_normal((2, *size, config['channels']), dtype=np.float32),)


SPECS = {
    'PiT': Spec(
        configs=(
            dict(image_size=12, patch_size=4, num_classes=10, dim=16, depth=(1, 1), heads=2, mlp_dim=32, dim_head=8),
            # patch 7, stride 3: torch's int() drops the last pixels (3 x 3 patches); an empty middle stage
            dict(image_size=14, patch_size=7, num_classes=7, dim=12, depth=(1, 0, 1), heads=(3, 1, 5), mlp_dim=20,
                 dim_head=5, channels=1, dropout=0.1, emb_dropout=0.1),
            # stage 0 has one head of width dim_head == dim: no attention output projection
            dict(image_size=15, patch_size=5, num_classes=3, dim=16, depth=(2, 1), heads=(1, 2), mlp_dim=24,
                 dim_head=16, channels=2),
        ),
        notes='stages of transformers (`depth` tuple, per-stage `heads`) with depthwise-conv pooling between them; '
              'overlapping patches (stride patch_size // 2); square int sizes; cls-token head',
        random_configuration=random_configuration,
    ),
}
