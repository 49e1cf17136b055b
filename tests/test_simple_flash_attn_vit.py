"""simple_flash_attn_vit.SimpleViT beyond the registry configs: vit-pytorch's broken `use_flash=False` (fixed here),
the fused path (`attention_impl`) against vit-pytorch's F.scaled_dot_product_attention, inputs of other patch grids,
scan == unrolled, bad keywords."""

import jax
import numpy as np
import pytest
import torch

import parity
from tests.conftest import apply, assert_close_outputs, converted_pair, images, nchw, run_torch
from vit_flax import converters
from vit_flax.simple_flash_attn_vit import SimpleViT


ENTRY = parity.BY_NAME['simple_flash_attn_vit.SimpleViT']
TINY = ENTRY.configs[0]  # 16 x 16 images in 4 x 4 patches, dim 32, 4 heads of 8, use_flash=True


def test_vit_pytorchs_use_flash_false_cannot_run_and_ours_is_the_same_function():
    model, variables, torch_model = converted_pair(ENTRY, {**TINY, 'use_flash': False})
    x = images((2, 16, 16, 3))
    with pytest.raises(NameError, match='einsum'), torch.no_grad():
        torch_model(nchw(x, torch.float32))  # as released, outside the parity spec's fix
    flash = SimpleViT(**TINY)
    np.testing.assert_array_equal(apply(model, variables, x), apply(flash, variables, x))
    assert_close_outputs(apply(model, variables, x), run_torch(ENTRY, torch_model, (x,)), ENTRY.tolerance)


@pytest.mark.parametrize('attention_impl', ['xla', 'auto'])
def test_fused_path_matches_scaled_dot_product_attention(attention_impl):
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    fused = SimpleViT(**TINY, attention_impl=attention_impl)
    x = images((2, 8, 20, 3))  # another patch grid: the embedding follows the input
    assert_close_outputs(apply(fused, variables, x), run_torch(ENTRY, torch_model, (x,)), ENTRY.tolerance)


def test_scanned_equals_unrolled():
    model, variables, _ = converted_pair(ENTRY, ENTRY.configs[1])
    scanned = SimpleViT(**ENTRY.configs[1], scan_layers=True, attention_impl='xla')
    scanned_variables = converters.from_torch(scanned, converters.to_torch(model, variables))
    assert 'layers_scan' in scanned_variables['params']['transformer']
    x = images((2, 24, 16, 1))
    assert_close_outputs(apply(scanned, scanned_variables, x), np.asarray(apply(model, variables, x)), 1e-5)


def test_bad_keywords_fail_at_construction():
    with pytest.raises(ValueError, match="SimpleViT: use_flash='yes' must be True or False"):
        SimpleViT(**{**TINY, 'use_flash': 'yes'})
    with pytest.raises(ValueError, match='multiple of 4 for the sin-cos embedding, got dim=30'):
        SimpleViT(**{**TINY, 'dim': 30})
    with pytest.raises(ValueError, match='unknown attention_impl'):
        SimpleViT(**TINY, attention_impl='flash')


def test_an_indivisible_input_is_named():
    with pytest.raises(ValueError, match=r'image of size \(16, 18\) is not divisible by patch size \(4, 4\)'):
        jax.eval_shape(SimpleViT(**TINY).init, jax.random.key(0), np.zeros((1, 16, 18, 3), np.float32))
