"""The main job: train a registered model, sharded over every device, checkpointed, resumable.

    python -m vit_flax.train --config=vit_flax/configs/digits.py --workdir=/tmp/digits [--config.KEY=VALUE ...]

Re-running the same command resumes from the latest checkpoint in WORKDIR/checkpoints. Writes
WORKDIR/config.json, WORKDIR/metrics.jsonl and TensorBoard events in WORKDIR/tensorboard. Export the result with
`python -m vit_flax export --workdir=WORKDIR --out=model.safetensors` (a timm-layout ViT: `--out=DIR`, a timm hub
directory, or `--format=hf` / `npz`).

Fine-tuning (vit_flax/training/finetune.py): `--config.init_from=` a trainer workdir, a `vit-flax import` folder,
or a pretrained timm / Hugging Face / big_vision checkpoint or hub name (with vit_flax/configs/finetune.py);
`--config.layer_decay=0.75` (layer-wise learning-rate decay), `--config.freeze_backbone=True` (the head alone).
"""

from __future__ import annotations

from vit_flax.extras import require

require('train', 'vit_flax.train')

import json
import sys
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags
from tqdm import tqdm

from vit_flax import data, registry
from vit_flax.training import allocator, checkpoint, distributed, finetune, objectives, sharding, steps, xla_flags
from vit_flax.training import config as training_config
from vit_flax.training.metrics import MetricsWriter, read_metrics
from vit_flax.training.optim import make_optimizer
from vit_flax.training.state import abstract_state, create_train_state

# keys that define what a workdir's checkpoints hold: a resumed run must not change them
FIXED_ON_RESUME = ('model_name', 'model', 'objective', 'objective_kwargs', 'dataset', 'image_size')


class TrainingDiverged(RuntimeError):
    pass


def build_model(config):
    """The configured model (what `vit-flax export` writes), without its training objective."""
    return registry.build(config.model_name, config.model.to_dict())


def build_trainee(config, info: data.DatasetInfo):
    """What the train step differentiates: the model, or the model inside `config.objective`'s wrapper."""
    return objectives.build(config.objective, build_model(config), info,
                            config.get('objective_kwargs', ml_collections.ConfigDict()).to_dict())


def check_workdir(workdir: Path, config):
    """A workdir holds one run: a later run in it must train the same thing, and a run whose checkpoints are gone
    is not silently started over (that would overwrite its metrics). Reads only: nothing is written on a refusal."""
    path = workdir / 'config.json'
    if not path.exists():
        return
    saved = json.loads(path.read_text())
    current = json.loads(config.to_json())
    changed = [key for key in FIXED_ON_RESUME if saved.get(key) != current.get(key)]
    if changed:
        raise ValueError(f'{workdir} holds a run with a different {", ".join(changed)}: '
                         + '; '.join(f'{k}: saved {saved.get(k)!r}, now {current.get(k)!r}' for k in changed)
                         + '. Use a new --workdir.')
    if not (workdir / 'checkpoints').is_dir():
        logged = [row['step'] for row in read_metrics(workdir)]
        raise ValueError(f'{workdir} holds a run (config.json{f", metrics up to step {max(logged)}" if logged else ""})'
                         f' whose checkpoints/ folder is gone: starting over would overwrite its metrics.jsonl. Put '
                         f'{workdir / "checkpoints"} back, or use a new --workdir.')


def write_record(workdir: Path, config):
    """WORKDIR/config.json: what the run trains, written once it has started (restored or initialised)."""
    if jax.process_index() == 0:
        path = workdir / 'config.json'
        temporary = path.with_name(path.name + '.tmp')
        temporary.write_text(config.to_json(indent=2) + '\n')
        temporary.replace(path)  # a kill leaves the old record or the new one, never half of one


def input_spec(config, info: data.DatasetInfo) -> dict:
    """How images reach the model: recorded in exported sidecars so PyTorch users can reproduce predictions."""
    return {'dataset': config.dataset, 'layout_flax': 'NHWC', 'layout_torch': 'NCHW', 'size': list(info.image_size),
            'channels': info.channels,
            'pixel_range': [0.0, 1.0], 'mean': list(info.mean), 'std': list(info.std),
            'normalisation': '(pixel - mean) / std per channel', 'class_names': list(info.class_names)}


