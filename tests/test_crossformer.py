"""CrossFormer beyond the registry configs: windowed attention (parity, gradients), the position-bias lookup,
vit-pytorch's quirks, dropout, bad configs and inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import parity
from vit_flax import converters
from tests.conftest import (apply, assert_close_outputs, converted_pair, float64_reference, images, nchw, torch_class,
                            torch_forward, truly_zero)

from vit_flax.crossformer import CrossFormer, relative_position_indices

ENTRY = parity.BY_NAME['crossformer.CrossFormer']
# windows of 2 and 4 keys a side, different for short and long attention; two heads in stage 2 (dim 64), a stage
# of depth 0 below dim_head (16)
WINDOWED = dict(dim=(32, 64, 16, 32), depth=(1, 1, 0, 0), local_window_size=(2, 4, 1, 1),
                global_window_size=(4, 2, 1, 1), cross_embed_kernel_sizes=((2, 4), (2, 4, 6), (1, 3), (1,)),
                cross_embed_strides=(2, 2, 1, 1), num_classes=5)
SIZE = (32, 16)


def crossformer_module(name):
    return getattr(converters.import_vit_pytorch('vit_pytorch.crossformer'), name)


def test_parameter_tree_mirrors_torch():
    variables = jax.eval_shape(CrossFormer(**WINDOWED).init, jax.random.key(0), jnp.zeros((1, *SIZE, 3)))
    params = variables['params']
    assert set(variables) == {'params'}
    assert [params['layers_1_0'][f'convs_{i}']['kernel'].shape for i in range(3)] == [
        (2, 2, 32, 32), (4, 4, 32, 16), (6, 6, 32, 16)]
    block = params['layers_1_1']
    assert set(block) == {'layers_0_0', 'layers_0_1_0', 'layers_0_1_1', 'layers_0_1_4', 'layers_0_2',
                          'layers_0_3_0', 'layers_0_3_1', 'layers_0_3_4'}
    attention = block['layers_0_0']
    assert attention['norm']['g'].shape == (1, 64, 1, 1)
    assert attention['to_qkv']['kernel'].shape == (1, 1, 64, 192) and 'bias' not in attention['to_qkv']
    assert attention['dpb_0']['kernel'].shape == (2, 16) and attention['dpb_9']['kernel'].shape == (16, 1)
    assert {name for name in attention if name.startswith('dpb')} == {f'dpb_{i}' for i in (0, 1, 3, 4, 6, 7, 9)}
    assert block['layers_0_1_1']['kernel'].shape == (1, 1, 64, 256)
    assert 'layers_2_1' not in params  # a stage of depth 0 has an empty transformer
    assert params['to_logits_1']['kernel'].shape == (32, 5)


@pytest.mark.parametrize('window_size', [1, 2, 3, 5])
def test_position_bias_indices_match_torch(window_size):
    """The (2w - 1)-stride lookup into a (2w + 1)^2 table, exactly as vit-pytorch's buffer."""
    attention = crossformer_module('Attention')(32, attn_type='short', window_size=window_size)
    np.testing.assert_array_equal(relative_position_indices(window_size), attention.rel_pos_indices.numpy())


def test_windowed_attention_parity():
    model, variables, torch_model = converted_pair(ENTRY, WINDOWED)
    x = images((2, *SIZE, 3))
    assert_close_outputs(apply(model, variables, x), torch_forward(torch_model, x), ENTRY.tolerance)


def test_windowed_gradients_match_and_the_last_position_bias_gets_none():
    """Every gradient agrees, except `dpb.9.bias`: it shifts every attention logit equally, so its true gradient is
    zero and Flax's float32 one holds round-off (why the registry configs use 1 x 1 windows)."""
    model, variables, torch_model = converted_pair(ENTRY, WINDOWED)
    x = images((2, *SIZE, 3))
    weights = images((2, 5), seed=7)
    reference = float64_reference(torch_model)
    (reference(nchw(x)) * torch.from_numpy(weights).double()).sum().backward()
    grads = jax.jit(jax.grad(lambda p: (model.apply({'params': p}, x) * weights).sum()))(variables['params'])
    flax_grads = converters.to_torch(model, {'params': grads}, as_numpy=True)
    scale = max(float(np.abs(g).max()) for g in flax_grads.values())
    uniform_shifts = 0
    for name, parameter in reference.named_parameters():
        expected = parameter.grad.numpy()
        if name.endswith('dpb.9.bias'):
            uniform_shifts += 1
            assert np.abs(flax_grads[name]).max() <= 1e-5 * scale, name
            assert truly_zero(expected, scale), name
            continue
        tensor_scale = float(np.abs(expected).max())
        assert tensor_scale > 1e-6 * scale, name  # every other weight matters
        np.testing.assert_allclose(flax_grads[name], expected, rtol=1e-4, atol=1e-4 * tensor_scale, err_msg=name)
    assert uniform_shifts == 4


