"""Parity with vit_pytorch.simple_vit_orthog_residual_update: the test configurations and random-configuration sweep
of `simple_vit_orthog_residual_update.SimpleViT`."""

import numpy as np

from parity.spec import Spec
from parity.vit import random_plain_vit_keywords


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random model with learned or plain orthogonal updates, in double precision or not, and images of
    image_size (its fixed position embedding takes no other patch count)."""
    config, patch, grid = random_plain_vit_keywords(rng)
    config['orthog_residual_update_kwargs'] = dict(learned=bool(rng.random() < 0.5),
                                                   double_precision=bool(rng.random() < 0.5))
    shape = (2, grid[0] * patch[0], grid[1] * patch[1], config['channels'])
    return config, (rng.standard_normal(shape, dtype=np.float32),)


SPECS = {
    'SimpleViT': Spec(
        configs=(
            # learned modulation: both the parallel and the orthogonal parts reach the stream
            dict(image_size=16, patch_size=8, num_classes=5, dim=16, depth=1, heads=2, mlp_dim=32, dim_head=8,
                 orthog_residual_update_kwargs=dict(learned=True)),
            dict(image_size=(24, 16), patch_size=(8, 4), num_classes=3, dim=24, depth=2, heads=3, mlp_dim=16,
                 dim_head=6, channels=1),
            dict(image_size=8, patch_size=4, num_classes=0, dim=8, depth=2, heads=1, mlp_dim=8, dim_head=8,
                 channels=2, orthog_residual_update_kwargs=dict(double_precision=False, learned=True)),
        ),
        notes='residual updates orthogonal to the stream (optionally learned gates); the float64 projection is '
              'float32 unless jax_enable_x64; fixed 2D sin-cos position embedding, mean pooling',
        random_configuration=random_configuration,
        sweep_draws=6,
    ),
}
