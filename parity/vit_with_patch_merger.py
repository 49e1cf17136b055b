"""Parity with vit_pytorch.vit_with_patch_merger: the test configurations of `vit_with_patch_merger.ViT`, `vit_with_patch_merger.PatchMerger`."""

from parity.spec import Spec

SPECS = {
    'ViT': Spec(
        configs=(
            dict(image_size=32, patch_size=8, num_classes=10, dim=32, depth=2, heads=4, mlp_dim=64, dim_head=8,
                 patch_merge_num_tokens=4),
            dict(image_size=(24, 40), patch_size=(8, 4), num_classes=7, dim=24, depth=3, heads=3, mlp_dim=32,
                 dim_head=12, channels=1, patch_merge_layer=3, patch_merge_num_tokens=5),
            # the merger never runs (patch_merge_layer=0) but owns parameters; no attention projection
            dict(image_size=16, patch_size=4, num_classes=0, dim=16, depth=2, heads=1, mlp_dim=32, dim_head=16,
                 channels=2, patch_merge_layer=0, patch_merge_num_tokens=3),
            dict(image_size=(16, 24), patch_size=(4, 8), num_classes=5, dim=20, depth=1, heads=5, mlp_dim=16,
                 dim_head=4, patch_merge_layer=1),
        ),
        notes='one PatchMerger after layer `patch_merge_layer` (default depth // 2; 0 never merges); mean pooling',
    ),
    'PatchMerger': Spec(
        configs=(
            dict(dim=16, num_tokens_out=4),
            dict(dim=24, num_tokens_out=1),
            dict(dim=20, num_tokens_out=9),
        ),
        notes='the token merger alone: tokens (b, n, dim) -> (b, num_tokens_out, dim)',
    ),
}
