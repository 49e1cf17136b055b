"""Parity with vit_pytorch.cvt: the test configurations and random-configuration sweep of `cvt.CvT`."""

import numpy as np

from parity.spec import Spec


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random CvT (every stage keyword, odd projection kernels as vit-pytorch needs, channels, classes) and images
    of any size and aspect ratio."""
    config = dict(num_classes=int(rng.integers(0, 5)), channels=int(rng.integers(1, 4)))
    for prefix in ('s1', 's2', 's3'):
        config.update({
            f'{prefix}_emb_dim': int(rng.integers(2, 13)),
            f'{prefix}_emb_kernel': int(rng.integers(1, 6)),
            f'{prefix}_emb_stride': int(rng.integers(1, 4)),
            f'{prefix}_proj_kernel': int(rng.choice([1, 3, 5])),
            f'{prefix}_kv_proj_stride': int(rng.integers(1, 4)),
            f'{prefix}_heads': int(rng.integers(1, 3)),
            f'{prefix}_depth': int(rng.random() < 0.4),  # few layers: each costs compile time
            f'{prefix}_mlp_mult': int(rng.integers(1, 4)),
        })
    size = (int(rng.integers(4, 25)), int(rng.integers(4, 25)))
    return config, (rng.standard_normal((2, *size, config['channels']), dtype=np.float32),)


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
        random_configuration=random_configuration,
    ),
}
