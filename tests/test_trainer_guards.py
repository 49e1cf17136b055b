"""What the trainer and the command line refuse, and what they never lose (issue 19): non-finite steps never reach a
checkpoint, a refused start leaves its workdir as it was, every model keyword and input option is settable from the
command line while an unknown key is named, no run silently starts over, `vit-flax import` replaces its output
whole, and the commands end known errors with one `error:` line."""

import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from vit_flax import registry
from vit_flax.__main__ import main as cli_main
from vit_flax.train import TrainingDiverged, train_and_evaluate
from vit_flax.training.checkpoint import CheckpointError, restore_variables
from vit_flax.training import config as training_config
from vit_flax.training.config import OPTIONAL_KEYS, model_keywords
from vit_flax.training.metrics import read_metrics
from tests.train_helpers import REPO, tiny_config, write_class_folders


def run_command(*args, check=True):
    """`python -m <args>` on CPU; returns the completed process."""
    result = subprocess.run([sys.executable, '-m', *args], cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def assert_one_error_line(result, *fragments):
    """A refusal: non-zero exit, no traceback, the last stderr line `error: ...` holding every fragment."""
    assert result.returncode != 0
    assert 'Traceback' not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith('error: '), result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in last, last


def checkpoint_steps(workdir):
    return sorted(int(path.name) for path in (workdir / 'checkpoints').iterdir() if path.name.isdigit())


# item 4: a non-finite step is found at once and never saved


def test_a_non_finite_step_is_named_and_never_saved(tmp_path):
    # lr 1e30 without clipping: the first update with a non-zero learning rate (step 2; warmup starts at 0) blows
    # the parameters up; checkpoints at every step, loss logged only every 10 (the old check ran on log steps only)
    config = tiny_config(learning_rate=1e30, grad_clip_norm=0.0, total_steps=20, log_every=10, eval_every=20,
                         checkpoint_every=1, keep_checkpoints=50)
    diverged, clean = tmp_path / 'diverged', tmp_path / 'clean'
    with pytest.raises(TrainingDiverged) as raised:
        train_and_evaluate(config, diverged)
    message = str(raised.value)
    bad = int(message.split('non-finite at step ')[1].split(';')[0])
    assert checkpoint_steps(diverged) == list(range(1, bad)), message
    assert f'the last checkpoint (step {bad - 1}) predates it' in message
    assert all(np.isfinite(leaf).all() for leaf in jax.tree_util.tree_leaves(restore_variables(diverged)))

    # the step it names is the first bad one: the same run stopped before it logs finite losses throughout
    train_and_evaluate(tiny_config(learning_rate=1e30, grad_clip_norm=0.0, total_steps=bad - 1, log_every=1,
                                   eval_every=bad - 1, checkpoint_every=bad - 1), clean)
    assert all(np.isfinite(row['train_loss']) for row in read_metrics(clean) if 'train_loss' in row)


# item 5: a refused start writes nothing


def test_a_failed_start_leaves_no_record_and_the_corrected_command_runs(tmp_path):
    with pytest.raises(ValueError, match='divisible by the patch size'):
        train_and_evaluate(tiny_config(**{'model.patch_size': 5}), tmp_path)
    assert not (tmp_path / 'config.json').exists()
    train_and_evaluate(tiny_config(), tmp_path)
    assert json.loads((tmp_path / 'config.json').read_text())['model']['patch_size'] == 4


def test_a_refused_resume_keeps_the_record(tmp_path):
    train_and_evaluate(tiny_config(), tmp_path)
    record = (tmp_path / 'config.json').read_bytes()
    with pytest.raises(ValueError, match='different model'):
        train_and_evaluate(tiny_config(**{'model.dim': 24}), tmp_path)
    for path in (tmp_path / 'checkpoints' / '6' / 'state').rglob('*'):
        if path.is_file():
            path.write_bytes(b'garbage')
    with pytest.raises(CheckpointError, match='could not be restored'):
        train_and_evaluate(tiny_config(total_steps=9), tmp_path)
    assert (tmp_path / 'config.json').read_bytes() == record


# item 7: nothing is kept silently or started over silently


def test_a_workdir_whose_checkpoints_are_gone_is_not_started_over(tmp_path):
    import shutil

    train_and_evaluate(tiny_config(), tmp_path)
    metrics = (tmp_path / 'metrics.jsonl').read_bytes()
    shutil.rmtree(tmp_path / 'checkpoints')
    with pytest.raises(ValueError, match=r'metrics up to step 6\) whose checkpoints/ folder is gone'):
        train_and_evaluate(tiny_config(), tmp_path)
    assert (tmp_path / 'metrics.jsonl').read_bytes() == metrics


# item 10: the trainer's numbers, before anything is written


@pytest.mark.parametrize('key, value, message', [
    ('keep_checkpoints', 0, 'config.keep_checkpoints=0: must be a positive integer'),
    ('checkpoint_every', 0, 'config.checkpoint_every=0: must be a positive integer'),
    ('log_every', 0, 'config.log_every=0: must be a positive integer'),
    ('eval_every', -1, 'config.eval_every=-1: must be a positive integer'),
    ('total_steps', 0, 'config.total_steps=0: must be a positive integer'),
    ('grad_accum_steps', 0, 'config.grad_accum_steps=0: must be a positive integer'),
    ('learning_rate', -1e-3, 'config.learning_rate=-0.001: must be >= 0'),
    ('learning_rate', float('nan'), 'config.learning_rate=nan: must be >= 0'),
    ('weight_decay', -0.1, 'config.weight_decay=-0.1: must be >= 0'),
    ('warmup_steps', -1, 'config.warmup_steps=-1: must be >= 0'),
    ('label_smoothing', 1.0, r'config.label_smoothing=1.0: must be in \[0, 1\)'),
    ('b2', 1.5, r'config.b2=1.5: must be in \[0, 1\)'),
    ('min_learning_rate_ratio', 2.0, r'must be in \[0, 1\]'),
    ('seed', -1, r'config.seed=-1: must be in \[0, 2\*\*32\)'),
    ('compute_dtype', 'int8', "config.compute_dtype='int8'"),
])
def test_out_of_range_numbers_are_refused_before_anything_is_written(tmp_path, key, value, message):
    with pytest.raises(ValueError, match=message):
        train_and_evaluate(tiny_config(**{key: value}), tmp_path / 'run')
    assert not (tmp_path / 'run').exists()


# item 6: every keyword of the model, and the input options, from the command line


def test_every_registry_keyword_is_a_known_model_key():
    """The keys `--config.model.KEY` accepts are the class's keywords, JAX-only options included."""
    for entry in registry.ENTRIES:
        keywords = model_keywords(entry.name)
        assert keywords and not {'parent', 'name'} & set(keywords)
        jax_only = registry.FLAX_ONLY_FIELDS - {'parent', 'name'}
        assert set(keywords) >= {field for field in jax_only if hasattr(entry.flax_class, field)}
    assert {'pool', 'scan_layers', 'remat_policy', 'attention_impl'} <= set(model_keywords('vit.ViT'))
    assert {'channels', 'mean', 'std'} <= set(OPTIONAL_KEYS)


def test_model_keywords_and_grey_image_folders_from_the_command_line(tmp_path):
    write_class_folders(tmp_path / 'images', per_class=4, size=(8, 8), mode='L')
    workdir = tmp_path / 'run'
    run_command('vit_flax.train', '--config=vit_flax/configs/digits.py', f'--workdir={workdir}',
                '--config.dataset=image_folder', f'--config.data_dir={tmp_path / "images"}', '--config.channels=1',
                '--config.mean=(0.5,)', '--config.std=(0.25,)', '--config.model.num_classes=2',
                '--config.model.pool=mean', '--config.model.scan_layers=True',
                '--config.model.remat_policy=nothing_saveable', '--config.model.attention_impl=xla',
                '--config.model.depth=2', '--config.model.dim=16', '--config.batch_size=4',
                '--config.eval_batch_size=4', '--config.total_steps=2', '--config.eval_every=2',
                '--config.progress_bar=False')
    saved = json.loads((workdir / 'config.json').read_text())
    assert saved['channels'] == 1 and saved['mean'] == [0.5] and saved['std'] == [0.25]
    assert {key: saved['model'][key] for key in ('pool', 'scan_layers', 'remat_policy', 'attention_impl')} == {
        'pool': 'mean', 'scan_layers': True, 'remat_policy': 'nothing_saveable', 'attention_impl': 'xla'}
    # a mean-pooled ViT has a (0, dim) class token, which orbax cannot store as such: it exports all the same
    out = tmp_path / 'grey.safetensors'
    cli_main(['export', f'--workdir={workdir}', f'--out={out}'])
    sidecar = json.loads(out.with_suffix('.json').read_text())
    assert sidecar['kwargs']['pool'] == 'mean' and sidecar['flax_kwargs']['scan_layers'] is True
    assert sidecar['input']['channels'] == 1 and sidecar['input']['mean'] == [0.5]


def test_a_mean_pooled_vit_checkpoints_resumes_and_fine_tunes(tmp_path):
    """Its class token is (0, dim), as in vit-pytorch: orbax stores no zero-size array, the checkpoint its shape."""
    train_and_evaluate(tiny_config(**{'model.pool': 'mean'}), tmp_path / 'run')
    resumed = train_and_evaluate(tiny_config(total_steps=9, **{'model.pool': 'mean'}), tmp_path / 'run')
    assert np.isfinite(resumed['eval_loss'])
    variables = restore_variables(tmp_path / 'run')
    assert variables['params']['cls_token'].shape == (0, 16)
    train_and_evaluate(tiny_config(total_steps=1, init_from=str(tmp_path / 'run'), **{'model.pool': 'mean'}),
                       tmp_path / 'fine-tune')


@pytest.mark.parametrize('key, value, message', [
    ('log_evry', 5, "config.log_evry is not a key the trainer knows; did you mean 'log_every'?"),
    ('model.pol', 'mean', "config.model.pol is not a key the trainer knows; did you mean 'pool'?"),
    ('model_name', 'vit.VIT', "config.model_name='vit.VIT' is not in the registry; did you mean 'vit.ViT'?"),
    ('augment.flipp', True, "config.augment.flipp is not a key the trainer knows; did you mean 'flip'?"),
    ('mesh.fsdb', 2, "config.mesh.fsdb is not a key the trainer knows; did you mean 'fsdp'?"),
    ('objective_kwargs.masking_rate', 0.5, 'config.objective_kwargs.masking_rate is not a key'),
])
def test_unknown_keys_are_named_with_the_nearest(key, value, message):
    config = tiny_config(objective='mae' if key.startswith('objective_kwargs') else 'supervised')
    with config.unlocked():
        target = config
        *parents, leaf = key.split('.')
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    with pytest.raises(ValueError, match=re.escape(message)):
        training_config.check(config)


SLOW = pytest.mark.slow  # the same path as the fast cases, in a fresh interpreter each (~6 s)


@pytest.mark.parametrize('flag, fragments', [
    ('--config.model.pol=mean', ['config.model.pol', "did you mean 'pool'?"]),
    pytest.param('--config.log_evry=5', ['config.log_evry', "did you mean 'log_every'?"], marks=SLOW),
    pytest.param('--config.model_name=vit.VIT', ["config.model_name='vit.VIT'", "did you mean 'vit.ViT'?"],
                 marks=SLOW),
    pytest.param('--config.log_every=0', ['config.log_every=0: must be a positive integer'], marks=SLOW),
    pytest.param('--config.model.patch_size=5', ['divisible by the patch size'], marks=SLOW),
    ('--config.data_dir=/nonexistent --config.dataset=image_folder', ["'/nonexistent' is not a folder"]),
])
def test_train_refusals_are_one_line(tmp_path, flag, fragments):
    result = run_command('vit_flax.train', '--config=vit_flax/configs/digits.py', f'--workdir={tmp_path / "run"}',
                         *flag.split(), check=False)
    assert_one_error_line(result, *fragments)
    assert not (tmp_path / 'run' / 'config.json').exists()


# item 3: `vit-flax import` replaces its output whole, or refuses


def test_import_into_an_existing_out_is_refused_or_replaced_whole(tmp_path):
    workdirs = {}
    for dim in (16, 24):
        workdirs[dim] = tmp_path / f'run{dim}'
        train_and_evaluate(tiny_config(total_steps=1, eval_every=1, **{'model.dim': dim}), workdirs[dim])
        cli_main(['export', f'--workdir={workdirs[dim]}', f'--out={tmp_path / f"dim{dim}.safetensors"}'])
    out = tmp_path / 'imported'
    cli_main(['import', f'--weights={tmp_path / "dim16.safetensors"}', f'--out={out}'])
    with pytest.raises(SystemExit, match='imported exists: pass --overwrite'):
        cli_main(['import', f'--weights={tmp_path / "dim24.safetensors"}', f'--out={out}'])
    assert json.loads((out / 'model.json').read_text())['model']['dim'] == 16

    cli_main(['import', f'--weights={tmp_path / "dim24.safetensors"}', f'--out={out}', '--overwrite'])
    assert json.loads((out / 'model.json').read_text())['model']['dim'] == 24
    imported = restore_variables(out)
    assert imported['params']['pos_embedding'].shape[-1] == 24
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith('.')) == []  # no leftovers


@pytest.mark.parametrize('argv, fragments', [
    (['export', '--workdir={tmp}/missing', '--out={tmp}/x.safetensors'], ['has no config.json']),
    (['import', '--weights={tmp}/missing.safetensors', '--out={tmp}/x'], ['no weights file at']),
    (['export', '--workdir={tmp}', '--out={tmp}/x.safetensors'], ['no checkpoint in']),
])
def test_cli_refusals_are_one_line(tmp_path, argv, fragments):
    (tmp_path / 'config.json').write_text(tiny_config().to_json())
    (tmp_path / 'checkpoints').mkdir()
    with pytest.raises(SystemExit) as raised:
        cli_main([arg.format(tmp=tmp_path) for arg in argv])
    message = str(raised.value)
    assert message.startswith('error: ') and '\n' not in message, message
    for fragment in fragments:
        assert fragment in message
