"""Parity with vit_pytorch.vit_1d: the test configurations and random-configuration sweep of `vit_1d.ViT`."""

import numpy as np

from parity.spec import Spec


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random 1-D ViT (patch sizes, channels, heads, dim_head == dim for one head sometimes, class counts with 0)
    and series of up to seq_len: shorter ones slice the position embedding."""
    patch, patches, heads = int(rng.integers(1, 6)), int(rng.integers(1, 6)), int(rng.integers(1, 4))
    dim = int(rng.integers(2, 25))
    config = dict(seq_len=patch * patches, patch_size=patch, num_classes=int(rng.integers(0, 5)), dim=dim,
                  depth=int(rng.integers(1, 3)), heads=heads, mlp_dim=int(rng.integers(1, 40)),
                  channels=int(rng.integers(1, 4)),
                  dim_head=dim if heads == 1 and rng.random() < 0.5 else int(rng.integers(1, 12)))
    length = patch * int(rng.integers(1, patches + 1))
    return config, (rng.standard_normal((2, length, config['channels']), dtype=np.float32),)


SPECS = {
    'ViT': Spec(
        configs=(
            dict(seq_len=32, patch_size=4, num_classes=10, dim=32, depth=1, heads=4, mlp_dim=32, dim_head=8),
            dict(seq_len=24, patch_size=8, num_classes=5, dim=24, depth=2, heads=2, mlp_dim=32, dim_head=12,
                 channels=1, dropout=0.1, emb_dropout=0.1),
            dict(seq_len=12, patch_size=3, num_classes=0, dim=16, depth=2, heads=1, mlp_dim=16, dim_head=16,
                 channels=2),
        ),
        notes='1-D series (batch, seq_len, channels); class-token head, no pool keyword; shorter series slice the '
              'position embedding',
        random_configuration=random_configuration,
        sweep_draws=6,
    ),
}
