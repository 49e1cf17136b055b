"""Parity with vit_pytorch.simple_flash_attn_vit_3d: the test configurations and random-configuration sweep of
`simple_flash_attn_vit_3d.SimpleViT`, under the same fix of vit-pytorch's non-flash attention as
simple_flash_attn_vit's (parity/simple_flash_attn_vit.py)."""

import numpy as np

from parity.simple_flash_attn_vit import attention_without_flash_runs
from parity.simple_vit_3d import random_configuration as random_video_configuration
from parity.spec import Spec


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random video SimpleViT with either kernel switch, and videos of any divisible size."""
    config, inputs = random_video_configuration(rng)
    return {**config, 'use_flash_attn': bool(rng.random() < 0.5)}, inputs


SPECS = {
    'SimpleViT': Spec(
        configs=(
            dict(image_size=8, image_patch_size=4, frames=4, frame_patch_size=2, num_classes=10, dim=24, depth=1,
                 heads=4, mlp_dim=32, dim_head=8),
            dict(image_size=(8, 12), image_patch_size=(4, 6), frames=3, frame_patch_size=3, num_classes=5, dim=32,
                 depth=2, heads=2, mlp_dim=32, dim_head=12, channels=1, use_flash_attn=False),
            dict(image_size=(4, 8), image_patch_size=(2, 4), frames=2, frame_patch_size=1, num_classes=0, dim=12,
                 depth=2, heads=1, mlp_dim=16, dim_head=12, channels=2),
        ),
        notes="vit-pytorch's F.scaled_dot_product_attention is `attention_impl`'s fused path here; `use_flash_attn` "
              "changes nothing (vit-pytorch's False cannot run: fixed, the reference patched the same way); fixed 3D "
              'sin-cos embedding of the input\'s grid; no LayerNorm after the layers (a bare Linear head)',
        torch_context=attention_without_flash_runs('vit_pytorch.simple_flash_attn_vit_3d'),
        random_configuration=random_configuration,
        sweep_draws=6,
    ),
}
