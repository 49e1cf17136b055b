"""LeViT behaviour beyond the registry configs: multi-token attention, BatchNorm training statistics, the
`pos_indices` buffer, vit-pytorch's quirks, dropout, bad configurations and inputs.

Why the registry configs have image_size=16 (one token per map): the bias of every key BatchNorm
(`to_k.1.bias`) adds the same vector to every key, which shifts each row of attention logits by a constant, so its
true gradient is zero and a float32 gradient holds only round-off that no relative test can compare. With one key,
softmax is exactly 1 and those gradients are exact zeros. Multi-token maps (2x2, 3x3, 4x4) are tested here, with
that one parameter checked to be zero in vit-pytorch's float64 answer and round-off in ours instead.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import parity
from vit_flax import converters
from tests.conftest import (apply, assert_close_outputs, converted_pair, float64_reference, images, init_variables,
                            nchw, new_torch_model, torch_class, torch_forward, truly_zero)

from vit_flax.levit import LeViT, relative_position_indices

ENTRY = parity.BY_NAME['levit.LeViT']

# multi-token maps: 2x2 then 1x1; 3x3 -> 2x2 -> 1x1 (odd map, ceil on downsampling); 4x4 -> 2x2
TINY = dict(image_size=32, num_classes=10, dim=(16, 24), depth=1, heads=2, mlp_mult=2, stages=2, dim_key=8,
            dim_value=8)
ODD = dict(image_size=48, num_classes=7, dim=(16, 24, 16), depth=(1, 2, 1), heads=(3, 1, 2), mlp_mult=1,
           dim_key=4, dim_value=6, num_distill_classes=5)
WIDE = dict(image_size=64, num_classes=3, dim=16, depth=1, heads=1, mlp_mult=3, stages=2, dim_key=16, dim_value=8)


# the variable tree and the buffer


def test_variable_tree_mirrors_torch_state_dict():
    config = ENTRY.configs[0]  # shares the registry tests' compiled init
    model = LeViT(**config)
    variables = init_variables(model)
    torch_state = new_torch_model(ENTRY, config).state_dict()
    exported = converters.to_torch(model, variables, as_numpy=True)
    assert exported.keys() == torch_state.keys()
    for key, tensor in torch_state.items():
        assert exported[key].shape == tuple(tensor.shape), key
    attention = variables['params']['backbone_0']['layers_0_0']
    assert attention['pos_bias']['embedding'].shape == (1, 2)
    np.testing.assert_array_equal(attention['to_out_2']['scale'], 0)  # nn.init.zeros_(out_batch_norm.weight)
    np.testing.assert_array_equal(attention['to_q_1']['scale'], 1)
    for key in torch_state:
        if key.endswith('pos_indices'):
            np.testing.assert_array_equal(exported[key], torch_state[key].numpy(), err_msg=key)
    assert 'distill_head' not in variables['params']


@pytest.mark.parametrize('fmap_size, downsample', [(1, False), (3, False), (3, True), (4, True), (5, True)])
def test_relative_position_indices_match_torch(fmap_size, downsample):
    torch_attention = converters.import_vit_pytorch(ENTRY.torch_module).Attention(
        dim=8, fmap_size=fmap_size, heads=2, dim_key=4, dim_value=4, downsample=downsample)
    np.testing.assert_array_equal(relative_position_indices(fmap_size, downsample),
                                  torch_attention.pos_indices.numpy())


def test_loaded_position_indices_are_the_ones_used():
    """A state dict's `pos_indices` drive the bias lookup on both sides (torch reads its buffer, so do we)."""
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    key = 'backbone.0.layers.0.0.pos_indices'
    state = torch_model.state_dict()
    state[key] = torch.flip(state[key], dims=(1,)).contiguous()
    torch_model.load_state_dict(state, strict=True)
    swapped = converters.from_torch(model, state)
    x = images((2, 32, 32, 3))
    out = apply(model, swapped, x)
    assert_close_outputs(out, torch_forward(torch_model, x), ENTRY.tolerance)
    assert not np.allclose(out, apply(model, variables, x), atol=1e-4)


# multi-token parity, both directions, gradients


@pytest.mark.parametrize('config', [TINY, ODD, WIDE], ids=['2x2', '3x3', '4x4'])
def test_multi_token_torch_to_flax(config):
    model, variables, torch_model = converted_pair(ENTRY, config)
    x = images((2, config['image_size'], config['image_size'], 3))
    assert_close_outputs(apply(model, variables, x), torch_forward(torch_model, x), ENTRY.tolerance)


