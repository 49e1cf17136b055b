"""converters.big_vision (issue 20): big_vision / vision_transformer `.npz` checkpoints both ways.

Randomly initialised timm VisionTransformers of several option combinations are written with `write_npz` in each
layout (AugReg names or big_vision's, scanned or not, under each prefix timm looks at); timm's own `_load_weights`
reads every file back into a fresh timm model equal to the original, bit for bit, and `read_npz` gives back the
same keywords and state dict, whose Flax model matches timm's float64 reference. Files written by hand in the test
(the oracle: vision_transformer's names and axes spelled out) read the same through timm and `read_npz`."""

import jax
import numpy as np
import pytest
import torch

timm = pytest.importorskip('timm')
from timm.models.vision_transformer import VisionTransformer as TimmVisionTransformer  # noqa: E402
from timm.models.vision_transformer import _load_weights  # noqa: E402

from tests.conftest import assert_close_outputs, float64_reference, images, nchw  # noqa: E402
from vit_flax import converters  # noqa: E402
from vit_flax.converters.big_vision import is_big_vision_npz, read_npz, write_npz  # noqa: E402
from vit_flax.converters.pretrained_form import Pretrained, UnsupportedCheckpointError  # noqa: E402
from vit_flax.pretrained_vit import VisionTransformer  # noqa: E402

BASE = dict(img_size=32, patch_size=8, in_chans=3, num_classes=10, embed_dim=32, depth=2, num_heads=4)
TOLERANCE = 2e-5

# name -> (timm keywords, write_npz options, read_npz hints for what the file cannot say)
CASES = {
    'augreg_class_token': ({}, dict(layout='augreg'), {}),
    'augreg_opt_target_no_head_gelu_tanh': (dict(num_classes=0, act_layer='gelu_tanh'),
                                            dict(layout='augreg', prefix='opt/target/'),
                                            dict(act_layer='gelu_tanh')),
    'siglip_map_head_params_img': (dict(class_token=False, global_pool='map'),
                                   dict(layout='big_vision', prefix='params/img/'), {}),
    'big_vision_class_token_scanned': (dict(no_embed_class=True, depth=3), dict(layout='big_vision', scanned=True),
                                       {}),
    'big_vision_gap_scanned_opt_target': (dict(class_token=False, global_pool='avg', fc_norm=False),
                                          dict(layout='big_vision', scanned=True, prefix='opt/target/'), {}),
    'big_vision_non_square_one_channel': (dict(img_size=(32, 24), patch_size=(8, 4), in_chans=1, mlp_ratio=2.0,
                                               no_embed_class=True),
                                          dict(layout='big_vision', prefix=''), dict(img_size=(32, 24))),
}


