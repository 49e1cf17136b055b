"""local_vit.LocalViT beyond the registry configs: vit-pytorch's released forward fails where the port runs, smaller
inputs, the layer scan, dropout and bad configurations and inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import parity
from tests.conftest import apply, assert_close_outputs, converted_pair, images, nchw, torch_forward
from vit_flax import converters
from vit_flax.local_vit import LocalViT


ENTRY = parity.BY_NAME['local_vit.LocalViT']
TINY = ENTRY.configs[0]  # 16 x 16 images in 4 x 4 patches (a 4 x 4 map), dim 16


def test_vit_pytorch_as_released_fails_where_the_map_is_not_dim_wide():
    """Its FeedForward's LayerNorm(dim) meets a (b, dim, 4, 4) map: the reason for the fix and the patched reference."""
    _, _, torch_model = converted_pair(ENTRY, TINY)
    with pytest.raises(RuntimeError, match='normalized_shape'), torch.no_grad():
        torch_model(nchw(images((1, 16, 16, 3)), torch.float32))


def test_a_smaller_square_input_slices_the_position_embedding():
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    x = images((2, 8, 8, 3))
    with ENTRY.torch_context():
        expected = torch_forward(torch_model, x)
    assert_close_outputs(apply(model, variables, x), expected, ENTRY.tolerance)


def test_scanned_layers_give_the_unrolled_outputs():
    config = {**TINY, 'depth': 3}
    model, variables, torch_model = converted_pair(ENTRY, config)
    scanned = LocalViT(**config, scan_layers=True, remat_policy='nothing_saveable')
    scanned_variables = converters.from_torch(scanned, converters.to_torch(model, variables))
    assert 'layers_scan' in scanned_variables['params']['transformer']
    x = images((2, 16, 16, 3))
    with ENTRY.torch_context():
        expected = torch_forward(torch_model, x)
    assert_close_outputs(apply(scanned, scanned_variables, x), expected, ENTRY.tolerance)


def test_dropout_draws_from_the_dropout_stream():
    model = LocalViT(**{**TINY, 'dropout': 0.5, 'emb_dropout': 0.5})
    x = images((2, 16, 16, 3))
    variables = jax.jit(model.init)(jax.random.key(0), x)
    run = jax.jit(lambda seed: model.apply(variables, x, train=True, rngs={'dropout': jax.random.key(seed)}))
    first, again, other = run(1), run(1), run(2)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    assert not np.allclose(first, apply(model, variables, x))


def test_a_non_square_patch_count_is_refused():
    model = LocalViT(**TINY)
    with pytest.raises(ValueError, match='the input gives 8 patches, not a square number'):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 16, 3)))


@pytest.mark.parametrize('config, message', [
    (dict(image_size=(16, 16)), 'LocalViT takes a single int image_size'),
    (dict(patch_size=5), 'divisible by the patch size: image_size=16, patch_size=5'),
])
def test_bad_configs_fail_at_construction(config, message):
    with pytest.raises(ValueError, match=message):
        LocalViT(**{**TINY, **config})
