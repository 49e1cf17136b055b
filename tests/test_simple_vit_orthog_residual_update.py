"""simple_vit_orthog_residual_update.SimpleViT beyond the registry configs: the update is orthogonal to the stream,
the float64 projection under jax_enable_x64, the scanned stack, the file's example, refused keywords."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import parity
from vit_flax import converters
from tests.conftest import apply, assert_close_outputs, converted_pair, images, torch_forward
from vit_flax.simple_vit_orthog_residual_update import SimpleViT, orthogonal_projection


ENTRY = parity.BY_NAME['simple_vit_orthog_residual_update.SimpleViT']
TINY = ENTRY.configs[0]  # 16 x 16 images in 8 x 8 patches, dim 16, one layer, learned modulation


def test_projection_splits_the_output_into_parallel_and_orthogonal_parts():
    rng = np.random.default_rng(0)
    block_out, residual = (jnp.asarray(rng.standard_normal((3, 5, 8), np.float32)) for _ in range(2))
    parallel, orthogonal = orthogonal_projection(block_out, residual, double_precision=True)
    np.testing.assert_allclose(parallel + orthogonal, block_out, atol=1e-6)
    np.testing.assert_allclose(jnp.sum(orthogonal * residual, -1), 0, atol=1e-5)
    assert parallel.dtype == orthogonal.dtype == jnp.float32
    parallel, _ = orthogonal_projection(block_out.astype(jnp.bfloat16), residual.astype(jnp.bfloat16), True)
    assert parallel.dtype == jnp.bfloat16


def test_projection_is_float64_under_x64():
    ones = jnp.ones((2, 4), jnp.float32)
    with jax.enable_x64(True):
        assert 'f64' in str(jax.make_jaxpr(lambda a, b: orthogonal_projection(a, b, True))(ones, ones))
        assert 'f64' not in str(jax.make_jaxpr(lambda a, b: orthogonal_projection(a, b, False))(ones, ones))


@pytest.mark.parametrize('kwargs, message', [
    (dict(dim=16), r"unknown keys \['dim'\]"),
    (dict(learnt=True), r"unknown keys \['learnt'\]; it takes double_precision, learned"),
])
def test_unknown_update_keywords_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SimpleViT(**{**TINY, 'orthog_residual_update_kwargs': kwargs})


@pytest.mark.parametrize('learned', [True, False])
def test_scanned_stack_matches_vit_pytorch(learned):
    config = {**TINY, 'depth': 2, 'orthog_residual_update_kwargs': dict(learned=learned)}
    model, variables, torch_model = converted_pair(ENTRY, config)
    scanned = SimpleViT(**config, scan_layers=True, remat_policy='dots_saveable')
    x = images((2, 16, 16, 3))
    expected = torch_forward(torch_model, x)
    assert_close_outputs(apply(scanned, converters.from_torch(scanned, torch_model.state_dict()), x), expected,
                         ENTRY.tolerance)
    assert_close_outputs(apply(model, variables, x), expected, ENTRY.tolerance)


def test_vit_pytorch_example_shapes():
    """The file's quick test, at a smaller size."""
    model = SimpleViT(image_size=64, patch_size=16, num_classes=10, dim=64, depth=2, heads=4, mlp_dim=128,
                      orthog_residual_update_kwargs=dict(learned=True))
    x = jnp.zeros((2, 64, 64, 3))
    variables = jax.jit(model.init)(jax.random.key(0), x)
    assert jax.jit(model.apply)(variables, x).shape == (2, 10)
