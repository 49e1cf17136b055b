"""Parity with vit_pytorch.vit_for_small_dataset: the test configurations of `vit_for_small_dataset.ViT`, `vit_for_small_dataset.SPT`."""

from parity.spec import Spec

SPECS = {
    'ViT': Spec(
        configs=(
            dict(image_size=32, patch_size=8, num_classes=10, dim=32, depth=2, heads=4, mlp_dim=64, dim_head=8),
            dict(image_size=(24, 40), patch_size=8, num_classes=7, dim=24, depth=1, heads=3, mlp_dim=32,
                 dim_head=12, channels=1, pool='mean'),
            dict(image_size=16, patch_size=4, num_classes=3, dim=16, depth=2, heads=1, mlp_dim=32, dim_head=16,
                 channels=2),
            dict(image_size=(6, 10), patch_size=2, num_classes=5, dim=20, depth=1, heads=5, mlp_dim=16,
                 dim_head=4, dropout=0.1, emb_dropout=0.1),
        ),
        notes='shifted patch tokens (SPT), locality self-attention (learned temperature, no self-attention); '
              'int patch_size only; mean pooling includes the cls token',
    ),
    'SPT': Spec(
        configs=(
            dict(dim=32, patch_size=4),
            dict(dim=12, patch_size=3, channels=1),
            dict(dim=20, patch_size=1, channels=2),
        ),
        notes='the shifted patch tokenizer alone: images (b, H, W, c) -> tokens (b, n, dim)',
    ),
}
