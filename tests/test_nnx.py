"""vit-flax models from Flax NNX (vit_flax.nnx): an NNX-wrapped model computes what the linen model computes with
the same variables and keys, bit for bit, and its variables go to vit-pytorch and come back from it."""

import jax
import numpy as np
import pytest
from flax import nnx, traverse_util
from flax.nnx import bridge

import parity
from vit_flax import converters, registry
from vit_flax.nnx import LinenRngs, linen_variables, load_linen_variables, to_nnx
from tests.conftest import (apply, assert_close_outputs, new_torch_model, numpy_tree, randomised_flax_variables,
                            randomised_torch_model, run_torch, same_draws)

# `make test` wraps a handful that covers what the bridge must carry: a plain ViT, BatchNorm statistics and index
# buffers (LeViT), an rng stream in eval mode (MAE), lists of images and buffers (NaViT); `make test-slow` every
# other entry (the suite must stay under 20 minutes on 2 cores)
FAST = ('vit.ViT', 'levit.LeViT', 'mae.MAE', 'na_vit.NaViT')
ENTRIES = [pytest.param(entry, id=entry.name, marks=[] if entry.name in FAST else [pytest.mark.slow])
           for entry in parity.ENTRIES]


@nnx.jit
def nnx_call(nnx_model, inputs, keys):
    """The NNX model on `inputs`, drawing from linen's `keys` ({stream: key}, or None for a model that draws
    nothing) as model.apply would."""
    return nnx_model(*inputs, rngs=LinenRngs(**keys) if keys else None)


def signatures(variables):
    return {path: (leaf.shape, leaf.dtype) for path, leaf in traverse_util.flatten_dict(variables).items()}


def assert_same_leaves(actual, expected):
    actual, expected = traverse_util.flatten_dict(actual), traverse_util.flatten_dict(expected)
    assert actual.keys() == expected.keys()
    for path, leaf in expected.items():
        np.testing.assert_array_equal(np.asarray(actual[path]), np.asarray(leaf), err_msg=str(path))


@pytest.mark.parametrize('entry', ENTRIES)
def test_nnx_model_is_the_linen_model_and_exports_to_vit_pytorch(entry):
    """Initialised by to_nnx on the registry's example, the NNX model holds linen's variable tree; given randomised
    variables, it gives the linen model's outputs bit for bit; its state, exported, loads into vit-pytorch with
    strict=True and gives vit-pytorch's outputs."""
    model = entry.build(0)
    nnx_model = to_nnx(model, rngs=nnx.Rngs(0))
    linen_shapes = jax.eval_shape(model.init, registry.init_rngs(jax.random.key(0)), *registry.example_inputs(model))
    assert signatures(linen_variables(nnx_model)) == signatures(linen_shapes)

    variables = randomised_flax_variables(model)
    load_linen_variables(nnx_model, variables)
    inputs = entry.inputs.example(model, batch=2, rng=np.random.default_rng(0))
    rngs, draws = same_draws(entry, model, inputs)
    outputs = nnx_call(nnx_model, inputs, rngs)
    for nnx_leaf, linen_leaf in zip(numpy_tree(outputs), numpy_tree(apply(model, variables, *inputs, rngs=rngs)),
                                    strict=True):
        np.testing.assert_array_equal(nnx_leaf, linen_leaf)

    exported = linen_variables(nnx_model)
    assert_same_leaves(exported, variables)
    torch_model = new_torch_model(entry, entry.configs[0])
    torch_model.load_state_dict(converters.to_torch(model, exported), strict=True)
    with draws:
        torch_outputs = run_torch(entry, torch_model, inputs)
    assert_close_outputs(outputs, torch_outputs, entry.tolerance)


