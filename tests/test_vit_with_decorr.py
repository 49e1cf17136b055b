"""vit_with_decorr.ViT beyond the registry configs (which run in eval mode, where the loss is 0): the decorrelation
loss and its gradients against vit-pytorch's, each of its branches, the training-mode default, the 'decorr' stream,
refused configurations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import parity
from parity.vit_with_decorr import decorr_draws
from vit_flax import converters
from tests.conftest import (assert_close_gradients, assert_close_outputs, converted_pair, float64_reference, images,
                            nchw)
from vit_flax.vit_with_decorr import ViT


ENTRY = parity.BY_NAME['vit_with_decorr.ViT']
TINY = ENTRY.configs[0]  # 16 x 16 images in 8 x 8 patches, dim 16, one layer, two 4-dimensional subspaces


def assert_loss_matches_vit_pytorch(config, shape, train=False):
    """Logits, loss and the gradients of loss + sum(logits * w) against vit-pytorch's float64 reference, with the
    same token sampling; the loss asked for explicitly, or by training mode's default (no dropout configured)."""
    model, variables, torch_model = converted_pair(ENTRY, config)
    x = images(shape)
    rngs, draws = decorr_draws(model, (x,))
    exact = float64_reference(torch_model)
    if train:
        exact.train()
    with draws:
        logits, loss = exact(nchw(x), **({} if train else {'return_decorr_aux_loss': True}))
    w = np.random.default_rng(7).standard_normal(tuple(logits.shape), dtype=np.float32)
    (loss + (logits * torch.from_numpy(w)).sum()).backward()

    def objective(params):
        kwargs = {'train': True} if train else {'return_decorr_aux_loss': True}
        out = model.apply({**variables, 'params': params}, x, rngs=rngs, **kwargs)
        return out[1] + (out[0] * w).sum(), out

    grads, out = jax.jit(jax.grad(objective, has_aux=True))(variables['params'])
    assert_close_outputs(out, (logits.detach(), loss.detach()), ENTRY.tolerance)
    assert float(out[1]) > 0
    assert_close_gradients(
        converters.to_torch(model, {**variables, 'params': grads}, as_numpy=True),
        {key: np.zeros(p.shape) if p.grad is None else p.grad.numpy() for key, p in exact.named_parameters()})


def test_subspace_loss_and_gradients_match_vit_pytorch():
    assert_loss_matches_vit_pytorch(TINY, (2, 16, 16, 3))


@pytest.mark.parametrize('index, shape', [(1, (2, 24, 16, 1)), (1, (2, 16, 16, 1)), (2, (3, 8, 8, 2))])
def test_loss_of_each_configuration_matches_vit_pytorch(index, shape):
    """Sampled half of the tokens (mean-centred; a smaller input too), and a model without the loss (0)."""
    if index == 2:
        model, variables, _ = converted_pair(ENTRY, ENTRY.configs[2])
        _, loss = model.apply(variables, images(shape), return_decorr_aux_loss=True)
        assert float(loss) == 0
        return
    assert_loss_matches_vit_pytorch(ENTRY.configs[index], shape)


@pytest.mark.parametrize('options', [dict(decorr_layer_outputs_across_depth=True, depth=2),
                                     dict(decorr_use_subspace=False, decorr_sample_frac=0.75, pool='mean')])
def test_training_mode_computes_the_loss_by_default(options):
    assert_loss_matches_vit_pytorch({**TINY, **options}, (2, 16, 16, 3), train=True)


def test_eval_mode_returns_zero_and_draws_nothing():
    config = {**TINY, 'decorr_sample_frac': 0.5}
    model = ViT(**config)
    x = jnp.zeros((1, 16, 16, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    assert variables['buffers']['decorr_loss']['proj'].shape == (2, 16, 4)
    _, loss = jax.eval_shape(model.apply, variables, x)  # no 'decorr' rng needed
    assert loss.shape == ()
    with pytest.raises(Exception, match='decorr'):  # the sampled loss needs the stream
        jax.eval_shape(lambda v: model.apply(v, x, return_decorr_aux_loss=True), variables)


@pytest.mark.parametrize('options, message', [
    (dict(decorr_dim_subspace=16), 'subspace dimension must be less than the feature dimension'),
    (dict(decorr_sample_frac=1.5), r'sample_frac=1.5 must be in \[0, 1\]'),
])
def test_bad_decorrelation_settings_fail_at_construction(options, message):
    with pytest.raises(ValueError, match=message):
        ViT(**{**TINY, **options})


def test_too_few_sampled_tokens_are_refused():
    model = ViT(**{**TINY, 'decorr_sample_frac': 0.3})  # 5 tokens -> 1 sampled
    x = jnp.zeros((1, 16, 16, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    with pytest.raises(ValueError, match='samples 1 of 5 tokens'):
        jax.eval_shape(lambda v: model.apply(v, x, return_decorr_aux_loss=True, rngs={'decorr': jax.random.key(0)}),
                       variables)


def test_scanned_stack_gives_the_same_loss():
    """scan_layers=True stacks the normed inputs and block outputs in vit-pytorch's order: the same logits and loss."""
    config = {**TINY, 'depth': 3, 'decorr_sample_frac': 0.75}
    model, variables, torch_model = converted_pair(ENTRY, config)
    scanned = ViT(**config, scan_layers=True)
    scanned_variables = converters.from_torch(scanned, torch_model.state_dict())
    x = images((2, 16, 16, 3))
    rngs = {'decorr': jax.random.key(3)}
    for across_depth in (False, True):
        options = dict(decorr_layer_outputs_across_depth=across_depth)
        ours = jax.jit(lambda v: ViT(**config, **options).apply(v, x, return_decorr_aux_loss=True, rngs=rngs))(
            variables)
        theirs = jax.jit(lambda v: ViT(**config, **options, scan_layers=True).apply(
            v, x, return_decorr_aux_loss=True, rngs=rngs))(scanned_variables)
        np.testing.assert_allclose(theirs[0], ours[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(theirs[1], ours[1], rtol=1e-5)


def test_subspace_loss_matches_vit_pytorch():
    """The loss's value in `make test` (its gradients: the slow tests)."""
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    x = images((2, 16, 16, 3))
    with torch.no_grad():
        expected = float64_reference(torch_model)(nchw(x), return_decorr_aux_loss=True)
    out = jax.jit(lambda v: model.apply(v, x, return_decorr_aux_loss=True))(variables)
    assert float(out[1]) > 0
    assert_close_outputs(out, expected, ENTRY.tolerance)
