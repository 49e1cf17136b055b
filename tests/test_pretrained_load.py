"""vit_flax.pretrained against timm's own files (issue 20): randomly initialised timm ViTs of each checkpoint family,
saved by timm's code (its hub directory writer `save_for_hf`, or a state dict saved with torch / safetensors), load
through `pretrained.load` bit-exact and give timm's outputs; our timm export loads back into timm by
`timm.create_model('local-dir:...')` with the same outputs; hub names resolve through huggingface_hub's cache offline;
the fine-tuning overrides match timm's own (a new head, a resampled position embedding); bad files are refused by key.

The big_vision and Hugging Face formats have their own files (test_pretrained_big_vision.py, test_pretrained_hf.py);
the model itself runs the registry-driven parity suite against timm (parity/pretrained_vit.py)."""

import json

import jax
import numpy as np
import pytest
import torch

timm = pytest.importorskip('timm')
import safetensors.torch  # noqa: E402
from timm.models._hub import save_for_hf  # noqa: E402

from tests.conftest import (  # noqa: E402
    assert_close_outputs, assert_matches_float64_reference, float64_reference, images, nchw, offline_hub_repo)
from vit_flax import converters, pretrained  # noqa: E402
from vit_flax.converters import timm as timm_files  # noqa: E402
from vit_flax.converters.pretrained_form import UnsupportedCheckpointError  # noqa: E402

SMALL = dict(img_size=32, patch_size=8, depth=2, num_classes=5)
# one architecture per family issue 20 names (tags such as augreg, orig, sam, dino, mae are weights of these), small,
# each at its own width, patch size and resolution (square and not)
FAMILIES = {
    'vit_augreg': ('vit_tiny_patch16_224', dict(embed_dim=48, num_heads=3)),
    'deit': ('deit_tiny_patch16_224', dict(embed_dim=24, num_heads=2, img_size=48, patch_size=16)),
    'deit3': ('deit3_small_patch16_224', dict(embed_dim=48, num_heads=3, img_size=(24, 40), patch_size=(8, 4))),
    'registers': ('vit_medium_patch16_reg4_gap_256', dict(embed_dim=64, num_heads=4, depth=3)),
    'siglip': ('vit_base_patch16_siglip_224', dict(embed_dim=64, num_heads=4, img_size=28, patch_size=14)),
    'siglip_gelu_tanh': ('vit_so400m_patch16_siglip_256', dict(embed_dim=72, num_heads=4, num_classes=0)),
    'clip': ('vit_base_patch16_clip_224', dict(embed_dim=32, num_heads=2, img_size=16, patch_size=4)),
}
TOLERANCE = 2e-5


def timm_vit(arch, seed=0, **overrides):
    """timm's model of `arch`, small, in eval mode, every parameter moved off its init."""
    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False, **{**SMALL, **FAMILIES_BY_ARCH.get(arch, {}), **overrides})
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model.eval()


FAMILIES_BY_ARCH = {arch: sizes for arch, sizes in FAMILIES.values()}


def assert_same_weights(variables, model, torch_model):
    state_dict = converters.to_torch(model, variables, as_numpy=True)
    expected = torch_model.state_dict()
    assert state_dict.keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_array_equal(state_dict[key], value.numpy(), err_msg=key)


@pytest.mark.parametrize('family', FAMILIES)
def test_a_timm_hub_directory_loads_exactly_and_exports_back(tmp_path, family):
    """timm's hub directory of each family loads bit-exact, with timm's outputs and gradients (its float64
    reference); our timm export loads back into timm, equal."""
    arch, sizes = FAMILIES[family]
    torch_model = timm_vit(arch)
    save_for_hf(torch_model, tmp_path / 'hub', safe_serialization=True)

    model, variables = pretrained.load(tmp_path / 'hub')
    assert_same_weights(variables, model, torch_model)
    x = images((2, *np.broadcast_to(sizes.get('img_size', SMALL['img_size']), 2), 3))
    assert_matches_float64_reference(model, variables, torch_model, x, TOLERANCE)

    out = pretrained.export(model, variables, tmp_path / 'export', format='timm', arch=arch)
    reloaded = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    for key, value in torch_model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key
    with torch.no_grad():
        assert torch.equal(reloaded(nchw(x, torch.float32)), torch_model(nchw(x, torch.float32)))
    assert pretrained.read(out).kwargs == pretrained.read(tmp_path / 'hub').kwargs


