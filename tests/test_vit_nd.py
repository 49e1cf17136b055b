"""vit_nd.ViTND beyond the registry configs (its causal mask: tests/test_vit_nd_masking.py): vit-pytorch's
flex_attention forward, the channels-last N-D patch embeddings, the layer scan, fused attention, vit-pytorch's example
and bad configurations and inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import parity
from tests.conftest import (
    apply, assert_close_outputs, converted_pair, float64_reference, images, run_torch, torch_inputs,
)
from vit_flax import converters
from vit_flax.vit_nd import ViTND


ENTRY = parity.BY_NAME['vit_nd.ViTND']
TINY = ENTRY.configs[0]  # (4, 8, 8) inputs in (2, 4, 4) patches, a 2 x 2 x 2 grid, causal along dimension 0
X = images((2, 4, 8, 8, 3))


@pytest.mark.filterwarnings('ignore:flex_attention called without torch.compile')
def test_vit_pytorchs_flex_attention_forward_agrees():
    """Unpatched, vit-pytorch runs flex_attention on this CPU (forward only: it has no CPU backward)."""
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    with torch.no_grad():
        expected = float64_reference(torch_model)(*torch_inputs(ENTRY, (X,)))
    assert_close_outputs(apply(model, variables, X), expected, ENTRY.tolerance)


def test_nd_patches_come_channels_last():
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    cls_token, patches = jax.jit(lambda v, x: model.apply(v, x, return_nd_patches=True))(variables, X)
    with torch.no_grad(), ENTRY.torch_context():
        torch_cls, torch_patches = float64_reference(torch_model)(*torch_inputs(ENTRY, (X,)), return_nd_patches=True)
    assert patches.shape == (2, 2, 2, 2, 16) and tuple(torch_patches.shape) == (2, 16, 2, 2, 2)
    assert_close_outputs((cls_token, patches), (torch_cls, np.moveaxis(torch_patches.numpy(), 1, -1)),
                         ENTRY.tolerance)


def test_scanned_and_fused_give_vit_pytorchs_outputs():
    config = {**TINY, 'depth': 2}
    model, variables, torch_model = converted_pair(ENTRY, config)
    expected = run_torch(ENTRY, torch_model, (X,))
    scanned = ViTND(**config, scan_layers=True, attention_impl='xla')
    scanned_variables = converters.from_torch(scanned, converters.to_torch(model, variables))
    assert_close_outputs(apply(scanned, scanned_variables, X), expected, ENTRY.tolerance)


def test_vit_pytorch_example_shapes():
    model = ViTND(ndim=4, input_shape=(8, 16, 32, 64), patch_size=(2, 4, 4, 8), num_classes=1000, dim=512, depth=6,
                  heads=8, mlp_dim=2048, channels=3, dropout=0.1, emb_dropout=0.1, causal_dims=(0,))
    x = jnp.zeros((2, 8, 16, 32, 64, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    assert jax.eval_shape(model.apply, variables, x).shape == (2, 1000)
    cls_token, patches = jax.eval_shape(lambda v: model.apply(v, x, return_nd_patches=True), variables)
    assert cls_token.shape == (2, 512) and patches.shape == (2, 4, 4, 8, 8, 512)


@pytest.mark.parametrize('config, message', [
    (dict(ndim=8, input_shape=2, patch_size=1), 'ndim must be between 1 and 7, got ndim=8'),
    (dict(causal_dims=3), r'each causal dimension must be between 0 and 2, got causal_dims=3'),
    (dict(input_shape=(4, 8, 6)), r'Input dimension 2 \(6\) must be divisible by patch size \(4\)'),
    (dict(patch_size=(2, 4)), r'Expected tuple of length 3, got 2'),
])
def test_bad_configs_fail_at_construction(config, message):
    with pytest.raises(ValueError, match=message):
        ViTND(**{**TINY, **config})


@pytest.mark.parametrize('shape', [(1, 4, 8, 4, 3), (1, 4, 8, 8, 1), (1, 8, 8, 3)])
def test_inputs_of_another_shape_are_refused(shape):
    with pytest.raises(ValueError, match=r'expected inputs of shape \(batch, \*input_shape, channels\) = '
                                         r'\(batch, 4, 8, 8, 3\) \(channels-last\)'):
        jax.eval_shape(ViTND(**TINY).init, jax.random.key(0), jnp.zeros(shape))
