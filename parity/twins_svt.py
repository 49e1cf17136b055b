"""Parity with vit_pytorch.twins_svt: the test configurations and random-configuration sweep of
`twins_svt.TwinsSVT`."""

import numpy as np

from parity.spec import Spec
from vit_flax.twins_svt import STAGES, TwinsSVT


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random TwinsSVT (every stage keyword, PEG kernels, classes with 0) and images of a size and aspect ratio
    every stage's patches, windows and key / value conv fit (drawn together until they do)."""
    while True:
        config = dict(num_classes=int(rng.integers(0, 5)), peg_kernel_size=int(rng.choice([1, 3, 5])))
        for index, prefix in enumerate(STAGES):
            config.update({
                f'{prefix}_emb_dim': int(rng.integers(2, 13)),
                f'{prefix}_patch_size': int(rng.integers(1, 5 if index == 0 else 3)),
                f'{prefix}_local_patch_size': int(rng.integers(1, 4)),
                f'{prefix}_global_k': int(rng.integers(1, 4)),
                f'{prefix}_depth': int(rng.random() < 0.2),  # few layers: each costs compile time
            })
        shape = (2, int(rng.integers(4, 25)), int(rng.integers(4, 25)), TwinsSVT.channels)
        try:
            TwinsSVT(**config).check_input(np.zeros(shape))
        except ValueError:
            continue
        return config, (rng.standard_normal(shape, dtype=np.float32),)


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
        random_configuration=random_configuration,
    ),
}
