"""attn_residual_with_dca_simple_vit.SimpleViT beyond the registry configs: torch.nn.RMSNorm's numerics, the file's
example (gradients reach the pseudo-queries and gates), refused configurations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import parity
from vit_flax import converters
from tests.conftest import float64_default
from vit_flax.attn_residual_with_dca_simple_vit import SimpleViT
from vit_flax.layers import TorchRMSNorm


ENTRY = parity.BY_NAME['attn_residual_with_dca_simple_vit.SimpleViT']
TINY = ENTRY.configs[0]


@pytest.mark.parametrize('eps', [1e-6, None])
def test_torch_rms_norm_is_torchs(eps):
    """x * rsqrt(mean(x^2) + eps) * weight, near-zero rows included; eps None is the dtype's machine epsilon."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 8)).astype(np.float32)
    x[0, 0] *= 1e-4
    weight = rng.standard_normal(8).astype(np.float32)
    norm = torch.nn.RMSNorm(8, eps=eps).double()
    with torch.no_grad(), float64_default():
        norm.weight.copy_(torch.from_numpy(weight))
        expected = norm(torch.from_numpy(x).double()).numpy()
    ours = TorchRMSNorm(eps).apply({'params': {'scale': jnp.asarray(weight)}}, jnp.asarray(x))
    if eps is None:  # float64's epsilon in the reference, float32's here: compare away from zero
        ours, expected = ours[1:], expected[1:]
    np.testing.assert_allclose(ours, expected, rtol=2e-6, atol=1e-6)


def test_mlp_dim_must_divide_into_ffn_heads():
    with pytest.raises(ValueError, match='mlp_dim must be divisible by ffn_heads: mlp_dim=16, ffn_heads=3'):
        SimpleViT(**{**TINY, 'ffn_heads': 3})


@pytest.mark.parametrize('per_head, ffn_heads', [(False, 1), (True, 4)])
def test_vit_pytorch_example_trains_every_mixing_parameter(per_head, ffn_heads):
    """The file's example: logits of the right shape, and gradients on the last block's pseudo-queries and gate."""
    model = SimpleViT(image_size=32, patch_size=8, num_classes=10, dim=32, depth=2, heads=4, dim_head=8, mlp_dim=64,
                      per_head=per_head, ffn_heads=ffn_heads)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 32, 32, 3), np.float32))
    variables = jax.jit(model.init)(jax.random.key(0), x)
    assert jax.jit(model.apply)(variables, x).shape == (2, 10)
    grads = jax.jit(jax.grad(lambda p: model.apply({'params': p}, x).sum()))(variables['params'])
    block = grads['transformer']['layers_1']
    assert np.abs(block['attn_res']['pseudo_queries']).max() > 0
    assert np.abs(block['attn']['to_gate_0']['weight' if per_head else 'kernel']).max() > 0
    assert ('ffn_res' in block) == (ffn_heads > 1)
    if ffn_heads > 1:
        assert np.abs(block['ffn_res']['pseudo_queries']).max() > 0


def test_one_head_per_head_is_the_shared_mix():
    """vit-pytorch fails on per_head=True with one head; here it computes what per_head=False does, same weights."""
    config = {**TINY, 'heads': 1, 'dim_head': 8}
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 16, 16, 3), np.float32))
    per_head = SimpleViT(**config)
    variables = jax.jit(per_head.init)(jax.random.key(0), x)
    shared = SimpleViT(**{**config, 'per_head': False})
    np.testing.assert_array_equal(jax.jit(per_head.apply)(variables, x), jax.jit(shared.apply)(variables, x))
    torch_model = converters.import_vit_pytorch('vit_pytorch.attn_residual_with_dca_simple_vit').SimpleViT(**config)
    with pytest.raises(Exception):  # einops refuses the 4-axis projections
        torch_model(torch.zeros(1, 3, 16, 16))
