"""MaxViT behaviour beyond the registry configs: parameter tree, train-mode BatchNorm, Dropsample, dropout, one-pixel
windows, bad configurations and inputs."""

from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import parity
from vit_flax import converters
from tests.conftest import (apply, assert_close_outputs, converted_pair, float64_reference, images, nchw, torch_forward,
                            truly_zero)

from vit_flax.max_vit import Attention, Dropsample, MaxViT, MBConvResidual

ENTRY = parity.BY_NAME['max_vit.MaxViT']
TINY = ENTRY.configs[0]
SIZE = ENTRY.inputs.preferred_size


def test_parameter_tree_mirrors_torch():
    variables = jax.eval_shape(MaxViT(**TINY).init, jax.random.key(0), jnp.zeros((1, *SIZE, 3)))
    params, stats = variables['params'], variables['batch_stats']
    assert params['conv_stem_0']['kernel'].shape == (3, 3, 3, 16)
    # stage 1's block downsamples: its MBConv is a plain Sequential (`layers.0.0.{k}`)
    assert params['layers_0_0_3']['kernel'].shape == (3, 3, 1, 64)  # depth-wise, expansion 4
    assert set(params['layers_0_0_6']) == {'gate_1', 'gate_3'}
    gate = params['layers_0_0_6']['gate_1']
    assert set(gate) == {'kernel'} and gate['kernel'].shape == (64, 16)  # no bias
    assert set(stats['layers_0_0_8']) == {'mean', 'var'}
    attention = params['layers_1_6']['fn']
    assert attention['rel_pos_bias']['embedding'].shape == (9, 4)  # (2w - 1)^2 offsets, 32 // 8 heads
    assert set(attention['to_qkv']) == {'kernel'} and set(attention['to_out_0']) == {'kernel'}
    assert params['layers_1_7']['fn']['net_1']['kernel'].shape == (32, 128)
    assert params['mlp_head_1']['scale'].shape == (32,) and params['mlp_head_2']['kernel'].shape == (32, 10)

    # a stage's second block keeps width and size: MBConvResidual (`layers.1.0.fn.{k}`)
    config = ENTRY.configs[1]
    variables = jax.eval_shape(MaxViT(**config).init, jax.random.key(0), jnp.zeros((1, *SIZE, 1)))
    params, stats = variables['params'], variables['batch_stats']
    assert params['conv_stem_1']['kernel'].shape == (3, 3, 12, 12)  # dim_conv_stem
    assert params['layers_0_0_0']['kernel'].shape == (1, 1, 12, 48)  # expansion 2 of dim_out 24
    assert params['layers_1_0']['fn_7']['kernel'].shape == (1, 1, 48, 24)
    assert params['layers_1_0']['fn_6']['gate_1']['kernel'].shape == (48, 24)  # shrinkage 0.5
    assert set(stats['layers_1_0']['fn_8']) == {'mean', 'var'}


def test_train_mode_batchnorm_statistics_match_torch():
    """One train-mode forward on each side: same outputs (batch statistics) and same running mean / var updates."""
    # dropout=0, and MaxViT never passes a dropout to its MBConvs (vit-pytorch's quirk): train mode is
    # deterministic and needs no rng, not even 'dropsample'
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    x = images((3, *SIZE, 3), seed=5)
    eval_out = torch_forward(torch_model, x)
    exact = float64_reference(torch_model).train()
    with torch.no_grad():
        torch_out = exact(nchw(x))
    assert not np.allclose(eval_out, torch_out, atol=1e-3)  # train mode really uses the batch statistics

    out, updates = apply(model, variables, x, train=True, mutable=['batch_stats'])
    assert_close_outputs(out, torch_out, ENTRY.tolerance)

    new_state = converters.to_torch(model, {**variables, **updates}, as_numpy=True)
    old_state = converters.to_torch(model, variables, as_numpy=True)
    torch_state = exact.state_dict()
    keys = [k for k in torch_state if k.endswith(('running_mean', 'running_var'))]
    assert len(keys) == 2 * 3 * 2  # two blocks, three BatchNorms each, mean and var
    for key in keys:
        assert not np.allclose(old_state[key], new_state[key]), key  # the statistics moved
        assert_close_outputs(new_state[key], torch_state[key], ENTRY.tolerance)


