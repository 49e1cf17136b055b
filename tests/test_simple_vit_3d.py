"""simple_vit_3d.SimpleViT behaviour beyond the registry configs: the 3D sin-cos embedding, any divisible input size,
empty head, bad configs and input, random configs against vit-pytorch."""

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


def random_config(rng):
    """A random configuration vit-pytorch accepts (dim outside 6..11), and an input (frames, height, width) of any
    divisible size."""
    patch = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
    grid = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    frame_patch, frame_grid = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    dim = int(rng.choice([int(rng.integers(1, 6)), int(rng.integers(12, 41))], p=[0.15, 0.85]))
    config = dict(image_size=(patch[0] * grid[0], patch[1] * grid[1]), image_patch_size=patch,
                  frames=frame_patch * frame_grid, frame_patch_size=frame_patch, num_classes=int(rng.integers(0, 5)),
                  dim=dim, depth=int(rng.integers(1, 3)), heads=int(rng.integers(1, 4)),
                  mlp_dim=int(rng.integers(1, 40)), channels=int(rng.integers(1, 4)), dim_head=int(rng.integers(1, 12)))
    if rng.random() < 0.3:  # plain ints, as most users write them
        patch = (patch[0], patch[0])
        config.update(image_size=patch[0] * grid[0], image_patch_size=patch[0])
    input_grid = [int(rng.integers(1, 4)) for _ in range(3)]
    return config, (input_grid[0] * frame_patch, input_grid[1] * patch[0], input_grid[2] * patch[1])


def test_parity_on_random_configurations():
    """Six random configurations: patch and frame sizes, dims (padded embeddings), channels, heads, classes, sizes."""
    rng = np.random.default_rng(2025)
    for _ in range(6):
        config, size = random_config(rng)
        model, variables, torch_model = converted_pair(ENTRY, config)
        x = images((2, *size, config['channels']), seed=int(rng.integers(1 << 30)))
        try:
            assert_close_outputs(apply(model, variables, x), torch_forward(torch_model, x), ENTRY.tolerance)
        except AssertionError as error:
            raise AssertionError(f'{config}, input {size}: {error}') from None
