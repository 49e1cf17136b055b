"""Dino's and EsViT's comparisons with vit-pytorch, shared by tests/test_dino.py and tests/test_es_vit.py: the
loss, gradients and buffers of vit-pytorch's float64 reference on the crops the Flax call draws, and the EMA of the
teacher and the centres."""

import contextlib

import jax
import numpy as np
import torch

from vit_flax import converters
from tests.conftest import float64_reference, nchw


def torch_loss(entry, torch_model, model, x, seed, train=False, patch=contextlib.nullcontext, **kwargs):
    """(vit-pytorch's exact loss, the float64 reference that computed it with its gradients and the buffers its
    forward set, the Flax rngs): the loss on the crops the Flax call draws with `seed`, under `patch()`."""
    rngs, draws = entry.same_draws(model, (x,), seed)
    exact = float64_reference(torch_model).train(train)
    with draws, patch():
        loss = exact(nchw(x), **kwargs)
    loss.backward()
    return loss, exact, rngs


def assert_same_loss(flax_loss, torch_loss_):
    assert abs(float(flax_loss) - torch_loss_.item()) <= 2e-5 * max(1.0, abs(torch_loss_.item()))


def assert_same_gradients(model, variables, grads, exact):
    """Our float32 gradients against the exact ones of `exact` (a float64 reference after its backward)."""
    flax_grads = converters.to_torch(model, {**variables, 'params': grads}, as_numpy=True)
    largest = max(float(p.grad.abs().max()) for p in exact.parameters() if p.grad is not None)
    for name, p in exact.named_parameters():
        if p.grad is None:  # the teacher, and layers after the hidden layer: no gradient in torch, zero here
            np.testing.assert_array_equal(flax_grads[name], 0.0, err_msg=name)
            continue
        expected = p.grad.numpy()
        scale = float(np.abs(expected).max(initial=0.0))
        np.testing.assert_allclose(flax_grads[name], expected, rtol=1e-4, atol=max(1e-4 * scale, 1e-7 * largest),
                                   err_msg=name)


def assert_moving_average_matches_torch(model, variables, torch_model, update_moving_average):
    """`update_moving_average(variables, ...)` (decays 0.7 / 0.8) leaves the state dict torch's
    `update_moving_average()` leaves in the float64 reference (DINO's and EsViT's), in the float32 model's dtypes."""
    exact = float64_reference(torch_model)
    exact.teacher_ema_updater = type(exact.teacher_ema_updater)(0.7)
    exact.teacher_centering_ema_updater = type(exact.teacher_centering_ema_updater)(0.8)
    with torch.no_grad():
        exact.update_moving_average()
    updated = jax.jit(lambda v: update_moving_average(v, moving_average_decay=0.7,
                                                      center_moving_average_decay=0.8))(variables)
    state = converters.to_torch(model, updated)
    dtypes = {key: value.dtype for key, value in torch_model.state_dict().items()}
    expected = exact.state_dict()
    assert state.keys() == expected.keys() == dtypes.keys()
    for key, value in expected.items():
        assert state[key].dtype == dtypes[key], key
        torch.testing.assert_close(state[key].to(value.dtype), value, rtol=1e-6, atol=1e-7, msg=key)
