"""Layer scan and remat (vit_flax/scan.py): `scan_layers=True` and `remat_policy` change how the layers run, not what
they compute. A scanned model gives the unscanned one's outputs, gradients and attention maps with the same weights,
and converts to and from vit-pytorch's per-layer state dict, like the unscanned one."""

import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util

import parity
from vit_flax import converters
from tests.conftest import (
    apply, assert_close_outputs, images, new_torch_model, randomised_flax_variables, randomised_torch_model,
    torch_forward,
)
from vit_flax import mae, registry, simple_vit_3d, vit_3d
from vit_flax.extractor import Extractor
from vit_flax.recorder import Recorder
from vit_flax.scan import REMAT_POLICIES
from vit_flax.vit import ViT

# depth 3: a layer in the middle, so neither the first nor the last alone could pass
CONFIGS = {
    'vit.ViT': dict(image_size=16, patch_size=4, num_classes=5, dim=16, depth=3, heads=2, mlp_dim=32, dim_head=8),
    'simple_vit.SimpleViT': dict(image_size=16, patch_size=4, num_classes=5, dim=16, depth=3, heads=2, mlp_dim=32,
                                 dim_head=8),
    # the ViT transformer is scanned, the one-layer t2t transformers before it are not
    't2t.T2TViT': dict(image_size=16, num_classes=5, dim=16, depth=3, heads=2, mlp_dim=32, dim_head=8,
                       t2t_layers=((3, 2), (3, 2))),
}
NAMES = list(CONFIGS)
IMAGES = images((2, 16, 16, 3))
TOLERANCE = 2e-5  # relative to max(1, max|y|), as the parity tests


def build(name, **options):
    return parity.BY_NAME[name].flax_class(**CONFIGS[name], **options)


@functools.cache
def torch_state(name):
    """A randomised vit-pytorch model's state dict: the weights the scanned and unscanned models share."""
    return randomised_torch_model(parity.BY_NAME[name], CONFIGS[name]).state_dict()


def variables_for(model, name):
    return converters.from_torch(model, torch_state(name))


def flat(tree):
    return traverse_util.flatten_dict(dict(tree))


def test_scanned_parameters_are_stacked_per_layer():
    shapes = flat(jax.eval_shape(build('vit.ViT', scan_layers=True).init, jax.random.key(0), IMAGES))
    transformer = {path[2:]: leaf.shape for path, leaf in shapes.items() if path[:2] == ('params', 'transformer')}
    assert transformer[('layers_scan', '0', 'to_qkv', 'kernel')] == (3, 16, 48)
    assert transformer[('layers_scan', '1', 'net_4', 'bias')] == (3, 16)
    assert transformer[('norm', 'scale')] == (16,)  # the final LayerNorm is not a layer
    assert {path[0] for path in transformer} == {'layers_scan', 'norm'}


@pytest.mark.parametrize('name', NAMES)
def test_remat_keeps_the_unscanned_tree(name):
    def tree(model):
        return jax.tree_util.tree_structure(jax.eval_shape(model.init, jax.random.key(0), IMAGES))

    assert tree(build(name, remat_policy='nothing_saveable')) == tree(build(name))


@pytest.mark.parametrize('name', NAMES)
def test_scanned_outputs_equal_unscanned(name):
    unscanned, scanned = build(name), build(name, scan_layers=True)
    expected = apply(unscanned, variables_for(unscanned, name), IMAGES)
    out = apply(scanned, variables_for(scanned, name), IMAGES)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_scanned_dropout_in_train_mode():
    model = ViT(**CONFIGS['vit.ViT'], dropout=0.2, emb_dropout=0.1, scan_layers=True)
    variables = variables_for(model, 'vit.ViT')
    train = apply(model, variables, IMAGES, train=True, rngs={'dropout': jax.random.key(1)})
    assert np.isfinite(train).all()
    assert not np.allclose(train, apply(model, variables, IMAGES))


