"""ViT with PatchMerger beyond the registry configs: where the merger runs, PatchMerger alone, vit-pytorch's
quirks, dropout, bad configs and inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import parity
from tests.conftest import apply, assert_close_outputs, converted_pair, images, run_torch, torch_forward

from vit_flax.vit_with_patch_merger import PatchMerger, ViT

ENTRY = parity.BY_NAME['vit_with_patch_merger.ViT']
MERGER = parity.BY_NAME['vit_with_patch_merger.PatchMerger']
TINY = dict(image_size=16, patch_size=4, num_classes=6, dim=16, depth=3, heads=2, mlp_dim=32, dim_head=8,
            patch_merge_num_tokens=3)


def test_parameter_tree_mirrors_torch():
    variables = jax.eval_shape(ViT(**TINY).init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    params = variables['params']
    assert params['pos_embedding'].shape == (1, 17, 16)  # num_patches + 1 rows, though there is no cls token
    assert 'cls_token' not in params
    merger = params['transformer']['patch_merger']
    assert merger['queries'].shape == (3, 16) and set(merger['norm']) == {'scale', 'bias'}
    assert set(params['transformer']) == {'layers_0_0', 'layers_0_1', 'layers_1_0', 'layers_1_1', 'layers_2_0',
                                          'layers_2_1', 'patch_merger', 'norm'}
    assert set(params) == {'to_patch_embedding_1', 'to_patch_embedding_2', 'to_patch_embedding_3',
                           'pos_embedding', 'transformer', 'mlp_head_1'}
    assert params['mlp_head_1']['kernel'].shape == (16, 6)


@pytest.mark.parametrize('patch_merge_layer, merges', [
    (None, True),  # depth 3: default depth // 2 = 1, so after the first layer
    (0, False), (3, True), (4, False), (-1, False),
])
def test_merge_layer_placement_matches_torch(patch_merge_layer, merges):
    """Parity wherever the merger sits; where it never runs its queries do not matter (but still exist)."""
    config = {**TINY, 'patch_merge_layer': patch_merge_layer}
    model, variables, torch_model = converted_pair(ENTRY, config)
    x = images((2, 16, 16, 3))
    out = apply(model, variables, x)
    assert_close_outputs(out, torch_forward(torch_model, x), ENTRY.tolerance)

    params = variables['params']
    merger = params['transformer']['patch_merger']
    scrambled = {**params, 'transformer': {**params['transformer'],
                                           'patch_merger': {**merger, 'queries': 3 * merger['queries'][::-1]}}}
    changed = not np.allclose(apply(model, {'params': scrambled}, x), out, atol=1e-4)
    assert changed == merges


def test_merger_changes_the_token_count():
    config = {**TINY, 'num_classes': 2, 'patch_merge_layer': 1, 'patch_merge_num_tokens': 5}
    variables = jax.eval_shape(ViT(**config).init, jax.random.key(0), jnp.zeros((2, 16, 16, 3)))
    tokens = jax.eval_shape(
        lambda v, x: ViT(**config).apply(v, x, capture_intermediates=lambda m, _: m.name == 'patch_merger'),
        variables, jnp.zeros((2, 16, 16, 3)))[1]['intermediates']['transformer']['patch_merger']['__call__'][0]
    assert tokens.shape == (2, 5, 16)


@pytest.mark.parametrize('size', [(8, 8), (16, 8), (4, 12), (4, 68)])
def test_smaller_non_square_and_one_extra_patch_inputs_slice_the_position_embedding(size):
    """(4, 68) gives 17 patches: one more than image_size's 16, which the extra position row admits."""
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    x = images((2, *size, 3))
    assert_close_outputs(apply(model, variables, x), torch_forward(torch_model, x), ENTRY.tolerance)


def test_larger_input_is_refused_with_sizes():
    model, variables, _ = converted_pair(ENTRY, TINY)
    with pytest.raises(ValueError, match=r'input of size \(20, 16\) gives 20 tokens, more than the 17'):
        model.apply(variables, images((1, 20, 16, 3)))


def test_num_classes_zero_gives_empty_logits():
    model, variables, torch_model = converted_pair(ENTRY, {**TINY, 'num_classes': 0})
    x = images((2, 16, 16, 3))
    out = apply(model, variables, x)
    assert out.shape == (2, 0) and variables['params']['mlp_head_1']['kernel'].shape == (16, 0)
    assert_close_outputs(out, torch_forward(torch_model, x), ENTRY.tolerance)


