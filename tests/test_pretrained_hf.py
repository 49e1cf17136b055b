"""converters/hf_vit.py against the real transformers (issue 20): directories written by transformers'
`save_pretrained` (randomly initialised ViTForImageClassification and ViTModel of several options) read into
VisionTransformer give transformers' outputs and gradients (judged against its float64 reference, as every parity
test here); our variables written with write_hf_vit load into transformers' `from_pretrained` with no missing or
unexpected key, bit-exact; round trips are exact; what either side cannot hold is refused by name."""

import copy
import dataclasses
import json
import math

import jax
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

transformers = pytest.importorskip('transformers')

from tests.conftest import (  # noqa: E402
    assert_close_gradients,
    assert_close_outputs,
    float64_reference,
    images,
    nchw,
)
from vit_flax import converters  # noqa: E402
from vit_flax.converters import hf_vit  # noqa: E402
from vit_flax.converters.hf_vit import is_hf_vit_dir, read_hf_vit, write_hf_vit  # noqa: E402
from vit_flax.converters.pretrained_form import Pretrained, UnsupportedCheckpointError  # noqa: E402
from vit_flax.pretrained_vit import VisionTransformer  # noqa: E402

HF_BASE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
               patch_size=8)
CLASSIFIER, MODEL = 'ViTForImageClassification', 'ViTModel'
# name -> (class, add_pooling_layer for ViTModel, ViTConfig keywords, the output VisionTransformer returns)
CASES = {
    'classifier': (CLASSIFIER, None, dict(num_labels=5), 'logits'),
    'classifier_no_qkv_bias_tanh_gelu_non_square': (
        CLASSIFIER, None, dict(num_labels=3, qkv_bias=False, hidden_act='gelu_pytorch_tanh', image_size=[32, 24],
                               patch_size=[8, 4]), 'logits'),
    'classifier_one_channel_gelu_new_patch_16': (
        CLASSIFIER, None, dict(num_labels=2, num_channels=1, hidden_act='gelu_new', patch_size=16,
                               layer_norm_eps=1e-6), 'logits'),
    'classifier_no_labels': (CLASSIFIER, None, dict(num_labels=0), 'logits'),
    'model_pooler_two_channels': (MODEL, True, dict(num_channels=2, pooler_output_size=24), 'pooler_output'),
    'model_no_pooler': (MODEL, False, dict(intermediate_size=48), 'last_hidden_state'),
}
GRADIENT_CASES = ('classifier', 'classifier_no_qkv_bias_tanh_gelu_non_square', 'model_pooler_two_channels',
                  'model_no_pooler')
TOLERANCE = 2e-5


class Output(torch.nn.Module):
    """One field of a transformers model's output object, so that the float64 reference returns a tensor."""

    def __init__(self, model, field):
        super().__init__()
        self.model, self.field = model, field

    def forward(self, pixel_values):
        return getattr(self.model(pixel_values=pixel_values), self.field)


def hf_model(name, seed=0):
    """A transformers ViT in eval mode with every parameter moved off its init (LayerNorm ones and zeros would hide
    a misplaced norm), as tests/test_pretrained_vit.py's timm_model."""
    architecture, pooler, options, _ = CASES[name]
    torch.manual_seed(seed)
    config = transformers.ViTConfig(**{**HF_BASE, **options})
    if architecture == MODEL:
        model = transformers.ViTModel(config, add_pooling_layer=pooler)
    else:
        model = transformers.ViTForImageClassification(config)
    model.eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model


def input_images(kwargs, seed=0):
    return images((2, *np.broadcast_to(kwargs['img_size'], 2), kwargs['in_chans']), seed)


def saved(name, directory):
    """transformers' own writer: save_pretrained of a randomised model. Returns the model."""
    model = hf_model(name)
    model.save_pretrained(directory)
    return model


def assert_same_pretrained(ours, theirs):
    assert ours.kwargs == theirs.kwargs
    assert ours.preprocessing == theirs.preprocessing
    assert ours.state_dict.keys() == theirs.state_dict.keys()
    for key, value in ours.state_dict.items():
        assert value.dtype == theirs.state_dict[key].dtype, key
        np.testing.assert_array_equal(value, theirs.state_dict[key], err_msg=key)


