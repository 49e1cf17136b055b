"""recorder.Recorder against vit-pytorch's Recorder, on every architecture the registry marks recordable.

vit-pytorch's Recorder hooks the `attend` of `vit_pytorch.vit.Attention` layers only. For an architecture whose
attention layers are its own class (SimpleViT's, vit_for_small_dataset's ...), the oracle is the same Recorder with
its `Attention` pointed at that class, so it hooks the same `attend` modules; for vit.ViT it runs unchanged.
"""

import contextlib
from unittest import mock

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import parity
from vit_flax import converters
from tests.conftest import (assert_close_outputs, converted_pair, float64_reference, same_draws, torch_context,
                            torch_inputs)

from vit_flax.recorder import Recorder
from vit_flax.vit import Transformer, ViT

RECORDABLE = [entry for entry in parity.ENTRIES if entry.recordable]
CASES = [
    pytest.param(entry, index, id=f'{entry.name}-{index}', marks=[pytest.mark.slow] * (index > 0))
    for entry in RECORDABLE
    for index in range(len(entry.configs))
]


def torch_recorder_run(torch_model, inputs):
    """(preds, attns) of vit-pytorch's Recorder wrapped around `torch_model`."""
    recorder = converters.import_vit_pytorch('vit_pytorch.recorder')
    attention_classes = {
        type(module) for module in torch_model.transformer.modules()
        if isinstance(getattr(module, 'attend', None), torch.nn.Softmax)
    }
    assert len(attention_classes) == 1, attention_classes
    (attention_class,) = attention_classes
    # the hooks are registered at the first forward, so the class must be in place then
    patch = (contextlib.nullcontext() if attention_class is recorder.Attention
             else mock.patch.object(recorder, 'Attention', attention_class))
    with patch, torch.no_grad():
        return recorder.Recorder(torch_model)(*inputs)


def assert_recorder_matches(entry, model, variables, torch_model, batch=2, seed=0):
    inputs = entry.inputs.example(model, batch, np.random.default_rng(seed))
    rngs, torch_draws = same_draws(entry, model, inputs)
    preds, attns = jax.jit(Recorder(model).apply)(variables, *inputs, rngs=rngs)
    with torch_draws, torch_context(entry):  # the spec's fix where vit-pytorch's forward cannot run as released
        torch_preds, torch_attns = torch_recorder_run(float64_reference(torch_model), torch_inputs(entry, inputs))
    assert attns.shape == tuple(torch_attns.shape)
    assert_close_outputs((preds, attns), (torch_preds, torch_attns), entry.tolerance)
    return attns


@pytest.mark.parametrize('entry, index', CASES)
def test_recorder_matches_vit_pytorch(entry, index):
    model, variables, torch_model = converted_pair(entry, entry.configs[index])
    attns = assert_recorder_matches(entry, model, variables, torch_model)
    np.testing.assert_allclose(np.asarray(attns).sum(-1), 1.0, atol=1e-5)  # softmax rows


def random_vit_config(rng):
    patch = int(rng.choice([2, 4, 8]))
    heads = int(rng.integers(1, 5))
    return dict(
        image_size=(patch * int(rng.integers(1, 5)), patch * int(rng.integers(1, 5))), patch_size=patch,
        num_classes=int(rng.integers(0, 6)), dim=8 * int(rng.integers(1, 5)), depth=int(rng.integers(1, 5)),
        heads=heads, dim_head=int(rng.choice([4, 8, 16])), mlp_dim=int(rng.choice([8, 32])),
        channels=int(rng.integers(1, 4)),
    )


@pytest.mark.parametrize('name, seed', [
    ('vit.ViT', 0), ('simple_vit.SimpleViT', 1),
    *[pytest.param(name, seed, marks=pytest.mark.slow)
      for name in ('vit.ViT', 'simple_vit.SimpleViT', 'vit_for_small_dataset.ViT', 'parallel_vit.ViT')
      for seed in range(2, 6)],
])
def test_recorder_on_random_configurations(name, seed):
    """Configurations no test names: shapes (batch, depth, heads, n, n) and values as vit-pytorch's."""
    entry = parity.BY_NAME[name]
    rng = np.random.default_rng(seed)
    config = random_vit_config(rng)
    if name == 'vit.ViT' or name == 'parallel_vit.ViT':
        config['pool'] = str(rng.choice(['cls', 'mean']))
    if name == 'parallel_vit.ViT':
        config['num_parallel_branches'] = int(rng.integers(1, 4))
    if name == 'vit_for_small_dataset.ViT':
        config['image_size'] = config['image_size'][0] * 2  # its shifted-patch tokenizer takes square images
        config['pool'] = str(rng.choice(['cls', 'mean']))
    if name == 'simple_vit.SimpleViT':
        config['dim'] = max(config['dim'], 8)  # the sin-cos embedding needs dim % 4 == 0 and dim >= 8
    model, variables, torch_model = converted_pair(entry, config, seed)
    attns = assert_recorder_matches(entry, model, variables, torch_model, batch=int(rng.integers(1, 4)))
    layers = config['depth'] * config.get('num_parallel_branches', 1)
    assert attns.shape[1:3] == (layers, config['heads'])