def test_bare_state_dicts_load_with_an_architecture_name(tmp_path):
    """A state dict alone (as DeiT's and DINO's repositories publish them; a {'model': ...} wrapper and DDP's
    `module.` prefix included) names no architecture: `arch=` gives what the weights cannot say (the heads), or
    `num_heads=` alone. A full-width, full-depth DeiT-Tiny without a head, at 32 pixels."""
    torch_model = timm_vit('deit_tiny_patch16_224', embed_dim=192, num_heads=3, depth=12, num_classes=0, img_size=32,
                           patch_size=16)
    state_dict = torch_model.state_dict()
    files = {'.safetensors': tmp_path / 'weights.safetensors', '.pth': tmp_path / 'weights.pth',
             '.bin': tmp_path / 'pytorch_model.bin'}
    safetensors.torch.save_file(state_dict, files['.safetensors'])
    torch.save({'model': {f'module.{key}': value for key, value in state_dict.items()}, 'epoch': 3}, files['.pth'])
    torch.save(state_dict, files['.bin'])

    x = images((2, 32, 32, 3), seed=1)
    expected = float64_reference(torch_model)(nchw(x)).detach()
    for path in files.values():
        with pytest.raises(UnsupportedCheckpointError, match='number of heads'):
            pretrained.load(path)
        model, variables = pretrained.load(path, arch='deit_tiny_patch16_224')
        assert (model.num_classes, model.img_size, model.depth) == (0, (32, 32), 12)
        assert_same_weights(variables, model, torch_model)
        assert_close_outputs(jax.jit(model.apply)(variables, x), expected, TOLERANCE)
        assert pretrained.load(path, num_heads=3)[0] == model


def test_a_hub_name_resolves_through_the_huggingface_cache_offline(tmp_path, monkeypatch):
    """'timm/<arch>.<tag>' is a hub repository: snapshot_download finds it in HF's cache with HF_HUB_OFFLINE=1 (this
    machine has no network), and a name not in the cache is refused with what was tried."""
    torch_model = timm_vit('vit_tiny_patch16_224')
    repo = 'timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k'
    offline_hub_repo(monkeypatch, tmp_path / 'hub_cache', repo, torch_model)

    model, variables = pretrained.load(repo)
    assert_same_weights(variables, model, torch_model)
    config = pretrained.load_config(f'hf-hub:{repo}')
    assert config['architecture'] == 'vit_tiny_patch16_224' and config['mean'] == (0.5, 0.5, 0.5)
    with pytest.raises(FileNotFoundError, match='timm/vit_small_patch16_224.dino'):
        pretrained.load('timm/vit_small_patch16_224.dino')


def test_overrides_are_timms_new_head_and_resampled_position_embedding(tmp_path):
    """load(..., img_size=48) equals timm's create_model(..., pretrained=True, img_size=48) (its checkpoint filter
    resamples bicubically with antialiasing); num_classes replaces the head and keeps every other weight."""
    torch_model = timm_vit('vit_medium_patch16_reg4_gap_256')
    save_for_hf(torch_model, tmp_path / 'hub', safe_serialization=True)

    bigger_torch = timm.create_model(f'local-dir:{tmp_path / "hub"}', pretrained=True, img_size=48).eval()
    bigger, variables = pretrained.load(tmp_path / 'hub', img_size=48)
    x = images((2, 48, 48, 3))
    np.testing.assert_allclose(variables['params']['pos_embed'], bigger_torch.pos_embed.detach().numpy(), atol=1e-6)
    assert_close_outputs(bigger.apply(variables, x), float64_reference(bigger_torch)(nchw(x)).detach(), TOLERANCE)
    assert pretrained.load_config(tmp_path / 'hub')['input_size'] == (3, 32, 32)

    from timm.layers import resample_abs_pos_embed

    source = pretrained.read(tmp_path / 'hub').state_dict['pos_embed']
    for resample, antialias in (('bicubic', False), ('timm', True)):
        _, resampled = pretrained.load(tmp_path / 'hub', img_size=(48, 64), resample=resample)
        theirs = resample_abs_pos_embed(torch.from_numpy(source), [6, 8], [4, 4], num_prefix_tokens=0,
                                        antialias=antialias)
        np.testing.assert_allclose(resampled['params']['pos_embed'], theirs.numpy(), atol=1e-6)

    model, fine_tune = pretrained.load(tmp_path / 'hub', num_classes=3, rng=jax.random.key(1))
    original = converters.to_torch(*pretrained.load(tmp_path / 'hub'), as_numpy=True)
    new = converters.to_torch(model, fine_tune, as_numpy=True)
    assert new['head.weight'].shape == (3, 64) and not new['head.bias'].any()
    assert 0.01 < new['head.weight'].std() < 0.03  # timm's truncated normal, std 0.02
    assert {key for key in new if not np.array_equal(new[key], original.get(key))} == {'head.weight', 'head.bias'}
    headless, variables = pretrained.load(tmp_path / 'hub', num_classes=0)
    assert 'head' not in variables['params'] and headless.apply(variables, images((1, 32, 32, 3))).shape == (1, 64)


