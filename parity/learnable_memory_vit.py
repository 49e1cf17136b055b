"""Parity with vit_pytorch.learnable_memory_vit: the test configurations and random-configuration sweeps of
`learnable_memory_vit.ViT`, `learnable_memory_vit.Adapter`."""

import numpy as np

from parity.spec import Spec
from vit_flax import learnable_memory_vit


def random_backbone(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random backbone (rectangular patches and grids, channels, heads, dim_head, both pools, class counts with 0)
    and images of its image_size."""
    patch_height, patch_width = int(rng.integers(1, 5)), int(rng.integers(1, 5))
    rows, columns = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    config = dict(image_size=(rows * patch_height, columns * patch_width), patch_size=(patch_height, patch_width),
                  num_classes=int(rng.integers(0, 5)), dim=int(rng.integers(2, 25)), depth=int(rng.integers(1, 3)),
                  heads=int(rng.integers(1, 5)), mlp_dim=int(rng.integers(1, 33)), channels=int(rng.integers(1, 4)),
                  dim_head=int(rng.integers(1, 10)), pool=str(rng.choice(['cls', 'mean'])))
    shape = (2, *config['image_size'], config['channels'])
    return config, (rng.standard_normal(shape, dtype=np.float32),)


def random_adapter(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random Adapter (0 to 5 memories per layer, its own class count) on a random backbone, and images of the
    backbone's image_size."""
    backbone, inputs = random_backbone(rng)
    config = dict(vit=learnable_memory_vit.ViT(**backbone), num_memories_per_layer=int(rng.integers(0, 6)),
                  num_classes=int(rng.integers(1, 6)))
    return config, inputs


SPECS = {
    'ViT': Spec(
        configs=(
            dict(image_size=16, patch_size=4, num_classes=10, dim=32, depth=2, heads=4, mlp_dim=64, dim_head=8),
            dict(image_size=(12, 20), patch_size=(4, 5), num_classes=7, dim=24, depth=1, heads=3, mlp_dim=32,
                 dim_head=12, channels=1, pool='mean'),
            dict(image_size=8, patch_size=2, num_classes=3, dim=16, depth=3, heads=1, mlp_dim=16, dim_head=16,
                 channels=2),
        ),
        notes='the backbone of learnable_memory_vit.Adapter; separate to_q / to_kv; always reads the cls token',
        random_configuration=random_backbone,
        sweep_draws=2,  # every draw of the Adapter's sweep runs a random backbone too
    ),
    'Adapter': Spec(
        configs=(
            dict(vit=learnable_memory_vit.ViT(image_size=16, patch_size=4, num_classes=10, dim=32, depth=2, heads=4,
                                              mlp_dim=64, dim_head=8), num_memories_per_layer=3, num_classes=5),
            dict(vit=learnable_memory_vit.ViT(image_size=(12, 20), patch_size=(4, 5), num_classes=7, dim=24, depth=1,
                                              heads=3, mlp_dim=32, dim_head=12, channels=1, pool='mean')),
            dict(vit=learnable_memory_vit.ViT(image_size=8, patch_size=2, num_classes=3, dim=16, depth=3, heads=1,
                                              mlp_dim=16, dim_head=16, channels=2), num_memories_per_layer=1,
                 num_classes=4),
        ),
        notes='learnable memories per layer + memory cls token + head on a frozen backbone `vit` (stop_gradient); '
              "persistent `attn_mask` in the 'buffers' collection",
        random_configuration=random_adapter,
    ),
}
