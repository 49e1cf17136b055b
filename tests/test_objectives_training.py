"""Pretraining and distillation through the trainer (`config.objective`): every objective states the protocol the
trainer reads (its model's keyword and place in the tree, rng streams, labels, frozen parameters, after-step
update), the loss falls on the embedded digits, the checkpoint's encoder exports to vit-pytorch as a plain model,
DINO's and EsViT's teachers follow the student."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import parity
from vit_flax.__main__ import export
from tests.conftest import assert_close_outputs, float64_reference, nchw, torch_class
from tests.train_helpers import losses, tiny_config
from vit_flax import converters, data, registry
from vit_flax.probe import probe_workdir
from vit_flax.train import build_model, build_trainee, train_and_evaluate
from vit_flax.training import checkpoint, objectives

CVT = dict(num_classes=10, channels=1, s1_emb_dim=16, s1_emb_kernel=3, s1_emb_stride=2, s2_emb_dim=16, s2_heads=1,
           s2_depth=1, s3_emb_dim=16, s3_heads=1, s3_depth=1, s3_emb_stride=1)  # 8x8 digits -> a 2 x 2 feature map
SMALL_PROJECTOR = {'num_classes_K': 32, 'projection_hidden_size': 32, 'projection_layers': 2}
# 8x8 digits -> 16 patches of 2 x 2 under two slot levels of 4 and 2 slots, SIGReg on both
WWT = dict(image_size=8, patch_size=2, num_classes=10, channels=1, dim=16, depth=1, num_slots=(4, 2), sigreg_slots=True,
           heads=2, dim_head=8, mlp_dim=32)
# 8x8 digits as clips of 2 frames of 2 x 2 patches (levjepa's trainer side repeats each image)
LEVJEPA = dict(image_size=8, patch_size=4, frames=2, channels=1, dim=16, depth=1, heads=2, dim_head=8, mlp_dim=32)


def objective_config(objective, **overrides):
    """A tiny digits config for `objective`, on the model it takes: MP3 its own ViT (sin-cos positions, no cls token
    or emb_dropout), EsViT a CvT (a feature map), distillation a DistillableViT, WWT's autoencoder a WWT, LeVJEPA a
    VideoTransformer."""
    config = tiny_config(objective=objective, **overrides)
    if objective == 'mp3':
        config.model_name = 'mp3.ViT'
        del config.model['emb_dropout']
    elif objective == 'esvit':
        config.model_name = 'cvt.CvT'
        config.model = ml_collections.ConfigDict(CVT)
    elif objective == 'distill':
        config.model_name = 'distill.DistillableViT'
    elif objective == 'wwt':
        config.model_name = 'wwt.WWT'
        config.model = ml_collections.ConfigDict(WWT)
    elif objective == 'levjepa':
        config.model_name = 'levjepa.VideoTransformer'
        config.model = ml_collections.ConfigDict(LEVJEPA)
    return config


# the protocol


@pytest.mark.parametrize('name', list(objectives.OBJECTIVES))
def test_every_objective_states_the_protocol_and_holds_the_model_at_its_encoder_path(name, monkeypatch):
    wrapper = objectives.OBJECTIVES[name].wrapper
    assert isinstance(wrapper, objectives.Objective)  # class attributes, read before any instance exists
    assert isinstance(wrapper.encoder_path, tuple) and isinstance(wrapper.rng_streams, tuple)
    assert 'dropout' not in wrapper.rng_streams and isinstance(wrapper.takes_labels, bool)

    # distillation's teacher (a trained run) is a stand-in here: any function of the images
    monkeypatch.setattr(objectives, 'teacher_from_workdir', lambda workdir: lambda images: jnp.zeros((len(images), 10)))
    config = objective_config(name, objective_kwargs=SMALL_PROJECTOR if name in ('dino', 'esvit') else {})
    info = data.dataset_info(config)
    model, trainee = build_model(config), build_trainee(config, info)
    assert isinstance(trainee, wrapper) and isinstance(trainee, objectives.Objective)
    wrapped = getattr(trainee, wrapper.encoder_keyword)
    assert type(wrapped) is type(model) and registry.torch_kwargs(wrapped) == registry.torch_kwargs(model)

    # the model's variables sit at encoder_path, with the plain model's tree, in every collection it has
    inputs = objectives.example_inputs(name, info)
    assert len(inputs) == (2 if wrapper.takes_labels else 1)
    shapes = lambda tree: jax.tree_util.tree_map(jnp.shape, tree)  # noqa: E731
    key = registry.init_rngs(jax.random.key(0))
    plain = jax.eval_shape(model.init, key, inputs[0])
    assert shapes(objectives.encoder_variables(name, jax.eval_shape(trainee.init, key, *inputs))) == shapes(plain)


@pytest.mark.parametrize('name, frozen', [('dino', 'teacher_encoder'), ('esvit', 'teacher_encoder'), ('mae', None),
                                          ('distill', None)])
def test_trainable_mask_freezes_the_teacher_of_the_self_distillation_objectives_only(name, frozen, monkeypatch):
    monkeypatch.setattr(objectives, 'teacher_from_workdir', lambda workdir: lambda images: images)
    config = objective_config(name)
    trainee = build_trainee(config, data.dataset_info(config))
    mask_fn = objectives.trainable_mask_fn(trainee)
    if frozen is None:
        assert mask_fn is None and not isinstance(trainee, objectives.FreezesParameters)
        return
    params = {'student_encoder': {'kernel': np.ones(2)}, frozen: {'kernel': np.zeros(2)}}
    assert mask_fn(params) == {'student_encoder': {'kernel': True}, frozen: {'kernel': False}}


def test_dinos_after_step_moves_the_teacher_and_centres_maes_leaves_the_variables():
    config = objective_config('dino', objective_kwargs={'moving_average_decay': 0.75,
                                                        'center_moving_average_decay': 0.5})
    dino_trainee = build_trainee(config, data.dataset_info(config))
    assert isinstance(dino_trainee, objectives.UpdatesAfterStep)
    variables = {'params': {'student_encoder': {'w': jnp.ones(3)}, 'teacher_encoder': {'w': jnp.zeros(3)}},
                 'buffers': {'teacher_centers': jnp.zeros(2), 'last_teacher_centers': jnp.full(2, 4.0)}}
    after = objectives.after_step(dino_trainee, variables)
    np.testing.assert_allclose(after['params']['teacher_encoder']['w'], 0.25)  # the configured decays
    np.testing.assert_array_equal(after['params']['student_encoder']['w'], 1.0)
    np.testing.assert_allclose(after['buffers']['teacher_centers'], 2.0)
    np.testing.assert_array_equal(after['buffers']['last_teacher_centers'], 4.0)

    config = objective_config('mae')
    mae_trainee = build_trainee(config, data.dataset_info(config))
    assert not isinstance(mae_trainee, objectives.UpdatesAfterStep)
    assert objectives.after_step(mae_trainee, variables) is variables


# training


def pretrain(tmp_path, objective, steps=100, **overrides):
    config = objective_config(objective, total_steps=steps, eval_every=steps, checkpoint_every=steps,
                              learning_rate=3e-3, warmup_steps=10, log_every=5, **overrides)
    metrics = train_and_evaluate(config, tmp_path)
    return config, metrics, losses(tmp_path)


# MAE in `make test`; the other objectives' losses have their parity tests there, their training runs here in
# `make test-slow`
@pytest.mark.parametrize('objective', ['mae', *(pytest.param(name, marks=pytest.mark.slow)
                                                for name in ('simmim', 'mpp', 'mp3'))])
def test_pretraining_lowers_the_loss_and_exports_the_encoder(tmp_path, objective):
    config, metrics, curve = pretrain(tmp_path, objective)
    assert set(metrics) == {'eval_loss'} and np.isfinite(metrics['eval_loss'])
    assert np.mean(curve[-4:]) < 0.8 * np.mean(curve[:2]), curve

    assert_exports_as_the_model(config, tmp_path)
    if objective == 'mae':  # the linear probe reads the pretrained encoder (README: make pretrain-demo)
        assert 0.3 < probe_workdir(tmp_path) <= 1.0


def assert_exports_as_the_model(config, workdir):
    """`converters export` writes the model inside the objective: it loads strictly into its vit-pytorch class and
    gives the same outputs as the Flax model on the checkpoint's variables."""
    out = export(workdir, workdir / 'encoder.safetensors')
    entry = parity.BY_NAME[config.model_name]
    torch_model = torch_class(entry)(**converters.torch_keywords(config.model.to_dict())).eval()
    torch_model.load_state_dict(load_file(out), strict=True)  # the float32 model users load; expected from float64
    encoder = objectives.encoder_variables(config.objective, checkpoint.restore_variables(workdir))
    images = np.random.default_rng(0).standard_normal((2, 8, 8, 1), dtype=np.float32)
    with torch.no_grad():
        expected = float64_reference(torch_model)(nchw(images))
    assert_close_outputs(build_model(config).apply(encoder, images), expected, entry.tolerance)