@pytest.mark.parametrize('name', CASES)
def test_transformers_directories_read_into_vision_transformer(name, tmp_path):
    hf = saved(name, tmp_path)
    assert is_hf_vit_dir(tmp_path)
    pretrained = read_hf_vit(tmp_path)
    model = VisionTransformer(**pretrained.kwargs)
    x = input_images(pretrained.kwargs)
    variables = converters.from_torch(model, pretrained.state_dict, example_inputs=(x,))

    exact = float64_reference(Output(hf, CASES[name][3]))
    out = exact(nchw(x))
    assert_close_outputs(jax.jit(model.apply)(variables, x), out.detach(), TOLERANCE)
    if name not in GRADIENT_CASES:
        return

    # d(sum(output * w)) / d(weights): transformers' float64 gradients, stored by its own save_pretrained as if
    # they were weights, read back into timm's keys, against ours in float32
    w = np.random.default_rng(7).standard_normal(tuple(out.shape), dtype=np.float32)
    (out * torch.from_numpy(w)).sum().backward()
    holder = copy.deepcopy(hf).double()
    holder.load_state_dict({key.removeprefix('model.'): p.grad for key, p in exact.named_parameters()}, strict=True)
    holder.save_pretrained(tmp_path / 'gradients')
    exact_grads = read_hf_vit(tmp_path / 'gradients').state_dict

    grads = jax.jit(jax.grad(lambda p: (model.apply({'params': p}, x) * w).sum()))(variables['params'])
    assert_close_gradients(converters.to_torch(model, {'params': grads}, example_inputs=(x,), as_numpy=True),
                           exact_grads)


def test_the_class_decides_the_keywords(tmp_path):
    expected = {'classifier': dict(global_pool='token', num_classes=5, representation_size=None),
                'classifier_no_labels': dict(global_pool='token', num_classes=0, representation_size=None),
                'model_pooler_two_channels': dict(global_pool='token', num_classes=0, representation_size=24),
                'model_no_pooler': dict(global_pool='', num_classes=0, representation_size=None)}
    for name, keywords in expected.items():
        saved(name, tmp_path / name)
        pretrained = read_hf_vit(tmp_path / name)
        assert {key: pretrained.kwargs[key] for key in keywords} == keywords, name
        assert pretrained.kwargs['norm_eps'] == 1e-12  # HF's default eps carried through, not timm's 1e-6
    kwargs = read_hf_vit(tmp_path / 'model_no_pooler').kwargs
    assert kwargs['mlp_ratio'] == 1.5 and kwargs['act_layer'] == 'gelu' and kwargs['class_token']


# export: our variables into transformers

# name -> (VisionTransformer keywords beyond the base, the transformers class that loads it, its options, output)
EXPORTS = {
    'classifier': (dict(num_classes=4), CLASSIFIER, {}, 'logits'),
    'classifier_non_square_tanh_gelu': (dict(num_classes=3, img_size=(32, 24), patch_size=(8, 4), qkv_bias=False,
                                             act_layer='gelu_tanh', in_chans=1), CLASSIFIER, {}, 'logits'),
    'no_head': (dict(num_classes=0), CLASSIFIER, {}, 'logits'),
    'pre_logits': (dict(num_classes=0, representation_size=16), MODEL, {}, 'pooler_output'),
    'all_tokens': (dict(num_classes=0, global_pool=''), MODEL, dict(add_pooling_layer=False), 'last_hidden_state'),
}
FLAX_BASE = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0, norm_eps=1e-6)


def flax_pretrained(options, seed=0):
    """A VisionTransformer with random variables moved off their init, as a Pretrained (timm's keys, numpy)."""
    kwargs = {**FLAX_BASE, **options}
    model = VisionTransformer(**kwargs)
    x = input_images({'in_chans': 3, **kwargs}, seed)
    variables = jax.jit(model.init)(jax.random.key(seed), x)
    rng = np.random.default_rng(seed)
    variables = jax.tree.map(lambda a: a + 0.1 * rng.standard_normal(a.shape, np.float32), variables)
    state_dict = converters.to_torch(model, variables, example_inputs=(x,), as_numpy=True)
    return model, variables, x, Pretrained(kwargs=kwargs, state_dict=state_dict)


