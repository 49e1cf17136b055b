"""Parity with vit_pytorch.simple_vit: the test configurations of `simple_vit.SimpleViT`."""

from parity.spec import Spec

SPECS = {
    'SimpleViT': Spec(
        configs=(
            dict(image_size=32, patch_size=8, num_classes=10, dim=32, depth=2, heads=4, mlp_dim=64, dim_head=8),
            dict(image_size=(24, 40), patch_size=(8, 4), num_classes=5, dim=24, depth=1, heads=2, mlp_dim=32,
                 dim_head=12, channels=1),
            dict(image_size=16, patch_size=4, num_classes=0, dim=16, depth=2, heads=1, mlp_dim=32, dim_head=16,
                 channels=2),
        ),
        notes='fixed 2D sin-cos position embedding, mean pooling',
    ),
}
