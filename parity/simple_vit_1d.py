"""Parity with vit_pytorch.simple_vit_1d: the test configurations and random-configuration sweep of
`simple_vit_1d.SimpleViT`."""

import numpy as np

from parity.spec import Spec
from parity.vit_1d import random_configuration as random_vit_1d


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random 1-D SimpleViT (even dim >= 4, as its sin-cos embedding needs) and series of any multiple of the patch
    size up to one patch longer than seq_len (the embedding follows the input)."""
    config, (series,) = random_vit_1d(rng)
    config['dim'] = 2 * int(rng.integers(2, 13))
    if config['heads'] == 1 and rng.random() < 0.5:
        config['dim_head'] = config['dim']
    length = config['patch_size'] * int(rng.integers(1, config['seq_len'] // config['patch_size'] + 2))
    return config, (rng.standard_normal((2, length, config['channels']), dtype=np.float32),)


SPECS = {
    'SimpleViT': Spec(
        configs=(
            dict(seq_len=32, patch_size=4, num_classes=10, dim=32, depth=1, heads=4, mlp_dim=32, dim_head=8),
            dict(seq_len=24, patch_size=8, num_classes=5, dim=22, depth=2, heads=2, mlp_dim=32, dim_head=12,
                 channels=1),
            dict(seq_len=12, patch_size=3, num_classes=0, dim=16, depth=2, heads=1, mlp_dim=16, dim_head=16,
                 channels=2),
        ),
        notes='1-D series (batch, seq_len, channels); fixed 1D sin-cos embedding of the input\'s patch count, mean '
              'pooling',
        random_configuration=random_configuration,
        sweep_draws=6,
    ),
}
