"""ViViT behaviour beyond the registry configs: variants, pools, masks, dropout, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import vit_flax
import parity
from tests.conftest import apply, assert_close_outputs, converted_pair, float64_reference, images, nchw
from vit_flax.vivit import ViT, ViViT

VIVIT = parity.BY_NAME['vivit.ViT']
ENCODER_CLS, SELF_ATTENTION_MEAN, ENCODER_MEAN, SELF_ATTENTION_CLS = VIVIT.configs


def torch_forward(torch_model, video, mask=None):
    """vit-pytorch's exact answer (its float64 reference) on a channels-last video and an optional (batch, frames)
    mask, without gradients."""
    with torch.no_grad():
        return float64_reference(torch_model)(nchw(video), mask=None if mask is None else torch.from_numpy(mask))


def video_for(config, batch=2, seed=0, frames=None, size=None):
    height, width = size or vit_flax.layers.pair(config['image_size'])
    return images((batch, frames or config['frames'], height, width, config.get('channels', 3)), seed=seed)


def param_shapes(config):
    model = ViT(**config)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.asarray(video_for(config, batch=1)))
    return variables['params']


def test_names():
    """vit-pytorch 1.26's class is ViViT; its README imports the older name ViT. Only vit.ViT is top-level."""
    assert ViT is ViViT and VIVIT.flax_class is ViViT and VIVIT.torch_class_name == 'ViViT'
    assert vit_flax.ViT is not ViViT and not hasattr(vit_flax, 'ViViT')


def test_readme_example_shapes():
    """vit-pytorch's README example, swapped to Flax: (4, 16, 128, 128, 3) -> (4, 1000)."""
    v = ViT(image_size=128, frames=16, image_patch_size=16, frame_patch_size=2, num_classes=1000, dim=1024,
            spatial_depth=6, temporal_depth=6, heads=8, mlp_dim=2048, variant='factorized_encoder')
    video = jnp.zeros((4, 16, 128, 128, 3))
    shapes = jax.eval_shape(v.init, jax.random.key(0), video)
    assert jax.eval_shape(lambda p: v.apply(p, video), shapes).shape == (4, 1000)
    assert shapes['params']['pos_embedding'].shape == (1, 8, 64, 1024)


@pytest.mark.parametrize('config, cls_tokens, transformers', [
    (ENCODER_CLS, {'spatial_cls_token', 'temporal_cls_token'}, {'spatial_transformer', 'temporal_transformer'}),
    (ENCODER_MEAN, set(), {'spatial_transformer', 'temporal_transformer'}),
    (SELF_ATTENTION_CLS, {'spatial_cls_token'}, {'factorized_transformer'}),
    (SELF_ATTENTION_MEAN, set(), {'factorized_transformer'}),
])
def test_cls_tokens_and_transformers_per_variant_and_pool(config, cls_tokens, transformers):
    params = param_shapes(config)
    assert {name for name in params if name.endswith('cls_token')} == cls_tokens
    assert {name for name in params if 'transformer' in name} == transformers
    for name in cls_tokens:
        assert params[name].shape == (1, 1, config['dim'])


def test_no_output_projection_with_one_head_of_dim():
    params = param_shapes(ENCODER_MEAN)  # heads=1, dim_head == dim
    assert 'to_out_0' not in params['spatial_transformer']['layers_0_0']
    assert 'to_out_0' in param_shapes(ENCODER_CLS)['spatial_transformer']['layers_0_0']


def test_num_classes_zero_keeps_an_empty_head():
    config = {**ENCODER_CLS, 'num_classes': 0}
    model = ViT(**config)
    video = jnp.zeros((2, 4, 8, 8, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), video)
    assert variables['params']['mlp_head']['kernel'].shape == (16, 0)
    assert jax.eval_shape(lambda v: model.apply(v, video), variables).shape == (2, 0)


@pytest.mark.parametrize('config', [
    ENCODER_CLS,  # the temporal cls token stays visible; frame patches of 2 frames
    ENCODER_MEAN,  # explicit attention: a fully masked video attends evenly to all frame patches
    SELF_ATTENTION_MEAN,  # flash attention: a fully masked video gets zero temporal attention output
    {**SELF_ATTENTION_MEAN, 'use_flash_attn': False},
    SELF_ATTENTION_CLS,  # frame patches of 3 frames
], ids=['encoder-cls', 'encoder-mean-explicit', 'self-attention-mean-flash', 'self-attention-mean-explicit',
        'self-attention-cls'])