def test_scanned_layers_draw_their_own_dropout_masks():
    """The attention maps are strictly positive, so the zeros after attention dropout are its mask: each layer's
    differs (a scan without split dropout rngs would give every layer the first one's)."""
    model = ViT(**CONFIGS['vit.ViT'], dropout=0.5, scan_layers=True)

    def sow_attention_dropout(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if isinstance(context.module, nn.Dropout) and out.ndim == 4:  # (batch, heads, n, n): attention dropout
            context.module.sow('intermediates', 'mask', out == 0)
        return out

    def masks(variables):
        with nn.intercept_methods(sow_attention_dropout):
            _, state = model.apply(variables, IMAGES, train=True, rngs={'dropout': jax.random.key(1)},
                                   mutable=['intermediates'])
        (mask,) = state['intermediates']['transformer']['layers_scan']['0']['Dropout_0']['mask']
        return mask

    mask = np.asarray(jax.jit(masks)(variables_for(model, 'vit.ViT')))
    assert mask.shape == (3, 2, 2, 17, 17) and 0.3 < mask.mean() < 0.7
    assert not np.array_equal(mask[0], mask[1]) and not np.array_equal(mask[1], mask[2])


@pytest.mark.parametrize('name', NAMES)
def test_scanned_parity_with_vit_pytorch(name):
    entry, config = parity.BY_NAME[name], CONFIGS[name]
    model = build(name, scan_layers=True)

    # torch -> Flax scanned
    torch_model = randomised_torch_model(entry, config)
    assert_close_outputs(apply(model, variables_for(model, name), IMAGES), torch_forward(torch_model, IMAGES),
                         TOLERANCE)

    # Flax scanned -> torch, strict
    variables = randomised_flax_variables(model)
    torch_model = new_torch_model(entry, config)
    torch_model.load_state_dict(converters.to_torch(model, variables), strict=True)
    assert_close_outputs(apply(model, variables, IMAGES), torch_forward(torch_model, IMAGES), TOLERANCE)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize('name', NAMES)
def test_scanned_round_trip_is_bit_exact(name, dtype):
    model = build(name, scan_layers=True)
    variables = jax.tree_util.tree_map(lambda a: a.astype(dtype), randomised_flax_variables(model))
    state_dict = converters.to_torch(model, variables)
    assert state_dict.keys() == torch_state(name).keys()
    back = flat(converters.from_torch(model, state_dict))
    for path, leaf in flat(variables).items():
        assert back[path].dtype == leaf.dtype, path
        np.testing.assert_array_equal(np.asarray(back[path]), np.asarray(leaf), err_msg=str(path))

    torch_dtype = {jnp.float32: torch.float32, jnp.bfloat16: torch.bfloat16}[dtype]
    expected = {key: tensor.to(torch_dtype) for key, tensor in torch_state(name).items()}
    again = converters.to_torch(model, converters.from_torch(model, expected))
    assert again.keys() == expected.keys()
    for key, tensor in expected.items():
        assert again[key].dtype == tensor.dtype and torch.equal(again[key], tensor), key


def test_scanned_mismatches_name_torch_keys_and_shapes():
    model = build('vit.ViT', scan_layers=True)
    state_dict = dict(torch_state('vit.ViT'))
    del state_dict['transformer.layers.1.0.to_qkv.weight']
    state_dict['transformer.layers.2.1.net.1.weight'] = torch.zeros(5, 16)
    state_dict['transformer.layers.3.0.norm.weight'] = torch.zeros(16)
    with pytest.raises(converters.StateDictMismatchError) as error:
        converters.from_torch(model, state_dict)
    assert error.value.missing == ['transformer.layers.1.0.to_qkv.weight']
    assert error.value.unexpected == ['transformer.layers.3.0.norm.weight']
    assert error.value.mismatched == [('transformer.layers.2.1.net.1.weight', (5, 16), (32, 16))]

    variables = flat(variables_for(model, 'vit.ViT'))
    variables[('params', 'transformer', 'layers_scan', '0', 'to_qkv', 'kernel')] = jnp.zeros((2, 16, 48))
    with pytest.raises(converters.StateDictMismatchError, match=r'layers_scan/0/to_qkv/kernel \(transformer\.layers'
                       r'\.0\.0\.to_qkv\.weight \.\.\. transformer\.layers\.2\.0\.to_qkv\.weight\): got \(2, 16, 48\), '
                       r'the model expects \(3, 16, 48\)'):
        converters.to_torch(model, traverse_util.unflatten_dict(variables))


def loss_gradients(model, variables, train=False):
    """d(sum(output * w)) / d(params) in vit-pytorch's layout, so scanned and unscanned trees compare key by key."""
    weights = np.random.default_rng(7).standard_normal((2, 5), np.float32)

    def loss(params):
        out = model.apply({**variables, 'params': params}, IMAGES, train=train, rngs={'dropout': jax.random.key(3)})
        return (out * weights).sum()

    grads = jax.jit(jax.grad(loss))(variables['params'])
    return converters.to_torch(model, {**variables, 'params': grads}, as_numpy=True)


def assert_same_gradients(grads, expected, rtol=1e-5):
    assert grads.keys() == expected.keys()
    for key, g in expected.items():
        np.testing.assert_allclose(grads[key], g, rtol=rtol, atol=rtol * np.abs(g).max(initial=0.0), err_msg=key)


@functools.cache
def unscanned_gradients(name):
    model = build(name)
    return loss_gradients(model, variables_for(model, name))


@pytest.mark.parametrize('name', NAMES)
def test_scanned_gradients_equal_unscanned(name):
    model = build(name, scan_layers=True)
    assert_same_gradients(loss_gradients(model, variables_for(model, name)), unscanned_gradients(name))


@functools.cache
def dropout_gradients(scan_layers):
    """Train-mode gradients of a ViT with dropout, without remat: a remat that replayed other masks would differ."""
    model = ViT(**CONFIGS['vit.ViT'], dropout=0.2, scan_layers=scan_layers)
    return loss_gradients(model, variables_for(model, 'vit.ViT'), train=True)


# checkpoint_dots and checkpoint_dots_with_no_batch_dims are other names of two of these
DISTINCT_POLICIES = [name for name in REMAT_POLICIES if not name.startswith('checkpoint_')]


# `make test` checks full rematerialisation in both layouts, `make test-slow` the policies that save some values
@pytest.mark.parametrize('scan_layers', [False, True], ids=['unscanned', 'scanned'])
@pytest.mark.parametrize('policy', [pytest.param(name, marks=[] if name == 'nothing_saveable' else [pytest.mark.slow])
                                    for name in DISTINCT_POLICIES])
def test_remat_keeps_gradients(policy, scan_layers):
    """Under every policy: SimpleViT's gradients are the unscanned model's; ViT's, in train mode with dropout, are
    those of the same model without remat (the same dropout masks replayed)."""
    simple = build('simple_vit.SimpleViT', scan_layers=scan_layers, remat_policy=policy)
    assert_same_gradients(loss_gradients(simple, variables_for(simple, 'simple_vit.SimpleViT')),
                          unscanned_gradients('simple_vit.SimpleViT'))
    model = ViT(**CONFIGS['vit.ViT'], dropout=0.2, scan_layers=scan_layers, remat_policy=policy)
    assert_same_gradients(loss_gradients(model, variables_for(model, 'vit.ViT'), train=True),
                          dropout_gradients(scan_layers))


def test_remat_policy_aliases_are_accepted():
    tested = {getattr(jax.checkpoint_policies, name) for name in DISTINCT_POLICIES}
    for name in REMAT_POLICIES:
        assert getattr(jax.checkpoint_policies, name) in tested
        build('vit.ViT', remat_policy=name)


@pytest.mark.parametrize('make', [
    lambda policy: build('vit.ViT', remat_policy=policy),
    lambda policy: build('simple_vit.SimpleViT', scan_layers=True, remat_policy=policy),
    lambda policy: simple_vit_3d.SimpleViT(image_size=8, image_patch_size=4, frames=2, frame_patch_size=1,
                                           num_classes=3, dim=12, depth=1, heads=1, mlp_dim=8, remat_policy=policy),
], ids=['vit', 'simple_vit', 'simple_vit_3d'])
def test_unknown_remat_policy_is_named(make):
    with pytest.raises(ValueError, match=r"remat_policy='save_everything'.*nothing_saveable"):
        make('save_everything')


@pytest.mark.parametrize('name', NAMES)
def test_recorder_on_scanned_equals_unscanned(name):
    unscanned, scanned = build(name), build(name, scan_layers=True)
    preds, attns = jax.jit(Recorder(scanned).apply)(variables_for(scanned, name), IMAGES)
    expected_preds, expected_attns = jax.jit(Recorder(unscanned).apply)(variables_for(unscanned, name), IMAGES)
    n = 16 if name == 'simple_vit.SimpleViT' else 17  # 16 patches (T2T: a 4 x 4 grid after two splits), + cls
    assert attns.shape == expected_attns.shape == (2, 3, 2, n, n)  # (batch, layers, heads, n, n)
    np.testing.assert_allclose(attns, expected_attns, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(preds, expected_preds, rtol=1e-5, atol=1e-6)


def test_extractor_on_scanned():
    model = build('vit.ViT', scan_layers=True)
    variables = variables_for(model, 'vit.ViT')
    unscanned = build('vit.ViT')
    _, embeddings = Extractor(model).apply(variables, IMAGES)
    _, expected = Extractor(unscanned).apply(variables_for(unscanned, 'vit.ViT'), IMAGES)
    np.testing.assert_allclose(embeddings, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"'transformer\.layers\.1\.0'.*'transformer' runs its layers as one nn\.scan"):
        Extractor(model, layer_name='transformer.layers.1.0').apply(variables, IMAGES)


VIDEO_CONFIG = dict(image_size=8, image_patch_size=4, frames=2, frame_patch_size=1, num_classes=3, dim=12, depth=2,
                    heads=2, mlp_dim=8, dim_head=4)


@pytest.mark.parametrize('video_model', [simple_vit_3d.SimpleViT, vit_3d.ViT], ids=['simple_vit_3d', 'vit_3d'])
def test_video_models_pass_the_options_down(video_model):
    unscanned = video_model(**VIDEO_CONFIG)
    scanned = video_model(**VIDEO_CONFIG, scan_layers=True, remat_policy='dots_saveable', attention_impl='xla')
    videos = images((2, 2, 8, 8, 3))
    variables = randomised_flax_variables(unscanned)
    scanned_variables = converters.from_torch(scanned, converters.to_torch(unscanned, variables))
    assert 'layers_scan' in scanned_variables['params']['transformer']
    np.testing.assert_allclose(apply(scanned, scanned_variables, videos), apply(unscanned, variables, videos),
                               rtol=1e-5, atol=1e-6)


def test_mae_with_a_scanned_encoder():
    """vit-pytorch's objectives run the encoder's transformer themselves: MAE builds it as the encoder does."""
    def objective(scan_layers):
        return mae.MAE(encoder=build('vit.ViT', scan_layers=scan_layers), decoder_dim=16, decoder_heads=2,
                       decoder_dim_head=8)

    unscanned, scanned = objective(False), objective(True)
    rngs = {mae.MASKING: jax.random.key(2)}
    variables = jax.jit(unscanned.init)({'params': jax.random.key(0), **rngs}, IMAGES)
    scanned_variables = converters.from_torch(scanned, converters.to_torch(unscanned, variables))
    assert 'layers_scan' in scanned_variables['params']['encoder']['transformer']
    loss = jax.jit(scanned.apply)(scanned_variables, IMAGES, rngs=rngs)
    np.testing.assert_allclose(loss, jax.jit(unscanned.apply)(variables, IMAGES, rngs=rngs), rtol=1e-5)


def test_trainer_path_and_files(tmp_path):
    """registry.build takes the JAX-only options; a scanned model exports vit-pytorch's keywords and state dict, and
    its sidecar keeps the options, so load_flax gives back the scanned model."""
    model = registry.build('vit.ViT', {**CONFIGS['vit.ViT'], 'image_size': [16, 16], 'scan_layers': True,
                                       'remat_policy': 'nothing_saveable'})
    assert model.scan_layers and model.remat_policy == 'nothing_saveable'
    assert registry.torch_kwargs(model) == {**CONFIGS['vit.ViT'], 'image_size': (16, 16), 'pool': 'cls',
                                            'channels': 3, 'dropout': 0.0, 'emb_dropout': 0.0}
    variables = randomised_flax_variables(model)

    path = converters.save_torch(tmp_path / 'vit.safetensors', model, variables)
    sidecar = json.loads(path.with_suffix('.json').read_text())
    assert 'scan_layers' not in sidecar['kwargs']
    assert sidecar['flax_kwargs'] == {'scan_layers': True, 'remat_policy': 'nothing_saveable'}
    torch_model = converters.load_torch(path)
    assert_close_outputs(apply(model, variables, IMAGES), torch_forward(torch_model, IMAGES), TOLERANCE)

    loaded, loaded_variables = converters.load_flax(path)
    assert loaded == model
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded_variables, variables)

    # an unscanned model's sidecar is as it was: no flax_kwargs
    converters.save_torch(tmp_path / 'plain.pt', build('vit.ViT'), variables_for(build('vit.ViT'), 'vit.ViT'))
    assert 'flax_kwargs' not in json.loads((tmp_path / 'plain.json').read_text())


def test_fsdp_never_splits_a_scanned_layer_axis():
    """FSDP splits an array's largest dimension the axis divides; a scanned stack's leading layer axis is left whole,
    for parameters and for the optimiser moments that mirror them."""
    import optax
    from jax.sharding import PartitionSpec as P

    from vit_flax.training.sharding import layer_axes, param_spec

    assert param_spec((32, 16, 8), fsdp_size=4, min_size=1) == P('fsdp', None, None)
    assert param_spec((32, 16, 8), fsdp_size=4, min_size=1, layer_axes=1) == P(None, 'fsdp', None)
    assert param_spec((32, 6), fsdp_size=4, min_size=1, layer_axes=1) == P()  # nothing else divides: replicated

    params = jax.eval_shape(build('vit.ViT', scan_layers=True).init, jax.random.key(0), IMAGES)['params']
    state = {'params': params, 'opt_state': jax.eval_shape(optax.adam(1e-3).init, params)}
    axes = {jax.tree_util.keystr(path): layer_axes(path)
            for path, _ in jax.tree_util.tree_flatten_with_path(state)[0]}
    assert axes["['params']['transformer']['layers_scan']['0']['to_qkv']['kernel']"] == 1
    assert axes["['params']['transformer']['norm']['scale']"] == 0
    moments = [key for key in axes if key.startswith("['opt_state']") and "['layers_scan']" in key]
    assert moments and all(axes[key] == 1 for key in moments)
