"""simple_vit_with_fft.SimpleViT beyond the registry configs: the FFT patches against torch.fft, the layer scan,
narrow float inputs and bad configurations and inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from einops import rearrange

import parity
from tests.conftest import apply, assert_close_outputs, converted_pair, images, torch_forward
from vit_flax import converters
from vit_flax.simple_vit_with_fft import SimpleViT, fft_patches


ENTRY = parity.BY_NAME['simple_vit_with_fft.SimpleViT']
TINY = ENTRY.configs[0]  # 16 x 16 images, 8 x 8 pixel patches, 4 x 4 frequency patches, dim 16


def torch_fft_patches(x, freq_patch_size):
    """vit-pytorch's frequency patches: view_as_real(fft2) of channels-first images, then its Rearrange."""
    freqs = torch.view_as_real(torch.fft.fft2(torch.from_numpy(np.moveaxis(x, -1, 1)).double()))
    return rearrange(freqs, 'b c (h p1) (w p2) ri -> b (h w) (p1 p2 ri c)', p1=freq_patch_size[0],
                     p2=freq_patch_size[1]).numpy()


def test_fft_patches_match_torch_fft():
    x = images((2, 12, 8, 3))
    expected = torch_fft_patches(x, (3, 4))
    scale = np.abs(expected).max()
    np.testing.assert_allclose(fft_patches(jnp.asarray(x), (3, 4)), expected, rtol=0, atol=1e-6 * scale)
    with jax.enable_x64(True):
        exact = fft_patches(jnp.asarray(x, jnp.float64), (3, 4))
        assert exact.dtype == jnp.float64
        np.testing.assert_allclose(exact, expected, rtol=0, atol=1e-12 * scale)


def test_scanned_layers_give_the_unrolled_outputs():
    config = {**TINY, 'depth': 3}
    model, variables, torch_model = converted_pair(ENTRY, config)
    scanned = SimpleViT(**config, scan_layers=True, remat_policy='nothing_saveable')
    x = images((2, 16, 16, 3))
    scanned_variables = converters.from_torch(scanned, converters.to_torch(model, variables))
    assert_close_outputs(apply(scanned, scanned_variables, x), torch_forward(torch_model, x), ENTRY.tolerance)


@pytest.mark.parametrize('dtype', [jnp.bfloat16, jnp.float16])
def test_narrow_floats_are_transformed_in_float32(dtype):
    x = jnp.asarray(images((1, 16, 16, 3)), dtype)
    assert fft_patches(x, 4).dtype == dtype
    out = jax.eval_shape(lambda: SimpleViT(**TINY).init_with_output(jax.random.key(0), x)[0])
    assert out.shape == (1, 5)


@pytest.mark.parametrize('config, message', [
    (dict(freq_patch_size=5), r'divisible by the freq patch size: image_size=\(16, 16\), freq_patch_size=\(5, 5\)'),
    (dict(dim=18), 'multiple of 4'),
])
def test_bad_configs_fail_at_construction(config, message):
    with pytest.raises(ValueError, match=message):
        SimpleViT(**{**TINY, **config})


def test_input_the_frequency_patches_do_not_divide_is_refused():
    model = SimpleViT(**{**TINY, 'image_size': (16, 24), 'patch_size': 8, 'freq_patch_size': (4, 6)})
    with pytest.raises(ValueError, match=r'image of size \(16, 16\) is not divisible by freq patch size \(4, 6\)'):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
