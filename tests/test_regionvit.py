"""RegionViT behaviour beyond the registry configs: parameter tree, the R2L transformer on its own (heads, dim_head,
rectangular and oversized windows), vit-pytorch's quirks, dropout, bad configs and inputs, which random
configurations torch refuses."""

from einops import EinopsError
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import parity
from vit_flax import converters
from tests.conftest import (apply, assert_close_outputs, float64_reference, images, init_variables, nchw, torch_class,
                            torch_forward)

from vit_flax.regionvit import R2LTransformer, RegionViT, local_bias_indices

ENTRY = parity.BY_NAME['regionvit.RegionViT']
TINY, THREE_CONV, DROPOUT = ENTRY.configs[:3]
SIZE = ENTRY.inputs.preferred_size


def torch_regionvit():
    return converters.import_vit_pytorch('vit_pytorch.regionvit')


def shapes(model, size=SIZE):
    return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *size, 3)))


def test_parameter_tree_mirrors_torch():
    params = shapes(RegionViT(**THREE_CONV))['params']
    assert params['local_encoder_0']['kernel'].shape == (3, 3, 3, 16)
    assert params['local_encoder_1']['g'].shape == (1, 16, 1, 1)
    assert set(params) >= {'local_encoder_3', 'local_encoder_4', 'local_encoder_6', 'region_encoder_1'}
    assert params['region_encoder_1']['kernel'].shape == (1, 1, 16 * 16 * 3, 16)
    assert 'layers_0_0' not in params and 'layers_0_1' not in params  # nn.Identity in stage 1
    assert params['layers_1_0']['conv']['kernel'].shape == (3, 3, 16, 24)
    assert params['layers_1_1']['proj']['kernel'].shape == (3, 3, 1, 24)  # depth-wise PEG
    stage = params['layers_1_2']
    assert stage['local_rel_pos_bias']['embedding'].shape == (7 * 7, 4)
    layer = stage['layers_0_0']
    assert layer['to_qkv']['kernel'].shape == (24, 3 * 4 * 32) and 'bias' not in layer['to_qkv']
    assert set(stage['layers_0_1']) == {'0', '1', '4'}  # FeedForward's nn.Sequential indices
    assert 'layers_0_0' not in params['layers_2_2']  # depth 0: only the position table
    assert params['to_logits_2']['kernel'].shape == (16, 7)

    plain = shapes(RegionViT(**TINY))['params']
    assert plain['local_encoder']['kernel'].shape == (8, 8, 3, 16) and 'layers_1_1' not in plain

    zeros = jax.tree_util.tree_map(lambda a: np.zeros(a.shape, a.dtype), shapes(RegionViT(**THREE_CONV)))
    torch_keys = set(converters.to_torch(RegionViT(**THREE_CONV), zeros))
    assert torch_keys == set(torch_class(ENTRY)(**THREE_CONV).state_dict())


def test_bias_indices_match_torch():
    for wh, ww, ws in [(2, 2, 2), (2, 4, 4), (3, 1, 3), (4, 1, 3)]:
        h_range, w_range = torch.arange(wh), torch.arange(ww)
        grid = torch.stack(torch.meshgrid(h_range, w_range, indexing='ij')).reshape(2, -1)
        grid = (grid[:, :, None] - grid[:, None, :]) + (ws - 1)
        expected = (grid * torch.tensor([1, ws * 2 - 1])[:, None, None]).sum(dim=0)
        np.testing.assert_array_equal(local_bias_indices(wh, ww, ws), expected.numpy())


@pytest.mark.parametrize('local_size, region_size', [
    ((6, 4), (2, 2)),  # 3 x 2 windows, table for window_size 3
    ((4, 2), (1, 2)),  # 4 x 1 windows: larger than window_size, yet torch's indices stay inside the table
])
def test_r2l_transformer_alone(local_size, region_size):
    """The transformer with two layers and vit-pytorch's `heads` and `dim_head` (RegionViT fixes them at 4 and 32)."""
    config = dict(dim=12, window_size=3, depth=2, heads=3, dim_head=5)
    torch_model = torch_regionvit().R2LTransformer(**config).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in torch_model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    local, region = images((2, *local_size, 12), seed=1), images((2, *region_size, 12), seed=2)
    model = R2LTransformer(**config)
    variables = converters.from_torch(model, torch_model.state_dict(), example_inputs=(local[:1], region[:1]))
    out = jax.jit(model.apply)(variables, local, region)
    with torch.no_grad():
        expected = float64_reference(torch_model)(nchw(local), nchw(region))
    assert_close_outputs([np.moveaxis(np.asarray(o), -1, 1) for o in out], expected, ENTRY.tolerance)


