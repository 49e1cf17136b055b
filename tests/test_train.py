"""The trainer: config overrides, 1 vs 8 devices, pmap vs jit, FSDP, gradient accumulation, exact resume after
SIGKILL, checkpoint errors, divergence, export / import through the command line."""

import json
import os
import signal
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util

from vit_flax import converters
from vit_flax.__main__ import main as converters_main
from vit_flax import data
from vit_flax.train import TrainingDiverged, train_and_evaluate
from vit_flax.training.checkpoint import CheckpointError
from vit_flax.training.metrics import read_metrics
from tests.conftest import float64_reference, nchw
from tests.train_helpers import REPO, losses, run_python, tiny_config, write_class_folders


# the same training on different device layouts

LAYOUT_RUNS = {
    # name: (devices, overrides)
    'jit1_dropout': (1, {'model.dropout': 0.1}),
    'jit8_dropout': (8, {'model.dropout': 0.1}),
    'jit1': (1, {}),
    'accum2': (1, {'grad_accum_steps': 2}),
    'pmap8': (8, {'parallelism': 'pmap'}),
    'fsdp8': (8, {'mesh.data': 2, 'mesh.fsdp': 4, 'mesh.fsdp_min_size': 256}),
}


@pytest.fixture(scope='module')
def layout_losses(tmp_path_factory):
    root = tmp_path_factory.mktemp('layouts')
    for devices in (1, 8):
        runs = {name: overrides for name, (d, overrides) in LAYOUT_RUNS.items() if d == devices}
        run_python(f"""
            import jax
            assert jax.device_count() == {devices}
            from tests.train_helpers import tiny_config
            from vit_flax.train import train_and_evaluate
            for name, overrides in {runs!r}.items():
                train_and_evaluate(tiny_config(**overrides), {str(root)!r} + '/' + name)
            if {devices} == 8:  # the FSDP run really splits its larger arrays over the 'fsdp' axis
                import numpy as np
                from vit_flax.train import Trainer, build_model
                config = tiny_config(**{LAYOUT_RUNS['fsdp8'][1]!r})
                trainer = Trainer(config, build_model(config), (np.zeros((1, 8, 8, 1), np.float32),), 10)
                specs = [s.spec for s in jax.tree_util.tree_leaves(trainer.state_shardings.params)]
                assert any('fsdp' in spec for spec in specs) and jax.sharding.PartitionSpec() in specs, specs
        """, devices=devices)
    return {name: losses(root / name) for name in LAYOUT_RUNS}


def test_same_losses_on_1_or_8_devices(layout_losses):
    assert len(layout_losses['jit1_dropout']) == 6
    np.testing.assert_allclose(layout_losses['jit8_dropout'], layout_losses['jit1_dropout'], rtol=1e-5)


def test_pmap_equals_jit_without_dropout(layout_losses):
    np.testing.assert_allclose(layout_losses['pmap8'], layout_losses['jit1'], rtol=1e-5)


def test_fsdp_equals_data_parallel(layout_losses):
    np.testing.assert_allclose(layout_losses['fsdp8'], layout_losses['jit1'], rtol=1e-5)


def test_gradient_accumulation_equals_one_big_batch(layout_losses):
    np.testing.assert_allclose(layout_losses['accum2'], layout_losses['jit1'], rtol=1e-5)


def test_dropout_changes_the_losses(layout_losses):
    assert not np.allclose(layout_losses['jit1_dropout'], layout_losses['jit1'])


# resume


