"""Parity with vit_pytorch.jumbo_vit: the test configurations and random-configuration sweep of `jumbo_vit.JumboViT`.

Its feed-forwards take `mlp_dim` and `jumbo_ff_mult` as multipliers of multipliers (vit_flax/jumbo_vit.py), so the
configurations keep them small: the jumbo feed-forward's hidden width is `k * dim * int(k * dim * jumbo_ff_mult)`.
"""

import numpy as np

from parity.spec import Spec
from parity.vit import random_plain_vit_keywords


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random JumboViT: one or two jumbo tokens split in one to three, one or two layers, small multipliers, on
    images of image_size."""
    config, patch, grid = random_plain_vit_keywords(rng)
    k = int(rng.integers(1, 4))
    jumbo_cls_dim = k * config['dim']
    config.update(depth=int(rng.integers(1, 3)), mlp_dim=int(rng.integers(0, 3)), num_jumbo_cls=int(rng.integers(1, 3)),
                  jumbo_cls_k=k, jumbo_ff_mult=float(rng.integers(1, 4)) / jumbo_cls_dim)
    shape = (2, grid[0] * patch[0], grid[1] * patch[1], config['channels'])
    return config, (rng.standard_normal(shape, dtype=np.float32),)


SPECS = {
    'JumboViT': Spec(
        configs=(
            # depth 2: the jumbo tokens leave and rejoin the sequence; jumbo_ff hidden 16 * int(16 * 0.125) = 32
            dict(image_size=16, patch_size=8, num_classes=5, dim=8, depth=2, heads=2, mlp_dim=2, dim_head=4,
                 jumbo_cls_k=2, jumbo_ff_mult=0.125),
            dict(image_size=(24, 16), patch_size=(8, 4), num_classes=0, dim=12, depth=1, heads=3, mlp_dim=1,
                 dim_head=4, channels=1, num_jumbo_cls=2, jumbo_cls_k=3, jumbo_ff_mult=0.05),
            dict(image_size=8, patch_size=4, num_classes=3, dim=8, depth=3, heads=1, mlp_dim=3, dim_head=8,
                 channels=2, jumbo_cls_k=1, jumbo_ff_mult=0.25),
        ),
        notes='a jumbo class token (k * dim wide, split into k tokens for attention) with its own feed-forward shared '
              'across layers; mlp_dim is a multiplier, as in vit-pytorch',
        random_configuration=random_configuration,
        sweep_draws=6,
    ),
}