def test_windows_outside_the_position_table_are_refused_like_torch():
    """local_patch_size 8 with window_size 1: 2 x 2 windows index below the 1-row table; torch raises too."""
    config = dict(dim=8, depth=1, window_size=1, local_patch_size=8, num_classes=2)
    with pytest.raises(ValueError, match=r'window of \(2, 2\) tokens .* window_size=1'):
        shapes(RegionViT(**config))
    with pytest.raises(IndexError):
        torch_forward(torch_class(ENTRY)(**config).eval(), images((1, *SIZE, 3)))


def test_maps_that_do_not_tile_into_windows_are_refused_like_torch():
    """24 x 24 images, region patch 8: stage 2 halves a 6 x 6 local map to 3 x 3 and 3 x 3 regions to 2 x 2."""
    config = dict(dim=8, depth=1, window_size=2, num_classes=2)
    with pytest.raises(ValueError, match=r'local token map \(3, 3\) .* region map \(2, 2\)'):
        shapes(RegionViT(**config), size=(24, 24))
    with pytest.raises(Exception):
        torch_forward(torch_class(ENTRY)(**config).eval(), images((1, 24, 24, 3)))


def test_num_classes_zero_keeps_an_empty_head():
    config = {**TINY, 'num_classes': 0}
    out = jax.eval_shape(RegionViT(**config).apply, shapes(RegionViT(**config)), jnp.zeros((2, *SIZE, 3)))
    assert out.shape == (2, 0)
    assert tuple(torch_forward(torch_class(ENTRY)(**config).eval(), images((2, *SIZE, 3))).shape) == (2, 0)


def test_dropout_only_in_training_and_reproducible():
    model = RegionViT(**DROPOUT)
    x = images((2, *SIZE, 3))
    variables = init_variables(model)
    eval_out = apply(model, variables, x)

    train = lambda seed: apply(model, variables, x, train=True, rngs={'dropout': jax.random.key(seed)})
    np.testing.assert_array_equal(train(1), train(1))
    assert not np.allclose(train(1), train(2))
    assert not np.allclose(train(1), eval_out)


@pytest.mark.parametrize('config, message', [
    (dict(dim=(8, 16, 32)), r'dim needs to be .* tuple of length 4, got dim=\(8, 16, 32\)'),
    (dict(depth=(1, 1, 1, 1, 1)), r'depth needs to be .* tuple of length 4, got depth=\(1, 1, 1, 1, 1\)'),
    (dict(channels=1), 'channels=1'),
    (dict(window_size=0), 'window_size=0'),
    (dict(local_patch_size=0), 'local_patch_size=0'),
    (dict(num_classes=-1), 'num_classes=-1'),
    (dict(depth=(1, -1, 0, 0)), r'depth=\(1, -1, 0, 0\)'),
    (dict(ff_dropout=1.5), 'ff_dropout=1.5'),
])
def test_bad_configs_fail_at_construction(config, message):
    with pytest.raises(ValueError, match=message):
        RegionViT(**{**TINY, **config})


def test_torch_asserts_the_same_tuple_lengths():
    with pytest.raises(AssertionError):
        torch_class(ENTRY)(**{**TINY, 'dim': (8, 16, 32)})


@pytest.mark.parametrize('shape, message', [
    ((1, 16, 32, 1), r'expected 3 channels \(channels-last input\), got shape \(1, 16, 32, 1\)'),
    ((1, 3, 16, 32), r'expected 3 channels \(channels-last input\), got shape \(1, 3, 16, 32\)'),
    ((16, 32, 3), r'expected images of shape \(batch, height, width, channels\), got shape \(16, 32, 3\)'),
    ((1, 12, 32, 3), r'divisible by region patch size: image of size \(12, 32\), region patch size 8'),
])
def test_bad_inputs_name_the_shape(shape, message):
    with pytest.raises(ValueError, match=message):
        RegionViT(**TINY).init(jax.random.key(0), jnp.zeros(shape))


def test_the_sweeps_draws_are_refused_exactly_where_torch_refuses_them():
    """The random-configuration sweep (parity/regionvit.py) keeps the draws this port takes: each one torch refuses
    is refused here with a ValueError, and each one torch runs is taken here."""
    rng = np.random.default_rng(2024)
    ran = refused = 0
    for _ in range(16):
        config, size = parity.regionvit.random_keywords(rng)
        x = images((1, *size, 3))
        torch_model = torch_class(ENTRY)(**config).eval()
        try:
            torch_forward(torch_model, x)
        # vit-pytorch's R2LTransformer refuses windows that do not tile a stage's maps: its window rearrange fails
        # (EinopsError; ZeroDivisionError where the local map is smaller than the region map, so the window, their
        # ratio, is 0) or its region tokens and windows differ in number at the torch.cat (RuntimeError)
        except (EinopsError, ZeroDivisionError, RuntimeError):
            refused += 1
            with pytest.raises(ValueError):
                shapes(RegionViT(**config), size)
            continue
        shapes(RegionViT(**config), size)
        ran += 1
    assert ran and refused  # both kinds of draw were checked
