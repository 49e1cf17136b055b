"""CvT behaviour beyond the registry configs: stage outputs, train-mode BatchNorm, image sizes, dropout, bad
configurations and inputs."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import parity
from vit_flax import converters
from tests.conftest import (apply, assert_close_outputs, converted_pair, float64_reference, images, nchw, torch_forward,
                            truly_zero)

from vit_flax.cvt import Attention, CvT, Transformer

ENTRY = parity.BY_NAME['cvt.CvT']
TINY = ENTRY.configs[0]
SIZE = ENTRY.inputs.fixed_size


def test_parameter_tree_mirrors_torch():
    variables = jax.eval_shape(CvT(**TINY).init, jax.random.key(0), jnp.zeros((1, *SIZE, 3)))
    params, stats = variables['params'], variables['batch_stats']
    assert params['layers_0_0']['kernel'].shape == (7, 7, 3, 16)  # stage 1 embedding conv, HWIO
    assert params['layers_1_1']['g'].shape == (1, 24, 1, 1) and params['layers_1_1']['b'].shape == (1, 24, 1, 1)
    attention = params['layers_1_2']['layers_0_0']
    assert attention['to_q']['net_0']['kernel'].shape == (3, 3, 1, 24)  # depth-wise: one input channel per group
    assert set(attention['to_q']['net_0']) == {'kernel'}  # no conv biases in the projections
    assert attention['to_kv']['net_2']['kernel'].shape == (1, 1, 24, 2 * 64 * 2)  # dim_head is always 64
    assert set(stats['layers_1_2']['layers_0_0']['to_kv']['net_1']) == {'mean', 'var'}
    assert params['layers_2_2']['layers_0_1']['net_1']['kernel'].shape == (1, 1, 32, 128)
    assert params['to_logits_2']['kernel'].shape == (32, 10)


@pytest.mark.parametrize('size', [(1, 1), (9, 31)])  # the random configs try more sizes
def test_any_image_size_and_aspect_ratio(size):
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    x = images((2, *size, 3))
    assert_close_outputs(apply(model, variables, x), torch_forward(torch_model, x), ENTRY.tolerance)


def test_latents_and_stage_outputs_match_torch():
    """`method='layers'` is torch's `model.layers`; capture_intermediates on `layers_{i}_2` is a hook on `layers[i]`."""
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    x = images((2, *SIZE, 3))
    exact = float64_reference(torch_model)
    hooked = []
    for stage in exact.layers:
        stage.register_forward_hook(lambda module, inputs, output: hooked.append(output.detach()))
    with torch.no_grad():
        torch_latents = exact.layers(nchw(x))
        torch_logits = exact.to_logits(torch_latents)

    capture = lambda module, method: isinstance(module, Transformer) and method == '__call__'
    run = jax.jit(lambda v, x: model.apply(v, x, method='layers', capture_intermediates=capture))
    latents, state = run(variables, x)
    assert_close_outputs(np.moveaxis(np.asarray(latents), -1, 1), torch_latents, ENTRY.tolerance)
    logits = jax.jit(lambda v, z: model.apply(v, z, method='to_logits'))(variables, latents)
    assert_close_outputs(logits, torch_logits, ENTRY.tolerance)

    stages = [state['intermediates'][f'layers_{i}_2']['__call__'][0] for i in range(3)]
    assert [s.shape for s in stages] == [(2, 6, 5, 16), (2, 3, 3, 24), (2, 2, 2, 32)]
    np.testing.assert_array_equal(stages[2], latents)
    for stage, torch_stage in zip(stages, hooked):
        assert_close_outputs(np.moveaxis(np.asarray(stage), -1, 1), torch_stage, ENTRY.tolerance)


def test_train_mode_batchnorm_statistics_match_torch():
    """One train-mode forward on each side: same outputs (batch statistics) and same running mean / var updates."""
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    x = images((3, *SIZE, 3), seed=5)
    eval_out = torch_forward(torch_model, x)
    exact = float64_reference(torch_model).train()
    with torch.no_grad():
        torch_out = exact(nchw(x))
    assert not np.allclose(eval_out, torch_out, atol=1e-3)  # train mode really uses the batch statistics

    out, updates = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))(variables, x)
    assert_close_outputs(out, torch_out, ENTRY.tolerance)

    new_state = converters.to_torch(model, {**variables, **updates}, as_numpy=True)
    old_state = converters.to_torch(model, variables, as_numpy=True)
    torch_state = exact.state_dict()
    keys = [k for k in torch_state if k.endswith(('running_mean', 'running_var'))]
    assert len(keys) == 3 * 2 * 2  # three layers, to_q and to_kv, mean and var
    for key in keys:
        assert not np.allclose(old_state[key], new_state[key]), key  # the statistics moved
        assert_close_outputs(new_state[key], torch_state[key], ENTRY.tolerance)


