"""vit_detpool.ViTDetPool beyond the registry configs (which always pass a pixel mask): no mask, the mask generator,
an empty mask, refusals of masks vit-pytorch cannot take, scan == unrolled (values and gradients), the `__main__`
example of vit-pytorch's file."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import parity
from tests.conftest import apply, assert_close_outputs, converted_pair, float64_reference, images, nchw
from vit_flax import converters
from vit_flax.vit_detpool import ViTDetPool


ENTRY = parity.BY_NAME['vit_detpool.ViTDetPool']
TINY = ENTRY.configs[0]  # 4 x 4 patches, class token, 10 classes


def test_without_a_mask_it_pools_every_patch_as_vit_pytorch():
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    x = images((2, 16, 16, 3))
    with torch.no_grad():
        expected = float64_reference(torch_model)(nchw(x))
    assert_close_outputs(apply(model, variables, x), expected, ENTRY.tolerance)


def test_mask_generator_and_empty_masks():
    """A generator's mask is used when none is given (cut from the gradient); an image with no object pools zeros,
    so its logits are the head's bias, as in vit-pytorch."""
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    x = images((2, 16, 16, 3))
    mask = np.zeros((2, 16, 16), bool)
    mask[1, 4:9, :3] = True
    generated = ViTDetPool(**TINY, mask_generator=lambda img: jnp.asarray(mask))
    given = apply(model, variables, x, mask)
    np.testing.assert_array_equal(apply(generated, variables, x), given)
    with torch.no_grad():
        expected = float64_reference(torch_model)(nchw(x), object_mask=torch.from_numpy(mask))
    assert_close_outputs(given, expected, ENTRY.tolerance)
    np.testing.assert_allclose(given[0], variables['params']['mlp_head']['bias'], rtol=1e-6)


def test_masks_vit_pytorch_cannot_take_are_refused():
    model = ViTDetPool(**TINY)
    x = jnp.zeros((1, 16, 16, 3))
    with pytest.raises(TypeError, match='object_mask has dtype float32; pass a boolean mask'):
        jax.eval_shape(model.init, jax.random.key(0), x, jnp.ones((1, 16, 16)))
    with pytest.raises(ValueError, match=r'neither a pixel mask \(1, 16, 16\) nor a patch mask of 16 patches'):
        jax.eval_shape(model.init, jax.random.key(0), x, jnp.ones((1, 8, 8), bool))
    # patch masks of either shape are taken
    for mask in (jnp.ones((1, 16), bool), jnp.ones((1, 4, 4), bool)):
        jax.eval_shape(model.init, jax.random.key(0), x, mask)


def test_scanned_equals_unrolled():
    config = ENTRY.configs[1]  # 2 layers, no class token
    model, variables, _ = converted_pair(ENTRY, config)
    scanned = ViTDetPool(**config, scan_layers=True, remat_policy='nothing_saveable')
    scanned_variables = converters.from_torch(scanned, converters.to_torch(model, variables))
    x, mask = images((2, 24, 16, 1)), np.random.default_rng(1).random((2, 24, 16)) < 0.3
    assert_close_outputs(apply(scanned, scanned_variables, x, mask), np.asarray(apply(model, variables, x, mask)),
                         1e-6)

    def grads(m, v):
        g = jax.jit(jax.grad(lambda p: m.apply({**v, 'params': p}, x, mask).sum()))(v['params'])
        return converters.to_torch(m, {**v, 'params': g}, as_numpy=True)

    expected, got = grads(model, variables), grads(scanned, scanned_variables)
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


def test_vit_pytorch_example():
    model = ViTDetPool(image_size=256, patch_size=32, num_classes=1000, dim=1024, depth=6, heads=16, mlp_dim=2048,
                       dropout=0.1, emb_dropout=0.1)
    img = jnp.zeros((1, 256, 256, 3))
    object_mask = jnp.ones((1, 256, 256), bool)
    variables = jax.eval_shape(model.init, jax.random.key(0), img)
    assert jax.eval_shape(model.apply, variables, img, object_mask).shape == (1, 1000)
    assert jax.eval_shape(model.apply, variables, img).shape == (1, 1000)
