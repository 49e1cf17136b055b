"""simple_uvit.SimpleUViT beyond the registry configs: which layers take a skip, an odd depth (vit-pytorch's own
quick test), the fused attention path and bad inputs."""

import jax
import jax.numpy as jnp
import pytest

import parity
from tests.conftest import apply, assert_close_outputs, converted_pair, images, torch_forward
from vit_flax.simple_uvit import SimpleUViT


ENTRY = parity.BY_NAME['simple_uvit.SimpleUViT']
TINY = ENTRY.configs[0]  # 16 x 16 images in 8 x 8 patches, depth 3, dim 16, 2 registers


@pytest.mark.parametrize('depth, with_skip', [(7, (4, 5, 6)), (6, (3, 4, 5)), (1, ())])
def test_the_latter_half_projects_the_skips(depth, with_skip):
    """vit-pytorch's rule, counting layers from 1: the first depth / 2 keep their inputs, layers >= depth / 2 + 1 take
    them back through a Linear(2 * dim, dim)."""
    shapes = jax.eval_shape(SimpleUViT(**{**TINY, 'depth': depth}).init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    transformer = shapes['params']['transformer']
    assert tuple(i for i in range(depth) if f'layers_{i}_0' in transformer) == with_skip
    for i in with_skip:
        assert transformer[f'layers_{i}_0']['kernel'].shape == (32, 16)


def test_odd_depth_matches_vit_pytorch():
    config = {**TINY, 'depth': 7}
    model, variables, torch_model = converted_pair(ENTRY, config)
    x = images((2, 16, 16, 3))
    assert_close_outputs(apply(model, variables, x), torch_forward(torch_model, x), ENTRY.tolerance)


def test_fused_attention_matches_vit_pytorch():
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    x = images((2, 16, 16, 3))
    fused = SimpleUViT(**TINY, attention_impl='xla')
    assert_close_outputs(apply(fused, variables, x), torch_forward(torch_model, x), ENTRY.tolerance)


@pytest.mark.parametrize('shape, message', [
    ((1, 16, 16, 2), r'expected 3 channels \(channels-last input\), got shape \(1, 16, 16, 2\)'),
    ((1, 16, 24, 3), r'input of size \(16, 24\) gives 6 patches, but the position embedding of image_size=16 has 4'),
])
def test_bad_inputs_name_the_shape(shape, message):
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(SimpleUViT(**TINY).init, jax.random.key(0), jnp.zeros(shape))
