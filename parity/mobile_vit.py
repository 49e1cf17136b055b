"""Parity with vit_pytorch.mobile_vit: the test configurations of `mobile_vit.MobileViT`."""

from parity.spec import Spec

SPECS = {
    'MobileViT': Spec(
        # the last MobileViT block sees a 1/32 map: every config keeps >= 2 tokens per patch position there
        configs=(
            dict(image_size=(64, 64), dims=(8, 12, 16), channels=(4, 4, 8, 8, 8, 8, 12, 12, 16, 16, 24),
                 num_classes=5, expansion=2, patch_size=(1, 1), depths=(1, 1, 1)),
            dict(image_size=(64, 128), dims=(12, 8, 20), channels=(8, 8, 6, 6, 8, 8, 10, 10, 12, 12, 16),
                 num_classes=3, expansion=1, depths=(1, 2, 1)),
            dict(image_size=(128, 32), dims=(16, 8, 12), channels=(4, 6, 6, 6, 8, 8, 8, 8, 12, 12, 20),
                 num_classes=7, expansion=1.5, patch_size=(2, 1), depths=(2, 1, 1)),
        ),
        notes='MobileNetV2 blocks (BatchNorm, SiLU, depth-wise convs) + unfold / transformer / fold blocks; '
              '`channels` are stage widths, input is always RGB; 4 heads of 8 dims fixed',
    ),
}