def test_unknown_objective_keyword_is_named(tmp_path):
    with pytest.raises(ValueError, match="config.objective_kwargs.masking_rate is not a key the trainer knows; did "
                                         "you mean 'masking_ratio'"):
        pretrain(tmp_path, 'mae', steps=2, objective_kwargs={'masking_rate': 0.5})


def test_distillation_from_a_trained_teacher(tmp_path):
    teacher_dir = tmp_path / 'teacher'
    train_and_evaluate(tiny_config(total_steps=30, eval_every=30, checkpoint_every=30), teacher_dir)
    config = objective_config('distill', total_steps=30, eval_every=30, checkpoint_every=30,
                              objective_kwargs={'teacher_workdir': str(teacher_dir), 'hard': True})
    metrics = train_and_evaluate(config, tmp_path / 'student')
    assert np.isfinite(metrics['eval_loss'])
    curve = losses(tmp_path / 'student')
    assert np.mean(curve[-5:]) < np.mean(curve[:3]), curve
    with pytest.raises(ValueError, match='teacher_workdir'):
        train_and_evaluate(objective_config('distill'), tmp_path / 'none')


def assert_teacher_follows_student_by_ema(config, workdir, centres):
    """DINO / EsViT: the teacher starts as a copy of the student and moves part of the way towards it (EMA, not
    the optimiser); the centres move off zero; the student's network exports as the configured model."""
    initial = build_trainee(config, data.dataset_info(config)).init(
        registry.init_rngs(jax.random.key(config.seed)), np.zeros((1, 8, 8, 1), np.float32))
    trained = checkpoint.restore_variables(workdir)
    leaves = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(tree)])
    teacher, student = leaves(trained['params']['teacher_encoder']), leaves(trained['params']['student_encoder'])
    teacher_at_init = leaves(initial['params']['teacher_encoder'])
    np.testing.assert_array_equal(teacher_at_init, leaves(initial['params']['student_encoder']))
    assert not np.allclose(teacher, teacher_at_init) and not np.allclose(teacher, student)
    assert np.abs(teacher - teacher_at_init).max() < np.abs(student - teacher_at_init).max()
    for name in centres:
        assert np.abs(np.asarray(trained['buffers'][name])).max() > 0, name
    assert_exports_as_the_model(config, workdir)


