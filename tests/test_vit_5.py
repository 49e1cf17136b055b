"""vit_5.ViT beyond the registry configs: the rotary buffers against torch's, the layer scales as ParameterList
entries, refusals of what vit-pytorch cannot run (non-square patch grids, dim_head not a multiple of 4), fused
attention, scan == unrolled (values and gradients), vit-pytorch's README example."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import parity
from tests.conftest import apply, assert_close_outputs, converted_pair, images, init_variables, new_torch_model
from vit_flax import converters
from vit_flax.layers import PARAMETER_LIST_LEAF, ParameterListEntry
from vit_flax.vit_5 import LAYER_SCALE_INIT, AxialRotaryEmbedding, ViT


ENTRY = parity.BY_NAME['vit_5.ViT']
TINY = ENTRY.configs[0]  # 4 x 4 patches, 2 registers, 2 heads of 8


def test_rotary_buffers_and_layer_scales_are_torchs():
    """The frequency buffers Flax builds are torch's, bit for bit; the layer scales start at torch's 1e-4."""
    torch.manual_seed(0)
    torch_model = new_torch_model(ENTRY, TINY)
    rotary = AxialRotaryEmbedding(8, num_registers=2)
    buffers = rotary.init(jax.random.key(0), jnp.zeros((1, 18, 32)))['buffers']
    for name in ('patch_inv_freq', 'reg_inv_freq'):
        np.testing.assert_array_equal(buffers[name], getattr(torch_model.rotary_emb, name).numpy(), err_msg=name)
    scale = ParameterListEntry((4,), nn.initializers.constant(LAYER_SCALE_INIT)).init(jax.random.key(0))
    np.testing.assert_array_equal(scale['params'][PARAMETER_LIST_LEAF], torch_model.transformer.ls1[0].detach()[:4])


def test_fused_attention_matches_explicit():
    model, variables, _ = converted_pair(ENTRY, TINY)
    fused = ViT(**TINY, attention_impl='xla')
    x = images((2, 16, 16, 3))
    assert_close_outputs(apply(fused, variables, x), np.asarray(apply(model, variables, x)), 1e-5)


def test_scanned_equals_unrolled():
    config = ENTRY.configs[1]
    model, variables, _ = converted_pair(ENTRY, config)
    scanned = ViT(**config, scan_layers=True, remat_policy='nothing_saveable')
    scanned_variables = converters.from_torch(scanned, converters.to_torch(model, variables))
    assert scanned_variables['params']['transformer']['ls1_scan']['parameter_list_entry'].shape == (2, 16)
    x = images((2, 16, 32, 1))
    assert_close_outputs(apply(scanned, scanned_variables, x), np.asarray(apply(model, variables, x)), 1e-6)

    def grads(m, v):
        g = jax.jit(jax.grad(lambda p: m.apply({**v, 'params': p}, x).sum()))(v['params'])
        return converters.to_torch(m, {**v, 'params': g}, as_numpy=True)

    expected, got = grads(model, variables), grads(scanned, scanned_variables)
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


def test_dropout_draws_from_the_dropout_stream():
    model = ViT(**TINY, dropout=0.5, emb_dropout=0.5)
    x = images((2, 16, 16, 3))
    variables = init_variables(model)
    run = lambda seed: apply(model, variables, x, train=True, rngs={'dropout': jax.random.key(seed)})  # noqa: E731
    np.testing.assert_array_equal(run(1), run(1))
    assert not np.allclose(run(1), run(2))


def test_what_vit_pytorch_cannot_run_is_refused():
    with pytest.raises(ValueError, match='square patch grid: image_size=.* gives 8 patches'):
        ViT(**{**TINY, 'image_size': (16, 8)})
    with pytest.raises(ValueError, match='dim_head must be a multiple of 4, got dim_head=6'):
        ViT(**{**TINY, 'dim_head': 6})
    with pytest.raises(ValueError, match='ViT: num_registers=-1 must be a non-negative integer'):
        ViT(**{**TINY, 'num_registers': -1})
    # an input of a non-square grid (torch: a shape error in the rotary product)
    with pytest.raises(ValueError, match=r'the input \(2 patch tokens\) gives 2 patches, not a square number'):
        jax.eval_shape(ViT(**TINY).init, jax.random.key(0), jnp.zeros((1, 4, 8, 3)))


def test_vit_pytorch_readme_example():
    model = ViT(image_size=256, patch_size=16, num_classes=1000, dim=512, depth=6, heads=8, mlp_dim=1024, dim_head=64,
                dropout=0.1, emb_dropout=0.1, num_registers=4)
    img = jnp.zeros((2, 256, 256, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), img)
    assert jax.eval_shape(model.apply, variables, img).shape == (2, 1000)
