"""simple_vit_with_sparse_gating.SimpleViTWithSparseGating beyond the registry configs: the sparsity loss and its
gradients against vit-pytorch's (both loss types), the scanned stack, refused configurations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import parity
from vit_flax import converters
from tests.conftest import (assert_close_gradients, assert_close_outputs, converted_pair, float64_reference, images,
                            nchw)
from vit_flax.simple_vit_with_sparse_gating import SimpleViTWithSparseGating


ENTRY = parity.BY_NAME['simple_vit_with_sparse_gating.SimpleViTWithSparseGating']
TINY = ENTRY.configs[0]  # 16 x 16 images in 8 x 8 patches, dim 16, one layer, two registers


def assert_loss_matches_vit_pytorch(config, scan_layers=False):
    """(logits, loss) with return_loss=True and the gradients of loss + sum(logits * w), against vit-pytorch's
    float64 reference."""
    model, variables, torch_model = converted_pair(ENTRY, config)
    if scan_layers:
        model = SimpleViTWithSparseGating(**config, scan_layers=True, remat_policy='dots_saveable')
        variables = converters.from_torch(model, torch_model.state_dict())
    x = images((2, *model.image_size, model.channels) if isinstance(model.image_size, tuple)
               else (2, model.image_size, model.image_size, model.channels))
    exact = float64_reference(torch_model)
    logits, loss = exact(nchw(x), return_loss=True)
    w = np.random.default_rng(7).standard_normal(tuple(logits.shape), dtype=np.float32)
    (loss + (logits * torch.from_numpy(w)).sum()).backward()

    def objective(params):
        out = model.apply({'params': params}, x, return_loss=True)
        return out[1] + (out[0] * w).sum(), out

    grads, out = jax.jit(jax.grad(objective, has_aux=True))(variables['params'])
    assert_close_outputs(out, (logits.detach(), loss.detach()), ENTRY.tolerance)
    assert_close_gradients(
        converters.to_torch(model, {'params': grads}, as_numpy=True),
        {key: np.zeros(p.shape) if p.grad is None else p.grad.numpy() for key, p in exact.named_parameters()})


def test_thresholded_loss_and_gradients_match_vit_pytorch():
    # a threshold under the gates' mean (about 0.5 here), so the loss and its gradients are not zero
    assert_loss_matches_vit_pytorch({**TINY, 'sparsity_threshold': 0.2})


@pytest.mark.parametrize('index, scan_layers', [(1, False), (1, True), (2, False)])
def test_loss_of_other_configurations_matches_vit_pytorch(index, scan_layers):
    assert_loss_matches_vit_pytorch(ENTRY.configs[index], scan_layers)


@pytest.mark.parametrize('options, message', [
    (dict(sparsity_loss_type='l2'), "Unknown sparsity loss type: sparsity_loss_type='l2'"),
])
def test_bad_configurations_fail_at_construction(options, message):
    with pytest.raises(ValueError, match=message):
        SimpleViTWithSparseGating(**{**TINY, **options})


def test_a_loss_without_layers_is_refused():
    model = SimpleViTWithSparseGating(**{**TINY, 'depth': 0})
    x = jnp.zeros((1, 16, 16, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    with pytest.raises(ValueError, match='depth=0 has no attention layers'):
        jax.eval_shape(lambda v: model.apply(v, x, return_loss=True), variables)


def test_thresholded_loss_matches_vit_pytorch():
    """The loss's value in `make test` (its gradients: the slow tests)."""
    config = {**TINY, 'sparsity_threshold': 0.2}
    model, variables, torch_model = converted_pair(ENTRY, config)
    x = images((2, 16, 16, 3))
    with torch.no_grad():
        expected = float64_reference(torch_model)(nchw(x), return_loss=True)
    assert_close_outputs(jax.jit(lambda v: model.apply(v, x, return_loss=True))(variables), expected, ENTRY.tolerance)


@pytest.mark.parametrize('scan_layers', [False, True])
def test_fused_attention_takes_the_log_gates(scan_layers):
    """attention_impl='xla': jax.nn.dot_product_attention with the log-gates as its bias, loss included."""
    model, variables, torch_model = converted_pair(ENTRY, ENTRY.configs[1])
    fused = SimpleViTWithSparseGating(**ENTRY.configs[1], attention_impl='xla', scan_layers=scan_layers)
    x = images((2, 24, 16, 1))
    with torch.no_grad():
        expected = float64_reference(torch_model)(nchw(x), return_loss=True)
    out = jax.jit(lambda v: fused.apply(v, x, return_loss=True))(converters.from_torch(fused, torch_model.state_dict()))
    assert_close_outputs(out, expected, ENTRY.tolerance)
