"""TwinsSVT behaviour beyond the registry configs: parameter tree, other image sizes, single-key attention, dropout,
bad configurations and inputs, no classes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import parity
from vit_flax import converters
from tests.conftest import (apply, assert_close_outputs, converted_pair, float64_reference, images, nchw, torch_forward,
                            truly_zero)

from vit_flax.twins_svt import GlobalAttention, LocalAttention, Transformer, TwinsSVT

ENTRY = parity.BY_NAME['twins_svt.TwinsSVT']
TINY = ENTRY.configs[0]
SIZE = ENTRY.inputs.preferred_size


def test_parameter_tree_mirrors_torch():
    config = ENTRY.configs[1]
    variables = jax.eval_shape(TwinsSVT(**config).init, jax.random.key(0), jnp.zeros((1, *SIZE, 3)))
    params = variables['params']
    # s1_depth = s2_depth = s3_depth = 0: empty transformers, no parameters (nor state-dict keys in torch)
    empty = {'layers_0_3', 'layers_1_3', 'layers_2_3'}
    assert set(params) == {f'layers_{i}_{j}' for i in range(4) for j in range(4)} - empty | {'layers_6'}
    embedding = params['layers_0_0']
    assert embedding['proj_0']['g'].shape == (1, 3 * 2 * 2, 1, 1)  # (c p1 p2) features of a 2 x 2 patch
    assert embedding['proj_1']['kernel'].shape == (1, 1, 12, 12)
    local = params['layers_0_1']['layers_0_0']['fn']
    assert local['to_q']['kernel'].shape == (1, 1, 12, 512)  # heads=8, dim_head=64 whatever emb_dim
    assert set(local['to_q']) == {'kernel'} and set(local['to_kv']) == {'kernel'}
    assert params['layers_0_1']['layers_0_2']['fn']['to_kv']['kernel'].shape == (3, 3, 12, 1024)  # s1_global_k=3
    assert params['layers_0_2']['proj']['fn']['kernel'].shape == (5, 5, 1, 12)  # depth-wise PEG, peg_kernel_size=5
    assert set(params['layers_0_1']) == {f'layers_0_{j}' for j in range(4)}  # local attn, ff, global attn, ff
    # the last stage has no local attention and no first feed-forward (torch's nn.Identity)
    assert set(params['layers_3_1']) == {'layers_0_2', 'layers_0_3'}
    assert set(params['layers_3_3']) == {'layers_0_2', 'layers_0_3'}  # s4_depth=1
    assert params['layers_6']['kernel'].shape == (24, 7)


@pytest.mark.parametrize('size', [(12, 8)])  # the random configs try more sizes
def test_other_image_sizes(size):
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    x = images((2, *size, 3))
    assert_close_outputs(apply(model, variables, x), torch_forward(torch_model, x), ENTRY.tolerance)


@pytest.mark.parametrize('which', ['local', 'global'])
def test_single_key_attention_gives_queries_no_gradient(which):
    """A one-pixel local window, or keys / values strided down to one pixel, get attention weight exactly 1, so the
    query conv's gradient is zero (torch's too). This is why the registry configs avoid such attentions: the
    gradient test would compare zeros with zeros-or-round-off."""
    from vit_pytorch import twins_svt as torch_twins

    kwargs = dict(dim=8, heads=2, dim_head=4)
    if which == 'local':
        torch_attention = torch_twins.LocalAttention(**kwargs, patch_size=1).eval()
        attention = LocalAttention(**kwargs, patch_size=1)
    else:
        torch_attention = torch_twins.GlobalAttention(**kwargs, k=2).eval()
        attention = GlobalAttention(**kwargs, k=2)
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in torch_attention.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    x = images((2, 2, 2, 8))
    variables = converters.from_torch(attention, torch_attention.state_dict(), example_inputs=(x,))

    weights = images((2, 8, 2, 2), seed=7)
    exact = float64_reference(torch_attention)
    torch_out = exact(nchw(x))
    (torch_out * torch.from_numpy(weights).double()).sum().backward()
    loss = lambda p: (attention.apply({**variables, 'params': p}, x) * np.moveaxis(weights, 1, -1)).sum()
    out = jax.jit(attention.apply)(variables, x)
    assert_close_outputs(np.moveaxis(np.asarray(out), -1, 1), torch_out.detach(), ENTRY.tolerance)
    grads = jax.jit(jax.grad(loss))(variables['params'])
    flax_grads = converters.to_torch(attention, {**variables, 'params': grads}, example_inputs=(x,), as_numpy=True)

    names = [name for name, _ in exact.named_parameters()]
    assert set(names) == {'norm.g', 'norm.b', 'to_q.weight', 'to_kv.weight', 'to_out.0.weight', 'to_out.0.bias'}
    scale = max(float(np.abs(flax_grads[name]).max()) for name in names)
    assert scale > 1e-2
    assert np.abs(flax_grads['to_q.weight']).max() <= 1e-6 * scale
    largest = max(float(exact.get_parameter(name).grad.abs().max()) for name in names)
    assert truly_zero(exact.to_q.weight.grad, largest)


def test_dropout_only_in_training_and_reproducible():
    """Dropout after every attention output and feed-forward layer, and on global (not local) attention weights.
    On one transformer layer (the whole model's train mode costs a compile of its own): eval mode is torch's,
    training draws from the 'dropout' stream."""
    from vit_pytorch.twins_svt import Transformer as TorchTransformer

    kwargs = dict(dim=8, depth=1, heads=2, dim_head=4, mlp_mult=2, local_patch_size=2, global_k=2, dropout=0.25)
    torch.manual_seed(0)
    torch_transformer = TorchTransformer(**kwargs).eval()
    transformer = Transformer(**kwargs)
    x = images((2, 4, 6, 8))
    variables = converters.from_torch(transformer, torch_transformer.state_dict(), example_inputs=(x,))
    with torch.no_grad():
        torch_out = float64_reference(torch_transformer)(nchw(x))
    eval_out = jax.jit(transformer.apply)(variables, x)
    assert_close_outputs(np.moveaxis(np.asarray(eval_out), -1, 1), torch_out, ENTRY.tolerance)

    train = jax.jit(lambda v, x, key: transformer.apply(v, x, train=True, rngs={'dropout': key}))
    out_1 = train(variables, x, jax.random.key(1))
    np.testing.assert_array_equal(out_1, train(variables, x, jax.random.key(1)))
    assert not np.allclose(out_1, train(variables, x, jax.random.key(2)))
    assert not np.allclose(out_1, eval_out)
    with pytest.raises(Exception, match='dropout'):
        transformer.apply(variables, x, train=True)  # no rng


@pytest.mark.parametrize('config, message', [
    (dict(s1_emb_dim=0), r's1_emb_dim=0'),
    (dict(s2_patch_size=0), r's2_patch_size=0'),
    (dict(s3_local_patch_size=0), r's3_local_patch_size=0'),
    (dict(s4_global_k=0), r's4_global_k=0'),
    (dict(s2_emb_dim=1.5), r's2_emb_dim=1.5'),
    (dict(s1_depth=-1), r's1_depth=-1'),
    (dict(peg_kernel_size=2), r'peg_kernel_size must be a positive odd integer.*peg_kernel_size=2'),
    (dict(peg_kernel_size=0), r'peg_kernel_size=0'),
    (dict(num_classes=-1), r'num_classes=-1'),
    (dict(dropout=2.0), r'dropout=2.0'),
])
def test_bad_configs_fail_at_construction(config, message):
    with pytest.raises(ValueError, match=message):
        TwinsSVT(**{**TINY, **config})


@pytest.mark.parametrize('shape, message', [
    ((1, 8, 12, 1), r'expected 3 channels \(channels-last input\), got shape \(1, 8, 12, 1\)'),
    ((8, 12, 3), r'expected images of shape \(batch, height, width, channels\), got shape \(8, 12, 3\)'),
    ((1, 7, 12, 3), r'the s1 map of size \(7, 12\) is not divisible by s1_patch_size=2'),
    ((1, 8, 10, 3), r'the s1 map of size \(4, 5\) is not divisible by s1_local_patch_size=2'),
])
def test_bad_inputs_name_the_shape(shape, message):
    with pytest.raises(ValueError, match=message):
        TwinsSVT(**TINY).init(jax.random.key(0), jnp.zeros(shape))


def test_num_classes_zero_gives_empty_logits():
    model = TwinsSVT(**{**TINY, 'num_classes': 0})
    x = jnp.zeros((2, *SIZE, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    assert jax.eval_shape(model.apply, variables, x).shape == (2, 0)


def test_map_smaller_than_global_k_is_refused_like_torch():
    config = {**TINY, 's4_global_k': 3}  # the s4 map of an 8 x 12 image is 2 x 3
    with pytest.raises(ValueError, match=r'the s4 map of size \(2, 3\) is smaller than s4_global_k=3'):
        TwinsSVT(**config).check_input(np.zeros((1, *SIZE, 3)))
    from vit_pytorch.twins_svt import TwinsSVT as TorchTwinsSVT

    with pytest.raises(RuntimeError):
        TorchTwinsSVT(**config)(torch.zeros(1, 3, *SIZE))
