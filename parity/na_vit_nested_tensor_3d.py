"""Parity with vit_pytorch.na_vit_nested_tensor_3d: the test configurations and random-configuration sweep of
`na_vit_nested_tensor_3d.NaViT`."""

from unittest import mock

import numpy as np
import torch

from parity.spec import Spec
from vit_flax.converters import import_vit_pytorch


def torch_keeps_gradients():
    """A context under which vit-pytorch's nested-tensor 3-D NaViT passes gradients to every parameter."""
    module = import_vit_pytorch('vit_pytorch.na_vit_nested_tensor_3d')
    return mock.patch.object(module, 'nested_tensor', torch.nested.as_nested_tensor)


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random 3-D nested-tensor NaViT (rectangular sizes, frame and spatial patch sizes, 0 to 3 registers, q/k norm
    or not) and one to four volumes of mixed frame counts and sizes."""
    patch_size, frame_patch_size = int(rng.choice([2, 4])), int(rng.choice([1, 2]))
    config = dict(
        image_size=(patch_size * int(rng.integers(1, 4)), patch_size * int(rng.integers(1, 4))),
        max_frames=frame_patch_size * int(rng.integers(1, 4)), patch_size=patch_size,
        frame_patch_size=frame_patch_size, num_classes=int(rng.integers(1, 6)), dim=int(rng.choice([8, 16])),
        depth=int(rng.integers(1, 3)), heads=int(rng.integers(1, 3)), mlp_dim=int(rng.choice([8, 16])),
        dim_head=int(rng.choice([4, 8])), channels=int(rng.integers(1, 4)), num_registers=int(rng.integers(0, 4)),
        qk_rmsnorm=bool(rng.integers(2)),
    )
    grid = (config['max_frames'] // frame_patch_size, *(side // patch_size for side in config['image_size']))
    sizes = (frame_patch_size, patch_size, patch_size)
    volumes = [rng.standard_normal((*(size * int(rng.integers(1, g + 1)) for size, g in zip(sizes, grid)),
                                    config['channels']), dtype=np.float32) for _ in range(int(rng.integers(1, 5)))]
    return config, (volumes,)


SPECS = {
    'NaViT': Spec(
        configs=(
            dict(image_size=(8, 12), max_frames=4, patch_size=4, frame_patch_size=2, num_classes=5, dim=16, depth=1,
                 heads=2, mlp_dim=32, dim_head=8, num_registers=2),
            dict(image_size=8, max_frames=3, patch_size=2, frame_patch_size=1, num_classes=3, dim=24, depth=2,
                 heads=3, mlp_dim=16, dim_head=8, channels=1, dropout=0.1, emb_dropout=0.1, token_dropout_prob=0.25,
                 qk_rmsnorm=False),
            dict(image_size=(4, 8), max_frames=2, patch_size=4, frame_patch_size=2, num_classes=4, dim=8, depth=1,
                 heads=1, mlp_dim=8, dim_head=8, channels=2, num_registers=0),
        ),
        torch_context=torch_keeps_gradients,
        notes="vit-pytorch's nested-tensor NaViT for videos / volumes of mixed frame counts and sizes (one jagged "
              'sequence each; here padded and masked): factorised frame, row and column position embeddings, '
              '`num_registers` register tokens per video, q/k LayerNorm, attention pooling without residual',
        random_configuration=random_configuration,
        sweep_draws=6,
    ),
}