def test_big_vision_resampling_is_scipys_zoom():
    from scipy import ndimage

    from vit_flax.pretrained_vit import resample_posemb_big_vision

    posemb = np.random.default_rng(0).standard_normal((1, 1 + 16, 8))
    for new in [(6, 6), (3, 3), (1, 1), (5, 7)]:
        ours = resample_posemb_big_vision(posemb, new, num_prefix_tokens=1)
        zoomed = ndimage.zoom(posemb[0, 1:].reshape(4, 4, 8), (new[0] / 4, new[1] / 4, 1), order=1)
        np.testing.assert_array_equal(ours[:, :1], posemb[:, :1])
        np.testing.assert_allclose(ours[0, 1:], zoomed.reshape(-1, 8), rtol=0, atol=1e-12)


def test_the_architecture_table_reads_timms_models():
    """A sample of converters/timm_architectures.json against timm's own models built now (the whole table is
    regenerated and compared in make test-slow)."""
    from parity.timm_architectures import _keywords

    for arch in ['vit_base_patch16_224', 'deit3_large_patch16_384', 'vit_so400m_patch14_siglip_224',
                 'vit_medium_patch16_reg4_gap_256', 'vit_large_patch14_clip_224']:
        with torch.device('meta'):
            model = timm.create_model(arch, pretrained=False)
        expected = {key: tuple(value) if isinstance(value, list) else value for key, value in _keywords(model).items()}
        assert timm_files.architecture_keywords(arch) == expected, arch


@pytest.mark.slow
def test_the_architecture_table_is_current():
    from parity.timm_architectures import TABLE, text

    assert TABLE.read_text() == text(), 'regenerate with python -m parity.timm_architectures --write'


@pytest.mark.slow
def test_every_supported_architecture_is_read_back_from_its_shapes():
    """For each architecture timm 1.0.31 builds as a VisionTransformer this family holds: its state dict's shapes
    (meta tensors: no memory) with the architecture's name give its keywords; an unsupported one is refused by name."""
    table = timm_files.architectures()
    for arch, keywords in table['architectures'].items():
        with torch.device('meta'):
            state_dict = timm.create_model(arch, pretrained=False).state_dict()
        shapes = {key: np.broadcast_to(np.zeros((), np.float32), tuple(value.shape)) for key, value in
                  state_dict.items()}
        known = timm_files.architecture_keywords(arch)
        default_img_size = known.pop('img_size')
        known.pop('num_classes')
        found = timm_files.keywords_from_state_dict(shapes, known, arch, default_img_size)
        expected = {key: tuple(value) if isinstance(value, list) else value for key, value in keywords.items()}
        assert {**found, 'representation_size': None} == {**expected, 'representation_size': None}, arch
    for arch, why in table['unsupported'].items():
        with pytest.raises(UnsupportedCheckpointError, match=why.split(' (')[0][:30]):
            timm_files.architecture_keywords(arch)