@pytest.mark.slow  # 30 s; DINO's loss, EMA and gradients are checked against vit-pytorch in make test (test_dino.py)
def test_dino_trains_the_student_and_moves_the_teacher_by_ema(tmp_path):
    config, metrics, curve = pretrain(tmp_path, 'dino', steps=10, objective_kwargs=SMALL_PROJECTOR)
    assert np.isfinite(metrics['eval_loss']) and all(np.isfinite(curve))
    assert_teacher_follows_student_by_ema(config, tmp_path, ['teacher_centers'])


@pytest.mark.slow  # 40 s
def test_esvit_trains_a_cvt_and_moves_the_teacher_by_ema(tmp_path):
    """EsViT on a tiny CvT (8x8 one-channel digits -> a 2 x 2 feature map, hidden_layer='layers')."""
    config = objective_config('esvit', total_steps=4, eval_every=4, checkpoint_every=4, learning_rate=3e-3,
                              warmup_steps=2, log_every=1, objective_kwargs=SMALL_PROJECTOR)
    metrics = train_and_evaluate(config, tmp_path)
    assert np.isfinite(metrics['eval_loss']) and all(np.isfinite(losses(tmp_path)))
    assert_teacher_follows_student_by_ema(config, tmp_path, ['teacher_view_centers', 'teacher_region_centers'])
