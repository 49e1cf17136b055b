"""EsViTTrainer beyond the registry configs: loss, gradients and centre buffers against vit-pytorch under shared
crops (CvT's whole feature map and a stage's, train mode with its BatchNorm statistics, call-time temperatures),
the region loss and the projector's L2 normalisation (vit-pytorch's normalises the region projector over the
tokens: fixed here, torch patched by `parity.es_vit.torch_l2norm_over_features`), the EMA of the teacher and the four
centres (`after_step`) against `learner.update_moving_average()`, the optimiser mask (`trainable_mask`) with optax,
the encoder's params exporting as a plain CvT, hidden layers that give no feature map, bad configs (random
configurations: parity.es_vit).

torchvision cannot load here: vit-pytorch's EsViTTrainer is built and run under `dino.torch_transforms`, whose
RandomResizedCrop cuts the boxes the Flax call draws (`EsViTTrainer.crop_boxes`); both sides get identity
augmentations (dino.py's augmentations are tested in tests/test_dino.py).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import parity
from vit_flax import converters
from tests.conftest import (
    _cached, _model_key, assert_close_outputs, converted_pair, float64_reference, images, init_variables, nchw,
    torch_class,
)
from tests.objective_helpers import assert_after_step_matches_torch, assert_same_gradients, torch_loss
from vit_flax import dino, es_vit, registry
from vit_flax.cvt import CvT
from vit_flax.dino import Dino
from vit_flax.es_vit import EsViTTrainer
from vit_flax.vit import ViT

ENTRY = parity.BY_NAME['es_vit.EsViTTrainer']
IDENTITY = dict(augment_fn=dino.RandomApply(dino.L2Norm(), p=0.0), augment_fn2=dino.RandomApply(dino.L2Norm(), p=0.0))
TINY = ENTRY.configs[0]
CVT = CvT(num_classes=3, s1_emb_dim=8, s1_emb_kernel=3, s1_emb_stride=2, s1_heads=1, s2_emb_dim=12, s2_heads=2,
          s2_depth=1, s3_emb_dim=8, s3_heads=1, s3_depth=1, s3_emb_stride=2)
VIT = ViT(image_size=16, patch_size=8, num_classes=5, dim=16, depth=1, heads=2, mlp_dim=16, dim_head=8)

CONFIGS = {  # the first is a fast test, the rest run with `make test-slow`
    # stage 2's transformer by torch's dotted name: a 4 x 4 map of 12 channels (16 regions), 3-layer projector
    'cvt-stage-2': dict(net=CVT, image_size=16, hidden_layer='layers.1.2', projection_hidden_size=10,
                        projection_layers=3, num_classes_K=20, **IDENTITY),
    # by index (-2 = 'layers'), one-layer projectors (the map's 8 channels = projection_hidden_size), other scales
    'cvt-index': dict(net=CVT, image_size=16, hidden_layer=-2, projection_hidden_size=8, projection_layers=1,
                      num_classes_K=16, local_upper_crop_scale=0.2, global_lower_crop_scale=0.8, **IDENTITY),
    # a non-square image cropped to a square image_size, stage 1's map (8 x 8)
    'cvt-stage-1': dict(net=CVT, image_size=16, hidden_layer='layers.0.2', projection_hidden_size=6,
                        projection_layers=2, num_classes_K=8, **IDENTITY),
}


def loss_and_grads(model, train=False):
    """Jitted (loss, updated buffers and BatchNorm statistics), gradients; compiled once per model and mode."""
    def run(variables, x, rngs, kwargs):
        def loss(params):
            return model.apply({**variables, 'params': params}, x, rngs=rngs, train=train,
                               mutable=['buffers', 'batch_stats'], **kwargs)

        return jax.value_and_grad(loss, has_aux=True)(variables['params'])

    return _cached((*_model_key(model), "es_vit loss_and_grads", train), lambda: jax.jit(run))


def check_against_torch(config, shape=(3, 16, 16, 3)):
    model, variables, torch_model = converted_pair(ENTRY, config)
    x = images(shape, seed=1)
    loss, exact, rngs = torch_loss(ENTRY, torch_model, model, x, seed=2)
    (flax_loss, updates), grads = loss_and_grads(model)(variables, x, rngs, {})
    assert_close_outputs(flax_loss, loss.detach(), ENTRY.tolerance)
    assert_same_gradients(model, variables, grads, exact)

    # the buffers torch's forward sets, returned with mutable=['buffers']; the EMA'd ones untouched
    for name in ('last_teacher_view_centers', 'last_teacher_region_centers'):
        np.testing.assert_allclose(np.asarray(updates['buffers'][name]), getattr(exact, name).numpy(),
                                   rtol=1e-5, atol=2e-5, err_msg=name)
    for name in ('teacher_view_centers', 'teacher_region_centers'):
        np.testing.assert_array_equal(np.asarray(updates['buffers'][name]), np.asarray(variables['buffers'][name]))
    return model, variables, torch_model


@pytest.mark.parametrize('name', [list(CONFIGS)[0], *(pytest.param(name, marks=pytest.mark.slow)
                                                       for name in list(CONFIGS)[1:])])
def test_loss_gradients_and_centers_match_torch(name):
    check_against_torch(CONFIGS[name], shape=(2, 20, 14, 3) if name == 'cvt-stage-1' else (3, 16, 16, 3))


@pytest.mark.slow  # compiles for 15-30 s
def test_train_mode_batch_statistics_and_call_temperatures_match_torch():
    """train=True: the CvT's BatchNorms normalise with batch statistics and update their running ones (the
    student's twice, the teacher's twice, each its own); temperatures given at call time; non-zero centres."""
    model, variables, torch_model = converted_pair(ENTRY, TINY, seed=3)
    rng = np.random.default_rng(0)
    buffers = dict(variables['buffers'])
    for name in ('teacher_view_centers', 'teacher_region_centers'):
        centers = rng.standard_normal((1, TINY['num_classes_K']), dtype=np.float32)
        getattr(torch_model, name).copy_(torch.from_numpy(centers))
        buffers[name] = jnp.asarray(centers)
    variables = {**variables, 'buffers': buffers}
    x = images((2, 16, 16, 3), seed=4)
    temps = dict(student_temp=0.3, teacher_temp=0.1)
    loss, exact, rngs = torch_loss(ENTRY, torch_model, model, x, seed=5, train=True, **temps)
    (flax_loss, updates), grads = loss_and_grads(model, train=True)(variables, x, rngs, temps)
    assert_close_outputs(flax_loss, loss.detach(), ENTRY.tolerance)
    assert_same_gradients(model, variables, grads, exact)
    state = converters.to_torch(model, {**variables, **updates}, as_numpy=True)
    running = {key: value for key, value in exact.state_dict().items() if 'running' in key}
    assert running and any(key.startswith('teacher_encoder.') for key in running)
    for key, value in running.items():
        np.testing.assert_allclose(state[key], value.numpy(), rtol=1e-4, atol=1e-5, err_msg=key)


@pytest.mark.slow  # compiles for 10-20 s
def test_return_embedding_matches_torch():
    model, variables, torch_model = converted_pair(ENTRY, TINY, seed=6)
    x = images((2, 16, 16, 3), seed=6)
    exact = float64_reference(torch_model)
    with parity.dino.torch_transforms(), parity.es_vit.torch_l2norm_over_features(), torch.no_grad():
        torch_outputs = exact(nchw(x), return_embedding=True)
        global_latent, feature_map = exact(nchw(x), return_embedding=True, return_projection=False)
    outputs = model.apply(variables, x, return_embedding=True)
    for flax_out, torch_out in zip(outputs, torch_outputs, strict=True):
        np.testing.assert_allclose(np.asarray(flax_out), torch_out.numpy(), rtol=1e-5, atol=2e-5)
    flax_global, flax_map = model.apply(variables, x, return_embedding=True, return_projection=False)
    np.testing.assert_allclose(np.asarray(flax_global), global_latent.numpy(), rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(np.asarray(flax_map), np.moveaxis(feature_map.numpy(), 1, -1), rtol=1e-5, atol=2e-5)


# the losses and vit-pytorch's L2Norm


def test_region_loss_matches_torch():
    """Each student region against the teacher region of most similar latent (different region counts too)."""
    es_vit_torch = converters.import_vit_pytorch('vit_pytorch.es_vit')
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(shape, dtype=np.float32)
              for shape in ((2, 6, 10), (2, 4, 10), (2, 6, 5), (2, 4, 5), (1, 10))]
    teacher_logits, student_logits, teacher_latent, student_latent, centers = arrays
    float64 = lambda a: torch.from_numpy(a).double()  # noqa: E731  (vit-pytorch's exact loss)
    student = float64(student_logits).requires_grad_()
    expected = es_vit_torch.region_loss_fn(float64(teacher_logits), student, float64(teacher_latent),
                                           float64(student_latent), teacher_temp=0.1, student_temp=0.7,
                                           centers=float64(centers))
    expected.backward()

    def loss(student_logits):
        return es_vit.region_loss_fn(teacher_logits, student_logits, teacher_latent, student_latent,
                                     teacher_temp=0.1, student_temp=0.7, centers=centers)

    value, grad = jax.value_and_grad(loss)(jnp.asarray(student_logits))
    assert abs(float(value) - expected.item()) <= 2e-5 * max(1.0, abs(expected.item()))
    np.testing.assert_allclose(np.asarray(grad), student.grad.numpy(), rtol=1e-4, atol=1e-6)
    # the matching: a student region whose latent points along a teacher region's (orthogonal latents) is scored
    # against that region's distribution (a raw dot product, as vit-pytorch: latents' norms matter in general)
    perm = np.array([2, 0, 3, 1])
    latents = np.broadcast_to(3.0 * np.eye(4, dtype=np.float32), (2, 4, 4))
    logits = teacher_logits[:, :4]
    matched = es_vit.region_loss_fn(logits, logits[:, perm], latents, latents[:, perm], teacher_temp=1.0,
                                    student_temp=1.0, centers=0.0)
    probs = jax.nn.softmax(logits, axis=-1)
    entropy = -(probs * jnp.log(probs)).sum(-1).mean()
    np.testing.assert_allclose(float(matched), float(entropy), rtol=1e-5)


def test_projector_normalises_each_region_over_its_features():
    """vit-pytorch's L2Norm (dim=1) normalises the region projector's (b, h*w, d) input over the regions: a region's
    projection changes with the other regions. The intended projector (here, and torch under
    `torch_l2norm_over_features`) projects each region on its own; on (b, d) inputs the two agree."""
    es_vit_torch = converters.import_vit_pytorch('vit_pytorch.es_vit')
    torch.manual_seed(0)
    torch_mlp = es_vit_torch.MLP(6, 5, 3, hidden_size=8).eval()
    mlp = dino.MLP(6, 5, 3, 8)
    params = converters.from_torch(mlp, torch_mlp.state_dict(), example_inputs=(np.zeros((1, 6), np.float32),))
    regions = np.random.default_rng(0).standard_normal((2, 4, 6), dtype=np.float32)
    other = regions.copy()
    other[:, 1:] *= 3.0  # the other regions change, region 0 does not

    exact = float64_reference(torch_mlp)
    with torch.no_grad():
        broken = [exact(torch.from_numpy(r).double())[:, 0].numpy() for r in (regions, other)]
        with parity.es_vit.torch_l2norm_over_features():
            fixed = exact(torch.from_numpy(regions).double()).numpy()
            fixed_2d = exact(torch.from_numpy(regions[:, 0]).double()).numpy()
        unpatched_2d = exact(torch.from_numpy(regions[:, 0]).double()).numpy()
    assert not np.allclose(broken[0], broken[1], atol=1e-3)  # vit-pytorch: region 0 depends on the others

    out = np.asarray(mlp.apply(params, regions))
    np.testing.assert_allclose(out, fixed, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(mlp.apply(params, other))[:, 0], out[:, 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[:, 0], fixed_2d, rtol=1e-5, atol=1e-6)  # a region alone = a view
    np.testing.assert_allclose(fixed_2d, unpatched_2d, rtol=0, atol=0)  # the view projector is unchanged
    assert es_vit_torch.L2Norm.forward is not None and 'dim = 1' in __import__('inspect').getsource(
        es_vit_torch.L2Norm.forward)  # the patch was undone


# EMA, the optimiser mask, the encoder


def test_after_step_is_torchs_update_moving_average():
    model, variables, torch_model = converted_pair(ENTRY, TINY, seed=7)
    rng = np.random.default_rng(1)
    for name in [name for pair in es_vit.CENTERS for name in pair]:
        value = rng.standard_normal((1, TINY['num_classes_K']), dtype=np.float32)
        getattr(torch_model, name).copy_(torch.from_numpy(value))
    variables = converters.from_torch(model, torch_model.state_dict())  # teacher != student (randomised apart)
    for projector in ('view_projector', 'region_projector'):
        assert not np.array_equal(
            np.asarray(variables['params']['teacher_encoder'][projector]['net_0']['kernel']),
            np.asarray(variables['params']['student_encoder'][projector]['net_0']['kernel']))

    assert_after_step_matches_torch(model, variables, torch_model)


@pytest.mark.slow  # compiles for 8-15 s (the trainer's test checks it too)
def test_init_copies_the_student():
    model = ENTRY.build(0)
    variables = init_variables(model)
    params = variables['params']
    jax.tree_util.tree_map(np.testing.assert_array_equal, params['teacher_encoder'], params['student_encoder'])
    jax.tree_util.tree_map(np.testing.assert_array_equal, variables['batch_stats']['teacher_encoder'],
                           variables['batch_stats']['student_encoder'])
    assert sorted(variables['buffers']) == sorted(name for pair in es_vit.CENTERS for name in pair)
    np.testing.assert_array_equal(np.asarray(variables['buffers']['teacher_view_centers']), 0.0)


def test_trainable_mask_keeps_optax_off_the_teacher():
    """One AdamW step (weight decay would move every masked-in leaf) moves the student only; the EMA then moves
    the teacher towards it and the centres."""
    model, variables, _ = converted_pair(ENTRY, CONFIGS['cvt-stage-2'], seed=1)  # the parity test's: compiled once
    params = variables['params']
    mask = model.trainable_mask(params)
    assert not any(jax.tree_util.tree_leaves(mask['teacher_encoder']))
    assert all(jax.tree_util.tree_leaves(mask['student_encoder']))

    optimizer = optax.masked(optax.adamw(1e-2, weight_decay=0.5), mask)
    x = images((3, 16, 16, 3))
    (_, updates), grads = loss_and_grads(model)(variables, x, ENTRY.same_draws(model, (x,), 1)[0], {})
    for leaf in jax.tree_util.tree_leaves(grads['teacher_encoder']):
        np.testing.assert_array_equal(np.asarray(leaf), 0.0)

    @jax.jit
    def step(params, grads):
        changes, _ = optimizer.update(grads, optimizer.init(params), params)
        return optax.apply_updates(params, changes)

    new = {**variables, **updates, 'params': step(params, grads)}
    jax.tree_util.tree_map(np.testing.assert_array_equal, new['params']['teacher_encoder'], params['teacher_encoder'])
    # every student leaf moved (weight decay moves those without a gradient: no weight is zero here)
    moved = jax.tree_util.tree_leaves(jax.tree_util.tree_map(
        lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), new['params']['student_encoder'],
        params['student_encoder']))
    assert all(moved)
    for name in ('last_teacher_view_centers', 'last_teacher_region_centers'):
        assert not np.array_equal(np.asarray(new['buffers'][name]), np.asarray(variables['buffers'][name]))

    after = model.after_step(new)  # the learner's decays: 0.9
    expected = jax.tree_util.tree_map(lambda t, s: 0.9 * t + 0.1 * s, params['teacher_encoder'],
                                      new['params']['student_encoder'])
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                           after['params']['teacher_encoder'], expected)
    for center, last in es_vit.CENTERS:
        np.testing.assert_allclose(np.asarray(after['buffers'][center]),
                                   0.9 * np.asarray(new['buffers'][center]) + 0.1 * np.asarray(new['buffers'][last]),
                                   rtol=1e-6, atol=1e-7)


def test_encoder_variables_are_a_plain_cvt():
    """params / batch_stats ['student_encoder']['net'] export to vit-pytorch's CvT (strict), same logits."""
    _, variables, torch_model = converted_pair(ENTRY, TINY, seed=8)
    net = TINY['net']
    encoder = {collection: variables[collection]['student_encoder']['net'] for collection in ('params', 'batch_stats')}
    state = converters.to_torch(net, encoder)
    plain = torch_class(parity.BY_NAME['cvt.CvT'])(**registry.torch_kwargs(net)).eval()
    plain.load_state_dict(state, strict=True)  # loads into the float32 model users build; the expected from float64
    x = images((2, 16, 16, 3), seed=9)
    with torch.no_grad():
        expected = float64_reference(plain)(nchw(x)).numpy()
        also = float64_reference(torch_model.net.eval())(nchw(x)).numpy()  # the learner's own net is that network
    np.testing.assert_allclose(np.asarray(jax.jit(net.apply)(encoder, x)), expected, rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(also, expected, rtol=0, atol=0)


@pytest.mark.slow  # compiles for 10-20 s
def test_draws_come_from_the_named_streams():
    model = ENTRY.build(0)
    variables = init_variables(model)
    x = images((2, 16, 16, 3))
    run = jax.jit(lambda r: model.apply(variables, x, rngs=r))
    keys = lambda a, c, d=0: {'augment': jax.random.key(a), 'crop': jax.random.key(c), 'dropout': jax.random.key(d)}
    assert float(run(keys(1, 2))) == float(run(keys(1, 2, 5)))  # eval: no dropout
    assert float(run(keys(1, 2))) != float(run(keys(1, 4)))


# configuration and inputs


def test_streams_and_shared_pieces_are_dinos():
    assert EsViTTrainer.rng_streams == Dino.rng_streams == ('augment', 'crop')
    assert EsViTTrainer.trainable_mask is Dino.trainable_mask and EsViTTrainer.after_step is not Dino.after_step
    assert es_vit.trainable_mask is dino.trainable_mask and es_vit.MLP is dino.MLP
    assert es_vit.EsViTTrainer.crop_boxes is dino.Dino.crop_boxes
    assert dino.resolve_hidden_layer(CVT, -2) == 'layers'
    assert EsViTTrainer(net=CVT, image_size=16).torch_aliases() == {'net.': 'student_encoder.net.'}


@pytest.mark.parametrize('overrides, message', [
    (dict(image_size=(16, 16)), r'image_size=\(16, 16\)'),
    (dict(projection_layers=0), 'projection_layers=0'),
    (dict(num_classes_K=0), 'num_classes_K=0'),
    (dict(teacher_temp=-1.0), 'teacher_temp=-1.0'),
    (dict(local_upper_crop_scale=0.01), '0.01'),
    (dict(center_moving_average_decay=2.0), 'center_moving_average_decay=2.0'),
    (dict(hidden_layer=7), 'hidden_layer=7'),
])
def test_bad_configs_name_the_value(overrides, message):
    with pytest.raises(ValueError, match=message):
        ENTRY.build(0, **overrides)


def test_hidden_layers_without_a_feature_map_and_bad_inputs():
    x = images((1, 16, 16, 3))
    init = lambda model, x: jax.eval_shape(lambda: model.init({'params': jax.random.key(0)}, x))
    with pytest.raises(ValueError, match=r"hidden_layer='to_latent' of ViT gives shape \(1, 16\)"):
        init(EsViTTrainer(net=VIT, image_size=16, hidden_layer='to_latent', **IDENTITY), x)
    with pytest.raises(ValueError, match=r"hidden_layer='transformer' of ViT gives shape \(1, 5, 16\)"):
        init(EsViTTrainer(net=VIT, image_size=16, hidden_layer='transformer', **IDENTITY), x)
    with pytest.raises(ValueError, match=r'hidden_layer=-1 of CvT gives shape \(1, 3\)'):
        init(ENTRY.build(0, hidden_layer=-1), x)
    with pytest.raises(ValueError, match="'no_such_layer'"):
        init(ENTRY.build(0, hidden_layer='no_such_layer'), x)
    with pytest.raises(ValueError, match='projection_hidden_size=6'):  # the map has 8 channels
        init(ENTRY.build(0, projection_layers=1, projection_hidden_size=6), x)
    with pytest.raises(ValueError, match=r'\(16, 16, 3\)'):
        init(ENTRY.build(0), x[0])
