"""Parity with vit_pytorch.vit_with_keel_post_ln: the test configurations and random-configuration sweep of
`vit_with_keel_post_ln.ViT`."""

import numpy as np

from parity.spec import Spec
from parity.vit import random_configuration as random_vit_configuration


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random ViT of two or three layers (vit-pytorch's KEEL transformer needs more than one), either pool, the
    default residual scale or a drawn one, on images up to image_size."""
    config, inputs = random_vit_configuration(rng)
    config['depth'] = int(rng.integers(2, 4))
    if rng.random() < 0.5:
        config['keel_residual_scale'] = float(rng.uniform(0.5, 8))
    return config, inputs


SPECS = {
    'ViT': Spec(
        configs=(
            dict(image_size=16, patch_size=8, num_classes=5, dim=16, depth=2, heads=2, mlp_dim=32, dim_head=8),
            dict(image_size=(24, 16), patch_size=(8, 4), num_classes=0, dim=24, depth=3, heads=3, mlp_dim=16,
                 dim_head=4, channels=1, pool='mean', keel_residual_scale=2.5),
            dict(image_size=8, patch_size=4, num_classes=3, dim=8, depth=2, heads=1, mlp_dim=8, dim_head=8,
                 channels=2, pool='mean'),
        ),
        notes='flat attention / feed-forward sublayers joined by scaled residuals and bias-free post-LayerNorms '
              '(KEEL); pool cls/mean; `num_classes=0` returns tokens',
        random_configuration=random_configuration,
        sweep_draws=6,
    ),
}