def timm_model(config, seed=0):
    """A timm VisionTransformer in eval mode with every parameter moved off its init (as in test_pretrained_vit)."""
    torch.manual_seed(seed)
    model = TimmVisionTransformer(**config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model


def numpy_state_dict(torch_model):
    return {key: value.detach().numpy().copy() for key, value in torch_model.state_dict().items()}


def timm_reads(path, config):
    """A fresh timm model of `config` with the file loaded by timm's own npz loader."""
    fresh = TimmVisionTransformer(**config).eval()
    _load_weights(fresh, str(path))
    return fresh


def assert_same_arrays(ours, theirs):
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert ours[key].dtype == value.dtype and ours[key].shape == value.shape, key
        np.testing.assert_array_equal(ours[key], value, err_msg=key)


def npz_arrays(path):
    with np.load(path, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


def assert_flax_matches_timm(pretrained, torch_model):
    """The Flax model `pretrained` describes, with its weights, against timm's float64 reference."""
    model = VisionTransformer(**pretrained.kwargs)
    height, width = np.broadcast_to(model.img_size, 2)
    x = images((2, height, width, model.in_chans))
    variables = converters.from_torch(model, pretrained.state_dict, example_inputs=(x,))
    reference = float64_reference(torch_model)(nchw(x)).detach()
    assert_close_outputs(jax.jit(model.apply)(variables, x), reference, TOLERANCE)


@pytest.mark.parametrize('name', CASES)
def test_written_file_reads_back_through_timm_and_read_npz(name, tmp_path):
    keywords, options, hints = CASES[name]
    config = {**BASE, **keywords}
    torch_model = timm_model(config)
    original = numpy_state_dict(torch_model)
    path = write_npz(tmp_path / 'vit.npz', Pretrained(kwargs=config, state_dict=original), **options)

    written = npz_arrays(path)
    assert is_big_vision_npz(written)
    prefix = options.get('prefix', {'augreg': '', 'big_vision': 'params/'}[options['layout']])
    assert all(key.startswith(prefix) for key in written)
    if options.get('scanned'):
        assert written[prefix + 'Transformer/encoderblock/LayerNorm_0/scale'].shape == (config['depth'], 32)

    # timm's own loader: the original weights, bit for bit, so the original outputs
    fresh = timm_reads(path, config)
    assert_same_arrays(numpy_state_dict(fresh), original)
    x = nchw(images((2, *np.broadcast_to(config['img_size'], 2), config['in_chans'])), torch.float32)
    with torch.no_grad():
        assert torch.equal(fresh(x), torch_model(x))

    # ours: the same keywords and weights, and a Flax model with timm's outputs
    pretrained = read_npz(path, **hints)
    assert {key: pretrained.kwargs[key] for key in config} == config
    assert_same_arrays(pretrained.state_dict, original)
    assert pretrained.preprocessing['input_size'] == (config['in_chans'], *np.broadcast_to(config['img_size'], 2))
    assert_flax_matches_timm(pretrained, torch_model)

    # and round again: the file written from what was read is the same file
    again = write_npz(tmp_path / 'again.npz', pretrained, **options)
    assert_same_arrays(npz_arrays(again), written)


def test_without_hints_the_reader_falls_back_to_what_timm_assumes(tmp_path):
    """What the file cannot say (act_layer, a non-square grid) comes back as timm's reading of these checkpoints,
    or is refused where there is no such reading."""
    keywords, options, _ = CASES['augreg_opt_target_no_head_gelu_tanh']
    config = {**BASE, **keywords}
    path = write_npz(tmp_path / 'tanh.npz', Pretrained(config, numpy_state_dict(timm_model(config))), **options)
    assert read_npz(path).kwargs['act_layer'] == 'gelu'

    keywords, options, _ = CASES['big_vision_non_square_one_channel']
    config = {**BASE, **keywords}
    path = write_npz(tmp_path / 'wide.npz', Pretrained(config, numpy_state_dict(timm_model(config))), **options)
    with pytest.raises(UnsupportedCheckpointError, match=r'24 rows is no square grid.*img_size='):
        read_npz(path)


def by_hand(state_dict, depth, heads, names='augreg', prefix=''):
    """The oracle: a timm state dict spelled out in vision_transformer's (or big_vision's) names and Flax axes,
    without the library's tables."""
    dim = state_dict['patch_embed.proj.weight'].shape[0]
    attention, norm2, mlp = (('MultiHeadDotProductAttention_1', 'LayerNorm_2', 'MlpBlock_3') if names == 'augreg'
                             else ('MultiHeadDotProductAttention_0', 'LayerNorm_1', 'MlpBlock_0'))
    w = {
        'embedding/kernel': state_dict['patch_embed.proj.weight'].transpose(2, 3, 1, 0),  # OIHW -> HWIO
        'embedding/bias': state_dict['patch_embed.proj.bias'],
        'Transformer/encoder_norm/scale': state_dict['norm.weight'],
        'Transformer/encoder_norm/bias': state_dict['norm.bias'],
        'head/kernel': state_dict['head.weight'].T,
        'head/bias': state_dict['head.bias'],
    }
    if 'cls_token' in state_dict:
        w['cls'] = state_dict['cls_token']
    w['Transformer/posembed_input/pos_embedding' if names == 'augreg' else 'pos_embedding'] = state_dict['pos_embed']
    for i in range(depth):
        t, b = f'blocks.{i}.', f'Transformer/encoderblock_{i}/'
        weights = np.split(state_dict[t + 'attn.qkv.weight'], 3)  # each (heads * head_dim, dim)
        biases = np.split(state_dict[t + 'attn.qkv.bias'], 3)
        for part, weight, bias in zip(('query', 'key', 'value'), weights, biases):
            w[f'{b}{attention}/{part}/kernel'] = weight.T.reshape(dim, heads, dim // heads)
            w[f'{b}{attention}/{part}/bias'] = bias.reshape(heads, dim // heads)
        w[f'{b}{attention}/out/kernel'] = state_dict[t + 'attn.proj.weight'].T.reshape(heads, dim // heads, dim)
        w[f'{b}{attention}/out/bias'] = state_dict[t + 'attn.proj.bias']
        for norm, flax_norm in (('norm1', 'LayerNorm_0'), ('norm2', norm2)):
            w[f'{b}{flax_norm}/scale'] = state_dict[f'{t}{norm}.weight']
            w[f'{b}{flax_norm}/bias'] = state_dict[f'{t}{norm}.bias']
        for fc, dense in (('fc1', 'Dense_0'), ('fc2', 'Dense_1')):
            w[f'{b}{mlp}/{dense}/kernel'] = state_dict[f'{t}mlp.{fc}.weight'].T
            w[f'{b}{mlp}/{dense}/bias'] = state_dict[f'{t}mlp.{fc}.bias']
    return {prefix + key: np.ascontiguousarray(value) for key, value in w.items()}


@pytest.mark.parametrize('names, keywords, prefix', [
    ('augreg', {}, ''),
    ('big_vision', dict(no_embed_class=True, num_heads=2, mlp_ratio=3.0), 'params/'),
], ids=['augreg', 'big_vision'])
def test_file_written_by_hand_reads_the_same_through_timm_and_read_npz(names, keywords, prefix, tmp_path):
    config = {**BASE, **keywords}
    torch_model = timm_model(config, seed=1)
    original = numpy_state_dict(torch_model)
    path = tmp_path / 'by_hand.npz'
    np.savez(path, **by_hand(original, config['depth'], config['num_heads'], names, prefix))

    assert_same_arrays(numpy_state_dict(timm_reads(path, config)), original)
    pretrained = read_npz(path)
    assert_same_arrays(pretrained.state_dict, original)
    assert {key: pretrained.kwargs[key] for key in config} == config
    assert pretrained.kwargs['global_pool'] == 'token' and pretrained.kwargs['act_layer'] == 'gelu'
    assert pretrained.preprocessing == dict(input_size=(3, 32, 32), interpolation='bilinear', mean=(0.5,) * 3,
                                            std=(0.5,) * 3, num_classes=10)


def test_pre_logits_read_into_representation_size(tmp_path):
    """An AugReg ImageNet-21k style file with `pre_logits`: the model gets representation_size, and its output is
    head(tanh(pooled @ W + b)) on timm's pooled features (timm itself dropped the layer, so numpy is the judge)."""
    torch_model = timm_model(BASE, seed=2)
    original = numpy_state_dict(torch_model)
    rng = np.random.default_rng(3)
    w = by_hand(original, BASE['depth'], BASE['num_heads'])
    w['pre_logits/kernel'] = rng.standard_normal((32, 24), dtype=np.float32) / 4
    w['pre_logits/bias'] = rng.standard_normal(24, dtype=np.float32) / 4
    w['head/kernel'] = rng.standard_normal((24, 10), dtype=np.float32) / 4
    path = tmp_path / 'pre_logits.npz'
    np.savez(path, **w)

    pretrained = read_npz(path)
    assert pretrained.kwargs['representation_size'] == 24
    np.testing.assert_array_equal(pretrained.state_dict['pre_logits.fc.weight'], w['pre_logits/kernel'].T)

    model = VisionTransformer(**pretrained.kwargs)
    x = images((2, 32, 32, 3))
    variables = converters.from_torch(model, pretrained.state_dict, example_inputs=(x,))
    exact = float64_reference(torch_model)
    with torch.no_grad():
        pooled = exact.forward_head(exact.forward_features(nchw(x)), pre_logits=True).numpy()
    features = np.tanh(pooled @ w['pre_logits/kernel'].astype(np.float64) + w['pre_logits/bias'])
    expected = features @ w['head/kernel'].astype(np.float64) + w['head/bias']
    assert_close_outputs(jax.jit(model.apply)(variables, x), expected, TOLERANCE)

    # written back: the augreg layout holds pre_logits, bit for bit
    again = write_npz(tmp_path / 'again.npz', pretrained)
    assert_same_arrays(npz_arrays(again), w)


@pytest.fixture
def augreg_file(tmp_path):
    path = tmp_path / 'augreg.npz'
    np.savez(path, **by_hand(numpy_state_dict(timm_model(BASE)), BASE['depth'], BASE['num_heads']))
    return path


def edited(path, change):
    """A copy of the npz at `path` with `change` applied to its dict of arrays."""
    arrays = npz_arrays(path)
    change(arrays)
    new = path.with_name('edited.npz')
    np.savez(new, **arrays)
    return new


def test_truncated_file_is_refused_naming_it(augreg_file):
    data = augreg_file.read_bytes()
    augreg_file.write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match='augreg.npz'):
        read_npz(augreg_file)


@pytest.mark.parametrize('change, message', [
    (lambda w: w.update({'Transformer/encoderblock_0/extra/kernel': np.zeros((32, 5), np.float32)}),
     r'Transformer/encoderblock_0/extra/kernel \(shape \(32, 5\) float32\): no such parameter'),
    (lambda w: w.update({'Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel': np.zeros((32, 100), np.float32)}),
     r'Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel has shape \(32, 100\) float32, expected shape \(32, 128\)'),
    (lambda w: w.update({'conv_root/kernel': np.zeros((7, 7, 3, 64), np.float32)}),
     r'conv_root/kernel \(shape \(7, 7, 3, 64\) float32\): a hybrid ResNet stem'),
    (lambda w: w.pop('Transformer/encoderblock_1/LayerNorm_2/bias'),
     'Transformer/encoderblock_1/LayerNorm_2/bias: missing'),
    (lambda w: w.update({'head/bias': w['head/bias'].astype(np.int32)}), 'head/bias has shape .* int32: not floating'),
], ids=['unknown_key', 'misshaped_key', 'hybrid', 'missing_key', 'integer'])
def test_what_the_model_cannot_hold_is_refused_with_key_and_shape(augreg_file, change, message):
    with pytest.raises(UnsupportedCheckpointError, match=message):
        read_npz(edited(augreg_file, change))


@pytest.mark.parametrize('hints, message', [
    (dict(num_heads=2), r'MultiHeadDotProductAttention_1/query/kernel has shape \(32, 4, 8\) float32, expected '
                        r'shape \(32, 2, 16\)'),
    (dict(global_pool='map'), 'MAPHead_0/probe: missing'),
    (dict(img_size=48), r'pos_embedding has shape \(1, 17, 32\) float32, expected shape \(1, 37, 32\)'),
    (dict(class_token=False, global_pool='avg'), r"cls \(shape \(1, 1, 32\) float32\): no such parameter"),
    (dict(init_values=1e-5), 'LayerScale'),
    (dict(norm_eps=1e-5), 'norm_eps'),
], ids=['num_heads', 'global_pool', 'img_size', 'class_token', 'init_values', 'norm_eps'])
def test_a_hint_that_contradicts_the_file_is_refused(augreg_file, hints, message):
    with pytest.raises(UnsupportedCheckpointError, match=message):
        read_npz(augreg_file, **hints)


def test_hints_the_file_cannot_contradict_are_taken(augreg_file):
    kwargs = read_npz(augreg_file, global_pool='avg', act_layer='gelu_tanh', num_heads=4, mlp_ratio=4).kwargs
    assert (kwargs['global_pool'], kwargs['act_layer'], kwargs['fc_norm']) == ('avg', 'gelu_tanh', False)
    with pytest.raises(TypeError, match='scan_layers'):
        read_npz(augreg_file, scan_layers=True)


@pytest.mark.parametrize('keywords, options, message', [
    (dict(init_values=1e-5), {}, r'init_values=1e-05 \(LayerScale\)'),
    (dict(qk_norm=True), {}, 'qk_norm'),
    (dict(reg_tokens=2), {}, 'reg_tokens=2'),
    (dict(class_token=False, global_pool='avg'), {}, "fc_norm=None with global_pool='avg'"),
    (dict(pre_norm=True), {}, 'pre_norm'),
    (dict(in_chans=4), {}, 'in_chans=4'),
    ({}, dict(scanned=True), 'scanned=True'),
    ({}, dict(prefix='params/'), "prefix='params/'"),
], ids=['layer_scale', 'qk_norm', 'registers', 'fc_norm', 'pre_norm', 'in_chans', 'augreg_scanned',
        'augreg_params_prefix'])
def test_writing_what_the_format_cannot_hold_is_refused_and_writes_nothing(tmp_path, keywords, options, message):
    config = {**BASE, **keywords}
    pretrained = Pretrained(config, numpy_state_dict(timm_model(config)))
    with pytest.raises(UnsupportedCheckpointError, match=message):
        write_npz(tmp_path / 'refused.npz', pretrained, **options)
    assert list(tmp_path.iterdir()) == []

    # over an existing file: it keeps its content
    existing = tmp_path / 'existing.npz'
    existing.write_bytes(b'old')
    with pytest.raises(UnsupportedCheckpointError):
        write_npz(existing, pretrained, **options)
    assert existing.read_bytes() == b'old' and list(tmp_path.iterdir()) == [existing]


def test_writing_a_state_dict_that_does_not_fit_its_keywords_is_refused(tmp_path):
    state_dict = numpy_state_dict(timm_model(BASE))
    state_dict['blocks.0.ls1.gamma'] = np.ones(32, np.float32)
    del state_dict['norm.bias']
    message = r'blocks\.0\.ls1\.gamma \(shape \(32,\) float32\): not in the model.*\n  norm\.bias: missing'
    with pytest.raises(UnsupportedCheckpointError, match=message):
        write_npz(tmp_path / 'refused.npz', Pretrained(BASE, state_dict))
    assert not (tmp_path / 'refused.npz').exists()


def test_two_tower_file_and_scanned_leaves(tmp_path):
    """A SigLIP-like file: the text tower beside `params/img/` is left out (and said so); a scanned leaf without the
    layer axis is refused by its own name and shape."""
    keywords, _, _ = CASES['siglip_map_head_params_img']
    config = {**BASE, **keywords}
    original = numpy_state_dict(timm_model(config))
    path = write_npz(tmp_path / 'siglip.npz', Pretrained(config, original), layout='big_vision', scanned=True,
                     prefix='params/img/')
    arrays = npz_arrays(path)
    arrays.update({'params/txt/Embed_0/embedding': np.zeros((7, 32), np.float32), 'params/t': np.ones(1, np.float32)})
    np.savez(path, **arrays)
    pretrained = read_npz(path)
    assert_same_arrays(pretrained.state_dict, original)
    assert 'scanned' in pretrained.source and 'keys outside it left out: 2' in pretrained.source

    arrays['params/img/Transformer/encoderblock/LayerNorm_1/bias'] = np.zeros((3, 32), np.float32)
    np.savez(path, **arrays)
    with pytest.raises(UnsupportedCheckpointError,
                       match=r'Transformer/encoderblock/LayerNorm_1/bias has shape \(3, 32\) float32; a scanned leaf '
                             r'needs a leading layer axis of depth 2'):
        read_npz(path)


def test_layout_detection_from_key_names():
    assert is_big_vision_npz(['params/img/embedding/kernel', 'params/img/Transformer/encoder_norm/scale', 'params/t'])
    assert is_big_vision_npz(['opt/target/embedding/kernel', 'opt/target/Transformer/encoder_norm/scale'])
    assert not is_big_vision_npz(['patch_embed.proj.weight', 'norm.weight'])
    assert not is_big_vision_npz(['embedding/kernel', 'params/Transformer/encoder_norm/scale'])