@pytest.mark.parametrize('name', EXPORTS)
def test_export_loads_into_transformers_exactly(name, tmp_path):
    options, architecture, load_options, field = EXPORTS[name]
    model, variables, x, pretrained = flax_pretrained(options)
    directory = write_hf_vit(tmp_path / 'exported', pretrained)
    assert is_hf_vit_dir(directory)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['exported']  # no temporary left beside it

    hf, info = getattr(transformers, architecture).from_pretrained(directory, output_loading_info=True,
                                                                   **load_options)
    assert not info['missing_keys'] and not info['unexpected_keys'] and not info['mismatched_keys'], info
    # the loaded state, written by transformers' own writer and read back: bit-exact with what we exported
    hf.save_pretrained(tmp_path / 'again')
    again = read_hf_vit(tmp_path / 'again')
    assert again.state_dict.keys() == pretrained.state_dict.keys()
    for key, value in pretrained.state_dict.items():
        np.testing.assert_array_equal(again.state_dict[key], value, err_msg=key)
    assert VisionTransformer(**again.kwargs) == model

    assert_close_outputs(jax.jit(model.apply)(variables, x), float64_reference(Output(hf.eval(), field))(nchw(x))
                         .detach(), TOLERANCE)
    assert_same_pretrained(read_hf_vit(directory), again)


def with_processor(directory, **entries):
    processor = dict(image_processor_type='ViTImageProcessor', do_resize=True, size={'height': 32, 'width': 32},
                     resample=2, do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=[0.5] * 3,
                     image_std=[0.5] * 3)
    processor.update(entries)
    (directory / 'preprocessor_config.json').write_text(json.dumps(processor))


def test_round_trips_are_exact(tmp_path):
    """read_hf_vit(write_hf_vit(p)) is p, weights, keywords, labels and preprocessing, for a directory of each
    class; and writing what was read gives transformers' files back, tensor for tensor."""
    for name in ('classifier', 'classifier_no_qkv_bias_tanh_gelu_non_square', 'model_pooler_two_channels',
                 'model_no_pooler'):
        source = tmp_path / name
        saved(name, source)
        pretrained = read_hf_vit(source)
        written = write_hf_vit(tmp_path / f'{name}_written', pretrained)
        assert_same_pretrained(read_hf_vit(written), pretrained)
        ours, theirs = load_file(str(written / 'model.safetensors')), load_file(str(source / 'model.safetensors'))
        assert ours.keys() == theirs.keys()
        for key in ours:
            np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)

    # labels and preprocessing ('squash' at crop_pct 1, 'center' at 0.5)
    pretrained = read_hf_vit(tmp_path / 'classifier')
    pretrained.preprocessing.update(label_names=tuple('abcde'), input_size=(3, 32, 32), interpolation='bicubic',
                                    crop_pct=1.0, crop_mode='squash', mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6))
    written = write_hf_vit(tmp_path / 'labelled', pretrained)
    assert_same_pretrained(read_hf_vit(written), pretrained)
    assert json.loads((written / 'config.json').read_text())['id2label'] == dict(zip('01234', 'abcde'))
    pretrained.preprocessing.update(crop_pct=0.5, crop_mode='center')
    written = write_hf_vit(tmp_path / 'labelled', pretrained, overwrite=True)
    assert_same_pretrained(read_hf_vit(written), pretrained)
    processor = json.loads((written / 'preprocessor_config.json').read_text())
    assert processor['size'] == {'shortest_edge': 64} and processor['crop_size'] == {'height': 32, 'width': 32}


