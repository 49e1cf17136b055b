"""Parity with vit_pytorch.vit_with_patch_merger: the test configurations of `vit_with_patch_merger.ViT` (and its
random-configuration sweep), `vit_with_patch_merger.PatchMerger`."""

import numpy as np

from parity.spec import Spec


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random ViT with PatchMerger (rectangular patches and grids, channels, heads, dim_head; the merger after any
    layer, never (0), past the last one, or by default; any token count) and images up to image_size."""
    patch_height, patch_width = int(rng.integers(1, 6)), int(rng.integers(1, 6))
    grid_height, grid_width = int(rng.integers(1, 5)), int(rng.integers(1, 5))
    depth = int(rng.integers(1, 4))
    config = dict(image_size=(patch_height * grid_height, patch_width * grid_width),
                  patch_size=(patch_height, patch_width), num_classes=int(rng.integers(0, 5)),
                  dim=int(rng.integers(2, 25)), depth=depth, heads=int(rng.integers(1, 6)),
                  mlp_dim=int(rng.integers(1, 40)),
                  patch_merge_layer=[None, *range(0, depth + 2)][int(rng.integers(0, depth + 3))],
                  patch_merge_num_tokens=int(rng.integers(1, 10)), channels=int(rng.integers(1, 4)),
                  dim_head=int(rng.integers(1, 12)))
    input_grid = (int(rng.integers(1, grid_height + 1)), int(rng.integers(1, grid_width + 1)))
    shape = (2, input_grid[0] * patch_height, input_grid[1] * patch_width, config['channels'])
    return config, (rng.standard_normal(shape, dtype=np.float32),)


SPECS = {
    'ViT': Spec(
        configs=(
            dict(image_size=32, patch_size=8, num_classes=10, dim=32, depth=2, heads=4, mlp_dim=64, dim_head=8,
                 patch_merge_num_tokens=4),
            dict(image_size=(24, 40), patch_size=(8, 4), num_classes=7, dim=24, depth=3, heads=3, mlp_dim=32,
                 dim_head=12, channels=1, patch_merge_layer=3, patch_merge_num_tokens=5),
            # the merger never runs (patch_merge_layer=0) but owns parameters; no attention projection
            dict(image_size=16, patch_size=4, num_classes=0, dim=16, depth=2, heads=1, mlp_dim=32, dim_head=16,
                 channels=2, patch_merge_layer=0, patch_merge_num_tokens=3),
            dict(image_size=(16, 24), patch_size=(4, 8), num_classes=5, dim=20, depth=1, heads=5, mlp_dim=16,
                 dim_head=4, patch_merge_layer=1),
        ),
        notes='one PatchMerger after layer `patch_merge_layer` (default depth // 2; 0 never merges); mean pooling',
        random_configuration=random_configuration,
    ),
    'PatchMerger': Spec(
        configs=(
            dict(dim=16, num_tokens_out=4),
            dict(dim=24, num_tokens_out=1),
            dict(dim=20, num_tokens_out=9),
        ),
        notes='the token merger alone: tokens (b, n, dim) -> (b, num_tokens_out, dim)',
        no_random_configuration="the merger alone: vit_with_patch_merger.ViT's sweep runs it on random widths, "
                                'token counts and input sizes',
    ),
}
