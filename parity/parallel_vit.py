"""Parity with vit_pytorch.parallel_vit: the test configurations of `parallel_vit.ViT`."""

from parity.spec import Spec

SPECS = {
    'ViT': Spec(
        configs=(
            dict(image_size=32, patch_size=8, num_classes=10, dim=32, depth=2, heads=4, mlp_dim=64, dim_head=8),
            dict(image_size=(24, 40), patch_size=(8, 4), num_classes=7, dim=24, depth=1, heads=3, mlp_dim=32,
                 dim_head=12, channels=1, pool='mean', num_parallel_branches=3),
            dict(image_size=16, patch_size=4, num_classes=3, dim=16, depth=2, heads=1, mlp_dim=32, dim_head=16,
                 channels=2, num_parallel_branches=1),
            dict(image_size=(16, 24), patch_size=(4, 8), num_classes=5, dim=20, depth=1, heads=5, mlp_dim=16,
                 dim_head=4, num_parallel_branches=4),
        ),
        notes='parallel attention / feed-forward branches summed per layer; pool cls/mean',
    ),
}
