"""Dino beyond the registry configs: loss, gradients and buffers against vit-pytorch under shared crops (hidden
layers by name, method and index, CvT feature maps, train mode, call-time temperatures), the EMA (`after_step`)
against `learner.update_moving_average()`, the optimiser mask (`trainable_mask`) with optax, the encoder's params
exporting as a plain ViT, the JAX augmentations, bad configs (random configurations: parity.dino).

torchvision cannot load here: vit-pytorch's Dino is built and run under `dino.torch_transforms`, a stand-in whose
RandomResizedCrop cuts the boxes the Flax call draws (`Dino.crop_boxes`) and resizes them with torch's own
antialiased bilinear interpolation; both sides get identity augmentations.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import parity
from vit_flax import converters
from tests.conftest import (assert_close_outputs, converted_pair, float64_reference, images, init_variables, nchw,
                            torch_class)
from tests.objective_helpers import assert_after_step_matches_torch, assert_same_gradients, torch_loss
from vit_flax import dino, registry
from vit_flax.cvt import CvT
from vit_flax.dino import Dino
from vit_flax.vit import ViT

ENTRY = parity.BY_NAME['dino.Dino']
IDENTITY = dict(augment_fn=dino.RandomApply(dino.L2Norm(), p=0.0), augment_fn2=dino.RandomApply(dino.L2Norm(), p=0.0))
TINY = ENTRY.configs[0]
VIT = ViT(image_size=16, patch_size=8, num_classes=5, dim=16, depth=1, heads=2, mlp_dim=16, dim_head=8)
CVT = CvT(num_classes=3, s1_emb_dim=8, s1_emb_kernel=3, s1_emb_stride=2, s1_heads=1, s2_emb_dim=12, s2_heads=2,
          s2_depth=1, s3_emb_dim=8, s3_heads=1, s3_depth=1, s3_emb_stride=2)

CONFIGS = {  # the first is a fast test, the rest run with `make test-slow` (the CvT ones compile for 15 s)
    # the transformer's tokens (3-D hidden output, flattened (n d))
    'vit-transformer': dict(net=VIT, image_size=16, hidden_layer='transformer', projection_hidden_size=12,
                            projection_layers=2, num_classes_K=20, **IDENTITY),
    # CvT's feature map by method name (4-D, flattened in torch's (c h w) order), and by index
    'cvt-layers': dict(net=CVT, image_size=16, hidden_layer='layers', projection_hidden_size=12, projection_layers=2,
                       num_classes_K=12, **IDENTITY),
    # a submodule by torch's dotted name, one-layer projector needs embed == hidden size
    'vit-block': dict(net=VIT, image_size=16, hidden_layer='transformer.layers.0.1', projection_hidden_size=80,
                      projection_layers=1, num_classes_K=10, **IDENTITY),
    # the whole network's logits
    'vit-output': dict(net=VIT, image_size=16, hidden_layer=-1, projection_hidden_size=8, projection_layers=3,
                       num_classes_K=16, **IDENTITY),
    'cvt-index': dict(net=CVT, image_size=16, hidden_layer=-2, projection_hidden_size=12, projection_layers=2,
                      num_classes_K=12, **IDENTITY),
}


def torch_learner(config, seed=0):
    """(Flax model, variables converted from it, the randomised vit-pytorch Dino)."""
    return converted_pair(ENTRY, config, seed)


def flax_loss_and_grads(model, variables, x, rngs, train=False, **kwargs):
    """(loss, the updated buffers), gradients."""
    def loss(params):
        return model.apply({**variables, 'params': params}, x, rngs=rngs, train=train, mutable=['buffers'], **kwargs)

    return jax.jit(jax.value_and_grad(loss, has_aux=True))(variables['params'])


def check_against_torch(name):
    model, variables, torch_model = torch_learner(CONFIGS[name])
    x = images((3, 16, 16, 3), seed=1)
    loss, exact, rngs = torch_loss(ENTRY, torch_model, model, x, seed=2)
    (flax_loss, updates), grads = flax_loss_and_grads(model, variables, x, rngs)
    assert_close_outputs(flax_loss, loss.detach(), ENTRY.tolerance)
    assert_same_gradients(model, variables, grads, exact)

    # the buffer torch's forward sets, returned with mutable=['buffers']
    np.testing.assert_allclose(np.asarray(updates['buffers']['last_teacher_centers']),
                               exact.last_teacher_centers.numpy(), rtol=1e-5, atol=2e-5)
    np.testing.assert_array_equal(np.asarray(updates['buffers']['teacher_centers']),
                                  np.asarray(variables['buffers']['teacher_centers']))


@pytest.mark.parametrize('name', [list(CONFIGS)[0], *(pytest.param(name, marks=pytest.mark.slow)
                                                       for name in list(CONFIGS)[1:])])
def test_loss_gradients_and_centers_match_torch(name):
    check_against_torch(name)


def test_integer_hidden_layers_are_torch_children():
    assert dino.resolve_hidden_layer(CVT, -2) == 'layers'
    assert dino.resolve_hidden_layer(VIT, -2) == 'to_latent'
    assert dino.resolve_hidden_layer(VIT, -3) == 'transformer'
    assert dino.resolve_hidden_layer(VIT, -1) == -1
    assert dino.resolve_hidden_layer(VIT, 'transformer.layers.0.1') == 'transformer.layers.0.1'


@pytest.mark.slow  # compiles for 6-25 s
def test_train_mode_and_call_temperatures_match_torch():
    """train=True (no dropout in the encoder: the teacher also runs in training mode in torch), temperatures given
    at call time, non-zero teacher centres."""
    model, variables, torch_model = torch_learner(TINY, seed=3)
    centers = np.random.default_rng(0).standard_normal((1, TINY['num_classes_K']), dtype=np.float32)
    torch_model.teacher_centers.copy_(torch.from_numpy(centers))
    variables = {**variables, 'buffers': {**variables['buffers'], 'teacher_centers': jnp.asarray(centers)}}
    x = images((2, 16, 16, 3), seed=4)
    loss, exact, rngs = torch_loss(ENTRY, torch_model, model, x, seed=5, train=True, student_temp=0.3,
                                   teacher_temp=0.1)
    (flax_loss, _), grads = flax_loss_and_grads(model, variables, x, rngs, train=True, student_temp=0.3,
                                                teacher_temp=0.1)
    assert_close_outputs(flax_loss, loss.detach(), ENTRY.tolerance)
    assert_same_gradients(model, variables, grads, exact)


@pytest.mark.slow  # compiles for 6-25 s
def test_return_embedding_matches_torch():
    model, variables, torch_model = torch_learner(CONFIGS['cvt-layers'])
    x = images((2, 16, 16, 3), seed=6)
    exact = float64_reference(torch_model)
    with parity.dino.torch_transforms(), torch.no_grad():
        torch_projection, torch_embedding = exact(nchw(x), return_embedding=True)
        torch_embedding_only = exact(nchw(x), return_embedding=True, return_projection=False)
    projection, embedding = model.apply(variables, x, return_embedding=True)
    embedding_only = model.apply(variables, x, return_embedding=True, return_projection=False)
    np.testing.assert_allclose(np.asarray(projection), torch_projection.numpy(), rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(np.asarray(embedding), torch_embedding.numpy(), rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(np.asarray(embedding_only), torch_embedding_only.numpy(), rtol=1e-5, atol=2e-5)


def test_after_step_is_torchs_update_moving_average():
    model, variables, torch_model = torch_learner(TINY, seed=7)
    rng = np.random.default_rng(1)
    for name in ('teacher_centers', 'last_teacher_centers'):
        value = rng.standard_normal((1, TINY['num_classes_K']), dtype=np.float32)
        getattr(torch_model, name).copy_(torch.from_numpy(value))
    variables = converters.from_torch(model, torch_model.state_dict())  # teacher != student (randomised apart)
    assert not np.array_equal(np.asarray(variables['params']['teacher_encoder']['projector']['net_0']['kernel']),
                              np.asarray(variables['params']['student_encoder']['projector']['net_0']['kernel']))

    assert_after_step_matches_torch(model, variables, torch_model)


def test_init_copies_the_student_and_reset_moving_average():
    model = ENTRY.build(0)
    variables = init_variables(model)
    params = variables['params']
    jax.tree_util.tree_map(np.testing.assert_array_equal, params['teacher_encoder'], params['student_encoder'])
    np.testing.assert_array_equal(np.asarray(variables['buffers']['teacher_centers']), 0.0)
    moved = {**variables, 'params': {**params, 'teacher_encoder': jax.tree_util.tree_map(
        lambda a: a + 1, params['teacher_encoder'])}}
    reset = dino.reset_moving_average(moved)
    jax.tree_util.tree_map(np.testing.assert_array_equal, reset['params']['teacher_encoder'], params['student_encoder'])


def test_trainable_mask_keeps_optax_off_the_teacher():
    """One AdamW step (weight decay would move every masked-in leaf) moves the student only; the EMA then moves
    the teacher towards it."""
    model = ENTRY.build(0)
    x = images((2, 16, 16, 3))
    variables = init_variables(model)
    params = variables['params']
    mask = model.trainable_mask(params)
    assert not any(jax.tree_util.tree_leaves(mask['teacher_encoder']))
    assert all(jax.tree_util.tree_leaves(mask['student_encoder']))

    optimizer = optax.masked(optax.adamw(1e-2, weight_decay=0.5), mask)
    rngs = {'augment': jax.random.key(1), 'crop': jax.random.key(2)}

    @jax.jit
    def step(variables, opt_state):
        def loss(params):
            return model.apply({**variables, 'params': params}, x, rngs=rngs, train=True, mutable=['buffers'])

        (value, updates), grads = jax.value_and_grad(loss, has_aux=True)(variables['params'])
        changes, opt_state = optimizer.update(grads, opt_state, variables['params'])
        variables = {**variables, **updates, 'params': optax.apply_updates(variables['params'], changes)}
        return variables, opt_state, value, grads

    new, _, _, grads = step(variables, optimizer.init(params))
    for leaf in jax.tree_util.tree_leaves(grads['teacher_encoder']):
        np.testing.assert_array_equal(np.asarray(leaf), 0.0)
    jax.tree_util.tree_map(np.testing.assert_array_equal, new['params']['teacher_encoder'], params['teacher_encoder'])
    moved = jax.tree_util.tree_leaves(jax.tree_util.tree_map(
        lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), new['params']['student_encoder'],
        params['student_encoder']))
    assert all(moved)
    assert not np.array_equal(np.asarray(new['buffers']['last_teacher_centers']),
                              np.asarray(variables['buffers']['last_teacher_centers']))

    after = model.after_step(new)  # the learner's decays: 0.9
    teacher, student = after['params']['teacher_encoder'], new['params']['student_encoder']
    expected = jax.tree_util.tree_map(lambda t, s: 0.9 * t + 0.1 * s, params['teacher_encoder'], student)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), teacher, expected)


def test_encoder_params_are_a_plain_vit():
    """params['student_encoder']['net'] exports to vit-pytorch's ViT (strict) and gives the same logits."""
    _, variables, torch_model = torch_learner(TINY, seed=8)
    encoder_params = variables['params']['student_encoder']['net']
    state = converters.to_torch(VIT, {'params': encoder_params})
    plain = torch_class(parity.BY_NAME['vit.ViT'])(**registry.torch_kwargs(VIT)).eval()
    plain.load_state_dict(state, strict=True)  # loads into the float32 model users build; the expected from float64
    x = images((2, 16, 16, 3), seed=9)
    with torch.no_grad():
        expected = float64_reference(plain)(nchw(x)).numpy()
        also = float64_reference(torch_model.net)(nchw(x)).numpy()  # the learner's own net is that network
    np.testing.assert_allclose(np.asarray(VIT.apply({'params': encoder_params}, x)), expected, rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(also, expected, rtol=0, atol=0)


@pytest.mark.slow  # compiles for 6-25 s
def test_draws_come_from_the_named_streams_and_dropout_from_train_mode():
    net = ViT(image_size=16, patch_size=8, num_classes=5, dim=16, depth=1, heads=2, mlp_dim=16, dim_head=8, dropout=0.3)
    model = Dino(net=net, image_size=16, hidden_layer='to_latent', projection_hidden_size=8, projection_layers=2,
                 num_classes_K=8)  # the default augmentation
    x = np.random.default_rng(0).random((2, 16, 16, 3), dtype=np.float32)
    variables = init_variables(model)
    run = jax.jit(lambda r, train: model.apply(variables, x, rngs=r, train=train), static_argnums=1)
    keys = lambda a, c, d=0: {'augment': jax.random.key(a), 'crop': jax.random.key(c), 'dropout': jax.random.key(d)}
    assert float(run(keys(1, 2), False)) == float(run(keys(1, 2, 5), False))  # eval: no dropout
    assert float(run(keys(1, 2), False)) != float(run(keys(3, 2), False))
    assert float(run(keys(1, 2), False)) != float(run(keys(1, 4), False))
    assert float(run(keys(1, 2), True)) == float(run(keys(1, 2), True))
    assert float(run(keys(1, 2, 5), True)) != float(run(keys(1, 2), True))
    assert Dino.rng_streams == ('augment', 'crop')
    tiny = ENTRY.build(0)
    with pytest.raises(Exception, match='crop'):
        jax.eval_shape(lambda: tiny.apply(init_variables(tiny), x, rngs={'augment': jax.random.key(0)}))


# augmentations


def test_resized_crop_is_torchs_antialiased_bilinear():
    x = np.random.default_rng(0).random((4, 20, 24, 3), dtype=np.float32)
    boxes = np.array([[0, 0, 20, 24], [3, 5, 7, 9], [1, 2, 18, 5], [10, 0, 10, 24]], np.int32)
    for size in (16, (12, 30)):
        out = np.asarray(jax.jit(lambda x, b, size=size: dino.resized_crop(x, b, size))(x, boxes))
        target = (size, size) if isinstance(size, int) else size
        assert out.shape == (4, *target, 3)
        for image, crop, (top, left, h, w) in zip(x, out, boxes):
            expected = torch.nn.functional.interpolate(nchw(image[None, top:top + h, left:left + w]), size=target,
                                                       mode='bilinear', align_corners=False, antialias=True)
            np.testing.assert_allclose(crop, np.moveaxis(expected[0].numpy(), 0, -1), rtol=1e-5, atol=1e-6)


def test_random_resized_crop_boxes():
    boxes = np.asarray(dino.random_resized_crop_boxes(jax.random.key(0), 512, 32, 40, (0.05, 0.4)))
    top, left, h, w = boxes.T
    assert boxes.dtype == np.int32 and boxes.shape == (512, 4)
    assert (h >= 1).all() and (w >= 1).all() and (top >= 0).all() and (left >= 0).all()
    assert (top + h <= 32).all() and (left + w <= 40).all()
    area = h * w / (32 * 40)
    assert area.min() > 0.03 and area.max() < 0.45  # rounding of the sides only
    assert len({tuple(b) for b in boxes}) > 400  # per image
    np.testing.assert_array_equal(boxes, dino.random_resized_crop_boxes(jax.random.key(0), 512, 32, 40, (0.05, 0.4)))
    # an impossible aspect band falls back to torchvision's centre crop
    fallback = np.asarray(dino.random_resized_crop_boxes(jax.random.key(1), 3, 10, 40, (0.9, 1.0), ratio=(0.5, 0.6)))
    np.testing.assert_array_equal(fallback, [[0, 17, 10, 6]] * 3)  # 10 x round(10 * 0.6), centred


def test_default_augment_shapes_ranges_and_determinism():
    x = jnp.asarray(np.random.default_rng(0).random((64, 8, 8, 3), dtype=np.float32))
    augment = jax.jit(dino.default_augment)
    out = np.asarray(augment(jax.random.key(0), x))
    assert out.shape == x.shape and out.dtype == np.float32
    mean, std = np.array(dino.IMAGENET_MEAN), np.array(dino.IMAGENET_STD)
    unnormalised = out * std + mean
    assert unnormalised.min() >= -1e-5 and unnormalised.max() <= 1 + 1e-5
    np.testing.assert_array_equal(out, np.asarray(augment(jax.random.key(0), x)))
    assert not np.array_equal(out, np.asarray(augment(jax.random.key(1), x)))
    changed = np.abs(unnormalised - np.asarray(x)).max(axis=(1, 2, 3)) > 1e-5
    assert 0 < changed.sum() < 64  # per image: some untouched (no jitter, grayscale, flip, blur), some changed
    with pytest.raises(ValueError, match=r'\(2, 8, 8, 1\)'):
        dino.default_augment(jax.random.key(0), x[:2, ..., :1])


def test_default_augment_probabilities_zero_and_one():
    x = jnp.asarray(np.random.default_rng(1).random((4, 8, 8, 3), dtype=np.float32))
    key = jax.random.key(0)
    none = dict(color_jitter_p=0.0, grayscale_p=0.0, flip_p=0.0, blur_p=0.0)
    normalise = lambda y: (np.asarray(y) - np.array(dino.IMAGENET_MEAN)) / np.array(dino.IMAGENET_STD)
    np.testing.assert_allclose(dino.default_augment(key, x, **none), normalise(x), rtol=1e-6, atol=1e-6)
    flipped = dino.default_augment(key, x, **{**none, 'flip_p': 1.0})
    np.testing.assert_allclose(flipped, normalise(x[:, :, ::-1]), rtol=1e-6, atol=1e-6)
    gray = np.asarray(dino.default_augment(key, x, **{**none, 'grayscale_p': 1.0})) * np.array(dino.IMAGENET_STD) \
        + np.array(dino.IMAGENET_MEAN)
    np.testing.assert_allclose(gray[..., 0], gray[..., 1], atol=1e-5)
    np.testing.assert_allclose(gray[..., 0], 0.2989 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2], atol=1e-5)
    constant = jnp.full((2, 8, 8, 3), 0.25)
    blurred = dino.default_augment(key, constant, **{**none, 'blur_p': 1.0})
    np.testing.assert_allclose(blurred, normalise(constant), rtol=1e-5, atol=1e-5)
    assert not np.allclose(dino.default_augment(key, x, **{**none, 'blur_p': 1.0}), normalise(x), atol=1e-3)
    jittered = np.asarray(dino.default_augment(key, x, **{**none, 'color_jitter_p': 1.0}))
    assert not np.allclose(jittered, normalise(x), atol=1e-3)
    # RandomApply as a module: p=0 is the identity, p=1 always applies
    ones = dino.RandomApply(lambda t: t + 1.0, p=1.0)
    np.testing.assert_array_equal(ones.apply({}, x, rngs={'augment': key}), np.asarray(x) + 1.0)
    np.testing.assert_array_equal(dino.RandomApply(lambda t: t + 1.0, p=0.0).apply({}, x), x)


