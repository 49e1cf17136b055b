"""vit_with_keel_post_ln.ViT beyond the registry configs: the tree of the flat KEEL stack, the default residual scale,
dropout and bad configurations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import parity
from tests.conftest import apply, converted_pair, images
from vit_flax.vit_with_keel_post_ln import ViT


ENTRY = parity.BY_NAME['vit_with_keel_post_ln.ViT']
TINY = ENTRY.configs[0]  # 16 x 16 images in 8 x 8 patches, depth 2, dim 16


def test_the_stack_is_flat_with_a_bias_free_post_norm_after_all_but_the_first_sublayer():
    shapes = jax.eval_shape(ViT(**{**TINY, 'depth': 3}).init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    transformer = shapes['params']['transformer']
    assert sorted(name for name in transformer if name.startswith('layers_')) == [f'layers_{i}' for i in range(6)]
    assert sorted(name for name in transformer if name.startswith('post_norms_')) == [f'post_norms_{i}'
                                                                                      for i in range(5)]
    assert all(set(transformer[f'post_norms_{i}']) == {'scale'} for i in range(5))
    assert set(transformer['layers_0']['norm']) == {'scale'} and set(transformer['layers_1']['net_0']) == {'scale'}


def test_the_default_residual_scale_is_the_number_of_sublayers():
    model, variables, _ = converted_pair(ENTRY, TINY)
    x = images((2, 16, 16, 3))
    default = apply(model, variables, x)
    np.testing.assert_array_equal(default, apply(ViT(**TINY, keel_residual_scale=4), variables, x))


def test_dropout_draws_from_the_dropout_stream():
    model = ViT(**{**TINY, 'dropout': 0.5, 'emb_dropout': 0.5})
    x = images((2, 16, 16, 3))
    variables = jax.jit(model.init)(jax.random.key(0), x)
    run = jax.jit(lambda seed: model.apply(variables, x, train=True, rngs={'dropout': jax.random.key(seed)}))
    first, again, other = run(1), run(1), run(2)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


@pytest.mark.parametrize('config, message', [
    (dict(depth=1), r'needs depth > 1 \(as vit-pytorch asserts\), got depth=1'),
    (dict(pool='max'), "pool type must be either cls .* got pool='max'"),
])
def test_bad_configs_fail_at_construction(config, message):
    with pytest.raises(ValueError, match=message):
        ViT(**{**TINY, **config})
