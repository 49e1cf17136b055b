"""Parity with vit_pytorch.vit_3d: the test configurations of `vit_3d.ViT`."""

from parity.spec import Spec

SPECS = {
    'ViT': Spec(
        configs=(
            dict(image_size=16, image_patch_size=8, frames=4, frame_patch_size=2, num_classes=10, dim=32, depth=2,
                 heads=4, mlp_dim=64, dim_head=8),
            dict(image_size=(8, 12), image_patch_size=(4, 6), frames=3, frame_patch_size=1, num_classes=7, dim=24,
                 depth=1, heads=2, mlp_dim=32, dim_head=12, channels=1, pool='mean'),
            # a single head with dim_head == dim: no attention output projection
            dict(image_size=8, image_patch_size=4, frames=4, frame_patch_size=4, num_classes=3, dim=16, depth=2,
                 heads=1, mlp_dim=32, dim_head=16, channels=2, dropout=0.1, emb_dropout=0.1),
        ),
        notes='tokens (f h w), patches (pf p1 p2 c); always a cls token (averaged in by pool="mean"); '
              'LayerNorm in the head, not the transformer; smaller inputs slice the position embedding',
    ),
}
