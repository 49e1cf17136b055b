"""max_vit_with_registers.MaxViT beyond the registry configs: parameter tree, the registers' position-bias indices,
dropout in training, bad configurations and inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import parity
from tests.conftest import images
from vit_flax.max_vit import relative_position_indices
from vit_flax.max_vit_with_registers import Attention, MaxViT, register_position_indices


ENTRY = parity.BY_NAME['max_vit_with_registers.MaxViT']
TINY = ENTRY.configs[0]
SIZE = ENTRY.inputs.preferred_size


def test_parameter_tree_mirrors_torch():
    config = ENTRY.configs[1]  # two stages, the first of two blocks: a residual MBConv in block 1
    variables = jax.eval_shape(MaxViT(**config).init, jax.random.key(0), jnp.zeros((1, *SIZE, 1)))
    params, stats = variables['params'], variables['batch_stats']
    assert params['register_tokens_0']['parameter_list_entry'].shape == (4, 16)  # default 4 registers
    assert params['register_tokens_2']['parameter_list_entry'].shape == (4, 32)
    assert params['layers_0_0_0']['kernel'].shape == (1, 1, 12, 32)  # downsampling MBConv: `layers.0.0.{k}`
    assert set(stats['layers_1_0']['fn_8']) == {'mean', 'var'}  # residual MBConv: `layers.1.0.fn.{k}`
    for stage in ('1', '2'):
        attention = params[f'layers_0_{stage}_0']
        assert attention['rel_pos_bias']['embedding'].shape == (3 * 3 + 1, 2)  # (2w - 1)^2 + the registers' row
        assert set(attention) == {'norm', 'to_qkv', 'rel_pos_bias', 'to_out_0'}
        assert set(params[f'layers_0_{stage}_1']) == {'0', '1', '4'}  # Sequential(LayerNorm, Linear, .., Linear)
    assert params['layers_2_2_1']['1']['kernel'].shape == (32, 128)


def test_registers_share_the_last_row_of_the_position_bias():
    indices = register_position_indices(window_size=3, num_registers=2)
    assert indices.shape == (2 + 9, 2 + 9)
    assert (indices[:2] == 25).all() and (indices[:, :2] == 25).all()
    np.testing.assert_array_equal(indices[2:, 2:], relative_position_indices(3))

    from vit_pytorch.max_vit_with_registers import Attention as TorchAttention

    torch_indices = TorchAttention(dim=8, dim_head=4, window_size=3, num_registers=2).rel_pos_indices
    np.testing.assert_array_equal(indices, torch_indices.numpy())


def test_dropout_only_in_training_and_reproducible():
    model = MaxViT(**{**TINY, 'dropout': 0.1})
    x = images((2, *SIZE, 3))
    variables = jax.jit(model.init)(jax.random.key(0), x)
    train = jax.jit(lambda v, x, key: model.apply(v, x, train=True, rngs={'dropout': key}, mutable=['batch_stats']))
    out_1, updates = train(variables, x, jax.random.key(1))
    np.testing.assert_array_equal(out_1, train(variables, x, jax.random.key(1))[0])
    assert not np.allclose(out_1, train(variables, x, jax.random.key(2))[0])
    assert set(updates) == {'batch_stats'}
    np.testing.assert_array_equal(jax.jit(model.apply)(variables, x), jax.jit(model.apply)(variables, x))
    with pytest.raises(Exception, match='dropout'):
        model.apply(variables, x, train=True, mutable=['batch_stats'])  # no rng


@pytest.mark.parametrize('config, message', [
    (dict(num_register_tokens=0), r'MaxViT: num_register_tokens=0 must be a positive integer'),
    (dict(num_register_tokens=-1), r'MaxViT: num_register_tokens=-1 must be a non-negative integer'),
    (dict(depth=2), r'depth needs to be tuple.*depth=2'),
    (dict(dim_head=3), r'divisible by dimension per head: dim=8, dim_head=3'),
])
def test_bad_configs_fail_at_construction(config, message):
    with pytest.raises(ValueError, match=message):
        MaxViT(**{**TINY, **config})
    if 'num_register_tokens' in config:  # vit-pytorch asserts it too
        from vit_pytorch.max_vit_with_registers import MaxViT as TorchMaxViT

        with pytest.raises(AssertionError):
            TorchMaxViT(**{**TINY, **config})


def test_attention_refuses_no_registers():
    with pytest.raises(ValueError, match='num_registers=0 must be positive'):
        Attention(dim=8, dim_head=4, num_registers=0)


@pytest.mark.parametrize('shape, message', [
    ((1, 16, 32, 1), r'expected 3 channels \(channels-last input\), got shape \(1, 16, 32, 1\)'),
    ((16, 32, 3), r'expected images of shape \(batch, height, width, channels\), got shape \(16, 32, 3\)'),
    ((1, 12, 32, 3), r'feature map of size \(3, 8\) in block 0 .* not divisible by window_size=2'),
])
def test_bad_inputs_name_the_shape(shape, message):
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(MaxViT(**TINY).init, jax.random.key(0), jnp.zeros(shape))
