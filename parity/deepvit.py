"""Parity with vit_pytorch.deepvit: the test configurations of `deepvit.DeepViT`."""

from parity.spec import Spec

SPECS = {
    'DeepViT': Spec(
        configs=(
            dict(image_size=16, patch_size=4, num_classes=10, dim=32, depth=2, heads=4, mlp_dim=64, dim_head=8),
            dict(image_size=24, patch_size=8, num_classes=7, dim=24, depth=1, heads=3, mlp_dim=32, dim_head=12,
                 channels=1, pool='mean'),
            # heads=1 (reattn_weights then gets no gradient) is tested in tests/test_deepvit.py
            dict(image_size=16, patch_size=4, num_classes=3, dim=16, depth=3, heads=2, mlp_dim=32, dim_head=16,
                 channels=2),
            dict(image_size=12, patch_size=2, num_classes=5, dim=20, depth=2, heads=5, mlp_dim=16, dim_head=4,
                 pool='mean'),
        ),
        notes='re-attention (learned head mixing + LayerNorm over heads); square int sizes; pool cls/mean',
    ),
}
