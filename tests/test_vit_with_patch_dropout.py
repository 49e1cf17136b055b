"""vit_with_patch_dropout.ViT beyond the registry configs: patch dropout in training against vit-pytorch (its
`torch.randn` replaying the Flax draw, parity/vit_with_patch_dropout.py: draws), the 'patch_dropout' stream, the
kept count, scan == unrolled with dropped patches, bad configs and inputs.

The registry's parity tests run in eval mode, where patch dropout is the identity; here both sides train."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import parity
from tests.conftest import (apply, assert_close_gradients, assert_close_outputs, converted_pair, float64_reference,
                            images, nchw)
from vit_flax import converters, layers
from vit_flax.vit_with_patch_dropout import ViT


ENTRY = parity.BY_NAME['vit_with_patch_dropout.ViT']
TINY = ENTRY.configs[0]  # 16 x 16 images, 4 x 4 patches: 16 patches, 12 kept at the default rate 0.25


def assert_training_matches_torch(entry, config, x, seed=0, gradients=False):
    """A patch-dropout model in training (no other dropout) against vit-pytorch's float64 reference in training,
    which draws the Flax call's noise: outputs, and with `gradients` those of sum(output * w) for every weight."""
    model, variables, torch_model = converted_pair(entry, config)
    exact = float64_reference(torch_model.train())
    rngs, draws = entry.same_draws(model, (x,), seed)
    with draws:
        torch_out = exact(nchw(x))
    assert_close_outputs(apply(model, variables, x, train=True, rngs=rngs), torch_out.detach(), entry.tolerance)
    if gradients:
        w = np.random.default_rng(7).standard_normal(tuple(torch_out.shape), dtype=np.float32)
        (torch_out * torch.from_numpy(w)).sum().backward()
        loss = lambda p: (model.apply({**variables, 'params': p}, x, train=True, rngs=rngs) * w).sum()
        grads = jax.jit(jax.grad(loss))(variables['params'])
        assert_close_gradients(
            converters.to_torch(model, {**variables, 'params': grads}, example_inputs=(x,), as_numpy=True),
            {key: np.zeros(p.shape) if p.grad is None else p.grad.numpy() for key, p in exact.named_parameters()})
    return model, variables


def test_training_drops_the_patches_torch_drops():
    x = images((2, 16, 16, 3))
    model, variables = assert_training_matches_torch(ENTRY, TINY, x)
    assert not np.allclose(apply(model, variables, x, train=True, rngs={'patch_dropout': jax.random.key(0)}),
                           apply(model, variables, x))  # the comparison saw dropped patches
    # another draw drops other patches
    assert not np.allclose(apply(model, variables, x, train=True, rngs={'patch_dropout': jax.random.key(0)}),
                           apply(model, variables, x, train=True, rngs={'patch_dropout': jax.random.key(1)}))


@pytest.mark.parametrize('index, overrides', [(0, {}), (1, dict(dropout=0.0, emb_dropout=0.0)),
                                              (0, dict(patch_dropout=0.9, pool='mean'))])
def test_training_gradients_match_torch(index, overrides):
    config = {**ENTRY.configs[index], **overrides}
    model = ViT(**config)
    (x,) = ENTRY.inputs.example(model, batch=3, rng=np.random.default_rng(1))
    for seed in range(2):
        assert_training_matches_torch(ENTRY, config, x, seed=seed, gradients=True)


@pytest.mark.parametrize('num_patches, prob, kept', [(16, 0.25, 12), (6, 0.5, 3), (4, 0.9, 1), (7, 0.5, 3),
                                                     (1, 0.5, 1), (10, 0.0, 10)])
def test_kept_count_is_torchs(num_patches, prob, kept):
    assert layers.patches_kept(num_patches, prob) == kept == max(1, int(num_patches * (1 - prob)))