def test_dropout_only_in_training_and_reproducible():
    """Registry config 1 has vit-pytorch's default dropout=0.1: its eval-mode parity is the registry's."""
    model, variables, _ = converted_pair(ENTRY, ENTRY.configs[1])
    x = images((2, *SIZE, 1))
    train = jax.jit(lambda v, x, key: model.apply(v, x, train=True, rngs={'dropout': key}, mutable=['batch_stats']))
    out_1, updates = train(variables, x, jax.random.key(1))
    np.testing.assert_array_equal(out_1, train(variables, x, jax.random.key(1))[0])
    assert not np.allclose(out_1, train(variables, x, jax.random.key(2))[0])
    assert set(updates) == {'batch_stats'}
    with pytest.raises(Exception, match='dropout'):
        jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))(variables, x)  # no rng


DIM, P = 8, 0.5


@pytest.fixture(scope='module')
def mbconv_residual():
    """A standalone residual MBConv with Dropsample(0.5) and its randomised vit-pytorch twin, in train mode."""
    from vit_pytorch.max_vit import MBConv as TorchMBConv

    torch.manual_seed(0)
    torch_module = TorchMBConv(DIM, DIM, downsample=False, expansion_rate=2, dropout=P).train()
    with torch.no_grad():
        for parameter in torch_module.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    module = MBConvResidual(DIM, expansion_rate=2, dropout=P)
    x = images((6, 4, 4, DIM), seed=3)  # width 4: the only width (besides 1) torch's Dropsample accepts
    variables = converters.from_torch(module, torch_module.state_dict(), example_inputs=(x,))
    capture = lambda mdl, method: isinstance(mdl, Dropsample) or mdl.name == 'fn_8'
    run = jax.jit(lambda v, x, key: module.apply(
        v, x, train=True, rngs={'dropsample': key}, mutable=['batch_stats', 'intermediates'],
        capture_intermediates=capture))
    return module, variables, torch_module, x, run


def test_dropsample_deterministic_given_the_rng_and_off_in_eval(mbconv_residual):
    module, variables, _, x, run = mbconv_residual
    out_1, _ = run(variables, x, jax.random.key(1))
    np.testing.assert_array_equal(out_1, run(variables, x, jax.random.key(1))[0])
    assert not np.allclose(out_1, run(variables, x, jax.random.key(2))[0])
    with pytest.raises(Exception, match='dropsample'):
        module.apply(variables, x, train=True, mutable=['batch_stats'])  # train mode needs the rng
    eval_out = jax.jit(module.apply)(variables, x)  # eval mode: the identity, no rng needed
    assert eval_out.shape == x.shape

    draws = jax.jit(lambda x, key: Dropsample(P).apply({}, x, train=True, rngs={'dropsample': key}))
    ones = jnp.ones((64, 2, 3, 5))
    scaled = np.asarray(draws(ones, jax.random.key(0)))
    assert set(np.unique(scaled)) <= {0.0, 2.0}  # kept samples scaled by 1 / (1 - p)
    per_sample = scaled.reshape(64, -1)
    assert (per_sample == per_sample[:, :1]).all()  # one draw per sample
    assert 10 < (per_sample[:, 0] > 0).sum() < 54
    np.testing.assert_array_equal(Dropsample(P).apply({}, ones), ones)
    np.testing.assert_array_equal(Dropsample(0.0).apply({}, ones, train=True), ones)


def test_dropsample_matches_torch_given_the_same_draw(mbconv_residual):
    """torch's Dropsample with its draw replaced by Flax's per-sample draw (kept samples -> 1, dropped -> 0):
    same outputs. (torch's own draw is 4 values over the width axis, see the next test.)"""
    module, variables, torch_module, x, run = mbconv_residual
    # op by op: under jit XLA may compute fn_8's output again inside the fusion that drops samples, rounded
    # otherwise than the copy it records, and this compares the two
    with jax.disable_jit():
        out, state = run(variables, x, jax.random.key(7))
    intermediates = state['intermediates']
    net_out = np.asarray(intermediates['fn_8']['__call__'][0])
    dropped = np.asarray(intermediates['dropsample']['__call__'][0])
    keep = np.abs(dropped).reshape(len(x), -1).max(axis=1) > 0
    assert 0 < keep.sum() < len(x)  # this key both keeps and drops
    np.testing.assert_allclose(dropped, net_out * keep[:, None, None, None] / (1 - P), rtol=1e-6)

    class Draw:
        def __init__(self, shape, device=None):
            assert shape == (len(x), 1, 1, 1)

        def uniform_(self):
            return torch.from_numpy(keep.astype(np.float32)).reshape(-1, 1, 1, 1)

    exact = float64_reference(torch_module)
    with mock.patch.object(torch, 'FloatTensor', Draw), torch.no_grad():
        torch_out = exact(nchw(x))
    assert_close_outputs(np.moveaxis(np.asarray(out), -1, 1), torch_out, ENTRY.tolerance)


