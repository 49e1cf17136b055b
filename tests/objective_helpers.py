"""The training objectives' comparisons with vit-pytorch, shared by their test files (MAE, SimMIM, MPP, MP3, DINO,
EsViT): vit-pytorch's float64 loss and gradients on the draws the Flax call makes, our loss and gradients against
them (on given configurations and on the parity spec's random ones), the encoder's variables being the plain
model's, and DINO's and EsViT's EMA of the teacher and the centres."""

import jax
import jax.numpy as jnp
import numpy as np
import torch

from vit_flax import converters, registry
from vit_flax.layers import pair
from tests.conftest import (apply, assert_close_outputs, converted_pair, float64_reference, images, init_variables,
                            nchw, torch_forward, truly_zero)


def input_shape(model, batch=2):
    """Channels-last images at an objective's image_size and channels."""
    return (batch, *pair(model.image_size), model.channels)


def torch_loss(entry, torch_model, model, x, seed=0, train=False, **kwargs):
    """(vit-pytorch's exact loss on `x` after its backward, the float64 reference that computed it (its gradients
    and the buffers its forward set), the Flax rngs): the loss on the draws the Flax call makes with `seed`
    (`entry.same_draws`), under the entry's torch context, with keywords `kwargs`."""
    rngs, draws = entry.same_draws(model, (x,), seed)
    exact = float64_reference(torch_model).train(train)
    with draws, entry.torch_context():
        loss = exact(nchw(x), **kwargs)
    loss.backward()
    return loss, exact, rngs


def assert_same_gradients(model, variables, grads, exact, zero_bound: float | None = 1e-7):
    """Our float32 gradients against the exact ones of `exact` (a float64 reference after its backward), relative
    1e-4 in torch's layout. A parameter torch gives no gradient (unused: the encoder's head, the teacher) has a zero
    one here; one whose exact gradient is zero but for round-off (`truly_zero`) must be at most `zero_bound` of the
    largest gradient here, and with `zero_bound=None` there may be none (every weight of MP3 gets a gradient)."""
    flax_grads = converters.to_torch(model, {**variables, 'params': grads}, as_numpy=True)
    largest = max(float(np.abs(p.grad.numpy()).max(initial=0.0)) for p in exact.parameters() if p.grad is not None)
    for name, parameter in exact.named_parameters():
        if parameter.grad is None:
            np.testing.assert_array_equal(flax_grads[name], 0.0, err_msg=name)
            continue
        expected = parameter.grad.numpy()
        if truly_zero(expected, largest):
            assert zero_bound is not None, f'{name}: vit-pytorch computes no gradient for it but for round-off'
            assert np.abs(flax_grads[name]).max(initial=0.0) <= zero_bound * largest, name
            continue
        scale = float(np.abs(expected).max(initial=0.0))
        np.testing.assert_allclose(flax_grads[name], expected, rtol=1e-4, atol=1e-4 * scale, err_msg=name)


def check_loss_and_gradients(entry, config, x=None, seed=0, train=False, zero_bound: float | None = 1e-7):
    """An objective's loss and its gradients for every weight equal vit-pytorch's exact ones on the same draws (the
    entry's tolerance; gradients as `assert_same_gradients`), for a vit-pytorch model randomised with `seed` and
    images `x` (random ones of the objective's size by default). Returns the Flax model and variables."""
    model, variables, torch_model = converted_pair(entry, config, seed)
    x = images(input_shape(model), seed) if x is None else x
    expected, exact, rngs = torch_loss(entry, torch_model, model, x, seed, train)
    rngs = {**rngs, 'dropout': jax.random.key(seed)}

    def loss_fn(params):
        return model.apply({**variables, 'params': params}, x, train=train, rngs=rngs)

    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(variables['params'])
    assert_close_outputs(loss, expected.detach(), entry.tolerance)
    assert_same_gradients(model, variables, grads, exact, zero_bound)
    return model, variables


def check_gradients_on_random_configurations(entry, zero_bound: float | None = 1e-7):
    """`check_loss_and_gradients` on the parity spec's random configurations: those whose loss
    tests/test_random_configurations.py compares, from the same seed."""
    for config, (x,) in entry.random_configurations():
        try:
            check_loss_and_gradients(entry, config, x, zero_bound=zero_bound)
        except AssertionError as error:
            raise AssertionError(f'{config}, input {x.shape}: {error}') from None


def check_encoder_tree(model):
    """params['encoder'] of an objective wrapping a vit.ViT (MAE, SimMIM) has a plain vit.ViT's tree (its head and
    cls token included)."""
    x = jnp.zeros(input_shape(model, batch=1))
    variables = jax.eval_shape(model.init, registry.init_rngs(jax.random.key(0)), x)
    plain = jax.eval_shape(model.encoder.init, jax.random.key(0), x)
    shapes = lambda tree: jax.tree_util.tree_map(lambda a: a.shape, tree)  # noqa: E731
    assert shapes(variables['params']['encoder']) == shapes(plain['params'])


def check_encoder_exports(model):
    """params['encoder'] loads strict into vit-pytorch's ViT with the same logits, and equals the encoder part of
    the objective's own export (where torch's second names of the patch embedding, `patch_to_emb`, hold the same)."""
    x = images(input_shape(model, batch=2))
    variables = init_variables(model)
    encoder, encoder_variables = model.encoder, {'params': variables['params']['encoder']}
    state_dict = converters.to_torch(encoder, encoder_variables)
    torch_encoder = converters.import_vit_pytorch('vit_pytorch.vit').ViT(**registry.torch_kwargs(encoder)).eval()
    torch_encoder.load_state_dict(state_dict, strict=True)
    out, torch_out = np.asarray(apply(encoder, encoder_variables, x)), torch_forward(torch_encoder, x).numpy()
    np.testing.assert_allclose(out, torch_out, rtol=0, atol=2e-5 * max(1.0, float(np.abs(torch_out).max())))

    full = converters.to_torch(model, variables)
    for key, tensor in state_dict.items():
        assert torch.equal(full[f'encoder.{key}'], tensor), key
    for i in range(3):
        assert torch.equal(full[f'patch_to_emb.{i}.weight'], full[f'encoder.to_patch_embedding.{i + 1}.weight'])


def assert_after_step_matches_torch(model, variables, torch_model):
    """The learner's `after_step` (DINO's and EsViT's, with decays 0.7 / 0.8) leaves the state dict torch's
    `update_moving_average()` leaves in the float64 reference, in the float32 model's dtypes."""
    exact = float64_reference(torch_model)
    exact.teacher_ema_updater = type(exact.teacher_ema_updater)(0.7)
    exact.teacher_centering_ema_updater = type(exact.teacher_centering_ema_updater)(0.8)
    with torch.no_grad():
        exact.update_moving_average()
    learner = model.clone(moving_average_decay=0.7, center_moving_average_decay=0.8)
    updated = jax.jit(learner.after_step)(variables)
    state = converters.to_torch(model, updated)
    dtypes = {key: value.dtype for key, value in torch_model.state_dict().items()}
    expected = exact.state_dict()
    assert state.keys() == expected.keys() == dtypes.keys()
    for key, value in expected.items():
        assert state[key].dtype == dtypes[key], key
        torch.testing.assert_close(state[key].to(value.dtype), value, rtol=1e-6, atol=1e-7, msg=key)
