"""simple_vit_with_value_residual.SimpleViT beyond the registry configs: where the value residual's gates live, the
half-and-half mix of an ungated Attention, the fused attention path, and bad inputs."""

import jax
import jax.numpy as jnp
import pytest
import torch

import parity
from vit_flax import converters
from tests.conftest import apply, assert_close_outputs, converted_pair, float64_reference, images, torch_forward
from vit_flax.simple_vit_with_value_residual import Attention, SimpleViT


ENTRY = parity.BY_NAME['simple_vit_with_value_residual.SimpleViT']
TINY = ENTRY.configs[0]  # 16 x 16 images in 4 x 4 patches, depth 2, dim 16


def test_only_the_later_layers_have_a_gate():
    shapes = jax.eval_shape(SimpleViT(**{**TINY, 'depth': 3}).init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    transformer = shapes['params']['transformer']
    assert 'to_residual_mix_0' not in transformer['layers_0_0']
    for i in (1, 2):
        assert transformer[f'layers_{i}_0']['to_residual_mix_0']['kernel'].shape == (16, 2)  # (dim, heads)


def test_an_ungated_attention_mixes_values_half_and_half():
    """vit-pytorch's Attention without a learned mix, handed values, averages them with its own."""
    torch_attention = converters.import_vit_pytorch('vit_pytorch.simple_vit_with_value_residual').Attention
    torch.manual_seed(0)
    reference = torch_attention(16, heads=2, dim_head=8)
    x, value_residual = images((2, 5, 16)), images((2, 2, 5, 8), seed=1)
    attention = Attention(16, heads=2, dim_head=8)
    variables = converters.from_torch(attention, reference.state_dict(), example_inputs=(x, value_residual))
    out, values = attention.apply(variables, x, value_residual)
    with torch.no_grad():
        torch_out, torch_values = float64_reference(reference)(torch.from_numpy(x),
                                                               value_residual=torch.from_numpy(value_residual))
    assert_close_outputs((out, values), (torch_out, torch_values), ENTRY.tolerance)


def test_fused_attention_matches_vit_pytorch():
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    x = images((2, 16, 16, 3))
    fused = SimpleViT(**TINY, attention_impl='xla')
    assert_close_outputs(apply(fused, variables, x), torch_forward(torch_model, x), ENTRY.tolerance)


@pytest.mark.parametrize('shape, message', [
    ((1, 16, 16, 1), r'expected 3 channels \(channels-last input\), got shape \(1, 16, 16, 1\)'),
    ((1, 16, 20, 3), r'input of size \(16, 20\) gives 20 patches, but the position embedding of image_size=16 has 16'),
])
def test_bad_inputs_name_the_shape(shape, message):
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(SimpleViT(**TINY).init, jax.random.key(0), jnp.zeros(shape))


def test_unknown_attention_impl_is_refused():
    with pytest.raises(ValueError, match="unknown attention_impl='flash'"):
        SimpleViT(**TINY, attention_impl='flash')
