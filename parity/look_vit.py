"""Parity with vit_pytorch.look_vit: the test configurations and random-configuration sweep of `look_vit.LookViT`."""

import numpy as np

from parity.spec import Spec


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random LookViT: high-resolution and main patch sizes of any ratio (so the bilinear downsampling takes
    fractional steps), kernels, heads, MLP factors and dropout (inactive in eval)."""
    highres_patch = int(rng.integers(1, 4))
    patch = highres_patch + int(rng.integers(1, 4))
    image_size = int(np.lcm(highres_patch, patch)) * int(rng.integers(1, 3))
    config = dict(dim=4 * int(rng.integers(2, 6)), image_size=image_size, num_classes=int(rng.integers(0, 5)),
                  depth=int(rng.integers(1, 3)), patch_size=patch, heads=int(rng.integers(1, 4)),
                  mlp_factor=float(rng.choice([0.5, 1, 2.5])), dim_head=int(rng.integers(1, 10)),
                  highres_patch_size=highres_patch, highres_mlp_factor=float(rng.choice([1, 1.5, 2])),
                  cross_attn_heads=int(rng.integers(1, 4)), cross_attn_dim_head=int(rng.integers(1, 10)),
                  patch_conv_kernel_size=int(rng.choice([1, 3, 5])), dropout=float(rng.choice([0.0, 0.1])),
                  channels=int(rng.integers(1, 4)))
    shape = (2, image_size, image_size, config['channels'])
    return config, (rng.standard_normal(shape, dtype=np.float32),)


SPECS = {
    'LookViT': Spec(
        configs=(
            dict(dim=16, image_size=12, num_classes=10, depth=1, patch_size=6, heads=2, dim_head=8,
                 highres_patch_size=2, cross_attn_heads=2, cross_attn_dim_head=8, patch_conv_kernel_size=3,
                 mlp_factor=2, highres_mlp_factor=2),
            dict(dim=24, image_size=24, num_classes=3, depth=2, patch_size=8, heads=3, dim_head=6,
                 highres_patch_size=3, cross_attn_heads=1, cross_attn_dim_head=12, patch_conv_kernel_size=5,
                 mlp_factor=1.5, highres_mlp_factor=1, channels=1, dropout=0.0),
            dict(dim=8, image_size=20, num_classes=4, depth=1, patch_size=5, heads=1, dim_head=8,
                 highres_patch_size=4, cross_attn_heads=2, cross_attn_dim_head=4, patch_conv_kernel_size=1,
                 channels=2),
        ),
        notes='main tokens look up high-resolution ones, which attend back through the transposed logits; '
              'bilinear downsampling; the `pos_embedding` parameter is unused, as in vit-pytorch',
        random_configuration=random_configuration,
        sweep_draws=8,
    ),
}
