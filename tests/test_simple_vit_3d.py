"""simple_vit_3d.SimpleViT behaviour beyond the registry configs: the 3D sin-cos embedding, any divisible input size,
empty head, bad configs and input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import parity
from vit_flax import converters
from tests.conftest import apply, assert_close_outputs, converted_pair, float64_default, images, torch_forward

from vit_flax.layers import posemb_sincos_3d
from vit_flax.simple_vit_3d import SimpleViT

ENTRY = parity.BY_NAME['simple_vit_3d.SimpleViT']
TINY = ENTRY.configs[0]  # 16 x 16 images in 8 x 8 patches, 4 frames in pairs, dim 24


@pytest.mark.parametrize('grid, dim', [((2, 3, 4), 24), ((3, 1, 2), 32), ((1, 2, 2), 12), ((2, 2, 3), 17), ((2, 1, 1), 4)])
def test_posemb_matches_torch(grid, dim):
    """vit-pytorch's embedding of a (b, f, h, w, dim) patch grid: dim // 6 frequencies, zero-padded; none below 6."""
    posemb = converters.import_vit_pytorch('vit_pytorch.simple_vit_3d').posemb_sincos_3d
    with float64_default():  # the exact embedding: its aranges divide into torch's default dtype
        torch_pe = posemb(torch.zeros(1, *grid, dim))
    assert torch_pe.dtype == torch.float64
    np.testing.assert_allclose(posemb_sincos_3d(*grid, dim), torch_pe.numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize('shape', [(6, 8, 24), (2, 16, 16)])
def test_any_divisible_input_size_gets_its_own_embedding(shape):
    """The embedding follows the input's patch grid: more frames, other sides, fewer patches all run."""
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    x = images((2, *shape, 3))
    assert_close_outputs(apply(model, variables, x), torch_forward(torch_model, x), ENTRY.tolerance)


def test_small_dim_has_an_all_zero_embedding():
    config = {**TINY, 'dim': 4, 'heads': 1, 'dim_head': 4}
    model, variables, torch_model = converted_pair(ENTRY, config)
    x = images((2, 4, 16, 16, 3))
    assert_close_outputs(apply(model, variables, x), torch_forward(torch_model, x), ENTRY.tolerance)
    assert not posemb_sincos_3d(2, 2, 2, 5).any()


def test_num_classes_zero_keeps_an_empty_head():
    model, variables, torch_model = converted_pair(ENTRY, {**TINY, 'num_classes': 0})
    x = images((2, 4, 16, 16, 3))
    out = apply(model, variables, x)
    assert out.shape == (2, 0)
    assert_close_outputs(out, torch_forward(torch_model, x), ENTRY.tolerance)


@pytest.mark.parametrize('config, message', [
    (dict(image_size=(16, 20)), r'divisible by the patch size: image_size=\(16, 20\), patch_size=\(8, 8\)'),
    (dict(frames=3), 'Frames must be divisible by the frame patch size: frames=3, frame_patch_size=2'),
    (dict(dim=6), r'needs dim >= 12 .* got dim=6'),
    (dict(dim=11), r'needs dim >= 12 .* got dim=11'),
])
def test_bad_configs_fail_at_construction(config, message):
    with pytest.raises(ValueError, match=message):
        SimpleViT(**{**TINY, **config})


@pytest.mark.parametrize('shape, message', [
    ((1, 4, 16, 16, 1), r'expected 3 channels \(channels-last input\), got shape \(1, 4, 16, 16, 1\)'),
    ((1, 16, 16, 3), r'expected videos of shape \(batch, frames, height, width, channels\)'),
    ((1, 4, 12, 16, 3), r'video of size \(4, 12, 16\) is not divisible by patch size \(2, 8, 8\)'),
])
def test_bad_inputs_name_the_shape(shape, message):
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(SimpleViT(**TINY).init, jax.random.key(0), jnp.zeros(shape))
