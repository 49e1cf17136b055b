"""Parity with vit_pytorch.vivit: the test configurations of `vivit.ViT`."""

from parity.spec import Spec

SPECS = {
    'ViT': Spec(
        # both variants x both pools; every temporal attention sees >= 2 frame patches. Masks, fully masked videos
        # and the flash / explicit attention paths are tested in tests/test_vivit.py
        configs=(
            dict(image_size=8, image_patch_size=4, frames=4, frame_patch_size=2, num_classes=10, dim=16,
                 spatial_depth=1, temporal_depth=1, heads=2, mlp_dim=32, dim_head=8),
            dict(image_size=(8, 12), image_patch_size=(4, 6), frames=3, frame_patch_size=1, num_classes=7, dim=24,
                 spatial_depth=2, temporal_depth=2, heads=3, mlp_dim=16, dim_head=8, channels=1, pool='mean',
                 variant='factorized_self_attention'),
            # one head with dim_head == dim: no output projection; vit-pytorch's flash path drops attention
            # weights even in eval mode, so dropout is compared on the explicit path
            dict(image_size=(6, 4), image_patch_size=2, frames=4, frame_patch_size=1, num_classes=5, dim=12,
                 spatial_depth=1, temporal_depth=2, heads=1, mlp_dim=20, dim_head=12, channels=2, pool='mean',
                 dropout=0.1, emb_dropout=0.1, use_flash_attn=False),
            dict(image_size=8, image_patch_size=(2, 4), frames=6, frame_patch_size=3, num_classes=3, dim=20,
                 spatial_depth=1, temporal_depth=1, heads=4, mlp_dim=24, dim_head=5,
                 variant='factorized_self_attention'),
        ),
        notes="factorised encoder (spatial then temporal transformer) or factorised self-attention; pool cls/mean; "
              "per-frame `mask`; vit-pytorch 1.26's class is ViViT, `ViT` is its README's (older) name",
    ),
}