def test_sigkill_then_resume_logs_the_same_losses(tmp_path):
    command = [sys.executable, '-m', 'vit_flax.train', '--config=vit_flax/configs/digits.py',
               '--config.model.patch_size=4', '--config.model.dim=16', '--config.model.depth=1',
               '--config.model.mlp_dim=32', '--config.model.dropout=0.1', '--config.batch_size=32',
               '--config.total_steps=150', '--config.log_every=1', '--config.eval_every=150',
               '--config.checkpoint_every=25', '--config.progress_bar=False']
    env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
    reference = tmp_path / 'reference'
    subprocess.run([*command, f'--workdir={reference}'], cwd=REPO, env=env, check=True, capture_output=True)

    killed = tmp_path / 'killed'
    process = subprocess.Popen([*command, f'--workdir={killed}'], cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (killed / 'checkpoints' / '50').exists():
        assert process.poll() is None and time.time() < deadline, 'the run ended before it could be killed'
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    interrupted_at = max(m['step'] for m in read_metrics(killed))
    assert interrupted_at < 150

    subprocess.run([*command, f'--workdir={killed}'], cwd=REPO, env=env, check=True, capture_output=True)
    assert without_speed(read_metrics(killed)) == without_speed(read_metrics(reference))


def without_speed(rows):
    """metrics.jsonl rows without the wall-clock throughput, which no two runs share."""
    return [{k: v for k, v in row.items() if k != 'images_per_second'} for row in rows]


def test_rerun_of_a_finished_run_resumes_and_does_not_retrain(tmp_path):
    first = train_and_evaluate(tiny_config(), tmp_path)
    lines = read_metrics(tmp_path)
    again = train_and_evaluate(tiny_config(), tmp_path)
    assert read_metrics(tmp_path) == lines  # nothing retrained, nothing logged twice
    assert again == pytest.approx(first)


def test_corrupt_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    train_and_evaluate(tiny_config(), tmp_path)
    latest = tmp_path / 'checkpoints' / '6'
    for path in (latest / 'state').rglob('*'):
        if path.is_file():
            path.write_bytes(b'garbage')
    with pytest.raises(CheckpointError, match=r'checkpoints/6 could not be restored'):
        train_and_evaluate(tiny_config(total_steps=9), tmp_path)
    assert (tmp_path / 'checkpoints' / '6').exists() and not (tmp_path / 'checkpoints' / '9').exists()


def test_workdir_of_another_model_is_refused(tmp_path):
    train_and_evaluate(tiny_config(), tmp_path)
    with pytest.raises(ValueError, match=r'different model: .*saved .*dim.: 16'):
        train_and_evaluate(tiny_config(**{'model.dim': 24}), tmp_path)


def test_nan_loss_stops_with_a_message(tmp_path):
    with pytest.raises(TrainingDiverged, match='became non-finite at step'):
        train_and_evaluate(tiny_config(learning_rate=1e30, grad_clip_norm=0.0, total_steps=20), tmp_path)


@pytest.mark.parametrize('overrides, message', [
    ({'model.num_classes': 7}, 'config.model.num_classes=7 but dataset .digits. has 10'),
    ({'model.image_size': 16}, r'config.model.image_size=16 but dataset images are \(8, 8\)'),
    ({'batch_size': 30, 'grad_accum_steps': 4}, 'batch_size=30 must be divisible by devices x grad_accum_steps'),
    ({'objective': 'byol'}, "objective='byol': this trainer knows \\('supervised', 'mae'"),
    ({'parallelism': 'tpu'}, "parallelism='tpu'"),
])
def test_bad_configs_are_named(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        train_and_evaluate(tiny_config(**overrides), tmp_path)


# the command line, export and import


def test_cli_overrides_export_and_import(tmp_path):
    workdir = tmp_path / 'run'
    subprocess.run([sys.executable, '-m', 'vit_flax.train', '--config=vit_flax/configs/digits.py',
                    f'--workdir={workdir}', '--config.model.depth=1', '--config.model.dim=16',
                    '--config.model.patch_size=4', '--config.total_steps=4', '--config.eval_every=4',
                    '--config.progress_bar=False'], cwd=REPO, check=True, capture_output=True,
                   env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
    saved = json.loads((workdir / 'config.json').read_text())
    assert saved['model']['depth'] == 1 and saved['total_steps'] == 4
    # TensorBoard holds what metrics.jsonl holds, step by step
    events = EventAccumulator(str(workdir / 'tensorboard'))
    events.Reload()
    logged = {(tag, event.step): float(tensor_util.make_ndarray(event.tensor_proto))
              for tag in events.Tags()['tensors'] for event in events.Tensors(tag)}
    expected = {(key, m['step']): value for m in read_metrics(workdir) for key, value in m.items() if key != 'step'}
    assert {'train_loss', 'eval_accuracy'} <= {tag for tag, _ in expected} and logged == pytest.approx(expected)
    assert [m['step'] for m in read_metrics(workdir) if 'eval_accuracy' in m] == [4]

    out = tmp_path / 'digits.safetensors'
    converters_main(['export', f'--workdir={workdir}', f'--out={out}'])
    sidecar = json.loads(out.with_suffix('.json').read_text())
    assert sidecar['input']['size'] == [8, 8] and sidecar['input']['channels'] == 1
    assert len(sidecar['input']['mean']) == 1

    # a PyTorch user reproduces the Flax predictions from the sidecar alone
    images, labels = data.raw_eval_split(tiny_config())
    mean, std = np.array(sidecar['input']['mean']), np.array(sidecar['input']['std'])
    torch_model = converters.load_torch(out)  # loads as users do (float32); the expected logits from float64
    normalised = ((images - mean) / std).astype(np.float32)
    with torch.no_grad():
        torch_logits = float64_reference(torch_model)(nchw(normalised))
    model, variables = converters.load_flax(out)
    flax_logits = np.asarray(model.apply(variables, normalised))
    np.testing.assert_allclose(flax_logits, torch_logits.numpy(), atol=2e-5 * max(1, np.abs(flax_logits).max()))

    imported = tmp_path / 'imported'
    converters_main(['import', f'--weights={out}', f'--out={imported}'])
    config = ml_collections.ConfigDict(saved)
    config.update(init_from=str(imported), total_steps=1, eval_every=1, learning_rate=0.0, warmup_steps=0)
    fine_tuned = train_and_evaluate(config, tmp_path / 'fine-tune')
    accuracy = float((flax_logits.argmax(-1) == labels).mean())
    assert fine_tuned['eval_accuracy'] == pytest.approx(accuracy, abs=1e-6)


def test_init_from_another_model_is_refused(tmp_path):
    train_and_evaluate(tiny_config(), tmp_path / 'a')
    with pytest.raises(CheckpointError, match='holds variables for another model'):
        train_and_evaluate(tiny_config(init_from=str(tmp_path / 'a'), **{'model.dim': 24}), tmp_path / 'b')


# options that change the step: one short run each, against the plain run


@pytest.fixture(scope='module')
def plain_losses(tmp_path_factory):
    return losses_of(tiny_config(), tmp_path_factory.mktemp('plain'))


def losses_of(config, workdir):
    train_and_evaluate(config, workdir)
    return np.array(losses(workdir))


def test_bfloat16_compute_tracks_float32(tmp_path, plain_losses):
    bf16 = losses_of(tiny_config(compute_dtype='bfloat16'), tmp_path)
    assert np.isfinite(bf16).all() and not np.array_equal(bf16, plain_losses)
    np.testing.assert_allclose(bf16, plain_losses, rtol=0.02)  # bf16 keeps ~3 significant digits


def test_mixup_and_label_smoothing_change_the_targets(tmp_path, plain_losses):
    mixed = losses_of(tiny_config(mixup_alpha=0.4), tmp_path / 'mixup')
    unsmoothed = losses_of(tiny_config(label_smoothing=0.0), tmp_path / 'unsmoothed')
    assert np.isfinite(mixed).all() and not np.allclose(mixed, plain_losses)
    assert unsmoothed[0] < plain_losses[0]  # smoothed targets cost more at the same (near uniform) predictions


def test_trains_on_an_image_folder(tmp_path):
    config = tiny_config(dataset='image_folder', data_dir=str(write_class_folders(tmp_path / 'images')),
                         batch_size=4, eval_batch_size=4, **{'model.channels': 3, 'model.num_classes': 2})
    metrics = train_and_evaluate(config, tmp_path / 'run')
    assert 0.0 <= metrics['eval_accuracy'] <= 1.0 and np.isfinite(metrics['eval_loss'])
    assert len(losses(tmp_path / 'run')) == 6
