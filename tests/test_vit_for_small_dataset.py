"""vit_for_small_dataset (SPT + LSA) beyond the registry configs: shifts, LSA, modes, dropout, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import parity
from vit_flax import converters
from tests.conftest import (apply, assert_close_outputs, converted_pair, float64_default, float64_reference, images,
                            init_variables, nchw, torch_class, torch_forward)

from vit_flax.vit_for_small_dataset import LSA, SPT, ViT, shift

VIT = parity.BY_NAME['vit_for_small_dataset.ViT']
SPT_ENTRY = parity.BY_NAME['vit_for_small_dataset.SPT']
TINY = dict(image_size=32, patch_size=8, num_classes=10, dim=32, depth=2, heads=4, mlp_dim=64, dim_head=8)


def randomise(torch_model):
    with torch.no_grad():
        for parameter in torch_model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return torch_model.eval()


@pytest.mark.parametrize('size', [(1, 1), (1, 4), (3, 1), (5, 7)])
def test_shifts_match_torch_pad(size):
    """SPT's four shifts: F.pad(x, (left, right, top, bottom)) pads / crops the width first, then the height."""
    x = images((2, *size, 3))
    torch_shifts = ((1, -1, 0, 0), (-1, 1, 0, 0), (0, 0, 1, -1), (0, 0, -1, 1))
    flax_shifts = ((2, 1), (2, -1), (1, 1), (1, -1))  # channels-last axes: 1 = height, 2 = width
    for torch_shift, (axis, amount) in zip(torch_shifts, flax_shifts):
        expected = F.pad(nchw(x), torch_shift).numpy()
        np.testing.assert_array_equal(np.asarray(shift(jnp.asarray(x), axis, amount)), np.moveaxis(expected, 1, -1))


@pytest.mark.parametrize('size', [(8, 12), (4, 4), (12, 4)])
def test_spt_alone_on_any_divisible_size(size):
    model, variables, torch_model = converted_pair(SPT_ENTRY, SPT_ENTRY.configs[0])
    x = images((2, *size, 3))
    out = apply(model, variables, x)
    assert out.shape == (2, size[0] // 4 * size[1] // 4, 32)
    assert_close_outputs(out, torch_forward(torch_model, x), SPT_ENTRY.tolerance)


def test_lsa_alone_matches_torch_and_masks_the_diagonal():
    torch.manual_seed(0)
    torch_lsa = randomise(getattr(converters.import_vit_pytorch(VIT.torch_module), 'LSA')(12, heads=3, dim_head=5))
    model = LSA(12, heads=3, dim_head=5)
    for n in (2, 5):
        tokens = images((2, n, 12), seed=n)
        variables = converters.from_torch(model, torch_lsa.state_dict(), example_inputs=(tokens,))
        with torch.no_grad():
            expected = float64_reference(torch_lsa)(torch.from_numpy(tokens).double())
        assert_close_outputs(jax.jit(model.apply)(variables, tokens), expected, VIT.tolerance)

    # with two tokens each one attends only to the other: token 0's output ignores token 0
    np.testing.assert_array_equal(variables['params']['temperature'], torch_lsa.temperature.detach().numpy())
    two = images((1, 2, 12), seed=9)
    changed = two.copy()
    changed[:, 0] += images((1, 12), seed=10)  # not a constant shift, which LayerNorm removes
    a, b = np.asarray(jax.jit(model.apply)(variables, np.concatenate([two, changed])))
    np.testing.assert_allclose(a[0], b[0], atol=1e-6)
    assert not np.allclose(a[1], b[1])


def test_temperature_starts_at_log_of_the_scale():
    torch_lsa_class = getattr(converters.import_vit_pytorch(VIT.torch_module), 'LSA')
    with float64_default():  # vit-pytorch's init in float64: the exact value ours rounds
        exact = {dim_head: torch_lsa_class(8, heads=2, dim_head=dim_head).temperature.detach().numpy()
                 for dim_head in (1, 5, 8, 64)}
    for dim_head, expected in exact.items():
        assert expected.dtype == np.float64
        init = jax.jit(LSA(8, heads=2, dim_head=dim_head).init)
        temperature = init(jax.random.key(0), jnp.zeros((1, 3, 8)))['params']['temperature']
        assert temperature.shape == () and temperature.dtype == jnp.float32
        np.testing.assert_allclose(temperature, expected, rtol=1e-7)


@pytest.mark.parametrize('size', [(16, 32), (32, 16), (8, 8), (24, 32), (8, 24)])
def test_smaller_inputs_slice_the_position_embedding(size):
    model, variables, torch_model = converted_pair(VIT, TINY)
    x = images((2, *size, 3))
    assert_close_outputs(apply(model, variables, x), torch_forward(torch_model, x), VIT.tolerance)


def test_larger_input_is_refused_with_sizes():
    model, variables, _ = converted_pair(VIT, TINY)
    with pytest.raises(ValueError, match=r'input of size \(40, 32\) gives 21 tokens, more than the 17'):
        model.apply(variables, images((1, 40, 32, 3)))


def test_mean_pool_has_a_cls_token_and_averages_it():
    model, variables, torch_model = converted_pair(VIT, {**TINY, 'pool': 'mean'})
    assert variables['params']['cls_token'].shape == (1, 1, 32)
    assert variables['params']['pos_embedding'].shape == (1, 17, 32)
    x = images((2, 32, 32, 3))
    out = apply(model, variables, x)
    assert_close_outputs(out, torch_forward(torch_model, x), VIT.tolerance)
    changed = jax.tree_util.tree_map(lambda a: a, variables)
    changed['params']['cls_token'] = variables['params']['cls_token'] + images((1, 1, 32), seed=1)
    assert not np.allclose(apply(model, changed, x), out)  # the cls token takes part in the mean


def test_num_classes_zero_keeps_an_empty_head():
    model, variables, torch_model = converted_pair(VIT, {**TINY, 'num_classes': 0})
    x = images((2, 32, 32, 3))
    out = apply(model, variables, x)
    assert out.shape == (2, 0) and variables['params']['mlp_head_1']['kernel'].shape == (32, 0)
    assert tuple(torch_forward(torch_model, x).shape) == (2, 0)


def test_single_head_with_dim_head_equal_dim_keeps_the_projection():
    params = jax.eval_shape(ViT(**{**TINY, 'heads': 1, 'dim_head': 32}).init, jax.random.key(0),
                            jnp.zeros((1, 32, 32, 3)))['params']
    assert 'to_out_0' in params['transformer']['layers_0_0']
    assert 'norm' not in params['transformer']


def test_dropout_only_in_training_and_reproducible():
    shallow = {**TINY, 'depth': 1}
    model = ViT(**{**shallow, 'dropout': 0.5, 'emb_dropout': 0.5})
    x = images((2, 32, 32, 3))
    variables = init_variables(model)
    eval_out = apply(model, variables, x)
    np.testing.assert_array_equal(eval_out, apply(ViT(**shallow), variables, x))

    train = lambda seed: apply(model, variables, x, train=True, rngs={'dropout': jax.random.key(seed)})
    np.testing.assert_array_equal(train(1), train(1))
    assert not np.allclose(train(1), train(2))
    assert not np.allclose(train(1), eval_out)
    with pytest.raises(Exception, match='dropout'):
        jax.eval_shape(lambda v: model.apply(v, x, train=True), variables)  # no 'dropout' rng stream given


def test_bfloat16_forward_is_finite():
    model, variables, torch_model = converted_pair(VIT, TINY)
    x = images((2, 32, 32, 3))
    bf16 = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), variables)
    out = apply(model, bf16, jnp.asarray(x, jnp.bfloat16))
    assert out.dtype == jnp.bfloat16 and np.isfinite(np.asarray(out, np.float32)).all()
    expected = torch_forward(torch_model, x).numpy()
    assert np.abs(np.asarray(out, np.float32) - expected).max() < 0.1 * max(1.0, np.abs(expected).max())


