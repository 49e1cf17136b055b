"""Parity with vit_pytorch.pit: the test configurations of `pit.PiT`."""

from parity.spec import Spec

SPECS = {
    'PiT': Spec(
        configs=(
            dict(image_size=12, patch_size=4, num_classes=10, dim=16, depth=(1, 1), heads=2, mlp_dim=32, dim_head=8),
            # patch 7, stride 3: torch's int() drops the last pixels (3 x 3 patches); an empty middle stage
            dict(image_size=14, patch_size=7, num_classes=7, dim=12, depth=(1, 0, 1), heads=(3, 1, 5), mlp_dim=20,
                 dim_head=5, channels=1, dropout=0.1, emb_dropout=0.1),
            # stage 0 has one head of width dim_head == dim: no attention output projection
            dict(image_size=15, patch_size=5, num_classes=3, dim=16, depth=(2, 1), heads=(1, 2), mlp_dim=24,
                 dim_head=16, channels=2),
        ),
        notes='stages of transformers (`depth` tuple, per-stage `heads`) with depthwise-conv pooling between them; '
              'overlapping patches (stride patch_size // 2); square int sizes; cls-token head',
    ),
}