class Trainer:
    """Holds the compiled steps for one parallelism mode and moves state and batches into its layout."""

    def __init__(self, config, model, example_inputs, num_classes):
        self.tx, self.schedule = make_optimizer(config, trainable=finetune.trainable_fn(config, model),
                                                lr_scale=finetune.lr_scale_fn(config, model))
        self.mesh = sharding.make_mesh(config.mesh if config.parallelism == 'jit' else {'data': -1})
        self.batch_sharding = sharding.batch_sharding(self.mesh)
        self.abstract = abstract_state(model, self.tx, example_inputs)
        self.state_shardings = sharding.state_shardings(self.mesh, self.abstract,
                                                        config.mesh.get('fsdp_min_size', sharding.DEFAULT_FSDP_MIN_SIZE))
        self.pmap = config.parallelism == 'pmap'
        if self.pmap:
            self.devices = jax.local_devices()
            self.train_step, self.eval_step = steps.pmap_steps(model, self.tx, self.schedule, config, num_classes)
        else:
            self.train_step, self.eval_step = steps.jit_steps(model, self.tx, self.schedule, config, num_classes,
                                                              self.state_shardings, self.batch_sharding)
        self.model, self.example_inputs = model, example_inputs

    def init(self, rng):
        state = create_train_state(self.model, self.tx, self.example_inputs, rng, self.state_shardings)
        return self.to_device_layout(state)

    def to_device_layout(self, state):
        return steps.replicate(state, self.devices) if self.pmap else state

    def to_checkpoint_layout(self, state):
        return steps.unreplicate(state) if self.pmap else state

    def batch(self, local_batch: dict):
        if self.pmap:
            return steps.split_for_pmap(local_batch, self.devices)
        return sharding.global_batch(local_batch, self.batch_sharding)

    def metrics(self, metrics):
        return jax.device_get(steps.unreplicate(metrics) if self.pmap else metrics)


def evaluate(trainer: Trainer, state, config) -> dict:
    """Eval loss and accuracy ('supervised'), or the objective's loss over the eval split's full batches."""
    per_process = config.eval_batch_size // jax.process_count()
    totals = {'loss_sum': 0.0, 'correct': 0.0, 'count': 0.0}
    for local_batch in data.eval_batches(config, batch_size=per_process):
        sums = trainer.metrics(trainer.eval_step(state, trainer.batch(local_batch)))
        totals = {key: totals[key] + float(sums[key]) for key in totals}
    if not totals['count']:
        raise ValueError(f'config.eval_batch_size={config.eval_batch_size} is larger than the eval split: an '
                         f"objective's eval loss needs at least one full batch")
    metrics = {'eval_loss': totals['loss_sum'] / totals['count']}
    if config.objective == objectives.SUPERVISED:
        metrics['eval_accuracy'] = totals['correct'] / totals['count']
    return metrics


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
    """Train to `config.total_steps` (resuming if WORKDIR has checkpoints); returns the last eval metrics.

    Everything that can be refused is checked before WORKDIR is written to: the config's keys and values, the
    checkpoint to start from, the dataset, the model (built and traced), the workdir's earlier run and its
    checkpoint. WORKDIR/config.json is written once the run has started: with a pretrained `config.init_from`, the
    config as finetune.prepare completed it."""
    workdir = Path(workdir)
    training_config.check(config)
    config, start_variables = finetune.prepare(config)
    info = data.dataset_info(config)
    training_config.check_against_data(config, info)
    check_workdir(workdir, config)

    model = build_trainee(config, info)
    trainer = Trainer(config, model, objectives.example_inputs(config.objective, info), info.num_classes)
    # the next batch is made while a step runs, also where the step runs in this thread (keep_freed_memory)
    data_iterator = data.ReadAhead(iter(data.train_loader(config, batch_size=config.batch_size // jax.process_count(),
                                                          seed=config.seed)))

    checkpoints = checkpoint.Checkpoints(workdir, keep=config.keep_checkpoints)
    try:
        start = checkpoints.latest_step() or 0
        if start:
            restored = checkpoints.restore(start, checkpoint.with_shardings(trainer.abstract, trainer.state_shardings),
                                           data_iterator)
            state = trainer.to_device_layout(restored)
            if jax.process_index() == 0:
                print(f'resumed from {checkpoints.directory / str(start)}', flush=True)
        else:
            state = trainer.init(jax.random.key(config.seed))
            if config.init_from:
                variables = (start_variables if start_variables is not None
                             else checkpoint.restore_variables(config.init_from))
                state = trainer.to_device_layout(initialise_from(trainer.to_checkpoint_layout(state), variables,
                                                                 config.init_from))
    except BaseException:
        checkpoints.close()
        data_iterator.close()
        raise
    write_record(workdir, config)

    writer = MetricsWriter(workdir, resume_step=start)
    eval_metrics = {}
    progress = tqdm(total=config.total_steps, initial=start, desc='train', unit='step', dynamic_ncols=True,
                    mininterval=0.1 if sys.stderr.isatty() else 10.0,  # a log file gets a line every 10 s
                    disable=not config.progress_bar or jax.process_index() != 0)
    last_time, last_step = time.perf_counter(), start
    try:
        for step in range(start + 1, config.total_steps + 1):
            state, metrics = trainer.train_step(state, trainer.batch(next(data_iterator)))
            last = step == config.total_steps
            logs, evaluates, saves = (step % every == 0 or last for every in
                                      (config.log_every, config.eval_every, config.checkpoint_every))
            if logs or evaluates or saves:  # before anything of this step is logged, evaluated or saved
                check_finite(trainer, state, step, checkpoints.latest_step())
            if logs:
                metrics = {key: float(value) for key, value in trainer.metrics(metrics).items()}
                now = time.perf_counter()
                metrics['images_per_second'] = config.batch_size * (step - last_step) / (now - last_time)
                last_time, last_step = now, step
                writer.write(step, metrics)
                progress.set_postfix(loss=f'{metrics["train_loss"]:.4f}', img_s=f'{metrics["images_per_second"]:.0f}')
            if evaluates:
                eval_metrics = evaluate(trainer, state, config)
                writer.write(step, eval_metrics)
                if jax.process_index() == 0:
                    progress.write(f'step {step}: ' + ', '.join(f'{key.replace("_", " ")} {value:.4f}'
                                                                 for key, value in eval_metrics.items()))
            if saves:
                checkpoints.save(step, trainer.to_checkpoint_layout(state), data_iterator)
            progress.update(1)
    finally:
        progress.close()
        checkpoints.wait()
        checkpoints.close()
        data_iterator.close()
        writer.close()
    if not eval_metrics:  # resumed a finished run: evaluate what is there
        eval_metrics = evaluate(trainer, state, config)
    return eval_metrics


