"""Parity with vit_pytorch.vivit: the test configurations and random-configuration sweep of `vivit.ViT`."""

import numpy as np

from parity.spec import Spec
from vit_flax.vivit import VARIANTS


def frame_masks(frames: int, rng: np.random.Generator) -> np.ndarray:
    """Frame masks (3, frames) for three videos: frames partly masked, none masked, all masked."""
    partly = rng.random(frames) < 0.5
    partly[0], partly[-1] = True, False
    return np.stack([partly, np.ones(frames, bool), np.zeros(frames, bool)])


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random ViViT (both variants and pools, both attention paths, shapes, channels, heads, dim_head, temporal
    depth 0 too) and three videos up to its frames and image size, with frame masks half the time."""
    patch = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    grid = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    frame_patch, frame_patches = int(rng.integers(1, 4)), int(rng.integers(2, 4))
    heads = int(rng.integers(1, 4))
    dim = 4 * int(rng.integers(2, 6))
    variant = str(rng.choice(VARIANTS))
    spatial_depth = int(rng.integers(1, 3))
    use_flash_attn = bool(rng.random() < 0.5)
    config = dict(image_size=(patch[0] * grid[0], patch[1] * grid[1]), image_patch_size=patch,
                  frames=frame_patch * frame_patches, frame_patch_size=frame_patch,
                  num_classes=int(rng.integers(1, 5)), dim=dim, spatial_depth=spatial_depth,
                  temporal_depth=spatial_depth if variant == 'factorized_self_attention' else int(rng.integers(0, 3)),
                  heads=heads, mlp_dim=int(rng.integers(1, 40)), channels=int(rng.integers(1, 4)),
                  dim_head=dim if heads == 1 and rng.random() < 0.5 else int(rng.integers(1, 12)),
                  pool=str(rng.choice(['cls', 'mean'])), variant=variant, use_flash_attn=use_flash_attn,
                  # vit-pytorch's flash path drops attention weights in eval mode too
                  dropout=0.0 if use_flash_attn else 0.1)
    frames = frame_patch * int(rng.integers(1, frame_patches + 1))
    size = tuple(p * int(rng.integers(1, g + 1)) for p, g in zip(patch, grid))
    videos = rng.standard_normal((3, frames, *size, config['channels']), dtype=np.float32)
    masked = rng.random() < 0.5
    return config, (videos, frame_masks(frames, rng)) if masked else (videos,)


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
        random_configuration=random_configuration,
        # ten draws of the sweep's seed reach both variants and pools, both attention paths, temporal_depth=0 and
        # videos with and without masks (six draw mean pools only, every one masked)
        sweep_draws=10,
    ),
}
