"""The main job: train a registered model, sharded over every device, checkpointed, resumable.

    python -m vit_flax.train --config=vit_flax/configs/digits.py --workdir=/tmp/digits [--config.KEY=VALUE ...]

Re-running the same command resumes from the latest checkpoint in WORKDIR/checkpoints. Writes
WORKDIR/config.json, WORKDIR/metrics.jsonl and TensorBoard events in WORKDIR/tensorboard. Export the result with
`python -m vit_flax export --workdir=WORKDIR --out=model.safetensors`.
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
from vit_flax.training import checkpoint, distributed, objectives, sharding, steps
from vit_flax.training.metrics import MetricsWriter
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


def check_config(config, info: data.DatasetInfo):
    """Fail before compiling anything when the config cannot work, naming the values."""
    if config.objective not in objectives.NAMES:
        raise ValueError(f'objective={config.objective!r}: this trainer knows {objectives.NAMES}')
    model = config.model
    wanted = {'num_classes': info.num_classes, 'channels': info.channels}
    for key, value in wanted.items():
        if key in model and model[key] != value:
            raise ValueError(f'config.model.{key}={model[key]} but dataset {config.dataset!r} has {value} {key}')
    if 'image_size' in model:  # models without one (cvt.CvT) take any size
        size = tuple(model.image_size) if isinstance(model.image_size, (list, tuple)) else (model.image_size,) * 2
        if size != tuple(info.image_size):
            raise ValueError(f'config.model.image_size={model.image_size} but dataset images are {info.image_size}')
    devices, processes = jax.device_count(), jax.process_count()
    for name in ('batch_size', 'eval_batch_size'):
        if config[name] % devices:
            raise ValueError(f'config.{name}={config[name]} must be divisible by the {devices} devices')
    if config.batch_size % (devices * config.grad_accum_steps):
        raise ValueError(f'config.batch_size={config.batch_size} must be divisible by devices x grad_accum_steps '
                         f'= {devices} x {config.grad_accum_steps}')
    if config.parallelism not in ('jit', 'pmap'):
        raise ValueError(f"config.parallelism={config.parallelism!r}: use 'jit' or 'pmap'")
    if config.parallelism == 'pmap' and processes > 1:
        raise ValueError('parallelism=pmap is single-process here; use jit for multi-host runs')


def check_workdir_config(workdir: Path, config):
    """The first run writes WORKDIR/config.json; later runs in the same workdir must train the same thing."""
    path = workdir / 'config.json'
    if path.exists():
        saved = json.loads(path.read_text())
        current = json.loads(config.to_json())
        changed = [key for key in FIXED_ON_RESUME if saved.get(key) != current.get(key)]
        if changed:
            raise ValueError(f'{workdir} holds a run with a different {", ".join(changed)}: '
                             + '; '.join(f'{k}: saved {saved.get(k)!r}, now {current.get(k)!r}' for k in changed)
                             + '. Use a new --workdir.')
    if jax.process_index() == 0:
        path.write_text(config.to_json(indent=2) + '\n')


def input_spec(config, info: data.DatasetInfo) -> dict:
    """How images reach the model: recorded in exported sidecars so PyTorch users can reproduce predictions."""
    return {'dataset': config.dataset, 'layout_flax': 'NHWC', 'layout_torch': 'NCHW', 'size': list(info.image_size),
            'channels': info.channels,
            'pixel_range': [0.0, 1.0], 'mean': list(info.mean), 'std': list(info.std),
            'normalisation': '(pixel - mean) / std per channel', 'class_names': list(info.class_names)}


class Trainer:
    """Holds the compiled steps for one parallelism mode and moves state and batches into its layout."""

    def __init__(self, config, model, example_inputs, num_classes):
        self.tx, self.schedule = make_optimizer(config, trainable=objectives.trainable_mask_fn(model))
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
    """Train to `config.total_steps` (resuming if WORKDIR has checkpoints); returns the last eval metrics."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    info = data.dataset_info(config)
    check_config(config, info)
    check_workdir_config(workdir, config)

    model = build_trainee(config, info)
    trainer = Trainer(config, model, objectives.example_inputs(config.objective, info), info.num_classes)
    data_iterator = iter(data.train_loader(config, batch_size=config.batch_size // jax.process_count(),
                                           seed=config.seed))

    checkpoints = checkpoint.Checkpoints(workdir, keep=config.keep_checkpoints)
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
            state = trainer.to_device_layout(initialise_from(trainer.to_checkpoint_layout(state), config.init_from))

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
            if step % config.log_every == 0 or last:
                metrics = {key: float(value) for key, value in trainer.metrics(metrics).items()}
                if not np.isfinite(metrics['train_loss']):
                    raise TrainingDiverged(
                        f'train loss is {metrics["train_loss"]} at step {step}; stopping. The last checkpoint '
                        f'({checkpoints.latest_step()}) predates it: lower the learning rate or check the data.')
                now = time.perf_counter()
                metrics['images_per_second'] = config.batch_size * (step - last_step) / (now - last_time)
                last_time, last_step = now, step
                writer.write(step, metrics)
                progress.set_postfix(loss=f'{metrics["train_loss"]:.4f}', img_s=f'{metrics["images_per_second"]:.0f}')
            if step % config.eval_every == 0 or last:
                eval_metrics = evaluate(trainer, state, config)
                writer.write(step, eval_metrics)
                progress.write(f'step {step}: ' + ', '.join(f'{key.replace("_", " ")} {value:.4f}'
                                                             for key, value in eval_metrics.items()))
            if step % config.checkpoint_every == 0 or last:
                checkpoints.save(step, trainer.to_checkpoint_layout(state), data_iterator)
            progress.update(1)
    finally:
        progress.close()
        checkpoints.wait()
        checkpoints.close()
        writer.close()
    if not eval_metrics:  # resumed a finished run: evaluate what is there
        eval_metrics = evaluate(trainer, state, config)
    return eval_metrics


def initialise_from(state, directory: str):
    """Fine-tune: take params (and BatchNorm statistics) from a checkpoint, keep the fresh optimiser state."""
    variables = checkpoint.restore_variables(directory)
    expected = jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), state.variables())
    found = jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), variables)
    if expected != found:
        raise checkpoint.CheckpointError(f'{directory} holds variables for another model: expected {expected}, '
                                         f'found {found}')
    shardings = jax.tree_util.tree_map(lambda x: x.sharding, state.variables())
    variables = jax.device_put(variables, shardings)
    return state.replace(params=variables['params']).with_collections(variables)


FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Training config file (ml_collections).', lock_config=True)
flags.DEFINE_string('workdir', None, 'Folder for checkpoints, metrics and the config snapshot.')


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax and grain narrate every save at INFO
    config = FLAGS.config
    try:
        distributed.initialize(config)  # config.distributed: join the other processes, before any JAX call
        metrics = train_and_evaluate(config, FLAGS.workdir)
    except (TrainingDiverged, checkpoint.CheckpointError, ValueError) as error:
        raise SystemExit(f'error: {error}') from None
    print(json.dumps({'workdir': FLAGS.workdir, **metrics}))


if __name__ == '__main__':
    flags.mark_flags_as_required(['config', 'workdir'])
    app.run(main)
