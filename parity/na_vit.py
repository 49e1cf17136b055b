"""Parity with vit_pytorch.na_vit: the test configurations and random-configuration sweep of `na_vit.NaViT`."""

import numpy as np

from parity.spec import Spec


def random_keywords(rng: np.random.Generator) -> dict:
    """Random keywords both NaViTs take (rectangular image sizes, patch sizes, widths, depths, heads, channels,
    classes)."""
    patch_size = int(rng.choice([2, 4, 8]))
    return dict(image_size=(patch_size * int(rng.integers(1, 5)), patch_size * int(rng.integers(1, 5))),
                patch_size=patch_size, num_classes=int(rng.integers(1, 8)), dim=int(rng.choice([8, 16, 24])),
                depth=int(rng.integers(1, 3)), heads=int(rng.integers(1, 4)), mlp_dim=int(rng.choice([8, 16])),
                dim_head=int(rng.choice([4, 8])), channels=int(rng.integers(1, 4)))


def random_images(config: dict, rng: np.random.Generator) -> list[np.ndarray]:
    """One to five images of mixed sizes and aspect ratios, each side a multiple of the patch size up to
    image_size."""
    p = config['patch_size']
    rows, columns = (side // p for side in config['image_size'])
    return [rng.standard_normal((p * int(rng.integers(1, rows + 1)), p * int(rng.integers(1, columns + 1)),
                                 config['channels']), dtype=np.float32) for _ in range(int(rng.integers(1, 6)))]


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random NaViT and its images in one or two groups (packed sequences)."""
    config = random_keywords(rng)
    images = random_images(config, rng)
    return config, ([images[:1], images[1:]] if len(images) > 1 else [images],)


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
        random_configuration=random_configuration,
        sweep_draws=6,
    ),
}
