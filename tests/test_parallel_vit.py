"""Parallel ViT behaviour beyond the registry configs: branch counts, pooling, smaller inputs, dropout, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import parity
from vit_flax import converters
from tests.conftest import apply, assert_close_outputs, converted_pair, images, torch_class, torch_forward

from vit_flax.parallel_vit import ViT

ENTRY = parity.BY_NAME['parallel_vit.ViT']
TINY = dict(image_size=16, patch_size=4, num_classes=5, dim=16, depth=1, heads=2, mlp_dim=16, dim_head=8)


def test_branches_are_named_like_torch():
    config = {**TINY, 'num_parallel_branches': 3, 'pool': 'mean'}
    params = jax.eval_shape(ViT(**config).init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))['params']
    assert sorted(params['transformer']['layers_0_0']) == ['fns_0', 'fns_1', 'fns_2']
    assert sorted(params['transformer']['layers_0_1']['fns_2']) == ['net_0', 'net_1', 'net_4']
    # the (1, N, dim) layout, and a cls token even with mean pooling
    assert params['pos_embedding'].shape == (1, 17, 16) and params['cls_token'].shape == (1, 1, 16)
    torch_state = torch_class(ENTRY)(**config).state_dict()
    assert set(converters.to_torch(ViT(**config), converters.from_torch(ViT(**config), torch_state))) == set(torch_state)


@pytest.mark.parametrize('size', [(8, 16), (16, 4), (12, 12)])
def test_smaller_inputs_slice_the_position_embedding(size):
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    x = images((2, *size, 3))
    assert_close_outputs(apply(model, variables, x), torch_forward(torch_model, x), ENTRY.tolerance)


def test_larger_input_is_refused_with_sizes():
    model, variables, _ = converted_pair(ENTRY, TINY)
    with pytest.raises(ValueError, match=r'input of size \(20, 16\) gives 21 tokens, more than the 17'):
        model.apply(variables, images((1, 20, 16, 3)))


def test_no_branches_makes_every_layer_the_identity():
    config = {**TINY, 'num_parallel_branches': 0, 'depth': 2}
    model, variables, torch_model = converted_pair(ENTRY, config)
    assert 'transformer' not in variables['params']
    x = images((2, 16, 16, 3))
    out = apply(model, variables, x)
    assert_close_outputs(out, torch_forward(torch_model, x), ENTRY.tolerance)
    no_layers = ViT(**{**config, 'depth': 0})
    np.testing.assert_allclose(out, apply(no_layers, variables, x), rtol=0, atol=0)


def test_num_classes_zero_keeps_an_empty_head():
    model, variables, torch_model = converted_pair(ENTRY, {**TINY, 'num_classes': 0})
    x = images((2, 16, 16, 3))
    out = apply(model, variables, x)
    assert out.shape == (2, 0) and variables['params']['mlp_head_1']['kernel'].shape == (16, 0)
    assert_close_outputs(out, torch_forward(torch_model, x), ENTRY.tolerance)


def test_branches_are_summed():
    """Two branches with the same weights give the same layer as one branch counted twice."""
    one = {**TINY, 'num_parallel_branches': 1}
    model1, variables1, _ = converted_pair(ENTRY, one)
    model2 = ViT(**{**TINY, 'num_parallel_branches': 2})
    p1 = variables1['params']
    t1 = p1['transformer']
    doubled = {**p1, 'transformer': {
        name: {'fns_0': layer['fns_0'], 'fns_1': layer['fns_0']} for name, layer in t1.items()}}
    x = images((2, 16, 16, 3))
    out2 = apply(model2, {'params': doubled}, x)

    def double_branch(module, inputs, out):
        return 2 * out

    # torch check of the same identity: one branch whose output is doubled
    _, _, torch_one = converted_pair(ENTRY, one)
    for attns, ffs in torch_one.transformer.layers:
        attns.fns[0].register_forward_hook(double_branch)
        ffs.fns[0].register_forward_hook(double_branch)
    assert_close_outputs(out2, torch_forward(torch_one, x), ENTRY.tolerance)
    assert not np.allclose(out2, apply(model1, variables1, x))


def test_dropout_only_in_training_and_reproducible():
    model = ViT(**{**TINY, 'dropout': 0.5, 'emb_dropout': 0.5})
    x = images((2, 16, 16, 3))
    _, variables, _ = converted_pair(ENTRY, TINY)  # the same tree; converting skips compiling an init
    eval_out = apply(model, variables, x)
    np.testing.assert_array_equal(eval_out, apply(ViT(**TINY), variables, x))

    # rbg keys: XLA:CPU compiles threefry's dropout masks slowly (seconds), and the stream semantics are the same
    train = lambda seed: apply(model, variables, x, train=True, rngs={'dropout': jax.random.key(seed, impl='rbg')})
    np.testing.assert_array_equal(train(1), train(1))
    assert not np.allclose(train(1), train(2))
    assert not np.allclose(train(1), eval_out)
    with pytest.raises(Exception, match='dropout'):
        model.apply(variables, x, train=True)  # no 'dropout' rng stream given


@pytest.mark.parametrize('config, message', [
    (dict(image_size=18), r'divisible by the patch size: image_size=\(18, 18\), patch_size=\(4, 4\)'),
    (dict(patch_size=(4, 5)), r'divisible by the patch size: .*patch_size=\(4, 5\)'),
    (dict(pool='max'), "pool=.max."),
    (dict(channels=0), 'channels=0 must be a positive integer'),
    (dict(num_parallel_branches=-1), 'num_parallel_branches=-1'),
])
def test_bad_configs_fail_at_construction(config, message):
    with pytest.raises(ValueError, match=message):
        ViT(**{**TINY, **config})


@pytest.mark.parametrize('shape, message', [
    ((1, 16, 16, 1), r'expected 3 channels \(channels-last input\), got shape \(1, 16, 16, 1\)'),
    ((16, 16, 3), r'expected images of shape \(batch, height, width, channels\), got shape \(16, 16, 3\)'),
    ((1, 14, 16, 3), r'image of size \(14, 16\) is not divisible by patch size \(4, 4\)'),
])
def test_bad_inputs_name_the_shape(shape, message):
    with pytest.raises(ValueError, match=message):
        ViT(**TINY).init(jax.random.key(0), jnp.zeros(shape))
