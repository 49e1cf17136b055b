"""Parity with vit_pytorch.twins_svt: the test configurations of `twins_svt.TwinsSVT`."""

from parity.spec import Spec

SPECS = {
    'TwinsSVT': Spec(
        # every local window and every global attention sees at least two keys; one key is tested in
        # tests/test_twins_svt.py
        configs=(
            dict(num_classes=10, s1_emb_dim=16, s1_patch_size=2, s1_local_patch_size=2, s1_global_k=2, s1_depth=0,
                 s2_emb_dim=16, s2_patch_size=1, s2_local_patch_size=2, s2_global_k=2, s2_depth=0,
                 s3_emb_dim=24, s3_patch_size=1, s3_local_patch_size=2, s3_global_k=2, s3_depth=0,
                 s4_emb_dim=32, s4_patch_size=2, s4_global_k=1, s4_depth=0),
            # s1_global_k=3 on a 4 x 6 map: the key / value conv drops the last row; s4_local_patch_size is ignored
            dict(num_classes=7, dropout=0.1, peg_kernel_size=5,
                 s1_emb_dim=12, s1_patch_size=2, s1_local_patch_size=2, s1_global_k=3, s1_depth=0,
                 s2_emb_dim=16, s2_patch_size=1, s2_local_patch_size=2, s2_global_k=1, s2_depth=0,
                 s3_emb_dim=20, s3_patch_size=1, s3_local_patch_size=2, s3_global_k=2, s3_depth=0,
                 s4_emb_dim=24, s4_patch_size=2, s4_local_patch_size=5, s4_global_k=1, s4_depth=1),
            dict(num_classes=3, peg_kernel_size=1,
                 s1_emb_dim=16, s1_patch_size=1, s1_local_patch_size=4, s1_global_k=4, s1_depth=0,
                 s2_emb_dim=20, s2_patch_size=2, s2_local_patch_size=2, s2_global_k=2, s2_depth=0,
                 s3_emb_dim=16, s3_patch_size=1, s3_local_patch_size=2, s3_global_k=1, s3_depth=0,
                 s4_emb_dim=16, s4_patch_size=2, s4_global_k=1, s4_depth=0),
        ),
        notes='locally-grouped + global sub-sampled attention (strided conv keys / values), PEG, four stages; '
              'heads=8, dim_head=64 fixed; 3 channels; any image size the stages divide',
    ),
}