def check_finite(trainer: Trainer, state, step: int, last_checkpoint: int | None):
    """Stop at the first non-finite loss, gradient or parameter, before it is evaluated or saved. The train step
    records the step where it happened on device (TrainState.nonfinite_step), so checking costs one scalar."""
    bad = int(trainer.metrics(state.nonfinite_step))
    if bad:
        saved = (f'the last checkpoint (step {last_checkpoint}) predates it and holds finite parameters'
                 if last_checkpoint else 'no checkpoint was saved')
        raise TrainingDiverged(f'the train loss, gradients or parameters became non-finite at step {bad}; stopped at '
                               f'step {step} without saving: {saved}. Lower the learning rate or check the data.')


def initialise_from(state, variables: dict, source: str):
    """Fine-tune: take params (and BatchNorm statistics) from a checkpoint's `variables`, keep the fresh optimiser
    state."""
    expected = jax.tree_util.tree_map(lambda x: (x.shape, np.dtype(x.dtype)), state.variables())
    found = jax.tree_util.tree_map(lambda x: (np.shape(x), np.dtype(x.dtype)), variables)
    if expected != found:
        raise checkpoint.CheckpointError(f'{source} holds variables for another model: expected {expected}, '
                                         f'found {found}')
    shardings = jax.tree_util.tree_map(lambda x: x.sharding, state.variables())
    variables = jax.device_put(variables, shardings)
    return state.replace(params=variables['params']).with_collections(variables)


FLAGS = flags.FLAGS
# Any key may be set from the command line (--config.model.pool=mean, --config.channels=1): new keys are taken as
# Python literals, and training.config checks each against the keys the trainer reads, naming the nearest.
config_flags.DEFINE_config_file('config', None, 'Training config file (ml_collections).', lock_config=False,
                                accept_new_attributes=True)
flags.DEFINE_string('workdir', None, 'Folder for checkpoints, metrics and the config snapshot.')


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax and grain narrate every save at INFO
    config = FLAGS.config
    xla_flags.use_trainer_flags()  # read when JAX starts its backend, below
    if config.get('keep_freed_memory'):
        allocator.keep_freed_memory()  # before JAX creates its CPU backend, which reads the dispatch setting
    try:
        distributed.initialize(config)  # config.distributed: join the other processes, before any JAX call
        metrics = train_and_evaluate(config, FLAGS.workdir)
    except (TrainingDiverged, checkpoint.CheckpointError, ValueError, OSError) as error:
        raise SystemExit(f'error: {error}') from None
    print(json.dumps({'workdir': FLAGS.workdir, **metrics}))


if __name__ == '__main__':
    flags.mark_flags_as_required(['config', 'workdir'])
    app.run(main)