def test_dropout_only_in_training_and_reproducible():
    model, variables, _ = converted_pair(ENTRY, WINDOWED)
    x = images((2, *SIZE, 3))
    eval_out = apply(model, variables, x)
    dropping = CrossFormer(**{**WINDOWED, 'attn_dropout': 0.5, 'ff_dropout': 0.5})
    train = lambda seed: apply(dropping, variables, x, train=True, rngs={'dropout': jax.random.key(seed)})
    np.testing.assert_array_equal(train(1), train(1))
    assert not np.allclose(train(1), train(2))
    assert not np.allclose(train(1), eval_out)
    with pytest.raises(Exception, match='dropout'):
        dropping.apply(variables, x, train=True)  # no 'dropout' rng stream given


@pytest.mark.parametrize('config, message', [
    (dict(cross_embed_kernel_sizes=(2, 4)), r'tuple of 4 .* cross_embed_kernel_sizes=\(2, 4\)'),
    (dict(dim=(32, 32, 32)), r'dim=\(32, 32, 32\)'),
    (dict(dim=(16, 64, 16, 32)), r'dim=16 of stage 0 gives no attention heads'),
    (dict(cross_embed_strides=(2, 2, 1, 2)), r'stage 3 \(\(1,\)\) has a kernel smaller than its stride 2'),
    (dict(dim=(32, 64, 1, 32)), r'dim=1 of stage 2 is too small .* gets \[0, 1\] channels'),
    (dict(local_window_size=0), 'local_window_size=0'),
    (dict(depth=(1, -1, 0, 0)), r'depth=\(1, -1, 0, 0\)'),
    (dict(cross_embed_kernel_sizes=((2, 4), (), (1,), (1,))), 'cross_embed_kernel_sizes'),
    (dict(num_classes=-1), 'num_classes=-1'),
    (dict(channels=0), 'channels=0'),
    (dict(attn_dropout=1.5), 'attn_dropout=1.5'),
])
def test_bad_configs_fail_at_construction(config, message):
    with pytest.raises(ValueError, match=message):
        CrossFormer(**{**WINDOWED, **config})


def test_bad_attention_type():
    from vit_flax.crossformer import Attention

    with pytest.raises(ValueError, match="attn_type='medium'"):
        Attention(32, attn_type='medium', window_size=2)


@pytest.mark.parametrize('config, shape, message', [
    ({}, (1, *SIZE, 1), r'expected 3 channels \(channels-last input\), got shape \(1, 32, 16, 1\)'),
    ({}, SIZE, r'expected images of shape \(batch, height, width, channels\), got shape \(32, 16\)'),
    ({}, (1, 32, 18, 3), r'short distance attention with window_size=2 .* got size \(16, 9\)'),
    ({}, (1, 32, 20, 3), r'long distance attention with window_size=4 .* got size \(16, 10\)'),
    ({}, (1, 24, 24, 3), r'short distance attention with window_size=4 .* got size \(6, 6\)'),
    (dict(cross_embed_kernel_sizes=((3, 4), (2, 4, 6), (1, 3), (1,))), (1, *SIZE, 3),
     r'kernel_sizes=\(3, 4\), stride=2 gives maps of different sizes \[\(15, 7\), \(16, 8\)\]'),
    ({}, (1, 1, 1, 3), r'kernel_sizes=\(2, 4\), stride=2 leaves no pixels of an input of size \(1, 1\)'),
])
def test_bad_inputs_name_the_shape(config, shape, message):
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(CrossFormer(**{**WINDOWED, **config}).init, jax.random.key(0), jnp.zeros(shape))


def test_torch_fails_where_this_port_refuses():
    """The refusals above mirror torch failures (here: no heads, negative padding), not stricter rules."""
    cls = torch_class(ENTRY)
    x = torch.zeros(1, 3, *SIZE)
    for config in (dict(dim=(16, 64, 16, 32)), dict(cross_embed_strides=(2, 2, 1, 2))):
        with pytest.raises(RuntimeError):
            cls(**{**WINDOWED, **config}).eval()(x)
