"""look_vit.LookViT beyond the registry configs: the bilinear downsampling against torch's F.interpolate, the unused
position embedding, refusals, scan == unrolled (values and gradients), fused self-attention, the `__main__` example of
vit-pytorch's file."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import parity
from tests.conftest import apply, assert_close_outputs, converted_pair, images
from vit_flax import converters
from vit_flax.look_vit import LookViT, bilinear_matrix, interpolate_bilinear


ENTRY = parity.BY_NAME['look_vit.LookViT']
TINY = ENTRY.configs[0]  # 6 x 6 high-resolution tokens, 2 x 2 main tokens


@pytest.mark.parametrize('in_size, out_size', [(6, 2), (8, 3), (7, 7), (10, 4), (12, 5), (5, 1)])
def test_bilinear_downsampling_is_torchs(in_size, out_size):
    x = np.random.default_rng(0).standard_normal((2, in_size, in_size + 1, 3))
    expected = F.interpolate(torch.from_numpy(np.moveaxis(x, -1, 1)), out_size, mode='bilinear').numpy()
    got = interpolate_bilinear(jnp.asarray(x, jnp.float32), out_size)
    np.testing.assert_allclose(np.moveaxis(np.asarray(got), -1, 1), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(bilinear_matrix(in_size, out_size).sum(axis=1), 1.0)


def test_bad_configs_and_inputs_are_refused():
    with pytest.raises(ValueError, match='should be larger than the highres patch size'):
        LookViT(**{**TINY, 'patch_size': 2})
    with pytest.raises(ValueError, match='patch_conv_kernel_size=4 must be odd'):
        LookViT(**{**TINY, 'patch_conv_kernel_size': 4})
    with pytest.raises(ValueError, match='image_size=12 must be divisible by highres_patch_size=5'):
        LookViT(**{**TINY, 'highres_patch_size': 5})
    with pytest.raises(ValueError, match='LookViT takes a single int image_size'):
        LookViT(**{**TINY, 'image_size': (12, 12)})
    with pytest.raises(ValueError, match='needs dim >= 8'):
        LookViT(**{**TINY, 'dim': 4})
    with pytest.raises(ValueError, match=r'takes images of shape \(batch, 12, 12, 3\)'):
        jax.eval_shape(LookViT(**TINY).init, jax.random.key(0), jnp.zeros((1, 12, 18, 3)))


def test_scanned_equals_unrolled():
    config = ENTRY.configs[1]  # 2 layers
    model, variables, _ = converted_pair(ENTRY, config)
    scanned = LookViT(**config, scan_layers=True, remat_policy='nothing_saveable')
    scanned_variables = converters.from_torch(scanned, converters.to_torch(model, variables))
    x = images((2, 24, 24, 1))
    assert_close_outputs(apply(scanned, scanned_variables, x), np.asarray(apply(model, variables, x)), 1e-6)

    def grads(m, v):
        g = jax.jit(jax.grad(lambda p: m.apply({**v, 'params': p}, x).sum()))(v['params'])
        return converters.to_torch(m, {**v, 'params': g}, as_numpy=True)

    expected, got = grads(model, variables), grads(scanned, scanned_variables)
    assert not np.any(expected['pos_embedding'])  # never read, as in vit-pytorch
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


def test_fused_self_attention_matches_explicit():
    model, variables, _ = converted_pair(ENTRY, TINY)
    fused = LookViT(**TINY, attention_impl='xla')
    x = images((2, 12, 12, 3))
    assert_close_outputs(apply(fused, variables, x), np.asarray(apply(model, variables, x)), 1e-5)


def test_vit_pytorch_example():
    model = LookViT(image_size=256, num_classes=1000, dim=512, depth=2, heads=8, dim_head=64, patch_size=32,
                    highres_patch_size=8, highres_mlp_factor=2, cross_attn_heads=8, cross_attn_dim_head=64,
                    dropout=0.1)
    img = jnp.zeros((2, 256, 256, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), img)
    assert jax.eval_shape(model.apply, variables, img).shape == (2, 1000)
