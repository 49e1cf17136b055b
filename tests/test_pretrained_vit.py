"""vit_flax.pretrained_vit beyond the registry-driven parity suite (tests/test_parity.py runs its configurations,
parity/pretrained_vit.py, against timm both ways with gradients): the JAX-only options (layer scan, remat, fused
attention) against timm, the parameter tree, resample_abs_pos_embed against timm's, and the refusals."""

import jax
import numpy as np
import pytest
import torch

timm = pytest.importorskip('timm')
from timm.models.vision_transformer import VisionTransformer as TimmVisionTransformer  # noqa: E402

import parity  # noqa: E402
from tests.conftest import (  # noqa: E402
    assert_close_outputs,
    assert_matches_float64_reference,
    float64_reference,
    images,
    nchw,
    randomised_torch_model,
)
from vit_flax import converters  # noqa: E402
from vit_flax.pretrained_vit import VisionTransformer, resample_abs_pos_embed  # noqa: E402

ENTRY = parity.BY_NAME['pretrained_vit.VisionTransformer']
BASE = dict(img_size=32, patch_size=8, in_chans=3, num_classes=10, embed_dim=32, depth=2, num_heads=4)
LAYER_SCALE_QK_NORM = dict(BASE, init_values=1e-5, qk_norm=True, depth=3)
MAP_HEAD = dict(BASE, class_token=False, global_pool='map', pre_norm=True)
TOLERANCE = 2e-5


def build(config, seed=0, **flax_options):
    torch_model = randomised_torch_model(ENTRY, config, seed)
    model = VisionTransformer(**config, **flax_options)
    x = images((2, *np.broadcast_to(config['img_size'], 2), 3), seed)
    variables = converters.from_torch(model, torch_model.state_dict(), example_inputs=(x,))
    return model, variables, torch_model, x


@pytest.mark.parametrize('config, flax_options', [
    (LAYER_SCALE_QK_NORM, dict(scan_layers=True)),
    (LAYER_SCALE_QK_NORM, dict(scan_layers=True, remat_policy='dots_saveable')),
    (LAYER_SCALE_QK_NORM, dict(remat_policy='nothing_saveable')),
    (MAP_HEAD, dict(attention_impl='xla')),  # the blocks' and the MAP head's attention through the fused kernel
], ids=['scan', 'scan_remat', 'remat', 'xla_attention'])
def test_jax_only_options_match_timm(config, flax_options):
    """The layer scan, remat and fused attention change neither the function nor the export: timm's weights load
    (into the scanned stack too), forward and gradients match, and the export loads strictly into timm, equal."""
    model, variables, torch_model, x = build(config, **flax_options)
    if flax_options.get('scan_layers'):
        assert variables['params']['blocks_scan']['attn']['qkv']['kernel'].shape == (3, 32, 96)

    assert_matches_float64_reference(model, variables, torch_model, x, TOLERANCE)

    state_dict = converters.to_torch(model, variables, example_inputs=(x,))
    TimmVisionTransformer(**config).load_state_dict(state_dict, strict=True)
    for key, value in torch_model.state_dict().items():
        assert torch.equal(state_dict[key], value), key


@pytest.mark.parametrize('config, size', [
    (dict(BASE, dynamic_img_size=True), (48, 40)),
    (dict(BASE, reg_tokens=2, no_embed_class=True, dynamic_img_size=True), (16, 24)),
    (dict(BASE, class_token=False, global_pool='map', dynamic_img_size=True), (32, 32)),
], ids=['larger_with_class_row', 'smaller_no_embed_class', 'own_size'])
def test_dynamic_img_size_resamples_as_timm_at_every_call(config, size):
    """timm's dynamic_img_size: another image size's position embedding is resampled in the forward (bicubic,
    antialiased), gradients flowing back to the stored one."""
    model, variables, torch_model, _ = build(config)
    x = images((2, *size, 3), seed=3)
    assert_matches_float64_reference(model, variables, torch_model, x, TOLERANCE)
    with pytest.raises(ValueError, match='whole number of'):
        model.apply(variables, images((1, 36, 32, 3)))


def test_parameter_tree_is_timms_module_tree():
    model, variables, torch_model, x = build(dict(BASE, init_values=1e-5, qk_norm=True))
    params = variables['params']
    assert params['patch_embed']['proj']['kernel'].shape == (8, 8, 3, 32)  # HWIO
    assert params['blocks_1']['attn']['qkv']['kernel'].shape == (32, 96)
    assert set(params['blocks_0']) == {'norm1', 'attn', 'ls1', 'norm2', 'mlp', 'ls2'}
    assert set(params['blocks_0']['attn']) == {'qkv', 'q_norm', 'k_norm', 'proj'}
    np.testing.assert_array_equal(params['blocks_0']['ls1']['gamma'], torch_model.blocks[0].ls1.gamma.detach())


