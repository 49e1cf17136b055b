"""What a training config may hold, checked before anything is built, compiled or written.

Every key must be one the trainer reads, so that a typo never trains silently with a default:
  - a key of the reference config, `vit_flax/configs/digits.py`, which sets every key the trainer needs;
  - an optional key that a dataset reads where it is used (`OPTIONAL_KEYS`);
  - under `model`, a keyword of the registry class `model_name` names; under `objective_kwargs`, a keyword of the
    objective; under `augment`, an augmentation (`data.augment.DEFAULTS`); under `mesh`, a mesh axis or
    `fsdp_min_size`.
An unknown key fails with one line naming the nearest known key. Numbers are checked against their ranges, naming
the key and the value, and the model, dataset and devices against each other. With a pretrained checkpoint in
`init_from`, `model` holds only what the run changes or must be sure of, and the checkpoint the rest
(training/finetune.py); its keys are checked the same way.
"""

from __future__ import annotations

import dataclasses
import difflib
import numbers

import jax
import ml_collections

from vit_flax import registry
from vit_flax.configs import digits
from vit_flax.data import augment
from vit_flax.data.info import DatasetInfo
from vit_flax.training import finetune, objectives
from vit_flax.training.sharding import MESH_AXES

# keys the reference config leaves out, read with `config.get` where they are used
OPTIONAL_KEYS = {
    'channels': 'image channels (image_folder: 3 or 1; synthetic)',
    'mean': "replaces the dataset's normalisation mean, one value per channel",
    'std': "replaces the dataset's normalisation std, one value per channel",
    'num_classes': 'synthetic labels',
    'synthetic_size': 'synthetic train records',
    'synthetic_eval_size': 'synthetic eval records',
    'skip_bad_images': 'image_folder: leave out (and log) files that cannot be read, instead of refusing the folder',
}

# numeric keys and what they must be
POSITIVE_INTEGERS = ('batch_size', 'eval_batch_size', 'total_steps', 'log_every', 'eval_every', 'checkpoint_every',
                     'keep_checkpoints', 'grad_accum_steps')
NON_NEGATIVE_INTEGERS = ('warmup_steps', 'data_workers')
NON_NEGATIVE = ('learning_rate', 'weight_decay', 'mixup_alpha', 'grad_clip_norm')
FRACTIONS = ('label_smoothing', 'b1', 'b2')  # in [0, 1)
SEED_LIMIT = 2**32  # grain's samplers take a uint32 seed
COMPUTE_DTYPES = ('float32', 'bfloat16', 'float16')
PARALLELISM = ('jit', 'pmap')


def _nearest(name: str, known) -> str:
    nearest = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    return f"; did you mean '{nearest[0]}'?" if nearest else ''


def _unknown(where: str, key: str, known) -> ValueError:
    return ValueError(f'{where}{key} is not a key the trainer knows{_nearest(key, known)} '
                      f'(known: {", ".join(sorted(known))})')


def model_keywords(model_name: str) -> tuple[str, ...]:
    """The keywords of the registry class `model_name` names, JAX-only options (scan_layers, ...) included."""
    if model_name not in registry.BY_NAME:
        raise ValueError(f'config.model_name={model_name!r} is not in the registry{_nearest(model_name, registry.BY_NAME)}'
                         f' (it has {", ".join(registry.BY_NAME)})')
    return tuple(field.name for field in dataclasses.fields(registry.BY_NAME[model_name].flax_class)
                 if field.init and field.name not in ('parent', 'name'))


def objective_keywords(objective: str) -> tuple[str, ...]:
    """The keywords `config.objective_kwargs` may set for `objective`."""
    recipe = objectives.OBJECTIVES[objective]
    fields = {field.name for field in dataclasses.fields(recipe.wrapper) if field.init}
    return tuple(sorted((fields | set(recipe.defaults) | set(recipe.config_keywords))
                        - {'parent', 'name', recipe.wrapper.encoder_keyword}))


def check_keys(config: ml_collections.ConfigDict):
    """Every key is one the trainer reads (see the module docstring)."""
    known = set(digits.get_config()) | set(OPTIONAL_KEYS)
    for key in config.keys():
        if key not in known:
            raise _unknown('config.', key, known)
    if config.objective not in objectives.NAMES:
        raise ValueError(f'config.objective={config.objective!r}: this trainer knows {objectives.NAMES}'
                         f'{_nearest(config.objective, objectives.NAMES)}')
    nested = {
        'model': model_keywords(config.model_name),
        'objective_kwargs': objective_keywords(config.objective) if config.objective != objectives.SUPERVISED else (),
        'augment': tuple(augment.DEFAULTS),
        'mesh': (*MESH_AXES, 'fsdp_min_size'),
    }
    for group, keys in nested.items():
        for key in (config.get(group) or {}).keys():
            if key not in keys:
                raise _unknown(f'config.{group}.', key, keys)