@pytest.mark.parametrize('entry', ENTRIES)
def test_vit_pytorch_weights_load_into_nnx(entry):
    torch_model = randomised_torch_model(entry, entry.configs[0])
    model = entry.build(0)
    nnx_model = to_nnx(model, variables=converters.from_torch(model, torch_model.state_dict()))

    inputs = entry.inputs.example(model, batch=2, rng=np.random.default_rng(1))
    rngs, draws = same_draws(entry, model, inputs)
    with draws:
        torch_outputs = run_torch(entry, torch_model, inputs)
    assert_close_outputs(nnx_call(nnx_model, inputs, rngs), torch_outputs, entry.tolerance)


def test_training_call_updates_batch_stats_as_linen_does():
    """train=True with mutable=['batch_stats']: the NNX model returns the outputs and keeps linen's new running
    statistics; its parameters stay."""
    model = parity.BY_NAME['cvt.CvT'].build(0)
    variables = randomised_flax_variables(model)
    nnx_model = to_nnx(model, variables=variables)
    images = np.random.default_rng(0).standard_normal((2, 32, 32, 3), dtype=np.float32)
    keys = {'dropout': jax.random.key(1)}

    outputs = nnx.jit(lambda m, x: m(x, train=True, mutable=['batch_stats'], rngs=LinenRngs(**keys)))(nnx_model, images)
    linen_outputs, updates = apply(model, variables, images, train=True, rngs=keys, mutable=['batch_stats'])
    np.testing.assert_array_equal(np.asarray(outputs), np.asarray(linen_outputs))
    assert_same_leaves(linen_variables(nnx_model), {**variables, **updates})
    changed = jax.tree_util.tree_map(lambda new, old: bool((new != old).any()), updates['batch_stats'],
                                     variables['batch_stats'])
    assert all(jax.tree_util.tree_leaves(changed))


def test_nnx_gradients_are_linen_gradients():
    """nnx.grad with respect to the NNX model's nnx.Params is jax.grad of model.apply with respect to 'params'."""
    model = parity.BY_NAME['vit.ViT'].build(0)
    variables = randomised_flax_variables(model)
    nnx_model = to_nnx(model, variables=variables)
    images = np.random.default_rng(0).standard_normal((2, *registry.example_inputs(model)[0].shape[1:]),
                                                      dtype=np.float32)

    nnx_grads = nnx.jit(nnx.grad(lambda m, x: m(x).sum()))(nnx_model, images)
    linen_grads = jax.jit(jax.grad(lambda params, x: model.apply({**variables, 'params': params}, x).sum()))(
        variables['params'], images)
    assert_same_leaves(linen_variables(nnx_grads)['params'], linen_grads)


def test_to_nnx_initialises_as_bridge_lazy_init():
    """to_nnx compiles the init that bridge.lazy_init runs op by op: the same keys, the same variables."""
    model = parity.BY_NAME['vit.ViT'].build(0)
    lazily = bridge.ToNNX(model, rngs=nnx.Rngs(0))
    bridge.lazy_init(lazily, *registry.example_inputs(model))
    assert_same_leaves(linen_variables(to_nnx(model, rngs=nnx.Rngs(0))), linen_variables(lazily))


def test_load_keeps_the_variables_and_refuses_another_tree():
    """load_linen_variables updates the nnx.Variables in place and names what does not fit; to_nnx cannot
    initialise without rngs."""
    model = parity.BY_NAME['vit.ViT'].build(0)
    nnx_model = to_nnx(model, rngs=nnx.Rngs(0))
    kernel = nnx_model.mlp_head['kernel']
    variables = randomised_flax_variables(model)
    load_linen_variables(nnx_model, variables)
    assert nnx_model.mlp_head['kernel'] is kernel  # the same nnx.Param, new value
    np.testing.assert_array_equal(np.asarray(kernel[...]), np.asarray(variables['params']['mlp_head']['kernel']))

    with pytest.raises(ValueError, match='needs rngs'):
        to_nnx(model)

    other = randomised_flax_variables(parity.BY_NAME['vit.ViT'].build(0, num_classes=3))
    with pytest.raises(ValueError, match='mlp_head/bias.*mlp_head/kernel'):
        load_linen_variables(nnx_model, other)