def test_multi_token_flax_to_torch_strict():
    """Flax variables no torch model produced (converted ones, moved with numpy noise) export and load strictly."""
    model, converted, _ = converted_pair(ENTRY, ODD)
    rng = np.random.default_rng(1)
    variables = jax.tree_util.tree_map(
        lambda a: a + (0.1 * rng.standard_normal(a.shape)).astype(a.dtype) if a.dtype == np.float32 else a, converted)
    torch_model = new_torch_model(ENTRY, ODD)
    torch_model.load_state_dict(converters.to_torch(model, variables), strict=True)
    x = images((2, 48, 48, 3), seed=1)
    assert_close_outputs(apply(model, variables, x), torch_forward(torch_model, x), ENTRY.tolerance)


def test_multi_token_gradients_and_the_key_norm_bias_gets_none():
    """Every gradient matches vit-pytorch's float64 one, except `to_k.1.bias`, whose true gradient is zero: zero in
    float64, round-off in ours."""
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    x = images((2, 32, 32, 3))
    weights = images((2, 10), seed=7)
    exact = float64_reference(torch_model)
    (exact(nchw(x)) * torch.from_numpy(weights).double()).sum().backward()

    def loss(params):
        return (model.apply({**variables, 'params': params}, x) * weights).sum()

    grads = jax.jit(jax.grad(loss))(variables['params'])
    flax_grads = converters.to_torch(model, {**variables, 'params': grads}, as_numpy=True)
    overall = max(p.grad.abs().max().item() for p in exact.parameters())
    checked = 0
    for name, parameter in exact.named_parameters():
        expected = parameter.grad.numpy()
        if name.endswith('to_k.1.bias'):
            assert np.abs(flax_grads[name]).max() <= 1e-6 * overall, name
            assert truly_zero(expected, overall), name
            continue
        scale = float(np.abs(expected).max(initial=0.0))
        np.testing.assert_allclose(flax_grads[name], expected, rtol=1e-4, atol=1e-4 * scale, err_msg=name)
        checked += 1
    assert checked > 30


# inputs of other sizes


@pytest.mark.parametrize('size', [(32, 32), (17, 32), (24, 20)])
def test_inputs_giving_the_same_map_are_accepted(size):
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    x = images((2, *size, 3))
    assert_close_outputs(apply(model, variables, x), torch_forward(torch_model, x), ENTRY.tolerance)


@pytest.mark.parametrize('size', [(16, 32), (33, 32), (48, 48)])
def test_inputs_giving_another_map_are_refused_with_sizes(size):
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    x = images((1, *size, 3))
    grid = tuple(-(-s // 16) for s in size)
    with pytest.raises(ValueError, match=rf'image of size \({size[0]}, {size[1]}\) gives a {grid[0]}x{grid[1]} '
                                         r'feature map, .* image_size=32 are for 2x2 .*\(16, 32\]'):
        model.apply(variables, x)
    with pytest.raises(RuntimeError):  # vit-pytorch fails too, later
        torch_forward(torch_model, x)


# BatchNorm in training


@pytest.mark.parametrize('config', [TINY, ODD], ids=['2-stages', '3-stages'])
def test_train_mode_batch_norm_statistics_match_torch(config):
    """One training step on the same batch: the same outputs, and every running mean / variance as torch's."""
    model, variables, torch_model = converted_pair(ENTRY, config)
    x = images((4, config['image_size'], config['image_size'], 3), seed=3)

    out, updates = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))(variables, x)
    exact = float64_reference(torch_model).train()
    with torch.no_grad():
        torch_out = exact(nchw(x))
    assert_close_outputs(out, torch_out, ENTRY.tolerance)

    exported = converters.to_torch(model, {**variables, **updates}, as_numpy=True)
    torch_state = exact.state_dict()
    before = converters.to_torch(model, variables, as_numpy=True)
    stats = [key for key in torch_state if key.endswith(('running_mean', 'running_var'))]
    assert len(stats) == 2 * sum(isinstance(m, torch.nn.BatchNorm2d) for m in exact.modules()) > 0
    for key in stats:
        t = torch_state[key].numpy()
        assert not np.array_equal(t, before[key]), key  # the step did move it
        error = float(np.abs(exported[key] - t).max())
        assert error <= 2e-5 * max(1.0, float(np.abs(t).max())), (key, error)
    # parameters are not touched by the statistics update
    assert updates.keys() == {'batch_stats'}


def test_eval_mode_leaves_statistics_and_needs_no_mutable():
    model, variables, _ = converted_pair(ENTRY, TINY)
    x = images((2, 32, 32, 3))
    _, updates = jax.jit(lambda v: model.apply(v, x, mutable=['batch_stats']))(variables)
    np.testing.assert_array_equal(updates['batch_stats']['backbone_0']['layers_0_0']['to_q_1']['mean'],
                                  variables['batch_stats']['backbone_0']['layers_0_0']['to_q_1']['mean'])


# dropout, heads, quirks


