"""Parity with vit_pytorch.cvt: the test configurations of `cvt.CvT`."""

from parity.spec import Spec

SPECS = {
    'CvT': Spec(
        # single-key attention (its query projection then gets no gradient) is tested in tests/test_cvt.py
        configs=(
            dict(num_classes=10, s1_emb_dim=16, s1_heads=1, s2_emb_dim=24, s2_heads=2, s2_depth=1, s3_emb_dim=32,
                 s3_heads=1, s3_depth=1, s3_kv_proj_stride=1),
            dict(num_classes=7, channels=1, dropout=0.1,
                 s1_emb_dim=8, s1_emb_kernel=4, s1_emb_stride=2, s1_proj_kernel=5, s1_kv_proj_stride=3, s1_heads=2,
                 s1_mlp_mult=1,
                 s2_emb_dim=12, s2_emb_kernel=5, s2_emb_stride=3, s2_proj_kernel=1, s2_kv_proj_stride=1, s2_heads=1,
                 s2_depth=1, s2_mlp_mult=2,
                 s3_emb_dim=20, s3_emb_kernel=2, s3_emb_stride=1, s3_proj_kernel=3, s3_kv_proj_stride=2, s3_heads=3,
                 s3_depth=1, s3_mlp_mult=3),
            dict(num_classes=3, channels=2,
                 s1_emb_dim=12, s1_emb_kernel=3, s1_emb_stride=3, s1_heads=1, s1_depth=2, s1_mlp_mult=2,
                 s2_emb_dim=16, s2_heads=2, s2_depth=0,
                 s3_emb_dim=24, s3_emb_kernel=1, s3_emb_stride=1, s3_depth=0),
        ),
        notes='three conv-embedded stages, depth-wise separable conv projections with BatchNorm, channel LayerNorm; '
              "any image size; `method='layers'` gives the latents",
    ),
}
