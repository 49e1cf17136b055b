"""vit_nd_pope.ViTND beyond the registry configs: the frequency buffer against vit-pytorch's, the fixed uniform phase
init, the clamp's gradient at the phase's ends, vit-pytorch's flex_attention forward, the channels-last embeddings,
the layer scan and fused attention (values padded to the keys' width), vit-pytorch's example and bad configurations."""

import math

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
from vit_flax.vit_nd_pope import GoldenGatePoPENd, ViTND, torch_clamp
from vit_flax.vit_nd_rotary import golden_gate_freqs, grid_positions


ENTRY = parity.BY_NAME['vit_nd_pope.ViTND']
TINY = ENTRY.configs[0]  # (4, 8, 8) inputs in (2, 4, 4) patches, a 2 x 2 x 2 grid, causal along dimension 0
X = images((2, 4, 8, 8, 3))


def vit_pytorch_pope():
    return converters.import_vit_pytorch('vit_pytorch.vit_nd_pope')


@pytest.mark.parametrize('dim_pos, heads, dim_head, p_zero', [(3, 2, 8, 0.0), (2, 3, 7, 0.4), (5, 8, 64, 0.25)])
def test_frequency_buffer_is_vit_pytorchs(dim_pos, heads, dim_head, p_zero):
    torch_module = vit_pytorch_pope().GoldenGatePoPENd(dim_pos, heads, dim_head, p_zero_freqs=p_zero)
    # torch's float32 power (SLEEF, 1 ulp) and a correctly rounded one differ in the last place now and then
    # (two after the product with the directions)
    np.testing.assert_array_max_ulp(golden_gate_freqs(dim_pos, heads, dim_head, 1.0, 10000.0, p_zero),
                                    torch_module.freqs.numpy(), maxulp=2)


def test_uniform_phase_init_fails_in_vit_pytorch_and_is_drawn_here():
    with pytest.raises(RuntimeError, match='leaf Variable that requires grad'):
        vit_pytorch_pope().GoldenGatePoPENd(2, 4, 32, init_learned_bias_uniform=True)
    positions = grid_positions((2, 3))
    phase = GoldenGatePoPENd(2, 4, 32, init_learned_bias_uniform=True).init(jax.random.key(0), positions)
    phase = np.asarray(phase['params']['learned_bias'])
    assert phase.shape == (4, 32) and phase.min() >= -2 * math.pi and phase.max() < 0 and phase.std() > 1.5
    assert not GoldenGatePoPENd(2, 4, 32).init(jax.random.key(0), positions)['params']['learned_bias'].any()


def test_the_clamp_passes_gradients_on_its_closed_interval_like_torch():
    values = np.array([-7.0, -2 * math.pi, -1.0, 0.0, 0.5], np.float32)
    t = torch.tensor(values, requires_grad=True)
    t.clamp(-2 * math.pi, 0.0).sum().backward()
    ours = jax.grad(lambda v: torch_clamp(v, -2 * math.pi, 0.0).sum())(jnp.asarray(values))
    np.testing.assert_array_equal(np.asarray(ours), t.grad.numpy())


@pytest.mark.filterwarnings('ignore:flex_attention called without torch.compile')
def test_vit_pytorchs_flex_attention_forward_agrees():
    """Unpatched, vit-pytorch runs flex_attention on this CPU (forward only: it has no CPU backward)."""
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    with torch.no_grad():
        expected = float64_reference(torch_model)(*torch_inputs(ENTRY, (X,)))
    assert_close_outputs(apply(model, variables, X), expected, ENTRY.tolerance)


def test_scanned_and_fused_give_vit_pytorchs_outputs():
    config = {**TINY, 'depth': 2}
    model, variables, torch_model = converted_pair(ENTRY, config)
    expected = run_torch(ENTRY, torch_model, (X,))
    scanned = ViTND(**config, scan_layers=True, attention_impl='xla')
    scanned_variables = converters.from_torch(scanned, converters.to_torch(model, variables))
    assert_close_outputs(apply(scanned, scanned_variables, X), expected, ENTRY.tolerance)


def test_embeddings_come_channels_last_like_vit_pytorchs():
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    embed = jax.jit(lambda v, x: model.apply(v, x, return_embed=True))(variables, X)
    with torch.no_grad(), ENTRY.torch_context():
        expected = float64_reference(torch_model)(*torch_inputs(ENTRY, (X,)), return_embed=True)
    assert embed.shape == tuple(expected.shape) == (2, 2, 2, 2, 16)
    assert_close_outputs(embed, expected, ENTRY.tolerance)


def test_the_shared_module_is_held_once_and_exported_under_both_names():
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    state_dict = converters.to_torch(model, variables)
    for name in ('learned_bias', 'freqs'):
        assert torch.equal(state_dict[f'polar_emb.{name}'], state_dict[f'transformer.polar_emb.{name}'])
        assert torch.equal(state_dict[f'polar_emb.{name}'], torch_model.state_dict()[f'polar_emb.{name}'])


def test_vit_pytorch_example_shapes():
    model = ViTND(ndim=5, input_shape=(4, 8, 16, 32, 64), patch_size=(2, 2, 4, 4, 8), num_classes=1000, dim=512,
                  depth=6, heads=8, mlp_dim=2048, channels=3, dropout=0.1, emb_dropout=0.1, causal_dims=(0,))
    x = jnp.zeros((3, 4, 8, 16, 32, 64, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    assert jax.eval_shape(model.apply, variables, x).shape == (3, 1000)
    embed = jax.eval_shape(lambda v: model.apply(v, x, return_embed=True), variables)
    assert embed.shape == (3, 2, 4, 4, 8, 8, 512)


@pytest.mark.parametrize('config, message', [
    (dict(ndim=8, input_shape=2, patch_size=1), 'ndim must be between 1 and 7, got ndim=8'),
    (dict(causal_dims=(0, 3)), r'each causal dimension must be between 0 and 2, got causal_dims=\(0, 3\)'),
    (dict(patch_size=(2, 4)), r'Expected tuple of length 3, got 2'),
])
def test_bad_configs_fail_at_construction(config, message):
    with pytest.raises(ValueError, match=message):
        ViTND(**{**TINY, **config})
