"""Parity with vit_pytorch.nest: the test configurations of `nest.NesT`."""

from parity.spec import Spec

SPECS = {
    'NesT': Spec(
        configs=(
            dict(image_size=16, patch_size=4, num_classes=10, dim=16, heads=2, num_hierarchies=2, block_repeats=1),
            dict(image_size=16, patch_size=2, num_classes=7, dim=12, heads=3, num_hierarchies=3,
                 block_repeats=(1, 2, 1), mlp_mult=2, channels=1, dim_head=5),
            dict(image_size=8, patch_size=2, num_classes=3, dim=20, heads=3, num_hierarchies=1, block_repeats=2,
                 channels=2, dropout=0.1),
        ),
        notes='hierarchies of local transformers over blocks, block aggregation (conv, channel LayerNorm, max pool); '
              '`dim_head` ignored (dim // heads); int image_size',
    ),
}