def test_what_cannot_be_held_is_refused_by_key(tmp_path):
    torch_model = timm_vit('vit_tiny_patch16_224')
    state_dict = {key: value.numpy() for key, value in torch_model.state_dict().items()}

    def saved(name, tensors):
        path = tmp_path / name
        safetensors.torch.save_file({key: torch.from_numpy(np.ascontiguousarray(v)) for key, v in tensors.items()},
                                    path)
        return path

    arch = dict(num_heads=3)  # the small model's sizes are no timm architecture's: the heads say the rest
    with pytest.raises(UnsupportedCheckpointError, match='timm Eva, not a VisionTransformer'):
        pretrained.load(saved('a.safetensors', state_dict), arch='vit_base_patch16_rope_224')
    with pytest.raises(UnsupportedCheckpointError, match="unknown timm architecture 'vit_nonesuch'"):
        pretrained.load(saved('b.safetensors', state_dict), arch='vit_nonesuch')
    with pytest.raises(UnsupportedCheckpointError, match='dist_token.*distilled DeiT'):
        pretrained.load(saved('c.safetensors', {**state_dict, 'dist_token': np.zeros((1, 1, 48), np.float32)}),
                        **arch)
    with pytest.raises(converters.StateDictMismatchError, match='unexpected key blocks.0.attn.extra'):
        pretrained.load(saved('d.safetensors', {**state_dict, 'blocks.0.attn.extra': np.zeros(3, np.float32)}),
                        **arch)
    missing = {key: value for key, value in state_dict.items() if key != 'blocks.1.mlp.fc2.bias'}
    with pytest.raises(converters.StateDictMismatchError, match='missing key blocks.1.mlp.fc2.bias'):
        pretrained.load(saved('e.safetensors', missing), **arch)
    with pytest.raises(UnsupportedCheckpointError, match=r'pos_embed \(shape \(1, 7, 48\).*no square grid'):
        pretrained.load(saved('f.safetensors', {**state_dict, 'pos_embed': np.zeros((1, 7, 48), np.float32)}),
                        **arch)
    with pytest.raises(UnsupportedCheckpointError, match="the weights say embed_dim=48 but .* embed_dim=192"):
        pretrained.load(saved('g.safetensors', state_dict), arch='vit_tiny_patch16_224')
    truncated = tmp_path / 'h.safetensors'
    truncated.write_bytes(saved('h0.safetensors', state_dict).read_bytes()[:5000])
    with pytest.raises(ValueError, match='could not read weights from .*h.safetensors'):
        pretrained.load(truncated, **arch)
    with pytest.raises(FileNotFoundError, match='no checkpoint file or directory'):
        pretrained.load(tmp_path / 'nothing.pth')


def test_exports_that_cannot_hold_the_model_are_refused_and_write_nothing(tmp_path):
    torch_model = timm_vit('vit_tiny_patch16_224')
    save_for_hf(torch_model, tmp_path / 'hub', safe_serialization=True)
    model, variables = pretrained.load(tmp_path / 'hub')
    with pytest.raises(UnsupportedCheckpointError, match='vit_pytorch.vit.ViT cannot hold'):
        pretrained.export(model, variables, tmp_path / 'out.safetensors', format='vit-pytorch')
    hf_eps = model.clone(norm_eps=1e-12)
    with pytest.raises(UnsupportedCheckpointError, match='norm_eps=1e-12: no timm ViT architecture'):
        pretrained.export(hf_eps, variables, tmp_path / 'timm_out', format='timm')
    with pytest.raises(FileExistsError, match='overwrite'):
        pretrained.export(model, variables, tmp_path / 'hub', format='timm')
    assert sorted(path.name for path in tmp_path.iterdir()) == ['hub']
    assert json.loads((tmp_path / 'hub' / 'config.json').read_text())['architecture'] == 'vit_tiny_patch16_224'


def test_every_format_goes_through_load_and_export(tmp_path):
    """One model exported to each format by `pretrained.export` and read back by `pretrained.load`, which detects
    the format: the same weights every time; transformers and timm's npz loader read our files to the same outputs."""
    import transformers
    from timm.models.vision_transformer import _load_weights

    torch_model = timm_vit('vit_tiny_patch16_224', num_classes=4)
    save_for_hf(torch_model, tmp_path / 'hub', safe_serialization=True)
    model, variables = pretrained.load(tmp_path / 'hub')
    x = images((2, 32, 32, 3))
    with torch.no_grad():
        expected = torch_model(nchw(x, torch.float32))

    hf_dir = pretrained.export(model, variables, tmp_path / 'hf', format='hf')
    npz = pretrained.export(model, variables, tmp_path / 'vit.npz', format='npz')
    for path in (hf_dir, npz):
        again_model, again = pretrained.load(path)
        assert again_model.num_classes == 4
        assert_same_weights(again, again_model, torch_model)
    hf_model = transformers.ViTForImageClassification.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf_model(nchw(x, torch.float32)).logits, expected, rtol=0, atol=2e-5)
    from_npz = timm.create_model('vit_tiny_patch16_224', pretrained=False, **{**SMALL, 'num_classes': 4},
                                 embed_dim=48, num_heads=3).eval()
    _load_weights(from_npz, str(npz))
    with torch.no_grad():
        assert torch.equal(from_npz(nchw(x, torch.float32)), expected)


def test_hints_cannot_contradict_the_config(tmp_path):
    save_for_hf(timm_vit('vit_tiny_patch16_224'), tmp_path / 'hub', safe_serialization=True)
    with pytest.raises(UnsupportedCheckpointError, match='its config says num_heads=3, not 4'):
        pretrained.read(tmp_path / 'hub', num_heads=4)
    assert pretrained.read(tmp_path / 'hub', num_heads=3).kwargs['num_heads'] == 3
