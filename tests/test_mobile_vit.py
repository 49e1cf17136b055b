"""MobileViT behaviour beyond the registry configs: parameter tree, train-mode BatchNorm, input sizes, bad
configurations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import parity
from vit_flax import converters
from tests.conftest import apply, assert_close_outputs, converted_pair, float64_reference, images, nchw, torch_forward

from vit_flax.mobile_vit import MobileViT

ENTRY = parity.BY_NAME['mobile_vit.MobileViT']
TINY = ENTRY.configs[0]


def test_parameter_tree_mirrors_torch():
    variables = jax.eval_shape(MobileViT(**ENTRY.configs[1]).init, jax.random.key(0), jnp.zeros((1, 64, 128, 3)))
    params, stats = variables['params'], variables['batch_stats']
    assert params['conv1_0']['kernel'].shape == (3, 3, 3, 8)
    # expansion=1: depth-wise conv first (conv_0), point-wise linear at conv_3
    assert params['stem_0']['conv_0']['kernel'].shape == (3, 3, 1, 8) and 'conv_6' not in params['stem_0']
    assert params['trunk_0_1']['transformer']['layers_0_0']['to_qkv']['kernel'].shape == (12, 96)  # 4 heads x 8
    assert params['trunk_0_1']['conv4_0']['kernel'].shape == (3, 3, 16, 8)
    assert set(stats['trunk_2_1']['conv4_1']) == {'mean', 'var'}
    assert set(params['to_logits_2']) == {'kernel'}  # no bias
    tiny = jax.eval_shape(MobileViT(**TINY).init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))['params']
    assert tiny['stem_1']['conv_3']['kernel'].shape == (3, 3, 1, 8) and 'conv_7' in tiny['stem_1']


def test_train_mode_batchnorm_statistics_match_torch():
    """One train-mode forward on each side: same outputs (batch statistics) and same running mean / var updates."""
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    x = images((3, 64, 64, 3), seed=5)
    eval_out = torch_forward(torch_model, x)
    reference = float64_reference(torch_model).train()  # its running statistics are the ones compared below
    with torch.no_grad():
        torch_out = reference(nchw(x))
    assert not np.allclose(eval_out, torch_out, atol=1e-3)

    out, updates = apply(model, variables, x, train=True, mutable=['batch_stats'])
    assert_close_outputs(out, torch_out, ENTRY.tolerance)
    new_state = converters.to_torch(model, {**variables, **updates}, as_numpy=True)
    old_state = converters.to_torch(model, variables, as_numpy=True)
    torch_state = reference.state_dict()
    keys = [k for k in torch_state if k.endswith(('running_mean', 'running_var'))]
    assert len(keys) == 2 * (1 + 4 * 3 + 3 * 3 + 3 * 4 + 1)
    for key in keys:
        assert not np.allclose(old_state[key], new_state[key]), key
        assert_close_outputs(new_state[key], torch_state[key], ENTRY.tolerance)


@pytest.mark.parametrize('size', [(32, 96), (96, 64)])
def test_other_input_sizes(size):
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    x = images((2, *size, 3))
    assert_close_outputs(apply(model, variables, x), torch_forward(torch_model, x), ENTRY.tolerance)


BASE_CHANNELS = TINY['channels']


@pytest.mark.parametrize('config, message', [
    (dict(dims=(8, 8)), r'dims=\(8, 8\)'),
    (dict(depths=(1, 1)), r'depths=\(1, 1\)'),
    (dict(image_size=(64, 63), patch_size=(2, 2)), r'image_size=\(64, 63\) .*patch_size=\(2, 2\)'),
    (dict(kernel_size=5), r'kernel_size=5'),
    (dict(channels=BASE_CHANNELS[:9]), r'at least 10'),
    (dict(channels=(4, 4, 8, 6, 8, 8, 12, 12, 16, 16, 24)), r'channels\[2\]=8 and channels\[3\]=6'),
    (dict(channels=(4, 4, 8, 8, 8, 6, 12, 12, 16, 16, 24)), r'channels\[4\]=8 and channels\[5\]=6'),
])
def test_bad_configs_fail_at_construction(config, message):
    with pytest.raises(ValueError, match=message):
        MobileViT(**{**TINY, **config})


def test_torch_fails_where_this_port_refuses():
    from vit_pytorch.mobile_vit import MobileViT as TorchMobileViT
    for config in (dict(kernel_size=5), dict(channels=(4, 4, 8, 6, 8, 8, 12, 12, 16, 16, 24))):
        with pytest.raises(RuntimeError):
            TorchMobileViT(**{**TINY, **config}).eval()(torch.zeros(1, 3, 64, 64))


def test_bad_inputs_name_the_shape():
    with pytest.raises(ValueError, match=r'expected 3 channels \(channels-last input\), got shape \(1, 3, 64, 64\)'):
        MobileViT(**TINY).init(jax.random.key(0), jnp.zeros((1, 3, 64, 64)))
    with pytest.raises(ValueError, match=r'does not divide into patches of 2 x 2'):
        jax.eval_shape(MobileViT(**{**TINY, 'patch_size': (2, 2)}).init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
