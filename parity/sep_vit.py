"""Parity with vit_pytorch.sep_vit: the test configurations of `sep_vit.SepViT`."""

from parity.spec import Spec

SPECS = {
    'SepViT': Spec(
        # vit-pytorch's DSSA always uses 7 x 7 windows: 28 x 28 per stage gives one window in the last stage and
        # 2 x 2, 4 x 4 ... windows before it, so both the early return and the point-wise attention are compared
        configs=(
            dict(num_classes=10, dim=16, depth=(1, 1), heads=(1, 2)),
            dict(num_classes=5, dim=24, depth=(2,), heads=3, channels=1, ff_mult=2, dim_head=16, window_size=4),
            dict(num_classes=3, dim=8, depth=(1, 0, 1), heads=(2, 1, 1), ff_mult=1.5, dropout=0.1,
                 window_size=(7, 5, 3)),
        ),
        notes='overlapping conv patch embedding + PEG per stage; depth-wise (windowed, with window tokens) then '
              'point-wise (among windows) attention; always 7 x 7 windows and dim_head 32 (`window_size` and '
              '`dim_head` are ignored, as in vit-pytorch); `depth` is a tuple',
    ),
}
