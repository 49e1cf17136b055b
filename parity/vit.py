"""Parity with vit_pytorch.vit: the test configurations of `vit.ViT`."""

from parity.spec import Spec

SPECS = {
    'ViT': Spec(
        configs=(
            dict(image_size=32, patch_size=8, num_classes=10, dim=32, depth=2, heads=4, mlp_dim=64, dim_head=8),
            dict(image_size=(24, 40), patch_size=(8, 4), num_classes=7, dim=24, depth=1, heads=2, mlp_dim=32,
                 dim_head=12, channels=1, pool='mean'),
            dict(image_size=16, patch_size=4, num_classes=3, dim=16, depth=2, heads=1, mlp_dim=32, dim_head=16,
                 channels=2),
            dict(image_size=(16, 24), patch_size=(4, 8), num_classes=0, dim=16, depth=1, heads=2, mlp_dim=16,
                 dim_head=4),
        ),
        notes='pool cls/mean; `num_classes=0` returns tokens; smaller inputs slice the position embedding',
    ),
}
