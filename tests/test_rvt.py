"""rvt.RvT beyond the registry configs: the rotary scales buffer against torch's (and torch's linspace), refusals of
what vit-pytorch cannot run, the unused `emb_dropout`, scan == unrolled (values and gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import parity
from tests.conftest import apply, assert_close_outputs, converted_pair, images, init_variables
from vit_flax import converters
from vit_flax.layers import torch_linspace
from vit_flax.rvt import AxialRotaryEmbedding, RvT


ENTRY = parity.BY_NAME['rvt.RvT']
TINY = ENTRY.configs[0]  # 4 x 4 patches, 2 heads of 8, depth-wise conv queries, GEGLU


def test_linspace_is_torchs_bit_for_bit():
    for end in np.arange(0.5, 150, 0.5):
        for steps in (1, 2, 3, 7, 13, 16, 31):
            expected = torch.linspace(1.0, float(end), steps).numpy()
            np.testing.assert_array_equal(torch_linspace(1.0, end, steps), expected, err_msg=f'{end} {steps}')


def test_rotary_scales_buffer_is_torchs():
    torch_class = converters.import_vit_pytorch('vit_pytorch.rvt').AxialRotaryEmbedding
    for dim_head, image_size in ((8, 16), (64, 224), (30, 96)):
        buffers = AxialRotaryEmbedding(dim_head, max_freq=image_size).init(
            jax.random.key(0), jnp.zeros((1, 4, 8)))['buffers']
        np.testing.assert_array_equal(buffers['scales'], torch_class(dim_head, max_freq=image_size).scales.numpy())


def test_what_vit_pytorch_cannot_run_is_refused():
    with pytest.raises(ValueError, match=r'RvT takes a single int image_size'):
        RvT(**{**TINY, 'image_size': (16, 16)})
    with pytest.raises(ValueError, match='divisible by the patch size'):
        RvT(**{**TINY, 'image_size': 18})
    with pytest.raises(ValueError, match='square patch grid: the input gives 8 patches'):
        jax.eval_shape(RvT(**TINY).init, jax.random.key(0), jnp.zeros((1, 8, 16, 3)))
    # without rotary embeddings any patch grid runs
    model = RvT(**TINY, use_rotary=False)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 20, 3)))
    assert variables['buffers']['transformer']['pos_emb']['scales'].shape == (2,)


def test_emb_dropout_is_unused():
    model = RvT(**TINY, emb_dropout=0.5)
    x = images((2, 16, 16, 3))
    variables = init_variables(model)
    trained = apply(model, variables, x, train=True, rngs={'dropout': jax.random.key(1)})
    np.testing.assert_array_equal(trained, apply(model, variables, x))


def test_scanned_equals_unrolled():
    config = ENTRY.configs[1]
    model, variables, _ = converted_pair(ENTRY, config)
    scanned = RvT(**config, scan_layers=True, remat_policy='nothing_saveable')
    scanned_variables = converters.from_torch(scanned, converters.to_torch(model, variables))
    x = images((2, 32, 32, 1))  # larger than image_size: only the rotary scales depend on it
    assert_close_outputs(apply(scanned, scanned_variables, x), np.asarray(apply(model, variables, x)), 1e-6)

    def grads(m, v):
        g = jax.jit(jax.grad(lambda p: m.apply({**v, 'params': p}, x).sum()))(v['params'])
        return converters.to_torch(m, {**v, 'params': g}, as_numpy=True)

    expected, got = grads(model, variables), grads(scanned, scanned_variables)
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


def test_fused_attention_matches_explicit():
    model, variables, _ = converted_pair(ENTRY, TINY)
    fused = RvT(**TINY, attention_impl='xla')
    x = images((2, 16, 16, 3))
    assert_close_outputs(apply(fused, variables, x), np.asarray(apply(model, variables, x)), 1e-5)
