"""Parity with vit_pytorch.cross_vit: the test configurations of `cross_vit.CrossViT`."""

from parity.spec import Spec

SPECS = {
    'CrossViT': Spec(
        configs=(
            dict(image_size=16, num_classes=10, sm_dim=16, lg_dim=32, sm_patch_size=4, sm_enc_depth=1,
                 sm_enc_heads=2, sm_enc_mlp_dim=32, sm_enc_dim_head=8, lg_patch_size=8, lg_enc_depth=1,
                 lg_enc_heads=4, lg_enc_mlp_dim=32, lg_enc_dim_head=8, cross_attn_depth=1, cross_attn_heads=2,
                 cross_attn_dim_head=8, depth=1),
            dict(image_size=24, num_classes=7, sm_dim=24, lg_dim=20, sm_patch_size=4, sm_enc_depth=1,
                 sm_enc_heads=3, sm_enc_mlp_dim=16, sm_enc_dim_head=5, lg_patch_size=12, lg_enc_depth=1,
                 lg_enc_heads=1, lg_enc_mlp_dim=24, lg_enc_dim_head=20, cross_attn_depth=2, cross_attn_heads=5,
                 cross_attn_dim_head=4, depth=1, channels=1),
            # equal widths: no project_in / project_out; a branch transformer that is only its final LayerNorm;
            # two multi-scale layers
            dict(image_size=12, num_classes=3, sm_dim=16, lg_dim=16, sm_patch_size=2, sm_enc_depth=0,
                 sm_enc_heads=2, sm_enc_mlp_dim=8, sm_enc_dim_head=4, lg_patch_size=6, lg_enc_depth=1,
                 lg_enc_heads=3, lg_enc_mlp_dim=16, lg_enc_dim_head=6, cross_attn_depth=1, cross_attn_heads=1,
                 cross_attn_dim_head=16, depth=2, channels=2),
        ),
        notes='two patch sizes, a transformer per branch, cls tokens cross-attending to the other branch; '
              'int sizes; summed heads',
    ),
}
