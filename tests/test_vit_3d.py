"""vit_3d.ViT behaviour beyond the registry configs: input sizes, pools, empty head, dropout, bad configs and
input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import parity
from tests.conftest import apply, assert_close_outputs, converted_pair, images, init_variables, torch_forward

from vit_flax.vit_3d import ViT

ENTRY = parity.BY_NAME['vit_3d.ViT']
TINY = ENTRY.configs[0]  # 16 x 16 images in 8 x 8 patches, 4 frames in pairs: 8 patches


@pytest.mark.parametrize('shape', [(2, 16, 16), (4, 8, 16), (2, 8, 8)])
def test_smaller_inputs_slice_the_position_embedding(shape):
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    x = images((2, *shape, 3))
    assert_close_outputs(apply(model, variables, x), torch_forward(torch_model, x), ENTRY.tolerance)


def test_larger_input_is_refused_with_sizes():
    model = ViT(**TINY)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4, 16, 16, 3)))
    with pytest.raises(ValueError, match=r'input of size \(6, 16, 16\) gives 13 tokens, more than the 9 .*'
                                         r'image_size=16, frames=4'):
        jax.eval_shape(model.apply, variables, jnp.zeros((1, 6, 16, 16, 3)))


def test_parameter_layout_and_mean_pool_averages_the_cls_token():
    """vit-pytorch's older layout: a (1, 1, dim) cls token in every model, the final norm in the head."""
    model, variables, torch_model = converted_pair(ENTRY, {**TINY, 'pool': 'mean'})
    params = variables['params']
    assert params['cls_token'].shape == (1, 1, 32) and params['pos_embedding'].shape == (1, 9, 32)
    assert 'norm' not in params['transformer'] and set(params['mlp_head_0']) == {'scale', 'bias'}
    x = images((2, 4, 16, 16, 3))
    assert_close_outputs(apply(model, variables, x), torch_forward(torch_model, x), ENTRY.tolerance)
    # the cls token takes part in the mean: changing it changes the output (a constant shift would not: the head's
    # LayerNorm removes it)
    moved = {**variables, 'params': {**params, 'cls_token': params['cls_token'] + images((1, 1, 32))}}
    assert not np.allclose(apply(model, moved, x), apply(model, variables, x))


def test_num_classes_zero_keeps_an_empty_head():
    model, variables, torch_model = converted_pair(ENTRY, {**TINY, 'num_classes': 0})
    x = images((2, 4, 16, 16, 3))
    out = apply(model, variables, x)
    assert out.shape == (2, 0)
    assert_close_outputs(out, torch_forward(torch_model, x), ENTRY.tolerance)


def test_dropout_only_in_training_and_reproducible():
    model = ViT(**{**TINY, 'dropout': 0.5, 'emb_dropout': 0.5})
    x = images((2, 4, 16, 16, 3))
    variables = init_variables(model)
    eval_out = apply(model, variables, x)
    np.testing.assert_array_equal(eval_out, apply(ViT(**TINY), variables, x))

    train = lambda seed: apply(model, variables, x, train=True, rngs={'dropout': jax.random.key(seed)})
    np.testing.assert_array_equal(train(1), train(1))
    assert not np.allclose(train(1), train(2))
    assert not np.allclose(train(1), eval_out)


@pytest.mark.parametrize('config, message', [
    (dict(image_size=20), r'divisible by the patch size: image_size=\(20, 20\), patch_size=\(8, 8\)'),
    (dict(image_patch_size=(8, 5)), r'divisible by the patch size: .*patch_size=\(8, 5\)'),
    (dict(frames=5), 'Frames must be divisible by the frame patch size: frames=5, frame_patch_size=2'),
    (dict(frame_patch_size=0), 'frame_patch_size=0 must be a positive integer'),
    (dict(pool='max'), "pool='max'"),
    (dict(channels=0), 'channels=0 must be a positive integer'),
])
def test_bad_configs_fail_at_construction(config, message):
    with pytest.raises(ValueError, match=message):
        ViT(**{**TINY, **config})


@pytest.mark.parametrize('shape, message', [
    ((1, 4, 16, 16, 1), r'expected 3 channels \(channels-last input\), got shape \(1, 4, 16, 16, 1\)'),
    ((1, 3, 4, 16, 16), r'expected 3 channels \(channels-last input\), got shape \(1, 3, 4, 16, 16\)'),
    ((1, 16, 16, 3), r'expected videos of shape \(batch, frames, height, width, channels\), got shape \(1, 16, 16, 3\)'),
    ((1, 3, 16, 16, 3), r'video of size \(3, 16, 16\) is not divisible by patch size \(2, 8, 8\)'),
    ((1, 4, 16, 12, 3), r'video of size \(4, 16, 12\) is not divisible by patch size \(2, 8, 8\)'),
])
def test_bad_inputs_name_the_shape(shape, message):
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(ViT(**TINY).init, jax.random.key(0), jnp.zeros(shape))