def test_preprocessing_is_read_with_timms_names(tmp_path):
    saved('classifier', tmp_path)
    with_processor(tmp_path)
    assert read_hf_vit(tmp_path).preprocessing == dict(input_size=(3, 32, 32), interpolation='bilinear',
                                                       crop_pct=1.0, crop_mode='squash', mean=(0.5,) * 3,
                                                       std=(0.5,) * 3)
    # the shortest edge to 36, a center crop of 32: timm's floor(32 / crop_pct) gives 36 back
    with_processor(tmp_path, size={'shortest_edge': 36}, do_center_crop=True, crop_size={'height': 32, 'width': 32},
                   resample=3)
    preprocessing = read_hf_vit(tmp_path).preprocessing
    assert preprocessing['crop_mode'] == 'center' and preprocessing['interpolation'] == 'bicubic'
    assert math.floor(32 / preprocessing['crop_pct']) == 36
    # timm's 0.875 is written as the resize it gives (36 for 32), which reads back as 32 / 36
    pretrained = read_hf_vit(tmp_path)
    pretrained.preprocessing['crop_pct'] = 0.875
    assert read_hf_vit(write_hf_vit(tmp_path / 'out', pretrained)).preprocessing == preprocessing

    with_processor(tmp_path, size={'height': 48, 'width': 48})
    with pytest.raises(UnsupportedCheckpointError, match='48x48 images, the model takes 32x32'):
        read_hf_vit(tmp_path)
    with_processor(tmp_path, resample=7)
    with pytest.raises(UnsupportedCheckpointError, match='resample=7'):
        read_hf_vit(tmp_path)
    with_processor(tmp_path, do_rescale=False)
    with pytest.raises(UnsupportedCheckpointError, match='do_rescale'):
        read_hf_vit(tmp_path)


def test_shards_and_bfloat16_read_the_same(tmp_path):
    """A sharded model.safetensors (index + shards) reads as the single file; bfloat16 weights stay bfloat16 and
    round-trip bit-exact."""
    saved('classifier', tmp_path / 'single')
    tensors = load_file(str(tmp_path / 'single' / 'model.safetensors'))
    sharded = tmp_path / 'sharded'
    sharded.mkdir()
    (sharded / 'config.json').write_text((tmp_path / 'single' / 'config.json').read_text())
    weight_map = {key: f'model-0000{i % 2 + 1}-of-00002.safetensors' for i, key in enumerate(tensors)}
    for shard in set(weight_map.values()):
        save_file({key: value for key, value in tensors.items() if weight_map[key] == shard}, str(sharded / shard),
                  metadata={'format': 'pt'})
    (sharded / 'model.safetensors.index.json').write_text(json.dumps({'metadata': {}, 'weight_map': weight_map}))
    ours, theirs = read_hf_vit(sharded), read_hf_vit(tmp_path / 'single')
    ours.source = theirs.source
    assert_same_pretrained(ours, theirs)

    hf_model('classifier').to(torch.bfloat16).save_pretrained(tmp_path / 'bf16')
    pretrained = read_hf_vit(tmp_path / 'bf16')
    assert {str(value.dtype) for value in pretrained.state_dict.values()} == {'bfloat16'}
    assert_same_pretrained(read_hf_vit(write_hf_vit(tmp_path / 'bf16_written', pretrained)), pretrained)
    assert json.loads((tmp_path / 'bf16_written' / 'config.json').read_text())['dtype'] == 'bfloat16'


def test_pytorch_model_bin_reads_the_same(tmp_path):
    saved('classifier', tmp_path / 'safetensors')
    legacy = tmp_path / 'bin'
    legacy.mkdir()
    (legacy / 'config.json').write_text((tmp_path / 'safetensors' / 'config.json').read_text())
    tensors = load_file(str(tmp_path / 'safetensors' / 'model.safetensors'))
    torch.save({key: torch.from_numpy(value) for key, value in tensors.items()}, legacy / 'pytorch_model.bin')
    ours, theirs = read_hf_vit(legacy), read_hf_vit(tmp_path / 'safetensors')
    ours.source = theirs.source
    assert_same_pretrained(ours, theirs)


# refusals


def edit_weights(directory, edit):
    path = directory / 'model.safetensors'
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata={'format': 'pt'})


