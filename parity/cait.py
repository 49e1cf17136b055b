"""Parity with vit_pytorch.cait: the test configurations of `cait.CaiT`."""

from parity.spec import Spec

SPECS = {
    'CaiT': Spec(
        configs=(
            dict(image_size=16, patch_size=4, num_classes=10, dim=16, depth=2, cls_depth=1, heads=2, mlp_dim=32,
                 dim_head=8),
            dict(image_size=24, patch_size=8, num_classes=7, dim=24, depth=1, cls_depth=2, heads=3, mlp_dim=20,
                 dim_head=5),
            dict(image_size=12, patch_size=2, num_classes=3, dim=20, depth=3, cls_depth=1, heads=1, mlp_dim=16,
                 dim_head=20),
        ),
        notes='LayerScale, talking heads, class attention; 3 channels, square sizes; '
              "layer drop in training only (rng stream 'layer_dropout')",
    ),
}
