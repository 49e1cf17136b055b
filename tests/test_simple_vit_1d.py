"""simple_vit_1d.SimpleViT beyond the registry configs: the 1D sin-cos embedding against vit-pytorch's, series of any
patch count, bad configs and inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import parity
from tests.conftest import apply, assert_close_outputs, converted_pair, float64_default, images, run_torch
from vit_flax import converters
from vit_flax.layers import posemb_sincos_1d
from vit_flax.simple_vit_1d import SimpleViT


ENTRY = parity.BY_NAME['simple_vit_1d.SimpleViT']
TINY = ENTRY.configs[0]  # seq_len 32 in patches of 4, dim 32


@pytest.mark.parametrize('n, dim', [(1, 4), (7, 10), (16, 32), (5, 64)])
def test_posemb_matches_torch(n, dim):
    posemb = converters.import_vit_pytorch('vit_pytorch.simple_vit_1d').posemb_sincos_1d
    with float64_default():  # the exact embedding: its aranges divide into torch's default dtype
        torch_pe = posemb(torch.zeros(1, n, dim))
    np.testing.assert_allclose(posemb_sincos_1d(n, dim), torch_pe.numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize('length', [4, 44])
def test_any_multiple_of_the_patch_size_gets_its_own_embedding(length):
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    x = images((2, length, 3))
    assert_close_outputs(apply(model, variables, x), run_torch(ENTRY, torch_model, (x,)), ENTRY.tolerance)


@pytest.mark.parametrize('config, message', [
    (dict(dim=30, dim_head=8), None),
    (dict(dim=31), 'multiple of 2 for the sin-cos embedding, got dim=31'),
    (dict(dim=2), 'the 1D sin-cos embedding needs dim >= 4, got dim=2'),
    (dict(seq_len=30), 'seq_len must be divisible by the patch size: seq_len=30, patch_size=4'),
])
def test_configs_are_checked_at_construction(config, message):
    if message is None:
        SimpleViT(**{**TINY, **config})
        return
    with pytest.raises(ValueError, match=message):
        SimpleViT(**{**TINY, **config})


def test_bad_inputs_name_the_shape():
    with pytest.raises(ValueError, match='series of length 30 is not divisible by patch size 4'):
        jax.eval_shape(SimpleViT(**TINY).init, jax.random.key(0), jnp.zeros((1, 30, 3)))
