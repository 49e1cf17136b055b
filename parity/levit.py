"""Parity with vit_pytorch.levit: the test configurations of `levit.LeViT`."""

from parity.spec import Spec

SPECS = {
    'LeViT': Spec(
        # image_size=16: every attention sees one key; multi-token maps (where the key BatchNorm's bias gets no
        # gradient) are tested in tests/test_levit.py
        configs=(
            dict(image_size=16, num_classes=10, dim=(16, 24), depth=(1, 2), heads=2, mlp_mult=2, stages=2, dim_key=8,
                 dim_value=8),
            dict(image_size=16, num_classes=7, dim=(16, 24, 32), depth=1, heads=(3, 1, 2), mlp_mult=1,
                 dim_key=4, dim_value=6, num_distill_classes=5),
            dict(image_size=16, num_classes=0, dim=20, depth=1, heads=5, mlp_mult=3, stages=1, dim_key=4, dim_value=4,
                 dropout=0.1, num_distill_classes=0),
        ),
        notes='conv embedding; attention with BatchNorm and learned relative-position biases (`pos_indices` buffer); '
              'downsampling attention between stages; int image_size, 3 channels; optional distillation head',
    ),
}
