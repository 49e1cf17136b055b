"""Parity with vit_pytorch.na_vit_nested_tensor: the test configurations and random-configuration sweep of
`na_vit_nested_tensor.NaViT`."""

from unittest import mock

import numpy as np
import torch

from parity.na_vit import random_images, random_keywords
from parity.spec import Spec
from vit_flax.converters import import_vit_pytorch


def torch_keeps_gradients():
    """A context under which vit-pytorch's nested-tensor NaViT passes gradients to every parameter."""
    module = import_vit_pytorch('vit_pytorch.na_vit_nested_tensor')
    return mock.patch.object(module, 'nested_tensor', torch.nested.as_nested_tensor)


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random nested-tensor NaViT (q/k RMSNorm or not) and a flat list of its images."""
    config = {**random_keywords(rng), 'qk_rmsnorm': bool(rng.integers(2))}
    return config, (random_images(config, rng),)


SPECS = {
    'NaViT': Spec(
        configs=(
            dict(image_size=32, patch_size=8, num_classes=10, dim=32, depth=2, heads=4, mlp_dim=64, dim_head=8),
            dict(image_size=(12, 20), patch_size=4, num_classes=7, dim=24, depth=1, heads=3, mlp_dim=32, dim_head=12,
                 channels=1, dropout=0.1, emb_dropout=0.1, token_dropout_prob=0.25, qk_rmsnorm=False),
        ),
        torch_context=torch_keeps_gradients,
        notes="vit-pytorch's nested-tensor NaViT (one image per jagged sequence; here packed and masked): q/k "
              'LayerNorm, no pooling residual; also takes `PackedBatch`es',
        random_configuration=random_configuration,
        sweep_draws=6,
    ),
}
