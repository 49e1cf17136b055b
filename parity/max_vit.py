"""Parity with vit_pytorch.max_vit: the test configurations of `max_vit.MaxViT`."""

from parity.spec import Spec

SPECS = {
    'MaxViT': Spec(
        # (32, 64) -> stem 16 x 32 -> stages 8 x 16, 4 x 8; windows of one pixel (no gradient for the queries,
        # keys and position bias), three stages and other sizes are tested in tests/test_max_vit.py
        configs=(
            dict(num_classes=10, dim=16, depth=(1, 1), dim_head=8, window_size=2, dropout=0.0),
            dict(num_classes=7, dim=24, depth=(2,), dim_head=8, window_size=4, dim_conv_stem=12,
                 mbconv_expansion_rate=2, mbconv_shrinkage_rate=0.5, channels=1),
            dict(num_classes=3, dim=16, depth=(1,), dim_head=16, window_size=8, mbconv_expansion_rate=1.5,
                 channels=2),
        ),
        notes='conv stem; MBConv (BatchNorm, depth-wise conv, squeeze-excitation) + block and grid window attention '
              'with relative position bias per block; any image size whose feature maps the window size divides',
    ),
}
