"""Parity with vit_pytorch.simple_flash_attn_vit: the test configurations and random-configuration sweep of
`simple_flash_attn_vit.SimpleViT`, and the fix of vit-pytorch's `use_flash=False` path the comparison runs under.

vit-pytorch 1.26.11's `Attend.forward` without flash calls `einsum`, which the file never imports (a NameError),
with the key pattern `b j d`, which has no heads axis. The reference runs vit-pytorch's Attend with that path written
as meant: `softmax(q k^T * dim_head ** -0.5) v` per head. The flash path (the default) is vit-pytorch's own.
"""

import contextlib
from unittest import mock

import numpy as np
import torch

from parity.simple_vit_with_patch_dropout import random_configuration as random_grid_configuration
from parity.spec import Spec
from vit_flax import converters


def attend_as_meant(self, q, k, v):
    """vit_pytorch's Attend.forward, its non-flash branch with torch's einsum and the heads axis on the keys."""
    if self.use_flash:
        return self.flash_attn(q, k, v)
    sim = torch.einsum('bhid,bhjd->bhij', q, k) * q.shape[-1] ** -0.5
    return torch.einsum('bhij,bhjd->bhid', sim.softmax(dim=-1), v)


def attention_without_flash_runs(module_name: str):
    @contextlib.contextmanager
    def context():
        module = converters.import_vit_pytorch(module_name)
        with mock.patch.object(module.Attend, 'forward', attend_as_meant):
            yield

    return context


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random flash-attention SimpleViT, either kernel switch, and images of any patch grid up to one more patch a
    side than image_size's (the sin-cos embedding follows the input's grid)."""
    config, inputs = random_grid_configuration(rng)
    del config['patch_dropout']
    return {**config, 'use_flash': bool(rng.random() < 0.5)}, inputs


SPECS = {
    'SimpleViT': Spec(
        configs=(
            dict(image_size=16, patch_size=4, num_classes=10, dim=32, depth=1, heads=4, mlp_dim=32, dim_head=8),
            dict(image_size=(24, 16), patch_size=(8, 4), num_classes=5, dim=24, depth=2, heads=2, mlp_dim=32,
                 dim_head=12, channels=1, use_flash=False),
            dict(image_size=16, patch_size=4, num_classes=0, dim=16, depth=2, heads=1, mlp_dim=16, dim_head=16,
                 channels=2),
        ),
        notes="vit-pytorch's F.scaled_dot_product_attention is `attention_impl`'s fused path here; `use_flash` changes "
              "nothing (vit-pytorch's use_flash=False cannot run: fixed, the reference patched the same way); no "
              'final transformer norm, LayerNorm in the head',
        torch_context=attention_without_flash_runs('vit_pytorch.simple_flash_attn_vit'),
        random_configuration=random_configuration,
        sweep_draws=6,
    ),
}