VIT = ViT(image_size=16, patch_size=4, num_classes=5, dim=16, depth=3, heads=2, mlp_dim=32, dim_head=8, dropout=0.5)


def vit_variables_and_images():
    images = jnp.asarray(np.random.default_rng(0).standard_normal((2, 16, 16, 3), np.float32))
    return VIT.init(jax.random.key(0), images), images


def test_recorder_adds_no_variables_and_keeps_predictions():
    variables, images = vit_variables_and_images()
    recorder = Recorder(VIT)
    assert jax.tree_util.tree_structure(recorder.init(jax.random.key(0), images)) == \
        jax.tree_util.tree_structure(variables)
    preds, attns = recorder.apply(variables, images)
    np.testing.assert_array_equal(preds, VIT.apply(variables, images))
    assert attns.shape == (2, 3, 2, 17, 17)
    assert recorder.eject() is VIT


def test_attention_maps_are_cut_from_the_gradient():
    """torch's Recorder detaches its recordings: the maps carry no gradient, the predictions do."""
    variables, images = vit_variables_and_images()
    recorder = Recorder(VIT)

    def through(output_index):
        return jax.grad(lambda p: recorder.apply({'params': p}, images)[output_index].sum())(variables['params'])

    assert all(not np.any(np.asarray(g)) for g in jax.tree_util.tree_leaves(through(1)))
    assert any(np.any(np.asarray(g)) for g in jax.tree_util.tree_leaves(through(0)))


def test_maps_are_taken_before_attention_dropout():
    variables, images = vit_variables_and_images()
    preds, attns = Recorder(VIT).apply(variables, images, train=True, rngs={'dropout': jax.random.key(1)})
    np.testing.assert_allclose(np.asarray(attns).sum(-1), 1.0, atol=1e-5)
    assert not np.allclose(preds, VIT.apply(variables, images))  # dropout did act


def test_mutable_collections_pass_through():
    variables, images = vit_variables_and_images()
    (preds, attns), state = Recorder(VIT).apply(variables, images, mutable=['batch_stats'])
    assert 'intermediates' not in state and attns.shape == (2, 3, 2, 17, 17)


@pytest.mark.parametrize('entry', [entry for entry in parity.ENTRIES if not entry.recordable], ids=lambda e: e.name)
def test_unrecordable_architectures_say_why(entry):
    assert entry.not_recordable, f'{entry.name}: say why it cannot be recorded (registry `not_recordable`)'
    with pytest.raises(ValueError) as error:
        Recorder(entry.build())
    assert f'vit_flax.{entry.name}' in str(error.value) and entry.not_recordable in str(error.value)


def test_an_unregistered_model_without_maps_is_refused_by_name():
    class Linear(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3, name='transformer')(x)

    x = jnp.ones((1, 4))
    with pytest.raises(ValueError, match='Linear recorded no attention maps under `transformer`'):
        Recorder(Linear()).apply(Linear().init(jax.random.key(0), x), x)


def test_maps_of_different_shapes_are_refused_naming_them():
    class TwoLengths(nn.Module):
        """A transformer run on two sequence lengths: maps of two shapes."""

        @nn.compact
        def __call__(self, x):
            transformer = Transformer(dim=8, depth=1, heads=1, dim_head=8, mlp_dim=8, name='transformer')
            return transformer(x), transformer(x[:, :2])

    x = jnp.ones((1, 4, 8))
    model = TwoLengths()
    with pytest.raises(ValueError, match=r'different shapes.*\(1, 1, 4, 4\).*\(1, 1, 2, 2\)'):
        Recorder(model).apply(model.init(jax.random.key(0), x), x)


def test_readme_example_shapes():
    """vit-pytorch's README example, at a smaller width: (batch, layers, heads, patches + 1, patches + 1)."""
    v = ViT(image_size=256, patch_size=32, num_classes=1000, dim=64, depth=6, heads=16, mlp_dim=128, dim_head=8)
    img = jnp.zeros((1, 256, 256, 3))
    preds, attns = jax.eval_shape(Recorder(v).apply, jax.eval_shape(v.init, jax.random.key(0), img), img)
    assert preds.shape == (1, 1000) and attns.shape == (1, 6, 16, 65, 65)

