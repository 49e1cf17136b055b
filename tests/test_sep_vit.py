"""SepViT behaviour beyond the registry configs: vit-pytorch's ignored keywords, window counts and image sizes, the
one-window early return, DSSA on its own, dropout, bad configurations and inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import parity
from vit_flax import converters
from tests.conftest import apply, assert_close_outputs, converted_pair, float64_reference, images, nchw, torch_forward

from vit_flax.sep_vit import DSSA, SepViT

ENTRY = parity.BY_NAME['sep_vit.SepViT']
TINY = ENTRY.configs[0]  # two stages: 56 x 56 images give 14 x 14 (2 x 2 windows), then 7 x 7 (one window)
ONE_STAGE = ENTRY.configs[1]


def test_parameter_tree_mirrors_torch():
    variables = jax.eval_shape(SepViT(**TINY).init, jax.random.key(0), jnp.zeros((1, 56, 56, 3)))
    params = variables['params']
    assert set(variables) == {'params'}
    assert params['layers_0_0']['conv']['kernel'].shape == (7, 7, 3, 16)  # stride 4: kernel 7, padding 3
    assert params['layers_1_0']['conv']['kernel'].shape == (3, 3, 16, 32)  # stride 2: kernel 3, padding 1
    assert params['layers_1_1']['proj']['kernel'].shape == (3, 3, 1, 32)  # PEG: depth-wise
    attention = params['layers_1_2']['layers_0_0']
    assert attention['window_tokens'].shape == (32,)
    assert attention['norm']['g'].shape == (1, 32, 1, 1)
    assert attention['to_qkv']['kernel'].shape == (1, 32, 3 * 2 * 32) and 'bias' not in attention['to_qkv']
    # the last stage has one window, yet owns the point-wise projection, as in torch
    assert attention['window_tokens_to_qk_0']['scale'].shape == (32,)  # LayerNorm(dim_head)
    assert attention['window_tokens_to_qk_3']['kernel'].shape == (1, 64, 128)
    assert params['layers_1_2']['layers_0_1']['net_1']['kernel'].shape == (1, 1, 32, 128)
    assert 'norm' in params['layers_0_2'] and 'norm' not in params['layers_1_2']  # last stage: no output norm
    assert params['mlp_head_1']['scale'].shape == (32,) and params['mlp_head_2']['kernel'].shape == (32, 10)


def test_window_size_and_dim_head_are_ignored_like_torch():
    """SepViT does not pass window_size or dim_head on: the tree is the defaults' (dim_head 32), windows are 7 x 7."""
    shapes = lambda config: jax.tree.map(lambda a: a.shape, jax.eval_shape(
        SepViT(**config).init, jax.random.key(0), jnp.zeros((1, 28, 28, 1))))
    ignored = {**ONE_STAGE, 'window_size': 4, 'dim_head': 16}
    defaults = {key: value for key, value in ignored.items() if key not in ('window_size', 'dim_head')}
    assert shapes(ignored) == shapes(defaults)
    assert shapes(ignored)['params']['layers_0_2']['layers_0_0']['to_qkv']['kernel'] == (1, 24, 3 * 3 * 32)
    with pytest.raises(ValueError, match=r'height 8 and width 8 must be divisible by window size 7'):
        SepViT(**ignored).init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))  # 8 x 8 maps fit window_size=4


@pytest.mark.parametrize('config, size', [
    (ONE_STAGE, (28, 56)),  # 7 x 14: 1 x 2 windows
    (TINY, (56, 112)),  # 14 x 28 (2 x 4 windows), then 7 x 14 (1 x 2)
])
def test_rectangular_maps_and_window_counts(config, size):
    model, variables, torch_model = converted_pair(ENTRY, config)
    x = images((2, *size, config.get('channels', 3)))
    assert_close_outputs(apply(model, variables, x), torch_forward(torch_model, x), ENTRY.tolerance)


@pytest.mark.parametrize('size', [(32, 32), (28, 56)])
def test_map_sizes_not_divisible_by_seven_are_refused_with_sizes(size):
    """32 x 32: 8 x 8 first-stage maps; 28 x 56 with two stages: 7 x 14, then 4 x 7. torch fails the same way."""
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    x = images((1, *size, 3))
    with pytest.raises(ValueError, match=r'height \d+ and width \d+ must be divisible by window size 7'):
        jax.eval_shape(model.apply, variables, x)
    with pytest.raises(AssertionError, match='must be divisible by window size 7'):
        torch_forward(torch_model, x)


def test_one_window_skips_the_point_wise_attention():
    """One-stage model on 28 x 28: one window per map. The point-wise projection exists but takes no part: its
    gradient is zero here, None in torch; the rest match."""
    model, variables, torch_model = converted_pair(ENTRY, ONE_STAGE)
    x = images((2, 28, 28, 1), seed=3)
    exact = float64_reference(torch_model)
    torch_out = exact(nchw(x))
    weights = images(tuple(torch_out.shape), seed=4)
    (torch_out * torch.from_numpy(weights).double()).sum().backward()
    loss = lambda p: (model.apply({**variables, 'params': p}, x) * weights).sum()
    grads = jax.jit(jax.grad(loss))(variables['params'])
    flax_grads = converters.to_torch(model, {**variables, 'params': grads}, as_numpy=True)
    unused = [name for name, p in exact.named_parameters() if p.grad is None]
    assert len(unused) == 2 * 4 and all('window_tokens_to_qk' in name for name in unused)  # 2 layers x 2 modules
    for name, parameter in exact.named_parameters():
        if parameter.grad is None:
            assert not np.any(flax_grads[name]), name
        else:
            scale = float(np.abs(parameter.grad.numpy()).max())
            np.testing.assert_allclose(flax_grads[name], parameter.grad.numpy(), rtol=1e-4, atol=1e-4 * scale,
                                       err_msg=name)


