"""Parity with vit_pytorch.cross_vit: the test configurations and random-configuration sweep of
`cross_vit.CrossViT`."""

import numpy as np

from parity.spec import Spec


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random CrossViT (int sizes, a large patch a multiple of the small one, widths, depths with 0, heads,
    dim_heads, channels, class counts with 0) and images up to image_size, of any shape."""
    sm_patch = int(rng.integers(1, 4))
    lg_patch = sm_patch * int(rng.integers(1, 4))
    grid = int(rng.integers(1, 4))
    config = dict(image_size=lg_patch * grid, num_classes=int(rng.integers(0, 5)), sm_dim=int(rng.integers(2, 17)),
                  lg_dim=int(rng.integers(2, 17)), sm_patch_size=sm_patch, lg_patch_size=lg_patch,
                  sm_enc_depth=int(rng.integers(0, 2)), sm_enc_heads=int(rng.integers(1, 4)),
                  sm_enc_mlp_dim=int(rng.integers(1, 20)), sm_enc_dim_head=int(rng.integers(1, 8)),
                  lg_enc_depth=int(rng.integers(0, 2)), lg_enc_heads=int(rng.integers(1, 4)),
                  lg_enc_mlp_dim=int(rng.integers(1, 20)), lg_enc_dim_head=int(rng.integers(1, 8)),
                  cross_attn_depth=int(rng.integers(0, 2)), cross_attn_heads=int(rng.integers(1, 4)),
                  cross_attn_dim_head=int(rng.integers(1, 8)), depth=1,
                  channels=int(rng.integers(1, 4)))
    input_grid = (int(rng.integers(1, grid + 1)), int(rng.integers(1, grid + 1)))
    shape = (2, input_grid[0] * lg_patch, input_grid[1] * lg_patch, config['channels'])
    return config, (rng.standard_normal(shape, dtype=np.float32),)


SPECS = {
    'CrossViT': Spec(
        configs=(
            dict(image_size=16, num_classes=10, sm_dim=16, lg_dim=32, sm_patch_size=4, sm_enc_depth=1,
                 sm_enc_heads=2, sm_enc_mlp_dim=32, sm_enc_dim_head=8, lg_patch_size=8, lg_enc_depth=1,
                 lg_enc_heads=4, lg_enc_mlp_dim=32, lg_enc_dim_head=8, cross_attn_depth=1, cross_attn_heads=2,
                 cross_attn_dim_head=8, depth=1),
            dict(image_size=24, num_classes=7, sm_dim=24, lg_dim=20, sm_patch_size=4, sm_enc_depth=1,
                 sm_enc_heads=3, sm_enc_mlp_dim=16, sm_enc_dim_head=5, lg_patch_size=12, lg_enc_depth=1,
                 lg_enc_heads=1, lg_enc_mlp_dim=24, lg_enc_dim_head=20, cross_attn_depth=2, cross_attn_heads=5,
                 cross_attn_dim_head=4, depth=1, channels=1),
            # equal widths: no project_in / project_out; a branch transformer that is only its final LayerNorm;
            # two multi-scale layers
            dict(image_size=12, num_classes=3, sm_dim=16, lg_dim=16, sm_patch_size=2, sm_enc_depth=0,
                 sm_enc_heads=2, sm_enc_mlp_dim=8, sm_enc_dim_head=4, lg_patch_size=6, lg_enc_depth=1,
                 lg_enc_heads=3, lg_enc_mlp_dim=16, lg_enc_dim_head=6, cross_attn_depth=1, cross_attn_heads=1,
                 cross_attn_dim_head=16, depth=2, channels=2),
        ),
        notes='two patch sizes, a transformer per branch, cls tokens cross-attending to the other branch; '
              'int sizes; summed heads',
        random_configuration=random_configuration,
        sweep_draws=6,
    ),
}
