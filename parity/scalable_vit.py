"""Parity with vit_pytorch.scalable_vit: the test configurations of `scalable_vit.ScalableViT`."""

from parity.spec import Spec

SPECS = {
    'ScalableViT': Spec(
        # every attention sees at least two keys; a single key is tested in tests/test_scalable_vit.py
        configs=(
            dict(num_classes=10, dim=16, depth=(1, 1), heads=2, reduction_factor=2, window_size=(2, None),
                 iwsa_dim_key=8, iwsa_dim_value=8, ssa_dim_key=8, ssa_dim_value=8, ff_expansion_factor=2),
            dict(num_classes=7, dim=8, depth=(1, 0), heads=(3, 1), reduction_factor=(2, 1),
                 iwsa_dim_key=5, iwsa_dim_value=3, ssa_dim_key=4, ssa_dim_value=6, ff_expansion_factor=1,
                 channels=1, dropout=0.1),
            dict(num_classes=3, dim=12, depth=(2,), heads=3, reduction_factor=4, window_size=2, iwsa_dim_key=4,
                 iwsa_dim_value=4, ssa_dim_key=4, ssa_dim_value=4, ff_expansion_factor=1, channels=2),
        ),
        notes='conv stem; stages of scalable self-attention (strided keys / values), PEG, interactive windowed '
              'attention with a local conv (`window_size=None`: whole map); any image size',
    ),
}
