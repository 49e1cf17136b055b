"""simple_vit_with_qk_norm.SimpleViT beyond the registry configs: the head fixed against vit-pytorch's bare LayerNorm
(and the evidence for it), the q/k RMSNorm's initial gamma, fused attention with scale 1, scan == unrolled."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import parity
from tests.conftest import apply, assert_close_outputs, converted_pair, images, init_variables, torch_class
from vit_flax import converters
from vit_flax.converters import StateDictMismatchError
from vit_flax.simple_vit_with_qk_norm import SimpleViT


ENTRY = parity.BY_NAME['simple_vit_with_qk_norm.SimpleViT']
TINY = ENTRY.configs[0]  # 16 patches, dim 32, 4 heads of 8, 10 classes


def test_vit_pytorchs_head_returns_features_and_ours_logits():
    """The released class ignores num_classes: its head is LayerNorm(dim), (batch, dim) out; ours classifies."""
    torch.manual_seed(0)
    released = torch_class(ENTRY)(**TINY).eval()
    assert isinstance(released.linear_head, torch.nn.LayerNorm)
    with torch.no_grad():
        assert released(torch.zeros(2, 3, 16, 16)).shape == (2, 32)
    variables = jax.eval_shape(SimpleViT(**TINY).init, jax.random.key(0), jnp.zeros((2, 16, 16, 3)))
    assert variables['params']['linear_head']['kernel'].shape == (32, 10)
    out = jax.eval_shape(lambda v: SimpleViT(**TINY).apply(v, jnp.zeros((2, 16, 16, 3))), variables)
    assert out.shape == (2, 10)

    # a released state dict has a (dim,) LayerNorm there: refused by shape, naming the key
    with pytest.raises(StateDictMismatchError, match='linear_head.weight'):
        converters.from_torch(SimpleViT(**TINY), released.state_dict())


def test_qk_gamma_starts_at_one_over_sqrt_dim_head():
    variables = init_variables(SimpleViT(**TINY))
    attention = variables['params']['transformer']['layers_0_0']
    for name in ('q_norm', 'k_norm'):
        gamma = attention[name]['gamma']
        assert gamma.shape == (4, 1, 8)
        np.testing.assert_allclose(gamma, 8**-0.5, rtol=1e-7)


def test_fused_attention_takes_no_scale():
    model, variables, _ = converted_pair(ENTRY, TINY)
    fused = SimpleViT(**TINY, attention_impl='xla')
    x = images((2, 16, 16, 3))
    assert_close_outputs(apply(fused, variables, x), np.asarray(apply(model, variables, x)), 1e-5)


def test_scanned_equals_unrolled():
    model, variables, _ = converted_pair(ENTRY, ENTRY.configs[1])
    scanned = SimpleViT(**ENTRY.configs[1], scan_layers=True, remat_policy='nothing_saveable')
    scanned_variables = converters.from_torch(scanned, converters.to_torch(model, variables))
    x = images((2, 24, 16, 1))
    assert_close_outputs(apply(scanned, scanned_variables, x), np.asarray(apply(model, variables, x)), 1e-6)
    loss = lambda m, v: jax.grad(lambda p: m.apply({'params': p}, x).sum())(v['params'])
    grads = converters.to_torch(model, {'params': loss(model, variables)}, as_numpy=True)
    scanned_grads = converters.to_torch(scanned, {'params': loss(scanned, scanned_variables)}, as_numpy=True)
    for key, value in grads.items():
        np.testing.assert_allclose(scanned_grads[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


def test_inputs_must_give_the_configured_patch_count():
    with pytest.raises(ValueError, match=r'input of size \(8, 16\) gives 8 patches, but the position embedding'):
        jax.eval_shape(SimpleViT(**TINY).init, jax.random.key(0), jnp.zeros((1, 8, 16, 3)))