def test_single_key_attention_gives_queries_no_gradient():
    """Keys / values strided down to one pixel get attention weight exactly 1, so the query projection's gradient
    is zero (torch's too). This is why the registry configs avoid such stages: the gradient test would compare
    zeros with zeros-or-round-off."""
    from vit_pytorch.cvt import Attention as TorchAttention

    torch.manual_seed(0)
    torch_attention = TorchAttention(dim=8, proj_kernel=3, kv_proj_stride=2, heads=2, dim_head=4).eval()
    with torch.no_grad():
        for parameter in torch_attention.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    attention = Attention(dim=8, proj_kernel=3, kv_proj_stride=2, heads=2, dim_head=4)
    x = images((2, 2, 2, 8))  # a 2 x 2 map: 4 queries, 1 key
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
    scale = max(float(np.abs(flax_grads[name]).max()) for name in names)
    assert scale > 1e-2
    largest = max(float(exact.get_parameter(name).grad.abs().max()) for name in names)
    query_names = [name for name in names if name.startswith('to_q.')]
    assert len(query_names) == 4  # depth-wise kernel, BatchNorm scale and bias, point-wise kernel
    for name in query_names:
        assert np.abs(flax_grads[name]).max() <= 1e-6 * scale, name
        assert truly_zero(exact.get_parameter(name).grad, largest), name


def test_num_classes_zero_gives_empty_logits():
    model, variables, torch_model = converted_pair(ENTRY, {**TINY, 'num_classes': 0})
    x = images((2, *SIZE, 3))
    out = apply(model, variables, x)
    assert out.shape == (2, 0)
    assert_close_outputs(out, torch_forward(torch_model, x), ENTRY.tolerance)


def test_dropout_only_in_training_and_reproducible():
    """Registry config 1 has dropout=0.1: its eval-mode parity is the registry's; here, training draws."""
    model, variables, _ = converted_pair(ENTRY, ENTRY.configs[1])
    x = images((2, *SIZE, 1))
    train = jax.jit(lambda v, x, key: model.apply(v, x, train=True, rngs={'dropout': key}, mutable=['batch_stats']))
    out_1, updates = train(variables, x, jax.random.key(1))
    np.testing.assert_array_equal(out_1, train(variables, x, jax.random.key(1))[0])
    assert not np.allclose(out_1, train(variables, x, jax.random.key(2))[0])
    assert set(updates) == {'batch_stats'}
    with pytest.raises(Exception, match='dropout'):
        jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))(variables, x)  # no rng


@pytest.mark.parametrize('config, message', [
    (dict(s1_proj_kernel=2), r's1_proj_kernel must be odd.*s1_proj_kernel=2'),
    (dict(s3_proj_kernel=4), r's3_proj_kernel=4'),
    (dict(s2_emb_dim=0), r's2_emb_dim=0'),
    (dict(s1_emb_kernel=0), r's1_emb_kernel=0'),
    (dict(s3_emb_stride=0), r's3_emb_stride=0'),
    (dict(s2_kv_proj_stride=0), r's2_kv_proj_stride=0'),
    (dict(s1_heads=0), r's1_heads=0'),
    (dict(s2_mlp_mult=0), r's2_mlp_mult=0'),
    (dict(s3_mlp_mult=1.5), r's3_mlp_mult=1.5'),
    (dict(s1_depth=-1), r's1_depth=-1'),
    (dict(channels=0), r'channels=0'),
    (dict(num_classes=-1), r'num_classes=-1'),
    (dict(dropout=2.0), r'dropout=2.0'),
])
def test_bad_configs_fail_at_construction(config, message):
    with pytest.raises(ValueError, match=message):
        CvT(**{**TINY, **config})


@pytest.mark.parametrize('shape, message', [
    ((1, 16, 16, 1), r'expected 3 channels \(channels-last input\), got shape \(1, 16, 16, 1\)'),
    ((1, 3, 16, 16), r'expected 3 channels \(channels-last input\), got shape \(1, 3, 16, 16\)'),
    ((16, 16, 3), r'expected images of shape \(batch, height, width, channels\), got shape \(16, 16, 3\)'),
])
def test_bad_inputs_name_the_shape(shape, message):
    with pytest.raises(ValueError, match=message):
        CvT(**TINY).init(jax.random.key(0), jnp.zeros(shape))


def test_remat_keeps_the_tree_outputs_gradients_and_statistics():
    """`remat_policy` (JAX-only) recomputes in the backward pass: the same variables, train-mode logits, gradients
    and BatchNorm updates."""
    x = images((2, *SIZE, 3))
    plain, rematted = CvT(**TINY), CvT(**TINY, remat_policy='dots_saveable')
    variables = plain.init(jax.random.key(0), x)
    assert jax.tree.structure(rematted.init(jax.random.key(0), x)) == jax.tree.structure(variables)

    def run(model):
        def loss(params):
            logits, updates = model.apply({**variables, 'params': params}, x, train=True, mutable=['batch_stats'])
            return (logits ** 2).sum(), (logits, updates)
        gradient = jax.grad(loss, has_aux=True)
        jaxpr = str(jax.make_jaxpr(gradient)(variables['params']))
        # rematerialised (jax prints the primitive as remat2 or checkpoint, by version), or not
        assert bool(re.search(r'\b(remat\d*|checkpoint)\[', jaxpr)) == (model.remat_policy is not None)
        return jax.jit(gradient)(variables['params'])

    (grads, (logits, stats)), (remat_grads, (remat_logits, remat_stats)) = run(plain), run(rematted)
    np.testing.assert_allclose(remat_logits, logits, rtol=1e-6, atol=1e-6)
    for expected, got in ((grads, remat_grads), (stats, remat_stats)):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6), expected, got)


def test_unknown_remat_policy_is_named():
    with pytest.raises(ValueError, match="remat_policy='everything'"):
        CvT(**TINY, remat_policy='everything')
