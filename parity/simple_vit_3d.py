"""Parity with vit_pytorch.simple_vit_3d: the test configurations of `simple_vit_3d.SimpleViT`."""

from parity.spec import Spec

SPECS = {
    'SimpleViT': Spec(
        configs=(
            dict(image_size=16, image_patch_size=8, frames=4, frame_patch_size=2, num_classes=10, dim=24, depth=2,
                 heads=4, mlp_dim=64, dim_head=8),
            # dim 32: dim // 6 = 5 frequencies per axis and 2 zero-padded features
            dict(image_size=(8, 12), image_patch_size=(4, 6), frames=3, frame_patch_size=3, num_classes=5, dim=32,
                 depth=1, heads=2, mlp_dim=32, dim_head=12, channels=1),
            dict(image_size=(4, 8), image_patch_size=(2, 4), frames=2, frame_patch_size=1, num_classes=3, dim=12,
                 depth=2, heads=1, mlp_dim=16, dim_head=12, channels=2),
        ),
        notes='fixed 3D sin-cos position embedding from the input\'s own patch grid (any divisible size), '
              'mean pooling',
    ),
}
