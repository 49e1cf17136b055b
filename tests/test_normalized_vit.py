"""normalized_vit.nViT beyond the registry configs: the raw (parametrized) weights and their normalisation,
norm_weights against vit-pytorch's norm_weights_, refusals, scan == unrolled (values and gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util

import parity
from tests.conftest import apply, assert_close_outputs, converted_pair, images
from vit_flax import converters
from vit_flax.normalized_vit import nViT, norm_weights


ENTRY = parity.BY_NAME['normalized_vit.nViT']
TINY = ENTRY.configs[0]  # 4 x 4 patches, 1 layer, 2 heads of 8


def test_norm_weights_is_vit_pytorchs_and_changes_no_output():
    """The raw kernels are stored as torch's parametrize stores them (`...parametrizations.weight.original`), not
    normalised; norm_weights writes the normalised ones in as torch's norm_weights_ does, and the model's outputs
    stay the same."""
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    kernel = variables['params']['layers_0']['0']['to_q']['linear']['original_kernel']
    assert not np.allclose(np.linalg.norm(kernel, axis=0), 1.0)
    normed = {**variables, 'params': norm_weights(variables['params'])}
    with torch.no_grad():
        torch_model.norm_weights_()
    expected = torch_model.state_dict()
    for key, value in converters.to_torch(model, normed, as_numpy=True).items():
        np.testing.assert_allclose(value, expected[key].numpy(), rtol=1e-6, atol=1e-7, err_msg=key)
    x = images((2, 16, 16, 3))
    assert_close_outputs(apply(model, normed, x), np.asarray(apply(model, variables, x)), 1e-5)


def test_bad_configs_and_inputs_are_refused():
    with pytest.raises(ValueError, match=r'nViT takes a single int patch_size'):
        nViT(**{**TINY, 'patch_size': (4, 4)})
    with pytest.raises(ValueError, match='divisible by the patch size'):
        nViT(**{**TINY, 'image_size': (16, 18)})
    with pytest.raises(ValueError, match=r'gives 32 patches, more than the 16 position embeddings'):
        jax.eval_shape(nViT(**TINY).init, jax.random.key(0), jnp.zeros((1, 16, 32, 3)))


def test_scanned_equals_unrolled():
    config = ENTRY.configs[2]  # 2 layers
    model, variables, _ = converted_pair(ENTRY, config)
    scanned = nViT(**config, scan_layers=True, remat_policy='nothing_saveable')
    scanned_variables = converters.from_torch(scanned, converters.to_torch(model, variables))
    flat = traverse_util.flatten_dict(scanned_variables['params'], sep='/')
    assert flat['residual_lerp_scales_scan/1/parameter_list_entry'].shape == (2, 16)
    x = images((2, 8, 8, 2))
    assert_close_outputs(apply(scanned, scanned_variables, x), np.asarray(apply(model, variables, x)), 1e-6)
    # norm_weights on a scanned tree normalises each layer's kernel alike
    renormed = converters.to_torch(scanned, {'params': norm_weights(scanned_variables['params'])}, as_numpy=True)
    for key, value in converters.to_torch(model, {'params': norm_weights(variables['params'])},
                                          as_numpy=True).items():
        np.testing.assert_allclose(renormed[key], value, rtol=1e-6, atol=1e-7, err_msg=key)

    def grads(m, v):
        g = jax.jit(jax.grad(lambda p: m.apply({**v, 'params': p}, x).sum()))(v['params'])
        return converters.to_torch(m, {**v, 'params': g}, as_numpy=True)

    expected, got = grads(model, variables), grads(scanned, scanned_variables)
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


def test_fused_attention_matches_explicit():
    model, variables, _ = converted_pair(ENTRY, TINY)
    fused = nViT(**TINY, attention_impl='xla')
    x = images((2, 16, 16, 3))
    assert_close_outputs(apply(fused, variables, x), np.asarray(apply(model, variables, x)), 1e-5)
