"""Parity with vit_pytorch.vivit_with_moss: the test configurations and random-configuration sweeps of
`vivit_with_moss.ViViT` and `vivit_with_moss.MOSS`.

vit-pytorch's default attention (`use_flash_attn=True`) is F.scaled_dot_product_attention inside an `sdpa_kernel`
context that allows the MATH backend, so it runs on CPU in float64 as shipped: no patch is needed."""

import numpy as np

from parity.spec import Spec


def frame_masks(frames: int, rng: np.random.Generator) -> np.ndarray:
    """Frame masks (3, frames) for three videos: frames partly masked, none masked, all masked."""
    partly = rng.random(frames) < 0.5
    partly[0], partly[-1] = True, False
    return np.stack([partly, np.ones(frames, bool), np.zeros(frames, bool)])


def random_moss_keywords(rng: np.random.Generator) -> dict:
    """MOSS's sizes, as MOSS keywords: odd local sizes up to 5, 0 to 3 orders, small hidden widths, either
    temporal padding."""
    return dict(local_time=int(rng.choice([1, 3, 5])), local_height=int(rng.choice([1, 3, 5])),
                local_width=int(rng.choice([1, 3])), hidden_dim=int(rng.integers(1, 9)),
                orders=int(rng.integers(0, 4)), causal=bool(rng.random() < 0.5))


def random_vivit(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random ViViT with MOSS (both pools, both attention paths, causal or not, every MOSS size, rectangular
    patches and grids, channels, one head of dim_head == dim sometimes) and three videos of its image size with up
    to its frames; frame masks half the time where MOSS is not causal (vit-pytorch refuses them otherwise)."""
    patch = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    grid = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    frame_patch, frame_patches = int(rng.integers(1, 3)), int(rng.integers(1, 4))
    heads = int(rng.integers(1, 4))
    dim = 4 * int(rng.integers(1, 5))
    use_flash_attn = bool(rng.random() < 0.5)
    moss = random_moss_keywords(rng)
    config = dict(image_size=(patch[0] * grid[0], patch[1] * grid[1]), image_patch_size=patch,
                  frames=frame_patch * frame_patches, frame_patch_size=frame_patch,
                  num_classes=int(rng.integers(1, 5)), dim=dim, spatial_depth=int(rng.integers(0, 3)),
                  temporal_depth=int(rng.integers(0, 3)), heads=heads, mlp_dim=int(rng.integers(1, 20)),
                  channels=int(rng.integers(1, 4)),
                  dim_head=dim if heads == 1 and rng.random() < 0.5 else int(rng.integers(1, 8)),
                  pool=str(rng.choice(['cls', 'mean'])), use_flash_attn=use_flash_attn,
                  # vit-pytorch's flash path drops attention weights in eval mode too
                  dropout=0.0 if use_flash_attn else 0.1,
                  **{f'moss_{key}': value for key, value in moss.items()})
    frames = frame_patch * int(rng.integers(1, frame_patches + 1))
    videos = rng.standard_normal((3, frames, *config['image_size'], config['channels']), dtype=np.float32)
    masked = not moss['causal'] and rng.random() < 0.5
    return config, (videos, frame_masks(frames, rng)) if masked else (videos,)


def random_moss(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random MOSS and token grids of random frames, height and width (a single frame or pixel included)."""
    config = dict(dim=int(rng.integers(1, 13)), **random_moss_keywords(rng))
    shape = (2, int(rng.integers(1, 6)), int(rng.integers(1, 5)), int(rng.integers(1, 5)), config['dim'])
    return config, (rng.standard_normal(shape, dtype=np.float32),)


SPECS = {
    'ViViT': Spec(
        # masks (partly and fully masked videos, both attention paths), fewer frames, caches and the quirk of a
        # causal temporal transformer read at its cls token are tested in tests/test_vivit_with_moss.py
        configs=(
            # MOSS and the temporal transformer causal (the default), mean pool: the logits depend on the video
            dict(image_size=8, image_patch_size=4, frames=4, frame_patch_size=2, num_classes=5, dim=16,
                 spatial_depth=1, temporal_depth=1, heads=2, mlp_dim=16, dim_head=8, moss_hidden_dim=8, pool='mean'),
            # cls pool with a non-causal MOSS, rectangular patches and grid, one channel, one order
            dict(image_size=(8, 12), image_patch_size=(4, 3), frames=6, frame_patch_size=2, num_classes=7, dim=12,
                 spatial_depth=2, temporal_depth=1, heads=3, mlp_dim=16, dim_head=4, channels=1, moss_local_time=1,
                 moss_local_height=3, moss_local_width=5, moss_hidden_dim=6, moss_orders=1, moss_causal=False),
            # the explicit attention path with dropout (compared in eval mode), one head of dim_head == dim (no
            # output projection), three orders of a wide causal neighbourhood; cls pool under causal attention
            # (vit-pytorch's quirk: the logits do not depend on the video)
            dict(image_size=(6, 4), image_patch_size=2, frames=5, frame_patch_size=1, num_classes=3, dim=8,
                 spatial_depth=1, temporal_depth=2, heads=1, mlp_dim=12, dim_head=8, channels=2, dropout=0.1,
                 emb_dropout=0.1, use_flash_attn=False, moss_local_time=5, moss_local_height=1, moss_hidden_dim=4,
                 moss_orders=3),
            # no MOSS orders (only its `to_out`), no temporal layers (only the final norm), explicit non-causal
            dict(image_size=4, image_patch_size=2, frames=3, frame_patch_size=1, num_classes=2, dim=8,
                 spatial_depth=1, temporal_depth=0, heads=2, mlp_dim=8, dim_head=4, pool='mean', moss_orders=0,
                 moss_causal=False, use_flash_attn=False),
        ),
        notes='factorised ViViT whose patch tokens pass through MOSS (space-time self-similarity encoders) between '
              'the spatial and temporal transformers; `moss_causal` also makes the temporal transformer causal; '
              'flash (sdpa) or explicit attention',
        random_configuration=random_vivit,
        # ten draws of the sweep's seed reach both pools, both attention paths, causal and non-causal MOSS, zero and
        # several orders, local sizes 1 to 5, depth 0, masked videos and fewer frames
        sweep_draws=10,
    ),
    'MOSS': Spec(
        configs=(
            dict(dim=8, hidden_dim=4),
            # causal: only past frames in the neighbourhood; one order
            dict(dim=6, local_time=5, local_height=1, local_width=3, hidden_dim=5, orders=1, causal=True),
            # a single-frame neighbourhood and three orders
            dict(dim=4, local_time=1, local_height=5, local_width=5, hidden_dim=3, orders=3, causal=True),
            # no orders: only `to_out`
            dict(dim=5, orders=0),
        ),
        notes='space-time self-similarity of (batch, frames, height, width, dim) tokens in odd local windows, '
              'encoded per order; causal (past frames only, with a cache of the last frames) or centred',
        random_configuration=random_moss,
        sweep_draws=10,
    ),
}