@pytest.mark.parametrize('config, message', [
    (dict(image_size=30), r'divisible by the patch size: image_size=\(30, 30\), patch_size=\(8, 8\)'),
    (dict(pool='max'), "pool=.max."),
    (dict(channels=0), 'channels=0 must be a positive integer'),
    (dict(patch_size=(8, 8)), r'int patch_size .* got patch_size=\(8, 8\)'),
])
def test_bad_configs_fail_at_construction(config, message):
    with pytest.raises(ValueError, match=message):
        ViT(**{**TINY, **config})


def test_tuple_patch_size_fails_in_torch_too():
    with pytest.raises(TypeError):
        torch_class(VIT)(**{**TINY, 'patch_size': (8, 8)})
    with pytest.raises(TypeError):
        torch_class(SPT_ENTRY)(dim=8, patch_size=(2, 2))
    with pytest.raises(ValueError, match=r'got patch_size=\(2, 2\)'):
        SPT(dim=8, patch_size=(2, 2))


@pytest.mark.parametrize('cls, kwargs', [(ViT, TINY), (SPT, dict(dim=32, patch_size=8))])
@pytest.mark.parametrize('shape, message', [
    ((1, 32, 32, 1), r'expected 3 channels \(channels-last input\), got shape \(1, 32, 32, 1\)'),
    ((1, 3, 32, 32), r'expected 3 channels \(channels-last input\), got shape \(1, 3, 32, 32\)'),
    ((32, 32, 3), r'expected images of shape \(batch, height, width, channels\), got shape \(32, 32, 3\)'),
    ((1, 30, 32, 3), r'image of size \(30, 32\) is not divisible by patch size \(8, 8\)'),
])
def test_bad_inputs_name_the_shape(cls, kwargs, shape, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs).init(jax.random.key(0), jnp.zeros(shape))
