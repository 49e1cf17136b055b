"""The converters: naming and leaf rules, strict errors, dtypes, files and sidecars, legacy layouts."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import flax.linen as nn
import torch
from flax import traverse_util

import parity
from vit_flax import converters
from vit_flax.converters import legacy
from vit_flax.converters.rules import LEAF_RULES, slots, torch_module_path
from tests.conftest import (
    apply, assert_close_outputs, float64_reference, init_variables, run_torch, torch_class, torch_forward, torch_inputs,
)
from vit_flax import registry
from vit_flax.layers import pair
from vit_flax.vit import ViT

FIXTURES = Path(__file__).parent / 'fixtures'
VIT = parity.BY_NAME['vit.ViT']


def tiny_vit(**overrides):
    return VIT.build(0, **overrides)


def torch_vit(**overrides):
    torch.manual_seed(0)
    return torch_class(VIT)(**{**VIT.configs[0], **overrides}).eval()


# rules


@pytest.mark.parametrize('flax_path, torch_path', [
    (('transformer', 'layers_0_1', 'net_1'), 'transformer.layers.0.1.net.1'),
    (('to_patch_embedding_2',), 'to_patch_embedding.2'),
    (('transformer', 'layers_12_0', 'to_out_0'), 'transformer.layers.12.0.to_out.0'),
    (('mlp_head',), 'mlp_head'),
    (('to_qkv',), 'to_qkv'),
    ((), ''),
])
def test_naming_rule(flax_path, torch_path):
    assert torch_module_path(flax_path) == torch_path


@pytest.mark.parametrize('rule', [r for r in LEAF_RULES], ids=lambda r: f'{r.collection}/{r.flax_name}/{r.ranks}')
def test_leaf_rules_are_exact_inverses(rule, rng):
    for rank in rule.ranks or (0, 1, 2, 3):
        shape = tuple(rng.integers(1, 5, size=rank))
        for dtype in (np.float32, ml_dtypes.bfloat16, np.float16):
            flax_leaf = rng.standard_normal(shape).astype(dtype)
            torch_leaf = rule.to_torch(flax_leaf)
            assert torch_leaf.dtype == flax_leaf.dtype
            np.testing.assert_array_equal(rule.from_torch(torch_leaf), flax_leaf)
            np.testing.assert_array_equal(rule.to_torch(rule.from_torch(torch_leaf)), torch_leaf)


def test_leaf_rule_layouts():
    kernel = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)  # (kh, kw, in, out)
    table = slots({('params', 'conv', 'kernel'): kernel.shape, ('params', 'fc', 'kernel'): (4, 5),
                   ('batch_stats', 'bn', 'var'): (5,), ('params', 'bn', 'scale'): (5,)})
    assert table['conv.weight'].torch_shape == (5, 4, 2, 3)
    np.testing.assert_array_equal(table['conv.weight'].rule.to_torch(kernel)[1, 2], kernel[:, :, 2, 1])
    assert table['fc.weight'].torch_shape == (5, 4)
    assert table['bn.running_var'].flax_path == ('batch_stats', 'bn', 'var')
    assert table['bn.weight'].flax_path == ('params', 'bn', 'scale')


def test_two_leaves_on_one_torch_key_is_an_error():
    with pytest.raises(ValueError, match="both map to torch key 'layers.0.weight'"):
        slots({('params', 'layers_0', 'kernel'): (2, 2), ('params', 'layers', '0', 'kernel'): (2, 2)})


# strictness


def test_from_torch_reports_every_offender_with_shapes():
    model = tiny_vit()
    state = dict(torch_vit().state_dict())
    del state['transformer.layers.0.0.to_qkv.weight']
    state['transformer.layers.0.0.extra.weight'] = torch.zeros(3)
    state['mlp_head.weight'] = torch.zeros(11, 32)
    with pytest.raises(converters.StateDictMismatchError) as info:
        converters.from_torch(model, state)
    message = str(info.value)
    assert 'missing key transformer.layers.0.0.to_qkv.weight' in message
    assert 'unexpected key transformer.layers.0.0.extra.weight' in message
    assert 'wrong shape for mlp_head.weight: got (11, 32), the model expects (10, 32)' in message
    assert info.value.missing == ['transformer.layers.0.0.to_qkv.weight']


def test_to_torch_reports_every_offender_with_flax_paths():
    model = tiny_vit()
    variables = init_variables(model)
    flat = traverse_util.flatten_dict(variables)
    del flat[('params', 'transformer', 'norm', 'scale')]
    flat[('params', 'surplus', 'kernel')] = jnp.zeros((2, 2))
    flat[('params', 'pos_embedding')] = jnp.zeros((3, 32))
    with pytest.raises(converters.StateDictMismatchError) as info:
        converters.to_torch(model, traverse_util.unflatten_dict(flat))
    message = str(info.value)
    assert 'missing key params/transformer/norm/scale (transformer.norm.weight)' in message
    assert 'unexpected key params/surplus/kernel' in message
    assert 'wrong shape for params/pos_embedding (pos_embedding): got (3, 32), the model expects (17, 32)' in message


def test_wrong_model_config_is_reported_not_loaded():
    state = torch_vit().state_dict()
    with pytest.raises(converters.StateDictMismatchError, match='mlp_head.weight: got .10, 32., the model expects .4, 32.'):
        converters.from_torch(tiny_vit(num_classes=4), state)


def test_inputs_are_not_mutated():
    model = tiny_vit()
    state = torch_vit().state_dict()
    snapshot = {k: v.clone() for k, v in state.items()}
    variables = converters.from_torch(model, state)
    assert state.keys() == snapshot.keys() and all(torch.equal(state[k], snapshot[k]) for k in state)

    flat = traverse_util.flatten_dict(variables)
    before = {k: np.array(v) for k, v in flat.items()}
    exported = converters.to_torch(model, variables)
    for k, v in traverse_util.flatten_dict(variables).items():
        np.testing.assert_array_equal(np.asarray(v), before[k])
    exported['pos_embedding'].add_(1.0)  # the export owns its memory
    np.testing.assert_array_equal(np.asarray(variables['params']['pos_embedding']), before[('params', 'pos_embedding')])


def test_bf16_state_dict_stays_bf16():
    model = tiny_vit()
    state = {k: v.to(torch.bfloat16) for k, v in torch_vit().state_dict().items()}
    variables = converters.from_torch(model, state)
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(variables)} == {jnp.dtype(jnp.bfloat16)}
    back = converters.to_torch(model, variables)
    assert all(torch.equal(back[k], state[k]) and back[k].dtype == torch.bfloat16 for k in state)


@pytest.mark.parametrize('dtype', [torch.float16, torch.float32])
def test_float_widths_are_kept(dtype):
    model = tiny_vit()
    state = {k: v.to(dtype) for k, v in torch_vit().state_dict().items()}
    variables = converters.from_torch(model, state)
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(variables)} == {jnp.dtype(str(dtype).split('.')[1])}


@pytest.mark.parametrize('dtype, reason', [
    (torch.int32, 'dtype torch.int32, the model holds floating values here'),
    (torch.bool, 'dtype torch.bool, the model holds floating values here'),
    (torch.complex64, 'dtype torch.complex64, the model holds floating values here'),
    (torch.float64, 'dtype float64, which JAX holds only with jax_enable_x64'),
])
def test_values_of_the_wrong_type_are_refused_by_key(dtype, reason):
    """jnp.asarray would round float64 to float32 without a word (x64 off), and take integers, booleans or complex
    numbers into float parameters: each is refused naming the key."""
    state = torch_vit().state_dict()
    keys = ['mlp_head.weight', 'pos_embedding']
    bad = {**state, **{key: state[key].to(dtype) for key in keys}}
    with pytest.raises(ValueError) as raised:
        converters.from_torch(tiny_vit(), bad)
    message = str(raised.value).replace('torch.', '')
    for key in keys:
        assert f'{key}: {reason.replace("torch.", "")}' in message, message


def test_unregistered_model_needs_example_inputs():
    import flax.linen as nn

    from vit_flax.layers import Linear

    class Head(nn.Module):
        @nn.compact
        def __call__(self, x):
            return Linear(3, name='proj')(x)

    with pytest.raises(KeyError, match='not in the vit-flax registry'):
        converters.to_torch(Head(), {})
    torch_head = torch.nn.Module()
    torch_head.proj = torch.nn.Linear(4, 3)
    variables = converters.from_torch(Head(), torch_head.state_dict(), example_inputs=(np.zeros((1, 4), np.float32),))
    x = np.random.default_rng(0).standard_normal((2, 4), dtype=np.float32)
    assert_close_outputs(Head().apply(variables, x), float64_reference(torch_head.proj)(torch.from_numpy(x).double()),
                         2e-5)


# the example input a configuration takes


TWINS_SVT_STAGE = dict(emb_dim=4, patch_size=1, local_patch_size=1, global_k=1, depth=0)
# configurations the registry's preferred example size (a fixed one, or the model's own image_size) does not fit, and
# the smallest square the converters derive instead
UNFIT_FOR_THE_PREFERRED_SIZE = [
    # the issue's: "input of shape (1, 8, 12, 3): the s1 map of size (2, 3) is not divisible by s1_local_patch_size=4"
    pytest.param('twins_svt.TwinsSVT', dict(
        num_classes=3, s1_emb_dim=4, s1_patch_size=4, s1_local_patch_size=4, s1_global_k=1, s1_depth=0,
        **{f'{stage}_{key}': value for stage in ('s2', 's3', 's4') for key, value in TWINS_SVT_STAGE.items()},
    ), (16, 16), id='twins_svt'),
    # 32 x 24 gives an 8 x 6 map, which 4 x 4 windows do not tile; 13 x 13 gives 4 x 4
    pytest.param('scalable_vit.ScalableViT', dict(num_classes=3, dim=4, depth=(1,), heads=1, reduction_factor=1,
                                                  window_size=4), (13, 13), id='scalable_vit'),
    # 32 x 16 gives an 8 x 4 map at stride 4, which 8 x 8 local windows do not tile
    pytest.param('crossformer.CrossFormer', dict(dim=(32, 8, 8, 8), depth=(1, 0, 0, 0), global_window_size=1,
                                                 local_window_size=(8, 1, 1, 1),
                                                 cross_embed_kernel_sizes=((4,), (2,), (2,), (2,)),
                                                 cross_embed_strides=(4, 2, 2, 2), num_classes=3),
                 (32, 32), id='crossformer'),
    # 16 x 32 is no whole number of 28-pixel region patches
    pytest.param('regionvit.RegionViT', dict(dim=8, depth=(1, 0, 0, 0), window_size=7, local_patch_size=4,
                                             num_classes=3), (28, 28), id='regionvit'),
    # 3 x 3 windows do not tile the 8 x 16 map of 32 x 64 images; 9 x 9 images give 3 x 3 (sides round up)
    pytest.param('max_vit.MaxViT', dict(num_classes=3, dim=8, depth=(1,), dim_head=4, window_size=3), (9, 9),
                 id='max_vit'),
    # image_size is only checked against patch_size: 8 x 8 images leave 1 x 1 maps for 2 x 2 patches
    pytest.param('mobile_vit.MobileViT', dict(image_size=(8, 8), dims=(8, 12, 16),
                                              channels=(4, 4, 8, 8, 8, 8, 12, 12, 16, 16, 24), num_classes=5,
                                              expansion=2, depths=(1, 1, 1)), (57, 57), id='mobile_vit'),
    # an image_size that is no multiple of 16 gives a larger map than its position biases are built for
    pytest.param('levit.LeViT', dict(image_size=20, num_classes=3, dim=16, depth=1, heads=2, mlp_mult=2, stages=1,
                                     dim_key=8, dim_value=8), (1, 1), id='levit'),
]


@pytest.mark.parametrize('name, config, derived_size', UNFIT_FOR_THE_PREFERRED_SIZE)
def test_converters_derive_an_input_that_fits_the_configuration(name, config, derived_size):
    """The model refuses the preferred size; the converters find their own example input and convert a vit-pytorch
    state dict both ways (strict load), and vit-pytorch runs on that input too."""
    entry = parity.BY_NAME[name]
    model = entry.flax_class(**config)
    (derived,) = registry.example_inputs(model)
    assert derived.shape[1:3] == derived_size
    preferred = np.zeros((1, *(entry.inputs.preferred_size or pair(model.image_size)), derived.shape[-1]), np.float32)
    with pytest.raises(ValueError):
        jax.eval_shape(model.init, jax.random.key(0), preferred)

    torch.manual_seed(0)
    torch_model = torch_class(entry)(**converters.torch_keywords(config)).eval()
    variables = converters.from_torch(model, torch_model.state_dict())
    torch_model.load_state_dict(converters.to_torch(model, variables), strict=True)
    with torch.no_grad():  # vit-pytorch takes the derived input too
        torch_model(*torch_inputs(entry, (derived,), torch.float32))


@pytest.mark.parametrize('name, config', [
    # stage 2's kernels 1 and 2 at stride 1 give maps of sides H and H - 1: never one size to concatenate
    pytest.param('crossformer.CrossFormer', dict(dim=(32, 8, 8, 8), depth=(1, 0, 0, 0), global_window_size=1,
                                                 local_window_size=1,
                                                 cross_embed_kernel_sizes=((4,), (1, 2), (2,), (2,)),
                                                 cross_embed_strides=(4, 1, 2, 2), num_classes=3), id='crossformer'),
    # 8-pixel local patches give every region token 2 x 2 local tokens, outside the 1-row table of window_size=1
    pytest.param('regionvit.RegionViT', dict(dim=8, depth=1, window_size=1, local_patch_size=8, num_classes=2),
                 id='regionvit'),
])
def test_a_configuration_no_input_fits_asks_for_example_inputs(name, config):
    entry = parity.BY_NAME[name]
    model = entry.flax_class(**config)
    state_dict = torch_class(entry)(**converters.torch_keywords(config)).state_dict()
    message = rf'{entry.class_name}: no image of up to \d+ x \d+ pixels fits .* example_inputs='
    with pytest.raises(ValueError, match=message):
        converters.from_torch(model, state_dict)
    with pytest.raises(ValueError, match=message):
        converters.to_torch(model, {})


# files and sidecars


@pytest.mark.parametrize('suffix', ['.safetensors', '.pt'])
@pytest.mark.parametrize('index', [0, 1])  # config 1 has tuple image and patch sizes and pool='mean'
def test_save_and_load_both_ways(tmp_path, suffix, index):
    model = VIT.build(index)
    variables = init_variables(model, index)
    path = converters.save_torch(tmp_path / f'vit{suffix}', model, variables)

    sidecar = json.loads((tmp_path / 'vit.json').read_text())
    assert (sidecar['module'], sidecar['class']) == ('vit_pytorch.vit', 'ViT')
    assert sidecar['kwargs']['dim'] == VIT.configs[index]['dim']

    torch_model = converters.load_torch(path)
    assert isinstance(torch_model, torch_class(VIT)) and not torch_model.training
    inputs = VIT.inputs.example(model, batch=2, rng=np.random.default_rng(0))
    assert_close_outputs(apply(model, variables, *inputs), run_torch(VIT, torch_model, inputs), VIT.tolerance)

    loaded_model, loaded = converters.load_flax(path)
    assert loaded_model == model
    flat, flat_loaded = traverse_util.flatten_dict(variables), traverse_util.flatten_dict(loaded)
    assert flat.keys() == flat_loaded.keys()
    for path, leaf in flat.items():
        assert flat_loaded[path].dtype == leaf.dtype
        np.testing.assert_array_equal(np.asarray(flat_loaded[path]), np.asarray(leaf))


@pytest.mark.parametrize('entry', [entry for entry in parity.ENTRIES if entry.torch_package == 'vit_pytorch'],
                         ids=lambda e: e.name)
def test_every_architecture_round_trips_through_files(tmp_path, entry):
    """Shapes survive the file formats too, 0-d parameters (learned temperatures) included. (The timm-layout family
    has its own files: tests/test_pretrained_*.py.)"""
    model = entry.build(0)
    # random arrays of the variables' shapes and dtypes: init is traced, not compiled (a compile per architecture
    # costs minutes of the suite, and the values do not matter here)
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(lambda: model.init(registry.init_rngs(jax.random.key(0)), *registry.example_inputs(model)))
    variables = jax.tree_util.tree_map(lambda leaf: rng.standard_normal(leaf.shape).astype(leaf.dtype), shapes)
    for suffix in ('.safetensors', '.pt'):
        _, loaded = converters.load_flax(converters.save_torch(tmp_path / f'model{suffix}', model, variables))
        flat, flat_loaded = traverse_util.flatten_dict(variables), traverse_util.flatten_dict(loaded)
        assert flat.keys() == flat_loaded.keys()
        for path, leaf in flat.items():
            np.testing.assert_array_equal(np.asarray(flat_loaded[path]), np.asarray(leaf), err_msg=f'{suffix} {path}')


def test_module_keywords_are_saved_as_their_vit_pytorch_twins(tmp_path):
    """T2TViT(transformer=...) in the sidecar: the keyword becomes vit_pytorch.vit.Transformer and back."""
    from vit_flax.t2t import T2TViT
    from vit_flax.vit import Transformer

    model = T2TViT(image_size=16, num_classes=4, dim=16, t2t_layers=((3, 2), (3, 2)),
                   transformer=Transformer(dim=16, depth=1, heads=2, dim_head=8, mlp_dim=24))
    variables = init_variables(model)
    path = converters.save_torch(tmp_path / 't2t.safetensors', model, variables)
    sidecar = json.loads((tmp_path / 't2t.json').read_text())
    assert sidecar['kwargs']['transformer'] == {
        'module': 'vit_pytorch.vit', 'class': 'Transformer',
        'kwargs': dict(dim=16, depth=1, heads=2, dim_head=8, mlp_dim=24, dropout=0.0)}

    torch_model = converters.load_torch(path)
    assert type(torch_model.transformer).__module__ == 'vit_pytorch.vit'
    x = np.random.default_rng(0).standard_normal((2, 16, 16, 3), dtype=np.float32)
    torch_out = torch_forward(torch_model, x)
    assert_close_outputs(apply(model, variables, x), torch_out, 2e-5)

    loaded_model, loaded = converters.load_flax(path)
    assert loaded_model == model
    assert_close_outputs(apply(loaded_model, loaded, x), torch_out, 2e-5)


class Twinless(nn.Module):
    """A transformer vit-pytorch does not have."""

    @nn.compact
    def __call__(self, x):
        return nn.Dense(x.shape[-1])(x)


def test_module_keyword_without_a_vit_pytorch_twin_is_refused_by_name(tmp_path):
    from vit_flax.t2t import T2TViT

    model = T2TViT(image_size=16, num_classes=4, dim=16, t2t_layers=((3, 2), (3, 2)), transformer=Twinless())
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    with pytest.raises(ValueError, match=r'transformer: tests\.test_converters\.Twinless is not a vit_flax module, '
                                         r'so it has no vit-pytorch twin'):
        converters.save_torch(tmp_path / 't2t.safetensors', model, variables)
    assert not (tmp_path / 't2t.json').exists()


def test_bf16_safetensors_round_trip(tmp_path):
    model = tiny_vit()
    variables = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16),
                                       init_variables(model))
    path = converters.save_torch(tmp_path / 'vit.safetensors', model, variables)
    assert converters.load_state_dict(path)['pos_embedding'].dtype == ml_dtypes.bfloat16
    _, loaded = converters.load_flax(path)
    np.testing.assert_array_equal(np.asarray(loaded['params']['pos_embedding']),
                                  np.asarray(variables['params']['pos_embedding']))
    assert converters.load_torch(path).pos_embedding.dtype == torch.float32  # load_state_dict casts, as torch does


def test_corrupt_and_missing_files_say_which(tmp_path):
    model = tiny_vit()
    variables = init_variables(model)
    for suffix in ('.safetensors', '.pt'):
        path = converters.save_torch(tmp_path / f'vit{suffix}', model, variables)
        path.write_bytes(path.read_bytes()[:100])
        with pytest.raises(ValueError, match=f'could not read weights from .*vit{suffix}'):
            converters.load_torch(path)
    with pytest.raises(FileNotFoundError, match='no weights file'):
        converters.load_state_dict(tmp_path / 'absent.safetensors')
    with pytest.raises(ValueError, match="unknown weights format '.bin'"):
        converters.save_state_dict(tmp_path / 'vit.bin', {})

    lonely = converters.save_state_dict(tmp_path / 'lonely.safetensors', converters.to_torch(model, variables))
    with pytest.raises(FileNotFoundError, match='has no sidecar lonely.json'):
        converters.load_torch(lonely)
    (tmp_path / 'lonely.json').write_text('{"module": "vit_pytorch.vit"')
    with pytest.raises(ValueError, match='not valid JSON'):
        converters.load_flax(lonely)


def test_pt_file_that_is_not_a_state_dict(tmp_path):
    torch.save([1, 2, 3], tmp_path / 'list.pt')
    with pytest.raises(ValueError, match='holds a list, not a state dict'):
        converters.load_state_dict(tmp_path / 'list.pt')


# legacy layouts, produced by the old vit-pytorch releases themselves (tests/fixtures/make_legacy_vit.py)


def load_fixture(name):
    data = np.load(FIXTURES / f'legacy_vit_{name}.npz')
    state = {key[3:]: data[key] for key in data.files if key.startswith('sd/')}
    return ViT(**json.loads(str(data['kwargs']))), state, data['input'], data['output']


@pytest.mark.parametrize('name', ['1.2.9_cls', '1.14.0_cls', '1.16.0_cls', '1.16.0_mean'])
def test_legacy_layouts_migrate_exactly(name):
    model, state, images, expected = load_fixture(name)
    original = {k: v.copy() for k, v in state.items()}
    with pytest.warns(legacy.LegacyLayoutWarning, match='legacy vit-pytorch layout migrated'):
        variables = converters.from_torch(model, state)
    assert all(np.array_equal(state[k], original[k]) for k in original)

    # the current vit-pytorch loads the migrated weights (strictly, in float32 as users load them), and its float64
    # answer is what the old release computed: the fixture's float32 output rounds it
    current = torch_class(VIT)(**json.loads(json.dumps(registry.torch_kwargs(model)))).eval()
    current.load_state_dict(converters.to_torch(model, variables), strict=True)
    with torch.no_grad():
        exact = float64_reference(current)(torch.from_numpy(images).double())
    assert_close_outputs(expected, exact, VIT.tolerance)
    assert_close_outputs(apply(model, variables, np.moveaxis(images, 1, -1)), exact, VIT.tolerance)


@pytest.mark.parametrize('name, reason', [
    ('1.14.0_mean', 'averaged the cls token into the pooled output'),
    ('0.40.2_cls', 'patch embedding has no LayerNorms'),
])
def test_legacy_layouts_that_cannot_migrate_say_why(name, reason):
    model, state, _, _ = load_fixture(name)
    with pytest.raises(legacy.LegacyLayoutError, match=reason):
        converters.from_torch(model, state)


def test_prenorm_layout_with_mean_pooling_is_refused():
    model, state, _, _ = load_fixture('1.2.9_cls')
    with pytest.raises(legacy.LegacyLayoutError, match="pool='mean'"):
        converters.from_torch(ViT(**{**registry.torch_kwargs(model), 'pool': 'mean'}), state)


def test_current_layout_is_not_touched(recwarn):
    converters.from_torch(tiny_vit(), torch_vit().state_dict())
    assert not [w for w in recwarn if issubclass(w.category, legacy.LegacyLayoutWarning)]