def test_zero_merge_tokens_gives_nan_like_torch():
    model, variables, torch_model = converted_pair(ENTRY, {**TINY, 'patch_merge_num_tokens': 0})
    x = images((1, 16, 16, 3))
    assert np.isnan(np.asarray(apply(model, variables, x))).all()
    assert torch.isnan(torch_forward(torch_model, x)).all()


@pytest.mark.parametrize('shape', [(7, 16), (2, 3, 5, 16), (2, 1, 16)])
def test_patch_merger_alone_broadcasts_leading_axes_like_torch(shape):
    config = dict(dim=16, num_tokens_out=4)
    model, variables, torch_model = converted_pair(MERGER, config)
    x = images(shape)
    out = model.apply(variables, x)
    assert out.shape == (*shape[:-2], 4, 16)
    assert_close_outputs(out, run_torch(MERGER, torch_model, (x,)), MERGER.tolerance)


def test_patch_merger_outputs_are_convex_combinations_of_normed_tokens():
    """Each output token is a softmax-weighted mean of the layer-normalised inputs: with one input token, it."""
    model = PatchMerger(dim=8, num_tokens_out=3)
    x = jnp.asarray(images((2, 1, 8)))
    variables = jax.jit(model.init)(jax.random.key(0), x)
    out = jax.jit(model.apply)(variables, x)
    normed = (x - x.mean(-1, keepdims=True)) / jnp.sqrt(x.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(out, jnp.broadcast_to(normed, (2, 3, 8)), rtol=1e-5, atol=1e-5)


def test_dropout_only_in_training_and_reproducible():
    config = {**TINY, 'image_size': 8, 'depth': 1, 'patch_merge_layer': 1}
    model = ViT(**{**config, 'dropout': 0.5, 'emb_dropout': 0.5})
    x = images((2, 8, 8, 3))
    _, variables, _ = converted_pair(ENTRY, config)  # no init to compile
    eval_out = apply(model, variables, x)
    np.testing.assert_array_equal(eval_out, apply(ViT(**config), variables, x))

    train = lambda seed: apply(model, variables, x, train=True, rngs={'dropout': jax.random.key(seed)})
    np.testing.assert_array_equal(train(1), train(1))
    assert not np.allclose(train(1), train(2))
    assert not np.allclose(train(1), eval_out)
    with pytest.raises(Exception, match='dropout'):
        jax.eval_shape(lambda: model.apply(variables, x, train=True))  # no 'dropout' rng stream given


@pytest.mark.parametrize('config, message', [
    (dict(image_size=18), r'divisible by the patch size: image_size=\(18, 18\), patch_size=\(4, 4\)'),
    (dict(image_size=(16, 12), patch_size=(4, 8)), r'image_size=\(16, 12\), patch_size=\(4, 8\)'),
    (dict(channels=0), 'channels=0|got 0'),
    (dict(num_classes=-1), 'num_classes=-1'),
    (dict(patch_merge_num_tokens=-2), 'patch_merge_num_tokens=-2'),
])
def test_bad_configs_fail_at_construction(config, message):
    with pytest.raises(ValueError, match=message):
        ViT(**{**TINY, **config})


@pytest.mark.parametrize('config, message', [
    (dict(dim=0, num_tokens_out=4), 'dim=0'),
    (dict(dim=8, num_tokens_out=-1), 'num_tokens_out=-1'),
])
def test_bad_merger_configs_fail_at_construction(config, message):
    with pytest.raises(ValueError, match=message):
        PatchMerger(**config)


@pytest.mark.parametrize('shape, message', [
    ((1, 16, 16, 1), r'expected 3 channels \(channels-last input\), got shape \(1, 16, 16, 1\)'),
    ((1, 3, 16, 16), r'expected 3 channels \(channels-last input\), got shape \(1, 3, 16, 16\)'),
    ((16, 16, 3), r'expected images of shape \(batch, height, width, channels\), got shape \(16, 16, 3\)'),
    ((1, 14, 16, 3), r'image of size \(14, 16\) is not divisible by patch size \(4, 4\)'),
])
def test_bad_inputs_name_the_shape(shape, message):
    with pytest.raises(ValueError, match=message):
        ViT(**TINY).init(jax.random.key(0), jnp.zeros(shape))


@pytest.mark.parametrize('shape', [(2, 5, 12), (16,)])
def test_bad_merger_inputs_name_the_shape(shape):
    with pytest.raises(ValueError, match=r'tokens \(\.\.\., n, dim=16\), got shape ' + re_shape(shape)):
        PatchMerger(dim=16, num_tokens_out=2).init(jax.random.key(0), jnp.zeros(shape))


def re_shape(shape):
    return str(shape).replace('(', r'\(').replace(')', r'\)')