def edit_config(directory, **entries):
    path = directory / 'config.json'
    path.write_text(json.dumps({**json.loads(path.read_text()), **entries}))


@pytest.mark.parametrize('edit, message', [
    (lambda t: t.pop('vit.encoder.layer.1.attention.attention.key.bias'),
     r"missing 'vit\.encoder\.layer\.1\.attention\.attention\.key\.bias' \(expected shape \(32,\)\)"),
    (lambda t: t.update({'vit.layernorm.weight': np.zeros(31, np.float32)}),
     r"'vit\.layernorm\.weight' is shape \(31,\) float32, expected shape \(32,\)"),
    (lambda t: t.update({'vit.embeddings.mask_token': np.zeros((1, 1, 32), np.float32)}),
     r"unexpected 'vit\.embeddings\.mask_token' \(shape \(1, 1, 32\) float32\): the masked-image-modeling token"),
    (lambda t: t.update({'vit.pooler.dense.weight': np.zeros((32, 32), np.float32)}),
     r"unexpected 'vit\.pooler\.dense\.weight'.*builds no pooler"),
    (lambda t: t.update({'vit.encoder.layer.0.attention.attention.query.weight': np.zeros((32, 32), np.int32)}),
     'not floating point'),
])
def test_bad_weights_are_refused_by_name(tmp_path, edit, message):
    saved('classifier', tmp_path)
    edit_weights(tmp_path, edit)
    with pytest.raises(UnsupportedCheckpointError, match=message):
        read_hf_vit(tmp_path)


@pytest.mark.parametrize('entries, message', [
    (dict(hidden_size=30), 'hidden_size=30 is not divisible by num_attention_heads=4'),
    (dict(hidden_size='32'), "hidden_size='32' must be an integer"),
    (dict(hidden_act='quick_gelu'), "hidden_act='quick_gelu'"),
    (dict(hidden_act='gelu_fast'), "hidden_act='gelu_fast'"),
    (dict(layer_norm_eps=-1.0), 'layer_norm_eps=-1.0'),
    (dict(image_size=36), 'image_size=36 is not a multiple of patch_size=8'),
    (dict(qkv_bias='yes'), "qkv_bias='yes'"),
    (dict(head_dim=16), 'head_dim=16'),
    (dict(model_type='deit'), "model_type='deit'"),
    (dict(architectures=['ViTForMaskedImageModeling']), 'ViTForMaskedImageModeling'),
    (dict(id2label={'0': 'a', '2': 'b'}), 'id2label'),
])
def test_bad_configs_are_refused_by_name(tmp_path, entries, message):
    saved('classifier', tmp_path)
    edit_config(tmp_path, **entries)
    with pytest.raises(UnsupportedCheckpointError, match=message):
        read_hf_vit(tmp_path)


def test_broken_files_are_refused(tmp_path):
    saved('classifier', tmp_path)
    path = tmp_path / 'model.safetensors'
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UnsupportedCheckpointError, match='model.safetensors: not a readable safetensors file'):
        read_hf_vit(tmp_path)
    path.unlink()
    with pytest.raises(UnsupportedCheckpointError, match='no model.safetensors'):
        read_hf_vit(tmp_path)
    (tmp_path / 'config.json').write_text('{"model_type": "vit",')
    assert not is_hf_vit_dir(tmp_path)
    with pytest.raises(UnsupportedCheckpointError, match='config.json: not readable JSON'):
        read_hf_vit(tmp_path)
    assert not is_hf_vit_dir(tmp_path / 'absent')