def test_patch_dropout_keeps_the_top_draws_in_topk_order():
    class Drop(layers.nn.Module):
        @layers.nn.compact
        def __call__(self, x):
            return layers.patch_dropout(self, x, 0.5, True), layers.patch_dropout_noise(self, *x.shape[:2])

    x = jnp.arange(2 * 6, dtype=jnp.float32).reshape(2, 6, 1)
    kept, _ = Drop().apply({}, x, rngs={'patch_dropout': jax.random.key(3)})
    noise = Drop().apply({}, x, rngs={'patch_dropout': jax.random.key(3)},
                         method=lambda module, x: layers.patch_dropout_noise(module, *x.shape[:2]))
    expected = torch.from_numpy(np.array(noise)).topk(3, dim=-1).indices.numpy()
    np.testing.assert_array_equal(np.asarray(kept)[..., 0], np.asarray(x)[np.arange(2)[:, None], expected, 0])


def test_eval_needs_no_patch_dropout_stream_and_training_names_it():
    model = ViT(**TINY)
    x = jnp.zeros((1, 16, 16, 3))
    run = lambda model, **kwargs: jax.eval_shape(lambda v: model.apply(v, x, **kwargs), variables)  # traced only
    variables = jax.eval_shape(model.init, jax.random.key(0), x)  # init is eval mode: no draw
    run(model)
    with pytest.raises(Exception, match='patch_dropout'):
        run(model, train=True)
    run(model, train=True, rngs={'patch_dropout': jax.random.key(0)})
    run(ViT(**{**TINY, 'patch_dropout': 0.0}), train=True)  # a rate of 0 draws nothing


def test_scanned_training_drops_the_same_patches():
    model, variables, _ = converted_pair(ENTRY, TINY)
    scanned = ViT(**TINY, scan_layers=True)
    scanned_variables = converters.from_torch(scanned, converters.to_torch(model, variables))
    x = images((2, 16, 16, 3))
    rngs = {'patch_dropout': jax.random.key(5)}
    assert_close_outputs(apply(scanned, scanned_variables, x, train=True, rngs=rngs),
                         np.asarray(apply(model, variables, x, train=True, rngs=rngs)), 1e-6)


@pytest.mark.parametrize('config, message', [
    (dict(patch_dropout=1.0), r'ViT: patch_dropout=1.0 must be a probability in \[0, 1\)'),
    (dict(pool='max'), "pool type must be either cls .* got pool='max'"),
    (dict(image_size=18), r'divisible by the patch size: image_size=\(18, 18\), patch_size=\(4, 4\)'),
])
def test_bad_configs_fail_at_construction(config, message):
    with pytest.raises(ValueError, match=message):
        ViT(**{**TINY, **config})


@pytest.mark.parametrize('shape, message', [
    ((1, 8, 32, 3), None),  # 16 patches in another layout: torch's broadcast takes it
    ((1, 8, 16, 3), r'input of size \(8, 16\) gives 8 patches, but the position embedding of image_size=16 has 16'),
    ((1, 16, 16, 1), r'expected 3 channels \(channels-last input\), got shape \(1, 16, 16, 1\)'),
])
def test_inputs_must_give_the_configured_patch_count(shape, message):
    init = lambda: ViT(**TINY).init(jax.random.key(0), jnp.zeros(shape))
    if message is None:
        jax.eval_shape(init)
        return
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(init)


def test_the_trainer_gives_patch_dropout_its_stream(tmp_path):
    """The trainer passes a classifier's own `rng_streams` (here 'patch_dropout') besides 'dropout': the patches a
    step keeps change the loss, where the same run without patch dropout logs other losses."""
    from tests.train_helpers import losses, tiny_config
    from vit_flax.train import train_and_evaluate

    runs = {}
    for rate in (0.0, 0.5):
        config = tiny_config(model_name='vit_with_patch_dropout.ViT', **{'model.patch_dropout': rate})
        train_and_evaluate(config, tmp_path / str(rate))
        runs[rate] = losses(tmp_path / str(rate))
    assert len(runs[0.5]) == 6 and np.all(np.isfinite(runs[0.5]))
    assert runs[0.5][0] != runs[0.0][0]  # the first step's loss: same weights, fewer patches
