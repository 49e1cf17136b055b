"""ViT and SimpleViT behaviour beyond the registry configs: vit-pytorch's modes, dropout, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vit_flax
import parity
from tests.conftest import apply, assert_close_outputs, converted_pair, images, init_variables, torch_forward

from vit_flax.simple_vit import SimpleViT
from vit_flax.vit import ViT

VIT, SIMPLE = parity.BY_NAME['vit.ViT'], parity.BY_NAME['simple_vit.SimpleViT']
TINY = dict(image_size=32, patch_size=8, num_classes=10, dim=32, depth=2, heads=4, mlp_dim=64, dim_head=8)


def test_top_level_names():
    assert vit_flax.ViT is ViT and vit_flax.SimpleViT is SimpleViT


def test_readme_example_shapes():
    """vit-pytorch's README example, swapped to Flax: (1, 256, 256, 3) -> (1, 1000)."""
    v = ViT(image_size=256, patch_size=32, num_classes=1000, dim=1024, depth=6, heads=16, mlp_dim=2048,
            dropout=0.1, emb_dropout=0.1)
    img = jnp.zeros((1, 256, 256, 3))
    shapes = jax.eval_shape(v.init, jax.random.key(0), img)
    preds = jax.eval_shape(lambda p: v.apply(p, img), shapes)
    assert preds.shape == (1, 1000)
    assert shapes['params']['pos_embedding'].shape == (65, 1024)


@pytest.mark.parametrize('size', [(16, 32), (32, 16), (8, 8), (24, 32)])
def test_vit_smaller_inputs_slice_the_position_embedding(size):
    model, variables, torch_model = converted_pair(VIT, TINY)
    x = images((2, *size, 3))
    assert_close_outputs(apply(model, variables, x), torch_forward(torch_model, x), VIT.tolerance)


def test_vit_larger_input_is_refused_with_sizes():
    model, variables, _ = converted_pair(VIT, TINY)
    with pytest.raises(ValueError, match=r'input of size \(40, 32\) gives 21 tokens, more than the 17'):
        model.apply(variables, images((1, 40, 32, 3)))


def test_simple_vit_needs_the_same_patch_count():
    model, variables, torch_model = converted_pair(SIMPLE, TINY)
    x = images((2, 16, 64, 3))  # 2 x 8 = 16 patches, like 4 x 4: torch accepts it by broadcasting
    assert_close_outputs(apply(model, variables, x), torch_forward(torch_model, x), SIMPLE.tolerance)
    with pytest.raises(ValueError, match=r'gives 4 patches, but the position embedding .* has 16'):
        model.apply(variables, images((1, 16, 16, 3)))


def test_single_head_with_dim_head_equal_dim_drops_the_projection():
    model = ViT(**{**TINY, 'heads': 1, 'dim_head': 32})
    x = jnp.zeros((1, 32, 32, 3))
    params = jax.eval_shape(model.init, jax.random.key(0), x)['params']
    assert 'to_out_0' not in params['transformer']['layers_0_0']
    simple = SimpleViT(**{**TINY, 'heads': 1, 'dim_head': 32})
    assert 'to_out' in jax.eval_shape(simple.init, jax.random.key(0), x)['params']['transformer']['layers_0_0']


def test_num_classes_zero_returns_tokens():
    for pool, tokens in (('cls', 17), ('mean', 16)):
        model, variables, torch_model = converted_pair(VIT, {**TINY, 'num_classes': 0, 'pool': pool})
        x = images((2, 32, 32, 3))
        out = apply(model, variables, x)
        assert out.shape == (2, tokens, 32) and 'mlp_head' not in variables['params']
        assert_close_outputs(out, torch_forward(torch_model, x), VIT.tolerance)


def test_mean_pool_keeps_an_empty_cls_token():
    model = ViT(**{**TINY, 'pool': 'mean'})
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    assert variables['params']['cls_token'].shape == (0, 32)
    assert variables['params']['pos_embedding'].shape == (16, 32)


def test_dropout_only_in_training_and_reproducible():
    model = ViT(**{**TINY, 'dropout': 0.5, 'emb_dropout': 0.5})
    x = images((2, 32, 32, 3))
    variables = init_variables(model)
    eval_out = apply(model, variables, x)
    no_dropout = apply(ViT(**TINY), variables, x)
    np.testing.assert_array_equal(eval_out, no_dropout)

    train = lambda seed: apply(model, variables, x, train=True, rngs={'dropout': jax.random.key(seed)})
    np.testing.assert_array_equal(train(1), train(1))
    assert not np.allclose(train(1), train(2))
    assert not np.allclose(train(1), eval_out)
    with pytest.raises(Exception, match='dropout'):
        model.apply(variables, x, train=True)  # no 'dropout' rng stream given


def test_emb_dropout_alone_changes_training_output():
    model = ViT(**{**TINY, 'emb_dropout': 0.5})
    x = images((2, 32, 32, 3))
    variables = init_variables(model)
    trained = apply(model, variables, x, train=True, rngs={'dropout': jax.random.key(3)})
    assert not np.allclose(trained, apply(model, variables, x))


def test_jit_and_batch_independence():
    model, variables, _ = converted_pair(VIT, TINY)
    x = images((4, 32, 32, 3))
    jitted = apply(model, variables, x)
    np.testing.assert_allclose(jitted, model.apply(variables, x), atol=1e-5)  # eager, op by op
    np.testing.assert_allclose(jitted[1:2], apply(model, variables, x[1:2]), atol=1e-5)


@pytest.mark.parametrize('cls, config, message', [
    (ViT, dict(image_size=30), r'divisible by the patch size: image_size=\(30, 30\), patch_size=\(8, 8\)'),
    (ViT, dict(patch_size=(8, 5)), r'divisible by the patch size: .*patch_size=\(8, 5\)'),
    (ViT, dict(pool='max'), "pool=.max."),
    (ViT, dict(channels=0), 'channels=0 must be a positive integer'),
    (SimpleViT, dict(dim=30), 'multiple of 4 .* dim=30'),
    (SimpleViT, dict(dim=4), 'needs dim >= 8, got dim=4'),
])
def test_bad_configs_fail_at_construction(cls, config, message):
    kwargs = {**TINY, **config}
    if cls is SimpleViT:
        kwargs.pop('pool', None)
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


@pytest.mark.parametrize('cls', [ViT, SimpleViT])
@pytest.mark.parametrize('shape, message', [
    ((1, 32, 32, 1), r'expected 3 channels \(channels-last input\), got shape \(1, 32, 32, 1\)'),
    ((1, 3, 32, 32), r'expected 3 channels \(channels-last input\), got shape \(1, 3, 32, 32\)'),
    ((32, 32, 3), r'expected images of shape \(batch, height, width, channels\), got shape \(32, 32, 3\)'),
    ((1, 30, 32, 3), r'image of size \(30, 32\) is not divisible by patch size \(8, 8\)'),
])
def test_bad_inputs_name_the_shape(cls, shape, message):
    with pytest.raises(ValueError, match=message):
        cls(**TINY).init(jax.random.key(0), jnp.zeros(shape))

