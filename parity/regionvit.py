"""Parity with vit_pytorch.regionvit: the test configurations of `regionvit.RegionViT`."""

from parity.spec import Spec

SPECS = {
    'RegionViT': Spec(
        # 16 x 32 images: local maps 4 x 8 at stage 1, windows shrink in later stages; depths kept small (compile
        # time); two-layer stages and oversized windows are tested in tests/test_regionvit.py
        configs=(
            # windows of 1 x 2 (stage 3)
            dict(dim=16, depth=(0, 0, 1, 0), window_size=2, num_classes=10),
            # windows of 2 x 4 (stage 2)
            dict(dim=(16, 24, 32, 16), depth=(0, 1, 0, 0), window_size=4, tokenize_local_3_conv=True, use_peg=True,
                 num_classes=7),
            # windows of 4 x 4 in a table for window_size 8 (local_patch_size 2)
            dict(dim=(8, 16, 12, 24), depth=(1, 0, 0, 0), window_size=8, local_patch_size=2, use_peg=True,
                 attn_dropout=0.1, ff_dropout=0.1, num_classes=3),
        ),
        notes='regional and local tokens, R2L attention with a local relative position bias; 4 stages sharing one '
              'downsampling conv per stage for both maps; `tokenize_local_3_conv`, `use_peg`; 4 heads of 32 fixed; '
              'any image size divisible by the region patch',
    ),
}
