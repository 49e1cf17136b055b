"""Parity with vit_pytorch.regionvit: the test configurations and random-configuration sweep of
`regionvit.RegionViT`."""

import jax
import numpy as np

from parity.spec import Spec
from vit_flax.regionvit import RegionViT


def random_keywords(rng: np.random.Generator) -> tuple[dict, tuple[int, int]]:
    """A random RegionViT (stage dims, one layer, window and local patch sizes, encoders, PEG, classes) and an image
    size (height, width) of whole region patches, which vit-pytorch may still refuse (its windows need not tile
    every stage's maps, nor stay inside the position table)."""
    window_size, local_patch_size = int(rng.integers(1, 5)), int(rng.integers(1, 5))
    region = window_size * local_patch_size
    size = tuple(region * int(rng.integers(1, max(2, 40 // region) + 1)) for _ in range(2))
    depth = [0, 0, 0, 0]
    depth[int(rng.integers(4))] = 1  # one layer: compile time grows with every layer
    config = dict(dim=tuple(int(d) for d in rng.integers(4, 25, size=4)), depth=tuple(depth),
                  window_size=window_size, local_patch_size=local_patch_size, num_classes=int(rng.integers(1, 6)),
                  tokenize_local_3_conv=bool(rng.integers(2)), use_peg=bool(rng.integers(2)))
    return config, size


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """random_keywords drawn until the model takes its image size (it refuses exactly what vit-pytorch refuses:
    tests/test_regionvit.py), and RGB images of that size."""
    while True:
        config, size = random_keywords(rng)
        shape = (2, *size, 3)
        try:
            jax.eval_shape(RegionViT(**config).init, jax.random.key(0), jax.ShapeDtypeStruct(shape, np.float32))
        except ValueError:
            continue
        return config, (rng.standard_normal(shape, dtype=np.float32),)


SPECS = {
    'RegionViT': Spec(
        # 16 x 32 images: local maps 4 x 8 at stage 1, windows shrink in later stages; depths kept small (compile
        # time); two-layer stages and oversized windows are tested in tests/test_regionvit.py
        configs=(
            # windows of 1 x 2 (stage 3)
            dict(dim=16, depth=(0, 0, 1, 0), window_size=2, num_classes=10),
            # windows of 2 x 4 (stage 2)
            dict(dim=(16, 24, 32, 16), depth=(0, 1, 0, 0), window_size=4, tokenize_local_3_conv=True, use_peg=True,
                 num_classes=7),
            # windows of 4 x 4 in a table for window_size 8 (local_patch_size 2)
            dict(dim=(8, 16, 12, 24), depth=(1, 0, 0, 0), window_size=8, local_patch_size=2, use_peg=True,
                 attn_dropout=0.1, ff_dropout=0.1, num_classes=3),
        ),
        notes='regional and local tokens, R2L attention with a local relative position bias; 4 stages sharing one '
              'downsampling conv per stage for both maps; `tokenize_local_3_conv`, `use_peg`; 4 heads of 32 fixed; '
              'any image size divisible by the region patch',
        random_configuration=random_configuration,
    ),
}