@pytest.mark.slow  # compiles for 6-25 s
def test_colour_adjustments():
    red = jnp.zeros((1, 1, 1, 3)).at[..., 0].set(1.0)
    np.testing.assert_allclose(dino.adjust_hue(red, jnp.array([1 / 3])), [[[[0.0, 1.0, 0.0]]]], atol=1e-5)
    x = jnp.asarray(np.random.default_rng(2).random((3, 5, 5, 3), dtype=np.float32))
    np.testing.assert_allclose(dino.adjust_hue(x, jnp.zeros(3)), x, atol=1e-5)
    ones = jnp.ones(3)
    for adjust in (dino.adjust_brightness, dino.adjust_contrast, dino.adjust_saturation):
        np.testing.assert_allclose(adjust(x, ones), x, atol=1e-6)
    np.testing.assert_allclose(dino.adjust_brightness(x, 2 * ones), np.clip(2 * np.asarray(x), 0, 1), atol=1e-6)
    jittered = np.asarray(dino.color_jitter(jax.random.key(0), x))
    assert jittered.min() >= 0 and jittered.max() <= 1


# configuration and inputs


@pytest.mark.parametrize('overrides, message', [
    (dict(image_size=(16, 16)), r'image_size=\(16, 16\)'),
    (dict(image_size=0), 'image_size=0'),
    (dict(projection_layers=0), 'projection_layers=0'),
    (dict(num_classes_K=0), 'num_classes_K=0'),
    (dict(projection_hidden_size=0), 'projection_hidden_size=0'),
    (dict(student_temp=0.0), 'student_temp=0.0'),
    (dict(teacher_temp=-1.0), 'teacher_temp=-1.0'),
    (dict(local_upper_crop_scale=0.01), '0.01'),
    (dict(global_lower_crop_scale=1.5), '1.5'),
    (dict(moving_average_decay=2.0), 'moving_average_decay=2.0'),
    (dict(hidden_layer=7), 'hidden_layer=7'),
    (dict(hidden_layer=1.5), 'hidden_layer=1.5'),
    (dict(augment_fn='flip'), "'flip'"),
])
def test_bad_configs_name_the_value(overrides, message):
    with pytest.raises(ValueError, match=message):
        ENTRY.build(0, **overrides)


def test_bad_hidden_layer_and_inputs():
    x = images((1, 16, 16, 3))
    init = lambda model, x: jax.eval_shape(lambda: model.init({'params': jax.random.key(0)}, x))
    with pytest.raises(ValueError, match="'no_such_layer'"):
        init(ENTRY.build(0, hidden_layer='no_such_layer'), x)
    with pytest.raises(ValueError, match='projection_hidden_size=8'):  # the pooled embedding has 16 features
        init(ENTRY.build(0, projection_layers=1, projection_hidden_size=8), x)
    with pytest.raises(ValueError, match=r'\(16, 16, 3\)'):
        init(ENTRY.build(0), x[0])
    with pytest.raises(ValueError, match='hidden_layer=-2'):
        Dino(net=dino.L2Norm(), image_size=16, hidden_layer=-2)