def test_dropout_only_in_training_and_reproducible():
    plain, variables, _ = converted_pair(ENTRY, TINY)
    model = LeViT(**{**TINY, 'dropout': 0.5})
    x = images((2, 32, 32, 3))
    np.testing.assert_array_equal(apply(model, variables, x), apply(plain, variables, x))

    run = jax.jit(lambda key: model.apply(variables, x, train=True, mutable=['batch_stats'], rngs={'dropout': key}))
    (out_1, stats_1), (again, _), (out_2, _) = run(jax.random.key(1)), run(jax.random.key(1)), run(jax.random.key(2))
    np.testing.assert_array_equal(out_1, again)
    assert not np.allclose(out_1, out_2)
    # dropout acts inside the blocks, not on what the batch statistics of the first layer see
    np.testing.assert_array_equal(stats_1['batch_stats']['backbone_0']['layers_0_0']['to_q_1']['mean'],
                                  run(jax.random.key(2))[1]['batch_stats']['backbone_0']['layers_0_0']['to_q_1']['mean'])
    with pytest.raises(Exception, match='dropout'):
        model.apply(variables, x, train=True, mutable=['batch_stats'])  # no 'dropout' rng stream given


def test_distillation_head_returns_a_tuple():
    model, variables, torch_model = converted_pair(ENTRY, ODD)
    x = images((2, 48, 48, 3))
    out = apply(model, variables, x)
    assert isinstance(out, tuple) and out[0].shape == (2, 7) and out[1].shape == (2, 5)
    assert variables['params']['distill_head']['kernel'].shape == (16, 5)  # the last stage's dim
    assert_close_outputs(out, torch_forward(torch_model, x), ENTRY.tolerance)


def test_downsampling_transformer_ignores_mlp_mult_and_dropout():
    """vit-pytorch builds it with mlp_mult=2, no dropout, twice the heads, and no attention residual."""
    model = LeViT(**{**WIDE, 'dropout': 0.3})
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))['params']
    assert shapes['backbone_0']['layers_0_1']['net_0']['kernel'].shape == (1, 1, 16, 48)  # mlp_mult=3
    assert shapes['backbone_1']['layers_0_1']['net_0']['kernel'].shape == (1, 1, 16, 32)  # always 2
    assert shapes['backbone_1']['layers_0_0']['pos_bias']['embedding'].shape == (16, 2)  # heads * 2
    assert shapes['backbone_2']['layers_0_0']['pos_bias']['embedding'].shape == (4, 1)  # 4x4 -> 2x2


def test_short_tuples_are_padded_with_their_last_value():
    model = LeViT(**{**TINY, 'stages': 3, 'dim': (16, 24), 'heads': (2,), 'depth': (1, 2)})
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))['params']
    assert set(shapes) >= {f'backbone_{i}' for i in range(5)}
    assert 'layers_1_0' in shapes['backbone_4'] and 'layers_1_0' not in shapes['backbone_0']
    assert shapes['mlp_head']['kernel'].shape == (24, 10)


# bad configurations and inputs


@pytest.mark.parametrize('config, message', [
    (dict(image_size=(32, 32)), r'single int image_size .* got image_size=\(32, 32\)'),
    (dict(image_size=8), 'image_size=8 gives an empty feature map'),
    (dict(dim=(16, 24, 32)), r'designated number of stages: dim=\(16, 24, 32\), .*stages=2'),
    (dict(heads=(2, 2, 2)), r'heads=\(2, 2, 2\)'),
    (dict(stages=0), 'stages=0'),
    (dict(heads=0), 'heads=0 must be a positive integer'),
    (dict(depth=(1, 0)), r'depth=\(1, 0\)'),
    (dict(mlp_mult=1.5), 'mlp_mult=1.5 must be a positive integer'),
    (dict(dim_key=0), 'dim_key=0 must be a positive integer'),
    (dict(num_classes=-1), 'num_classes=-1'),
    (dict(num_distill_classes=-2), 'num_distill_classes=-2'),
])
def test_bad_configs_fail_at_construction(config, message):
    with pytest.raises(ValueError, match=message):
        LeViT(**{**TINY, **config})


def test_torch_refuses_too_many_stage_values_too():
    with pytest.raises(AssertionError, match='designated number of stages'):
        torch_class(ENTRY)(**{**TINY, 'dim': (16, 24, 32)})


@pytest.mark.parametrize('shape, message', [
    ((1, 32, 32, 1), r'expected 3 channels \(channels-last input\), got shape \(1, 32, 32, 1\)'),
    ((1, 3, 32, 32), r'expected 3 channels \(channels-last input\), got shape \(1, 3, 32, 32\)'),
    ((32, 32, 3), r'expected images of shape \(batch, height, width, channels\), got shape \(32, 32, 3\)'),
])
def test_bad_inputs_name_the_shape(shape, message):
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(LeViT(**TINY).init, jax.random.key(0), jnp.zeros(shape))


# random configurations
