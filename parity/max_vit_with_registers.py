"""Parity with vit_pytorch.max_vit_with_registers: the test configurations and random-configuration sweep of
`max_vit_with_registers.MaxViT`."""

import numpy as np

from parity.max_vit import random_configuration as random_max_vit
from parity.spec import Spec


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random MaxViT (parity/max_vit.py's sweep) with 1 to 4 register tokens per block."""
    config, inputs = random_max_vit(rng)
    return {**config, 'num_register_tokens': int(rng.integers(1, 5))}, inputs


SPECS = {
    'MaxViT': Spec(
        # (16, 16) -> stem 8 x 8 -> stage 4 x 4: four 2 x 2 windows, one block (a downsampling MBConv); the residual
        # MBConv, two stages, one-pixel windows and the default registers are the slow configurations'
        configs=(
            dict(num_classes=10, dim=8, depth=(1,), dim_head=4, window_size=2, dropout=0.0, num_register_tokens=2),
            dict(num_classes=7, dim=16, depth=(2, 1), dim_head=8, window_size=2, dim_conv_stem=12,
                 mbconv_expansion_rate=2, mbconv_shrinkage_rate=0.5, channels=1),
            dict(num_classes=0, dim=8, depth=(1,), dim_head=8, window_size=1, num_register_tokens=1, channels=2),
        ),
        notes="max_vit's MaxViT with `num_register_tokens` learned registers per block, before every window's "
              'tokens (their own relative-bias row); block registers averaged over the windows seed grid attention',
        random_configuration=random_configuration,
        sweep_draws=6,
    ),
}