def check_numbers(config: ml_collections.ConfigDict):
    """The trainer's numbers in their ranges (the model checks its own keywords, the datasets theirs)."""

    def number(key, integer: bool):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, numbers.Integral if integer else numbers.Real):
            raise ValueError(f'config.{key}={value!r}: must be {"an integer" if integer else "a number"}')
        return value

    for key in POSITIVE_INTEGERS:
        if number(key, integer=True) <= 0:
            raise ValueError(f'config.{key}={config[key]}: must be a positive integer')
    for key in NON_NEGATIVE_INTEGERS:
        if number(key, integer=True) < 0:
            raise ValueError(f'config.{key}={config[key]}: must be >= 0')
    for key in NON_NEGATIVE:
        if not number(key, integer=False) >= 0:  # `not >=` also refuses NaN
            raise ValueError(f'config.{key}={config[key]}: must be >= 0')
    for key in FRACTIONS:
        if not 0 <= number(key, integer=False) < 1:
            raise ValueError(f'config.{key}={config[key]}: must be in [0, 1)')
    if not 0 <= number('min_learning_rate_ratio', integer=False) <= 1:
        raise ValueError(f'config.min_learning_rate_ratio={config.min_learning_rate_ratio}: must be in [0, 1]')
    if not 0 <= number('seed', integer=True) < SEED_LIMIT:
        raise ValueError(f'config.seed={config.seed}: must be in [0, 2**32)')
    if config.compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f'config.compute_dtype={config.compute_dtype!r}: use one of {COMPUTE_DTYPES}')
    if config.parallelism not in PARALLELISM:
        raise ValueError(f'config.parallelism={config.parallelism!r}: use one of {PARALLELISM}')
    if not 0 < number('layer_decay', integer=False) <= 1:
        raise ValueError(f'config.layer_decay={config.layer_decay}: must be in (0, 1] (1.0: off)')
    if not isinstance(config.freeze_backbone, bool):
        raise ValueError(f'config.freeze_backbone={config.freeze_backbone!r}: must be True or False')
    if not isinstance(config.init_from, str):
        raise ValueError(f'config.init_from={config.init_from!r}: must be a path or hub name (a string)')


def check_fine_tuning(config: ml_collections.ConfigDict):
    """layer_decay and freeze_backbone need to know where a model's layers and head are; a timm-layout ViT needs its
    keywords from config.model or from a checkpoint (training/finetune.py)."""
    if config.model_name == finetune.PRETRAINED_MODEL and not config.model and not config.init_from:
        raise ValueError(f'config.model is empty and config.init_from unset: {config.model_name} takes its keywords '
                         'from a pretrained checkpoint in config.init_from (vit_flax/configs/finetune.py) or from '
                         'config.model (vit_flax/configs/digits_timm.py)')
    for key, on in (('layer_decay', config.layer_decay != 1), ('freeze_backbone', config.freeze_backbone)):
        if not on:
            continue
        if config.model_name not in finetune.LAYERS:
            raise ValueError(f'config.{key}={config[key]}: this trainer knows the layers and head of '
                             f'{" and ".join(finetune.LAYERS)}, not of {config.model_name}')
        if config.objective != objectives.SUPERVISED:
            raise ValueError(f'config.{key}={config[key]} fine-tunes a classifier: config.objective must be '
                             f"'supervised', not {config.objective!r}")


def _data_keywords(config: ml_collections.ConfigDict) -> tuple[dict, str, str]:
    """(the model's keywords that describe its input, its channels keyword, its image size keyword): those set in
    config.model, and for the timm-layout ViT its defaults too (ImageNet's 224 x 224 RGB, 1000 classes), which a
    digits run must not meet first as a shape error."""
    if config.model_name == finetune.PRETRAINED_MODEL:
        fields = dataclasses.fields(registry.BY_NAME[config.model_name].flax_class)
        defaults = {field.name: field.default for field in fields
                    if field.name in ('num_classes', 'in_chans', 'img_size')}
        return {**defaults, **config.model.to_dict()}, 'in_chans', 'img_size'
    return config.model.to_dict(), 'channels', 'image_size'


def check_against_data(config: ml_collections.ConfigDict, info: DatasetInfo):
    """The model, the dataset and the devices fit together."""
    model, channels, image_size = _data_keywords(config)

    def setting(key):
        return f'config.model.{key}={model[key]}' + ('' if key in config.model else ' (its default)')

    wanted = {'num_classes': info.num_classes, channels: info.channels}
    for key, value in wanted.items():
        if key in model and model[key] != value:
            raise ValueError(f'{setting(key)} but dataset {config.dataset!r} has {value} '
                             f'{key.replace("in_chans", "channels")}')
    if image_size in model:  # models without one (cvt.CvT) take any size
        size = model[image_size]
        size = tuple(size) if isinstance(size, (list, tuple)) else (size,) * 2
        if size != tuple(info.image_size):
            raise ValueError(f'{setting(image_size)} but dataset images are {info.image_size}')
    devices, processes = jax.device_count(), jax.process_count()
    for name in ('batch_size', 'eval_batch_size'):
        if config[name] % devices:
            raise ValueError(f'config.{name}={config[name]} must be divisible by the {devices} devices')
    if config.batch_size % (devices * config.grad_accum_steps):
        raise ValueError(f'config.batch_size={config.batch_size} must be divisible by devices x grad_accum_steps '
                         f'= {devices} x {config.grad_accum_steps}')
    if config.parallelism == 'pmap' and processes > 1:
        raise ValueError('parallelism=pmap is single-process here; use jit for multi-host runs')


def check(config: ml_collections.ConfigDict, info: DatasetInfo | None = None):
    """Fail before compiling or writing anything when the config cannot work, naming the key and value."""
    check_keys(config)
    check_numbers(config)
    check_fine_tuning(config)
    if info is not None:
        check_against_data(config, info)