@pytest.mark.parametrize('antialias', [False, True])
@pytest.mark.parametrize('old, new, prefix', [((4, 4), (6, 7), 1), ((7, 7), (3, 5), 0), ((6, 4), (6, 2), 5)])
def test_resample_abs_pos_embed_is_timms(old, new, prefix, antialias):
    """Up and down, square and not, with class / register rows or none: timm's float32 result to round-off, and
    the exact bicubic (torch's F.interpolate in float64) to float64 round-off."""
    from timm.layers import resample_abs_pos_embed as timm_resample

    posemb = np.random.default_rng(0).standard_normal((1, prefix + old[0] * old[1], 16))
    theirs = timm_resample(torch.from_numpy(posemb).float(), list(new), list(old), num_prefix_tokens=prefix,
                           antialias=antialias).numpy()
    ours = resample_abs_pos_embed(posemb.astype(np.float32), new, old, prefix, antialias=antialias)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)
    ours_jax = resample_abs_pos_embed(jax.numpy.asarray(posemb, jax.numpy.float32), new, old, prefix,
                                      antialias=antialias)
    np.testing.assert_allclose(np.asarray(ours_jax), theirs, rtol=0, atol=1e-5)

    grid = torch.from_numpy(posemb[:, prefix:]).reshape(1, *old, -1).permute(0, 3, 1, 2)
    exact = torch.nn.functional.interpolate(grid, size=new, mode='bicubic', align_corners=False, antialias=antialias)
    exact = exact.permute(0, 2, 3, 1).reshape(1, -1, 16).numpy()
    ours64 = resample_abs_pos_embed(posemb, new, old, prefix, antialias=antialias)
    np.testing.assert_array_equal(ours64[:, :prefix], posemb[:, :prefix])
    np.testing.assert_allclose(ours64[:, prefix:], exact, rtol=0, atol=1e-12)


def test_resampled_model_matches_timm_at_another_size():
    """timm's own path to another resolution (a model for the new size, the position embedding resampled) and ours
    agree."""
    from timm.layers import resample_abs_pos_embed as timm_resample

    model, variables, torch_model, x = build(dict(BASE, reg_tokens=4))
    config = dict(BASE, reg_tokens=4, img_size=48)
    state_dict = dict(torch_model.state_dict())
    state_dict['pos_embed'] = timm_resample(state_dict['pos_embed'], [6, 6], [4, 4], num_prefix_tokens=5,
                                            antialias=False)
    bigger_torch = TimmVisionTransformer(**config).eval()
    bigger_torch.load_state_dict(state_dict, strict=True)

    bigger = VisionTransformer(**config)
    params = dict(variables['params'])
    params['pos_embed'] = resample_abs_pos_embed(params['pos_embed'], (6, 6), (4, 4), 5, antialias=False)
    x = images((2, 48, 48, 3))
    assert_close_outputs(bigger.apply({'params': params}, x), float64_reference(bigger_torch)(nchw(x)).detach(),
                         TOLERANCE)


@pytest.mark.parametrize('keywords, message', [
    (dict(global_pool='max'), 'global_pool'),
    (dict(class_token=False), "global_pool='token' needs the class token"),
    (dict(act_layer='relu'), 'act_layer'),
    (dict(embed_dim=30), 'divisible by num_heads'),
    (dict(img_size=30), 'divisible by patch_size'),
    (dict(reg_tokens=-1), 'reg_tokens'),
    (dict(num_heads=0), 'num_heads=0'),
    (dict(remat_policy='all'), 'remat_policy'),
    (dict(attention_impl='flash'), 'attention_impl'),
])
def test_bad_configurations_are_refused_at_construction(keywords, message):
    with pytest.raises(ValueError, match=message):
        VisionTransformer(**{**BASE, **keywords})


def test_bad_inputs_are_refused_at_the_first_call():
    model = VisionTransformer(**BASE)
    with pytest.raises(ValueError, match='not img_size'):
        model.init(jax.random.key(0), np.zeros((1, 40, 40, 3), np.float32))
    with pytest.raises(ValueError, match=r'\(B, H, W, 3\)'):
        model.init(jax.random.key(0), np.zeros((1, 32, 32, 1), np.float32))
    with pytest.raises((TypeError, ValueError)):
        model.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.uint8))


def test_timm_and_transformers_load_beside_the_torchvision_stand_in():
    """The stand-in (parity/torchvision_stand_in) has every name `import timm`, timm's ViT constructors and
    transformers' ViT import; the model code that runs is theirs."""
    import transformers

    vit = timm.create_model('vit_tiny_patch16_224', pretrained=False, img_size=32, patch_size=8, num_classes=3)
    with torch.no_grad():
        assert vit(torch.zeros(1, 3, 32, 32)).shape == (1, 3)
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                    image_size=32, patch_size=8)
    with torch.no_grad():
        assert transformers.ViTModel(config)(torch.zeros(1, 3, 32, 32)).last_hidden_state.shape == (1, 17, 32)
