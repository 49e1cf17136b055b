"""Pretraining and distillation through the trainer (`config.objective`): the loss falls on the embedded digits,
the checkpoint's encoder exports to vit-pytorch as a plain model, DINO's and EsViT's teachers follow the
student."""

import jax
import ml_collections
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import parity
from vit_flax.__main__ import export
from tests.conftest import assert_close_outputs, float64_reference, nchw, torch_class
from tests.test_train import losses, tiny_config
from vit_flax import converters, data, registry
from vit_flax.probe import probe_workdir
from vit_flax.train import build_model, build_trainee, train_and_evaluate
from vit_flax.training import checkpoint, objectives


def pretrain(tmp_path, objective, steps=100, **overrides):
    config = tiny_config(objective=objective, total_steps=steps, eval_every=steps, checkpoint_every=steps,
                         learning_rate=3e-3, warmup_steps=10, log_every=5, **overrides)
    if objective == 'mp3':  # MP3 pretrains its own ViT (sin-cos positions, no cls token or emb_dropout)
        config.model_name = 'mp3.ViT'
        del config.model['emb_dropout']
    metrics = train_and_evaluate(config, tmp_path)
    return config, metrics, losses(tmp_path)


@pytest.mark.parametrize('objective', ['mae', 'simmim', 'mpp', 'mp3'])
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
    with pytest.raises(TypeError, match='masking_rate'):
        pretrain(tmp_path, 'mae', steps=2, objective_kwargs={'masking_rate': 0.5})


def test_distillation_from_a_trained_teacher(tmp_path):
    teacher_dir = tmp_path / 'teacher'
    train_and_evaluate(tiny_config(total_steps=30, eval_every=30, checkpoint_every=30), teacher_dir)
    config = tiny_config(model_name='distill.DistillableViT', objective='distill', total_steps=30, eval_every=30,
                         checkpoint_every=30, objective_kwargs={'teacher_workdir': str(teacher_dir), 'hard': True})
    metrics = train_and_evaluate(config, tmp_path / 'student')
    assert np.isfinite(metrics['eval_loss'])
    curve = losses(tmp_path / 'student')
    assert np.mean(curve[-5:]) < np.mean(curve[:3]), curve
    with pytest.raises(ValueError, match='teacher_workdir'):
        train_and_evaluate(tiny_config(model_name='distill.DistillableViT', objective='distill'), tmp_path / 'none')


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
    config, metrics, curve = pretrain(tmp_path, 'dino', steps=10, objective_kwargs={
        'num_classes_K': 32, 'projection_hidden_size': 32, 'projection_layers': 2})
    assert np.isfinite(metrics['eval_loss']) and all(np.isfinite(curve))
    assert_teacher_follows_student_by_ema(config, tmp_path, ['teacher_centers'])


@pytest.mark.slow  # 40 s
def test_esvit_trains_a_cvt_and_moves_the_teacher_by_ema(tmp_path):
    """EsViT on a tiny CvT (8x8 one-channel digits -> a 2 x 2 feature map, hidden_layer='layers')."""
    config = tiny_config(objective='esvit', total_steps=4, eval_every=4, checkpoint_every=4, learning_rate=3e-3,
                         warmup_steps=2, log_every=1, objective_kwargs={
                             'num_classes_K': 32, 'projection_hidden_size': 32, 'projection_layers': 2})
    config.model_name = 'cvt.CvT'
    config.model = ml_collections.ConfigDict(dict(
        num_classes=10, channels=1, s1_emb_dim=16, s1_emb_kernel=3, s1_emb_stride=2, s2_emb_dim=16, s2_heads=1,
        s2_depth=1, s3_emb_dim=16, s3_heads=1, s3_depth=1, s3_emb_stride=1))
    metrics = train_and_evaluate(config, tmp_path)
    assert np.isfinite(metrics['eval_loss']) and all(np.isfinite(losses(tmp_path)))
    assert_teacher_follows_student_by_ema(config, tmp_path, ['teacher_view_centers', 'teacher_region_centers'])