def test_torch_dropsample_draws_over_the_width_axis():
    """The documented deviation: torch reads the shape tuple as data, drawing 4 values that broadcast over width."""
    from vit_pytorch.max_vit import Dropsample as TorchDropsample

    torch.manual_seed(0)
    out = TorchDropsample(0.5).train()(torch.ones(8, 2, 3, 4))
    assert (out == out[:1, :1, :1]).all() and set(out.unique().tolist()) <= {0.0, 2.0}  # varies with width only
    with pytest.raises(RuntimeError):
        TorchDropsample(0.5).train()(torch.ones(8, 2, 3, 5))


def test_one_pixel_windows_give_queries_keys_and_position_bias_no_gradient():
    """window_size=1: each window attends over one key with weight exactly 1, so the query / key columns of `to_qkv`
    and the position bias get zero gradient (torch's exact ones are zero up to float64 round-off). This is why the
    registry configs avoid such windows: the gradient test would compare zeros with round-off. (Their forward parity
    is in the random configurations.)"""
    from vit_pytorch.max_vit import Attention as TorchAttention

    torch.manual_seed(0)
    torch_attention = TorchAttention(dim=8, dim_head=4, window_size=1).eval()
    attention = Attention(dim=8, dim_head=4, window_size=1)
    x = images((2, 3, 5, 1, 1, 8))
    variables = converters.from_torch(attention, torch_attention.state_dict(), example_inputs=(x,))
    exact = float64_reference(torch_attention)
    torch_out = exact(torch.from_numpy(x).double())
    torch_out.sum().backward()
    assert_close_outputs(jax.jit(attention.apply)(variables, x), torch_out.detach(), ENTRY.tolerance)
    grads = jax.jit(jax.grad(lambda p: attention.apply({'params': p}, x).sum()))(variables['params'])
    assert np.abs(np.asarray(grads['rel_pos_bias']['embedding'])).max() == 0
    assert np.abs(np.asarray(grads['to_qkv']['kernel'][:, :16])).max() == 0  # q and k columns
    assert np.abs(np.asarray(grads['to_qkv']['kernel'][:, 16:])).max() > 1e-3  # v columns
    torch_grads = exact.to_qkv.weight.grad.numpy()
    largest = max(float(p.grad.abs().max()) for p in exact.parameters() if p.grad is not None)
    assert truly_zero(exact.rel_pos_bias.weight.grad, largest)
    assert truly_zero(torch_grads[:16], largest) and np.abs(torch_grads[16:]).max() > 1e-3


@pytest.mark.parametrize('config, message', [
    (dict(depth=2), r'depth needs to be tuple.*depth=2'),
    (dict(depth=[1, 2]), r'depth=\[1, 2\]'),
    (dict(depth=(1, -1)), r'depth=\(1, -1\)'),
    (dict(dim_head=6), r'divisible by dimension per head: dim=16, dim_head=6'),
    (dict(window_size=0), r'window_size=0'),
    (dict(dim=0), r'dim=0'),
    (dict(channels=0), r'channels=0'),
    (dict(dim_conv_stem=0), r'dim_conv_stem=0'),
    (dict(depth=(0, 1), dim_conv_stem=8), r'depth=\(0, 1\): stage 1 expects 16 channels, but gets 8'),
    (dict(depth=(1, 0)), r'the head expects 32 channels, but gets 16'),
    (dict(num_classes=-1), r'num_classes=-1'),
    (dict(dropout=1.5), r'dropout=1.5'),
])
def test_bad_configs_fail_at_construction(config, message):
    with pytest.raises(ValueError, match=message):
        MaxViT(**{**TINY, **config})


@pytest.mark.parametrize('shape, message', [
    ((1, 32, 64, 1), r'expected 3 channels \(channels-last input\), got shape \(1, 32, 64, 1\)'),
    ((32, 64, 3), r'expected images of shape \(batch, height, width, channels\), got shape \(32, 64, 3\)'),
    ((1, 20, 64, 3), r'feature map of size \(5, 16\) in block 0 .* not divisible by window_size=2'),
])
def test_bad_inputs_name_the_shape(shape, message):
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(MaxViT(**TINY).init, jax.random.key(0), jnp.zeros(shape))
