"""looped_vit.LoopedViT beyond the registry configs: every loop's logits and the exit benefits, the adaptive exit
traced under jit, the deep supervision helpers, the layer scan and fused attention, vit-pytorch's example and
refusals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import parity
from tests.conftest import apply, assert_close_outputs, converted_pair, float64_reference, images, torch_inputs
from vit_flax import converters
from vit_flax.looped_vit import (
    LoopedViT, adaptive_exit_targets, deep_supervision_loss, deep_supervision_weights, per_loop_losses,
)


ENTRY = parity.BY_NAME['looped_vit.LoopedViT']
CONFIG = {**ENTRY.configs[0], 'loop_depth': 3}  # 8 x 8 images in 4 x 4 patches, one block looped, the exit gate
X = images((2, 8, 8, 3))


def vit_pytorch_looped():
    return converters.import_vit_pytorch('vit_pytorch.looped_vit')


@pytest.fixture(scope='module')
def pair():
    return converted_pair(ENTRY, CONFIG)


def torch_run(torch_model, **kwargs):
    with torch.no_grad():
        return float64_reference(torch_model)(*torch_inputs(ENTRY, (X,)), **kwargs)


def test_all_logits_and_exit_benefits_are_vit_pytorchs(pair):
    model, variables, torch_model = pair
    out = jax.jit(lambda v, x: model.apply(v, x, return_all_logits=True, return_exit_benefits=True))(variables, X)
    expected = torch_run(torch_model, return_all_logits=True, return_exit_benefits=True)
    assert out[0].shape == (3, 2, 5) and out[1].shape == (2, 2)
    assert_close_outputs(out, expected, ENTRY.tolerance)


def test_adaptive_exit_is_traced_and_keeps_the_exit_loops_outputs(pair):
    """A threshold between the first loop's largest benefit and the second's: vit-pytorch stops after one loop (its
    stacks end there); here every stack keeps three entries, those after the exit repeating it."""
    model, variables, torch_model = pair
    _, benefits = torch_run(torch_model, return_all_logits=True, return_exit_benefits=True)
    first = benefits[0].max().item()
    threshold = first + 1e-3 if benefits[1].max().item() > first + 1e-3 else None
    if threshold is None:
        pytest.skip('these weights give no threshold that exits after the first loop only')

    @jax.jit
    def run(v, x, t):
        return model.apply(v, x, return_all_logits=True, return_exit_benefits=True, adaptive_exit=True,
                           exit_threshold=t)

    logits, exit_benefits = run(variables, X, threshold)
    torch_logits, torch_benefits = torch_run(torch_model, return_all_logits=True, return_exit_benefits=True,
                                             adaptive_exit=True, exit_threshold=threshold)
    assert tuple(torch_logits.shape) == (1, 2, 5) and tuple(torch_benefits.shape) == (1, 2)
    assert_close_outputs((logits[0], exit_benefits[0]), (torch_logits[0], torch_benefits[0]), ENTRY.tolerance)
    np.testing.assert_array_equal(logits[1:], jnp.broadcast_to(logits[0], logits[1:].shape))
    np.testing.assert_array_equal(exit_benefits[1], exit_benefits[0])
    # no exit at a threshold below every benefit (the same compiled function: the threshold is traced)
    no_exit = run(variables, X, -1e9)
    assert_close_outputs(no_exit, torch_run(torch_model, return_all_logits=True, return_exit_benefits=True),
                         ENTRY.tolerance)


def test_adaptive_exit_returns_the_exit_loops_logits_alone(pair):
    model, variables, torch_model = pair
    benefits = torch_run(torch_model, return_exit_benefits=True)[1]
    threshold = benefits[0].max().item() + 1e-6  # exits after the first loop at the latest
    final = jax.jit(lambda v, x, t: model.apply(v, x, adaptive_exit=True, exit_threshold=t))(variables, X, threshold)
    assert_close_outputs(final, torch_run(torch_model, adaptive_exit=True, exit_threshold=threshold),
                         ENTRY.tolerance)


def test_deep_supervision_helpers_are_vit_pytorchs():
    looped = vit_pytorch_looped()
    rng = np.random.default_rng(0)
    logits, labels = rng.standard_normal((4, 3, 6)), rng.integers(0, 6, 3)
    t_logits, t_labels = torch.from_numpy(logits), torch.from_numpy(labels)
    for weighting in ('final', 'exponential', 'final_mean', (0.1, 0.2, 0.3, 0.4)):
        np.testing.assert_array_equal(deep_supervision_weights(4, weighting),
                                      looped.deep_supervision_weights(4, weighting).numpy())
        for smoothing in (0.0, 0.1):
            np.testing.assert_allclose(
                deep_supervision_loss(jnp.asarray(logits, jnp.float32), labels, weighting, smoothing),
                looped.deep_supervision_loss(t_logits, t_labels, weighting, smoothing).item(), rtol=1e-5)
    np.testing.assert_allclose(deep_supervision_loss(jnp.asarray(logits[0], jnp.float32), labels, 'final', 0.1),
                               looped.deep_supervision_loss(t_logits[0], t_labels, 'final', 0.1).item(), rtol=1e-5)
    np.testing.assert_allclose(per_loop_losses(jnp.asarray(logits, jnp.float32), labels),
                               looped.per_loop_losses(t_logits, t_labels).numpy(), rtol=1e-5)
    np.testing.assert_allclose(adaptive_exit_targets(jnp.asarray(logits, jnp.float32), labels, 0.1),
                               looped.adaptive_exit_targets(t_logits, t_labels, 0.1).numpy(), rtol=1e-5, atol=1e-6)


def test_scanned_and_fused_give_the_same_outputs(pair):
    model, variables, torch_model = pair
    scanned = LoopedViT(**CONFIG, scan_layers=True, attention_impl='xla')
    scanned_variables = converters.from_torch(scanned, converters.to_torch(model, variables))
    assert 'layers_scan' in scanned_variables['params']['looped']
    assert_close_outputs(apply(scanned, scanned_variables, X), torch_run(torch_model), ENTRY.tolerance)


def test_vit_pytorch_example_shapes():
    model = LoopedViT(image_size=256, patch_size=16, num_classes=1000, dim=512, heads=8, dim_head=64, mlp_dim=2048,
                      pre_loop_depth=6, num_looped_blocks=5, post_loop_depth=6, loop_depth=4,
                      deep_supervision_weighting='final_mean', adaptive_loop=True)
    img = jnp.zeros((2, 256, 256, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), img)
    logits, exit_benefits = jax.eval_shape(
        lambda v: model.apply(v, img, return_all_logits=True, return_exit_benefits=True), variables)
    assert logits.shape == (4, 2, 1000) and exit_benefits.shape == (3, 2)
    assert jax.eval_shape(lambda v: model.apply(v, img, loop_depth=8), variables).shape == (2, 1000)
    assert jax.eval_shape(lambda v: model.apply(v, img, adaptive_exit=True, exit_threshold=0.05),
                          variables).shape == (2, 1000)


@pytest.mark.parametrize('config, message', [
    (dict(image_size=None), r'input_shape \(or image_size\) must be specified'),
    (dict(image_size=(2, 2, 2, 2, 2, 2, 2, 2), patch_size=1), 'ndim must be between 1 and 7, got ndim=8'),
    (dict(image_size=10), 'input dimensions must be divisible by the patch sizes'),
    (dict(pool='max'), "pool must be cls"),
    (dict(deep_supervision_weighting='last'), "unknown weighting 'last'"),
    (dict(deep_supervision_weighting=(0.5, 0.5, 0.5)), 'expected 2 loop weights, one per loop'),
])
def test_bad_configs_fail_at_construction(config, message):
    with pytest.raises(ValueError, match=message):
        LoopedViT(**{**ENTRY.configs[0], **config})


@pytest.mark.parametrize('config, kwargs, message', [
    ({}, dict(loop_depth=0), 'loop depth must be at least 1, got loop_depth=0'),
    (dict(adaptive_loop=False), dict(return_exit_benefits=True), 'exit gate requires adaptive_loop = True'),
    ({}, dict(adaptive_exit=True, loop_depth=1), 'adaptive looping with a single loop has nothing to gate'),
])
def test_bad_calls_are_refused(config, kwargs, message):
    model = LoopedViT(**{**ENTRY.configs[0], **config})
    variables = jax.eval_shape(model.init, jax.random.key(0), X)
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(lambda v: model.apply(v, X, **kwargs), variables)
