"""Parity with vit_pytorch.simple_vit_with_sparse_gating: the test configurations and random-configuration sweep of
`simple_vit_with_sparse_gating.SimpleViTWithSparseGating`."""

import numpy as np

from parity.spec import Spec
from parity.vit import random_plain_vit_keywords


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random gated SimpleViT (zero to three registers, gate dimension 1 to 5) and images of image_size (its fixed
    position embedding takes no other patch count)."""
    config, patch, grid = random_plain_vit_keywords(rng)
    config.update(num_register_tokens=int(rng.integers(0, 4)), dim_mask=int(rng.integers(1, 6)))
    shape = (2, grid[0] * patch[0], grid[1] * patch[1], config['channels'])
    return config, (rng.standard_normal(shape, dtype=np.float32),)


SPECS = {
    'SimpleViTWithSparseGating': Spec(
        configs=(
            dict(image_size=16, patch_size=8, num_classes=5, dim=16, depth=1, heads=2, mlp_dim=32, dim_head=8,
                 num_register_tokens=2),
            dict(image_size=(24, 16), patch_size=(8, 4), num_classes=3, dim=24, depth=2, heads=3, mlp_dim=16,
                 dim_head=6, channels=1, dim_mask=2, sparsity_loss_type='l1'),
            dict(image_size=8, patch_size=4, num_classes=0, dim=8, depth=2, heads=1, mlp_dim=8, dim_head=8,
                 channels=2, num_register_tokens=0, dim_mask=1),
        ),
        notes='sigmoid gates on the patches added as log-probabilities to the attention logits, registers as sinks; '
              '`return_loss` gives the sparsity loss',
        random_configuration=random_configuration,
        sweep_draws=6,
    ),
}
