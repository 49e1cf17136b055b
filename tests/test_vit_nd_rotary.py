"""vit_nd_rotary.ViTND beyond the registry configs: the golden gate frequency buffer against vit-pytorch's, the exactly
reduced rotation angles, vit-pytorch's flex_attention forward, the channels-last embeddings, the layer scan and fused
attention, vit-pytorch's example and bad configurations."""

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
from vit_flax.vit_nd_rotary import ViTND, golden_gate_angles, golden_gate_freqs, grid_positions


ENTRY = parity.BY_NAME['vit_nd_rotary.ViTND']
TINY = ENTRY.configs[0]  # (4, 8, 8) inputs in (2, 4, 4) patches, a 2 x 2 x 2 grid, causal along dimension 0
X = images((2, 4, 8, 8, 3))


def vit_pytorch_rotary():
    return converters.import_vit_pytorch('vit_pytorch.vit_nd_rotary')


@pytest.mark.parametrize('dim_pos, heads, dim_head, min_freq, max_freq, p_zero', [
    (3, 2, 8, 1.0, 10000.0, 0.0), (1, 3, 16, 0.5, 100.0, 0.5), (5, 8, 64, 1.0, 10000.0, 0.25), (7, 1, 2, 2.0, 3.0, 0.0),
])
def test_frequency_buffer_is_vit_pytorchs(dim_pos, heads, dim_head, min_freq, max_freq, p_zero):
    torch_freqs = vit_pytorch_rotary().GoldenGateRoPENd(dim_pos, heads, dim_head, min_freq, max_freq, p_zero).freqs
    # torch's float32 power (SLEEF, 1 ulp) and a correctly rounded one differ in the last place now and then
    # (two after the product with the directions)
    np.testing.assert_array_max_ulp(golden_gate_freqs(dim_pos, heads, dim_head // 2, min_freq, max_freq, p_zero),
                                    torch_freqs.numpy(), maxulp=2)


def test_angles_are_reduced_exactly():
    """float32's plain products are off by ~1e-2 rad at angles of 1e5; the reduced angles by float32 round-off."""
    freqs = golden_gate_freqs(3, 4, 32, 1.0, 10000.0, 0.0)
    positions = grid_positions((4, 6, 12))
    exact = np.einsum('hfp,np->hfn', freqs.astype(np.float64), positions.astype(np.float64))
    off = lambda theta: np.abs(np.angle(np.exp(1j * (np.asarray(theta, np.float64) - exact)))).max()  # noqa: E731
    assert off(jax.jit(lambda f: golden_gate_angles(f, positions))(freqs)) < 3e-6
    assert off(np.einsum('hfp,np->hfn', freqs, positions.astype(np.float32))) > 1e-3


@pytest.mark.filterwarnings('ignore:flex_attention called without torch.compile')
def test_vit_pytorchs_flex_attention_forward_agrees():
    """Unpatched, vit-pytorch runs flex_attention on this CPU (forward only: it has no CPU backward)."""
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    with torch.no_grad():
        expected = float64_reference(torch_model)(*torch_inputs(ENTRY, (X,)))
    assert_close_outputs(apply(model, variables, X), expected, ENTRY.tolerance)


def test_embeddings_come_channels_last_like_vit_pytorchs():
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    embed = jax.jit(lambda v, x: model.apply(v, x, return_embed=True))(variables, X)
    with torch.no_grad(), ENTRY.torch_context():
        expected = float64_reference(torch_model)(*torch_inputs(ENTRY, (X,)), return_embed=True)
    assert embed.shape == tuple(expected.shape) == (2, 2, 2, 2, 16)
    assert_close_outputs(embed, expected, ENTRY.tolerance)


def test_scanned_and_fused_give_vit_pytorchs_outputs():
    config = {**TINY, 'depth': 2}
    model, variables, torch_model = converted_pair(ENTRY, config)
    expected = run_torch(ENTRY, torch_model, (X,))
    scanned = ViTND(**config, scan_layers=True, attention_impl='xla')
    scanned_variables = converters.from_torch(scanned, converters.to_torch(model, variables))
    assert_close_outputs(apply(scanned, scanned_variables, X), expected, ENTRY.tolerance)


def test_the_shared_buffer_is_held_once_and_exported_under_every_name():
    model, variables, torch_model = converted_pair(ENTRY, {**TINY, 'depth': 2})
    assert set(variables['buffers']) == {'rotary_emb'}
    state_dict = converters.to_torch(model, variables)
    names = [key for key in torch_model.state_dict() if key.endswith('rotary_emb.freqs')]
    assert names == ['rotary_emb.freqs', 'transformer.layers.0.0.rotary_emb.freqs',
                     'transformer.layers.1.0.rotary_emb.freqs']
    assert all(torch.equal(state_dict[name], torch_model.state_dict()[name]) for name in names)


def test_vit_pytorch_example_shapes():
    model = ViTND(ndim=5, input_shape=(4, 8, 16, 32, 64), patch_size=(2, 2, 4, 4, 8), num_classes=1000, dim=512,
                  depth=6, heads=8, mlp_dim=2048, channels=3, dropout=0.1, emb_dropout=0.1, causal_dims=(0,))
    x = jnp.zeros((2, 4, 8, 16, 32, 64, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    assert jax.eval_shape(model.apply, variables, x).shape == (2, 1000)
    embed = jax.eval_shape(lambda v: model.apply(v, x, return_embed=True), variables)
    assert embed.shape == (2, 2, 4, 4, 8, 8, 512)


@pytest.mark.parametrize('config, message', [
    (dict(dim_head=7), r'dim_head must be even, got dim_head=7'),
    (dict(ndim=8, input_shape=2, patch_size=1), 'ndim must be between 1 and 7, got ndim=8'),
    (dict(causal_dims=3), r'each causal dimension must be between 0 and 2, got causal_dims=3'),
    (dict(input_shape=(4, 8, 6)), r'Input dimension 2 \(6\) must be divisible by patch size \(4\)'),
])
def test_bad_configs_fail_at_construction(config, message):
    with pytest.raises(ValueError, match=message):
        ViTND(**{**TINY, **config})