@pytest.mark.parametrize('options, message', [
    (dict(reg_tokens=4), 'reg_tokens=4: HF ViT has no register tokens'),
    (dict(global_pool='avg'), "global_pool='avg'"),
    (dict(global_pool='map'), "global_pool='map'"),
    (dict(class_token=False, global_pool='avg'), 'class_token=False'),
    (dict(init_values=1e-5), 'init_values=1e-05: HF ViT has no LayerScale'),
    (dict(qk_norm=True), 'qk_norm=True'),
    (dict(no_embed_class=True), 'no_embed_class=True'),
    (dict(pre_norm=True), 'pre_norm=True'),
    (dict(fc_norm=True), 'fc_norm=True'),
    (dict(final_norm=False), 'final_norm=False'),
    (dict(representation_size=16), 'representation_size=16 with num_classes=1000'),
    (dict(global_pool='', num_classes=3), "global_pool='' with num_classes"),
])
def test_what_transformers_cannot_hold_is_refused_before_writing(tmp_path, options, message):
    kwargs = {**FLAX_BASE, **options}
    model = VisionTransformer(**kwargs)
    x = input_images({'in_chans': 3, **kwargs})
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    state_dict = converters.to_torch(model, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes),
                                     example_inputs=(x,), as_numpy=True)
    with pytest.raises(UnsupportedCheckpointError, match=message):
        write_hf_vit(tmp_path / 'out', Pretrained(kwargs=kwargs, state_dict=state_dict))
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary left


def test_writes_refuse_bad_state_dicts_and_existing_directories(tmp_path):
    _, _, _, pretrained = flax_pretrained(dict(num_classes=4))
    broken = dataclasses.replace(pretrained, state_dict={**pretrained.state_dict,
                                                         'blocks.0.attn.qkv.weight': np.zeros((96, 31), np.float32)})
    broken.state_dict.pop('head.bias')
    broken.state_dict['reg_token'] = np.zeros((1, 4, 32), np.float32)
    with pytest.raises(UnsupportedCheckpointError, match=r"missing 'head\.bias'.*unexpected 'reg_token'.*"
                                                         r"'blocks\.0\.attn\.qkv\.weight' is shape \(96, 31\)"):
        write_hf_vit(tmp_path / 'out', broken)
    partial = dataclasses.replace(pretrained, preprocessing={'mean': (0.5,) * 3})
    with pytest.raises(UnsupportedCheckpointError, match="preprocessing has \\['mean'\\] but not"):
        write_hf_vit(tmp_path / 'out', partial)
    assert list(tmp_path.iterdir()) == []

    (tmp_path / 'out').mkdir()
    (tmp_path / 'out' / 'stale.txt').write_text('old')
    with pytest.raises(FileExistsError, match='exists'):
        write_hf_vit(tmp_path / 'out', pretrained)
    write_hf_vit(tmp_path / 'out', pretrained, overwrite=True)
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['config.json', 'model.safetensors']
    assert sorted(p.name for p in tmp_path.iterdir()) == ['out']


def test_defaults_and_activations_are_the_libraries():
    """The defaults hf_vit assumes are ViTConfig's and VisionTransformer's; the GELU names it accepts are torch's
    two GELUs to float64 round-off, and the one it refuses ('gelu_fast') is not."""
    config = transformers.ViTConfig()
    assert {key: getattr(config, key) for key in hf_vit.HF_DEFAULTS if key != 'pooler_output_size'} == \
        {key: value for key, value in hf_vit.HF_DEFAULTS.items() if key != 'pooler_output_size'}
    fields = {f.name: f.default for f in dataclasses.fields(VisionTransformer)}
    assert {key: fields[key] for key in hf_vit.TIMM_DEFAULTS} == hf_vit.TIMM_DEFAULTS
    assert set(fields) - set(hf_vit.TIMM_DEFAULTS) == {*hf_vit.JAX_ONLY, 'parent', 'name'}

    from transformers.activations import ACT2FN

    x = torch.linspace(-8, 8, 4001, dtype=torch.float64)
    exact = {'gelu': torch.nn.functional.gelu(x), 'gelu_tanh': torch.nn.functional.gelu(x, approximate='tanh')}
    for name, ours in hf_vit.HF_ACTIVATIONS.items():
        np.testing.assert_allclose(ACT2FN[name](x).numpy(), exact[ours].numpy(), rtol=1e-14, atol=1e-15,
                                   err_msg=name)
    assert (ACT2FN['gelu_fast'](x) - exact['gelu_tanh']).abs().max().item() > 1e-13
