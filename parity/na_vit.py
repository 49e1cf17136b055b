"""Parity with vit_pytorch.na_vit: the test configurations of `na_vit.NaViT`."""

from parity.spec import Spec

SPECS = {
    'NaViT': Spec(
        configs=(
            dict(image_size=32, patch_size=8, num_classes=10, dim=32, depth=2, heads=4, mlp_dim=64, dim_head=8),
            dict(image_size=(12, 20), patch_size=4, num_classes=7, dim=24, depth=1, heads=3, mlp_dim=32, dim_head=12,
                 channels=1, dropout=0.1, emb_dropout=0.1, token_dropout_prob=0.25),
            dict(image_size=(8, 16), patch_size=2, num_classes=3, dim=16, depth=1, heads=1, mlp_dim=16, dim_head=16,
                 channels=2),
        ),
        notes='lists of mixed-resolution images packed into sequences (attention masked per image, attention '
              "pooling per image) or fixed-shape `PackedBatch`es from the grain packer; token dropout (rng stream "
              "'token_dropout'); q/k RMSNorm",
    ),
}