def test_masks_match_torch(config):
    model, variables, torch_model = converted_pair(VIVIT, config)
    video, mask = video_for(config, batch=3), parity.vivit.frame_masks(config['frames'], np.random.default_rng(0))
    out = apply(model, variables, video, mask)
    assert np.isfinite(np.asarray(out)).all()
    assert_close_outputs(out, torch_forward(torch_model, video, mask), VIVIT.tolerance)
    # the mask matters where some frames are hidden, and nowhere else
    unmasked = apply(model, variables, video)
    assert not np.allclose(out[0], unmasked[0])
    np.testing.assert_allclose(out[1], unmasked[1], atol=1e-5)


def test_smaller_videos_slice_the_position_embedding():
    model, variables, torch_model = converted_pair(VIVIT, ENCODER_CLS)
    for frames, size in ((2, (8, 8)), (4, (4, 8)), (2, (8, 4))):
        video = video_for(ENCODER_CLS, frames=frames, size=size)
        assert_close_outputs(apply(model, variables, video), torch_forward(torch_model, video), VIVIT.tolerance)


@pytest.mark.parametrize('frames, size, message', [
    (6, (8, 8), r'gives 3 frame patches of 4 image patches, more than .* \(2 of 4\)'),
    (4, (12, 8), r'gives 2 frame patches of 6 image patches, more than .* \(2 of 4\)'),
])
def test_larger_videos_are_refused_with_sizes(frames, size, message):
    model = ViT(**ENCODER_CLS)
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, frames, *size, 3)))


def test_dropout_only_in_training_and_reproducible():
    model, variables, _ = converted_pair(VIVIT, ENCODER_MEAN)  # dropout 0.1, emb_dropout 0.1
    video = video_for(ENCODER_MEAN, batch=3)  # the masks test's batch: its compiled eval program is reused
    eval_out = apply(model, variables, video)
    no_dropout = ViT(**{**ENCODER_MEAN, 'dropout': 0.0, 'emb_dropout': 0.0})
    np.testing.assert_array_equal(eval_out, apply(no_dropout, variables, video))

    train = lambda seed: apply(model, variables, video, train=True, rngs={'dropout': jax.random.key(seed)})
    np.testing.assert_array_equal(train(1), train(1))
    assert not np.allclose(train(1), train(2))
    assert not np.allclose(train(1), eval_out)
    with pytest.raises(Exception, match='dropout'):
        jax.eval_shape(lambda v: model.apply(v, video, train=True), variables)  # no 'dropout' rng stream given


@pytest.mark.parametrize('config, message', [
    (dict(image_size=10), r'divisible by the patch size: image_size=\(10, 10\), patch_size=\(4, 4\)'),
    (dict(image_patch_size=(4, 3)), r'divisible by the patch size: .*patch_size=\(4, 3\)'),
    (dict(frames=5), 'Frames must be divisible by the frame patch size: frames=5, frame_patch_size=2'),
    (dict(variant='joint'), "variant = 'joint' is not implemented"),
    (dict(pool='max'), "pool='max'"),
    (dict(variant='factorized_self_attention', temporal_depth=2), 'spatial_depth=1, temporal_depth=2'),
    (dict(channels=0), 'channels=0 must be a positive integer'),
])
def test_bad_configs_fail_at_construction(config, message):
    with pytest.raises(ValueError, match=message):
        ViT(**{**ENCODER_CLS, **config})


@pytest.mark.parametrize('shape, mask_shape, message', [
    ((1, 8, 8, 3), None, r'videos of shape \(batch, frames, height, width, channels\), got shape \(1, 8, 8, 3\)'),
    ((1, 3, 4, 8, 8), None, r'expected 3 channels \(channels-last input\), got shape \(1, 3, 4, 8, 8\)'),
    ((1, 3, 8, 8, 3), None, r'video of size \(3, 8, 8\) is not divisible by patch size \(2, 4, 4\)'),
    ((1, 4, 8, 6, 3), None, r'video of size \(4, 8, 6\) is not divisible by patch size \(2, 4, 4\)'),
    ((2, 4, 8, 8, 3), (2, 2), r'a mask of shape \(batch, frames\) = \(2, 4\) .* got shape \(2, 2\)'),
])
def test_bad_inputs_name_the_shape(shape, mask_shape, message):
    model = ViT(**ENCODER_CLS)
    args = (jnp.zeros(shape),) if mask_shape is None else (jnp.zeros(shape), jnp.ones(mask_shape, bool))
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(model.init, jax.random.key(0), *args)
