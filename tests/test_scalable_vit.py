"""ScalableViT behaviour beyond the registry configs: parameter tree, image sizes, windows, dropout, a zero gradient,
bad configurations and inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import parity
from vit_flax import converters
from tests.conftest import (apply, assert_close_outputs, converted_pair, float64_reference, images, init_variables,
                            nchw, new_torch_model, torch_forward, truly_zero)

from vit_flax.scalable_vit import ScalableViT

ENTRY = parity.BY_NAME['scalable_vit.ScalableViT']
TINY = ENTRY.configs[0]  # two stages, windows (2, None)
GLOBAL = ENTRY.configs[1]  # two stages (the second of depth 0), window_size None
SINGLE = ENTRY.configs[2]  # one stage of depth 2, window 2, reduction factor 4
SIZE = ENTRY.inputs.preferred_size


def test_parameter_tree_mirrors_torch():
    variables = jax.eval_shape(ScalableViT(**SINGLE).init, jax.random.key(0), jnp.zeros((1, *SIZE, 2)))
    params = variables['params']
    assert params['to_patches']['kernel'].shape == (7, 7, 2, 12)
    stage = params['layers_0_0']
    assert 'layers_0_2' in stage and 'layers_1_2' not in stage  # PEG in a stage's first block only
    assert stage['layers_0_2']['proj']['kernel'].shape == (3, 3, 1, 12)  # depth-wise
    assert 'norm' not in stage and 'layers_0_1' not in params  # the last stage: no output norm, no downsample
    ssa, iwsa = stage['layers_1_0'], stage['layers_1_4']
    assert ssa['to_k']['kernel'].shape == (4, 4, 12, 12) and set(ssa['to_k']) == {'kernel'}
    assert ssa['norm']['g'].shape == (1, 12, 1, 1)
    assert iwsa['local_interactive_module']['kernel'].shape == (3, 3, 12, 12)
    assert set(iwsa['local_interactive_module']) == {'kernel', 'bias'}
    assert set(stage['layers_1_3']) == {'net_0', 'net_1', 'net_4'}  # the second feed-forward
    assert set(params['mlp_head_1']) == {'scale', 'bias'} and params['mlp_head_2']['kernel'].shape == (12, 3)

    two_stages = jax.eval_shape(ScalableViT(**TINY).init, jax.random.key(0), jnp.zeros((1, *SIZE, 3)))['params']
    assert two_stages['layers_0_0']['norm']['g'].shape == (1, 16, 1, 1)
    assert two_stages['layers_0_1']['conv']['kernel'].shape == (3, 3, 16, 32)
    assert 'norm' not in two_stages['layers_1_0']


@pytest.mark.parametrize('size', [(9, 31)])  # the random configs try more sizes
def test_any_image_size_and_aspect_ratio(size):
    model, variables, torch_model = converted_pair(ENTRY, GLOBAL)
    x = images((2, *size, 1))
    assert_close_outputs(apply(model, variables, x), torch_forward(torch_model, x), ENTRY.tolerance)


def test_window_must_divide_the_feature_map():
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    x = images((1, 36, 24, 3))  # a 9 x 6 map for windows of 2
    with pytest.raises(AssertionError, match=r'height \(9\) or width \(6\)'):
        torch_forward(torch_model, x)
    with pytest.raises(ValueError, match=r'height \(9\) or width \(6\) of feature map is not divisible by the window '
                                         r'size \(2, 2\)'):
        jax.jit(model.apply)(variables, x)  # fails while tracing, nothing to compile


def test_window_size_none_is_one_window_over_the_whole_map():
    config = {**SINGLE, 'window_size': None}
    model, variables, torch_model = converted_pair(ENTRY, config)
    x = images((2, 32, 32, 2))  # an 8 x 8 map
    out = apply(model, variables, x)
    assert_close_outputs(out, torch_forward(torch_model, x), ENTRY.tolerance)
    whole = jax.jit(ScalableViT(**{**SINGLE, 'window_size': 8}).apply)(variables, x)
    np.testing.assert_allclose(whole, out, rtol=1e-6, atol=1e-6)


def test_dropout_only_in_training_and_reproducible():
    model = ScalableViT(**{**SINGLE, 'depth': (1,), 'dropout': 0.5})
    x = images((2, *SIZE, 2))
    variables = init_variables(model)
    eval_out = apply(model, variables, x)
    np.testing.assert_array_equal(eval_out, apply(model, variables, x))

    train = lambda seed: apply(model, variables, x, train=True, rngs={'dropout': jax.random.key(seed)})
    np.testing.assert_array_equal(train(1), train(1))
    assert not np.allclose(train(1), train(2))
    assert not np.allclose(train(1), eval_out)
    with pytest.raises(Exception, match='dropout'):
        jax.jit(lambda v: model.apply(v, x, train=True))(variables)  # no 'dropout' rng stream given


def test_a_single_key_gives_the_query_projection_no_gradient():
    """Reduction factor 4 on a 4 x 4 map leaves one key: the softmax is 1 whatever the query, so to_q's gradient is
    zero (Flax's float32 one is round-off). This is why the registry configs give every attention at least two keys."""
    model, variables, torch_model = converted_pair(ENTRY, SINGLE)
    x = images((2, 16, 16, 2))
    weights = images((2, 3), seed=7)
    reference = float64_reference(torch_model)
    (reference(nchw(x)) * torch.from_numpy(weights).double()).sum().backward()
    grads = jax.jit(jax.grad(lambda p: (model.apply({'params': p}, x) * weights).sum()))(variables['params'])
    flax_grads = converters.to_torch(model, {'params': grads}, as_numpy=True)
    scale = max(float(np.abs(g).max()) for g in flax_grads.values())
    assert scale > 1e-2
    for key in ('layers.0.0.layers.0.0.to_q.weight', 'layers.0.0.layers.1.0.to_q.weight'):
        assert np.abs(flax_grads[key]).max() <= 1e-6 * scale
        assert truly_zero(reference.get_parameter(key).grad, scale)
    key = 'layers.0.0.layers.0.4.to_q.weight'  # the windowed attention sees 4 keys per window
    np.testing.assert_allclose(flax_grads[key], reference.get_parameter(key).grad.numpy(),
                               rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize('config, message', [
    (dict(depth=2), r'depth needs to be tuple .* got depth=2'),
    (dict(depth=()), r'at least one stage, got depth=\(\)'),
    (dict(depth=(1, -1)), r'depth=\(1, -1\)'),
    (dict(heads=(2, 2, 2)), r'heads=\(2, 2, 2\) needs one entry per stage \(2 stages'),
    (dict(window_size=(2,)), r'window_size=\(2,\) needs one entry per stage'),
    (dict(window_size=0), 'window_size=0'),
    (dict(reduction_factor=(2, 0)), r'reduction_factor=\(2, 0\)'),
    (dict(ssa_dim_key=0), 'ssa_dim_key=0'),
    (dict(dim=0), 'dim=0'),
    (dict(channels=0), 'channels=0'),
    (dict(num_classes=-1), 'num_classes=-1'),
    (dict(dropout=1.5), 'dropout=1.5'),
])
def test_bad_configs_fail_at_construction(config, message):
    with pytest.raises(ValueError, match=message):
        ScalableViT(**{**TINY, **config})


@pytest.mark.parametrize('shape, message', [
    ((1, 32, 24, 1), r'expected 3 channels \(channels-last input\), got shape \(1, 32, 24, 1\)'),
    ((1, 3, 32, 24), r'expected 3 channels \(channels-last input\), got shape \(1, 3, 32, 24\)'),
    ((32, 24, 3), r'expected images of shape \(batch, height, width, channels\), got shape \(32, 24, 3\)'),
])
def test_bad_inputs_name_the_shape(shape, message):
    with pytest.raises(ValueError, match=message):
        ScalableViT(**TINY).init(jax.random.key(0), jnp.zeros(shape))


def test_a_map_smaller_than_the_keys_conv_is_refused_as_torch_refuses_it():
    """SINGLE's stem leaves a 2 x 2 map of 8 x 8 images, under its reduction factor 4: vit-pytorch's strided conv
    fails, and here the keys would be empty."""
    with pytest.raises(ValueError, match=r'feature map of size \(2, 2\) is smaller than the keys\' conv '
                                         r'\(reduction_factor=4\)'):
        ScalableViT(**SINGLE).init(jax.random.key(0), jnp.zeros((1, 8, 8, SINGLE['channels'])))
    with pytest.raises(RuntimeError):
        new_torch_model(ENTRY, SINGLE)(torch.zeros(1, SINGLE['channels'], 8, 8))
