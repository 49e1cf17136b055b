"""Parity with vit_pytorch.xcit: the test configurations and random-configuration sweep of `xcit.XCiT`."""

import numpy as np

from parity.spec import Spec


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random XCiT (int patch and image sizes, local patch kernels larger than the grid too, heads, dim_head,
    depths and class-attention depths with 0, class counts with 0) and RGB images up to image_size, of any shape."""
    patch, grid = int(rng.integers(1, 5)), int(rng.integers(1, 5))
    config = dict(image_size=patch * grid, patch_size=patch, num_classes=int(rng.integers(0, 6)),
                  dim=int(rng.integers(4, 25)), depth=int(rng.integers(0, 3)), cls_depth=int(rng.integers(0, 3)),
                  heads=int(rng.integers(1, 5)), mlp_dim=int(rng.integers(1, 40)), dim_head=int(rng.integers(1, 12)),
                  local_patch_kernel_size=int(rng.choice([1, 3, 5, 7])))
    input_grid = tuple(int(rng.integers(1, grid + 1)) for _ in range(2))
    return config, (rng.standard_normal((2, input_grid[0] * patch, input_grid[1] * patch, 3), dtype=np.float32),)


SPECS = {
    'XCiT': Spec(
        configs=(
            dict(image_size=16, patch_size=4, num_classes=10, dim=16, depth=2, cls_depth=1, heads=2, mlp_dim=32,
                 dim_head=8),
            dict(image_size=24, patch_size=8, num_classes=7, dim=24, depth=1, cls_depth=2, heads=3, mlp_dim=20,
                 dim_head=5, local_patch_kernel_size=5),
            dict(image_size=12, patch_size=2, num_classes=3, dim=20, depth=1, cls_depth=1, heads=1, mlp_dim=16,
                 dim_head=20, local_patch_kernel_size=1),
        ),
        notes='cross-covariance attention (learned temperature), local patch interaction (depthwise convs + '
              "BatchNorm), class attention, LayerScale; 3 channels, square sizes; layer drop in training only "
              "(rng stream 'layer_dropout')",
        random_configuration=random_configuration,
    ),
}