@pytest.mark.parametrize('window_size, size', [(4, (8, 12)), (2, (2, 2)), (3, (9, 6))])
def test_dssa_alone_with_its_own_window_size(window_size, size):
    """DSSA used directly honours its window_size (default 7); here with 5 heads of dim_head 4."""
    from vit_pytorch.sep_vit import DSSA as TorchDSSA

    torch.manual_seed(0)
    torch_attention = TorchDSSA(dim=6, heads=5, dim_head=4, window_size=window_size).eval()
    with torch.no_grad():
        for parameter in torch_attention.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    attention = DSSA(dim=6, heads=5, dim_head=4, window_size=window_size)
    x = images((2, *size, 6), seed=1)
    variables = converters.from_torch(attention, torch_attention.state_dict(), example_inputs=(x,))
    out = jax.jit(attention.apply)(variables, x)
    with torch.no_grad():
        torch_out = float64_reference(torch_attention)(nchw(x))
    assert_close_outputs(np.moveaxis(np.asarray(out), -1, 1), torch_out, ENTRY.tolerance)


@pytest.mark.parametrize('config, size', [
    ({**ONE_STAGE, 'num_classes': 0}, (28, 28)),  # a head with no outputs
    ({**ONE_STAGE, 'depth': ()}, (5, 3)),  # no stage: the raw image is pooled, normalised and classified
    ({**ONE_STAGE, 'depth': (0,)}, (28, 28)),  # an empty transformer
])
def test_degenerate_configs_match_torch(config, size):
    model, variables, torch_model = converted_pair(ENTRY, config)
    x = images((2, *size, 1))
    out = apply(model, variables, x)
    assert out.shape == (2, config['num_classes'])
    assert_close_outputs(out, torch_forward(torch_model, x), ENTRY.tolerance)


def test_dropout_only_in_training_and_reproducible():
    """Dropout after both softmaxes, in the feed-forward and after the output projection (2 x 2 windows here)."""
    model, variables, _ = converted_pair(ENTRY, {**ONE_STAGE, 'dropout': 0.1})
    x = images((2, 56, 56, 1))
    train = jax.jit(lambda v, x, key: model.apply(v, x, train=True, rngs={'dropout': key}))
    out_1 = train(variables, x, jax.random.key(1))
    np.testing.assert_array_equal(out_1, train(variables, x, jax.random.key(1)))
    assert not np.allclose(out_1, train(variables, x, jax.random.key(2)))
    assert not np.allclose(out_1, apply(model, variables, x))
    with pytest.raises(Exception, match='dropout'):
        jax.eval_shape(lambda v, x: model.apply(v, x, train=True), variables, x)  # no rng


@pytest.mark.parametrize('config, message', [
    (dict(depth=2), r'depth needs to be tuple.*depth=2'),
    (dict(depth=[1, 1]), r'depth=\[1, 1\]'),
    (dict(heads=(1, 2, 3)), r'heads=\(1, 2, 3\) needs one entry per stage, depth=\(1, 1\) has 2'),
    (dict(window_size=(7,)), r'window_size=\(7,\) needs one entry per stage'),
    (dict(heads=(1, 0)), r'heads=\(1, 0\)'),
    (dict(depth=(1, -1)), r'depth=\(1, -1\)'),
    (dict(dim=0), r'dim=0'),
    (dict(channels=0), r'channels=0'),
    (dict(num_classes=-1), r'num_classes=-1'),
    (dict(ff_mult=0), r'ff_mult=0'),
    (dict(dropout=2.0), r'dropout=2.0'),
])
def test_bad_configs_fail_at_construction(config, message):
    with pytest.raises(ValueError, match=message):
        SepViT(**{**TINY, **config})


def test_torch_refuses_the_same_tuple_mismatches():
    from vit_pytorch.sep_vit import SepViT as TorchSepViT

    for config in (dict(depth=2), dict(heads=(1, 2, 3)), dict(window_size=(7,))):
        with pytest.raises(AssertionError):
            TorchSepViT(**{**TINY, **config})


@pytest.mark.parametrize('shape, message', [
    ((1, 56, 56, 1), r'expected 3 channels \(channels-last input\), got shape \(1, 56, 56, 1\)'),
    ((1, 3, 56, 56), r'expected 3 channels \(channels-last input\), got shape \(1, 3, 56, 56\)'),
    ((56, 56, 3), r'expected images of shape \(batch, height, width, channels\), got shape \(56, 56, 3\)'),
])
def test_bad_inputs_name_the_shape(shape, message):
    with pytest.raises(ValueError, match=message):
        SepViT(**TINY).init(jax.random.key(0), jnp.zeros(shape))
