"""What `config.objective` trains: the configured model itself ('supervised'), or the model wrapped in a
self-supervised or distillation objective of vit-pytorch (MAE, SimMIM, MPP, MP3, DINO, EsViT, DistillWrapper).

Every objective is a Flax module that returns its loss from `apply(variables, images, train=True, rngs=...)`
(DistillWrapper also takes the labels), draws its masks and crops from named rng streams (each objective file's
`RNG_STREAMS`), and keeps the wrapped model's variables under the torch attribute name (`encoder_path`), so the
checkpoint's `params[encoder_path]` is a plain model's and exports to vit-pytorch as the model itself.

Keyword defaults are those of vit-pytorch's README (MAE masking 0.75, SimMIM 0.5, MPP mask 0.15 / random 0.3 /
replace 0.5, MP3 masking 0.75, DINO's temperatures and EMA decays, distillation temperature 3 and alpha 0.5);
sizes that vit-pytorch derives from the model (patch size, dim, image size) are taken from it, and
`config.objective_kwargs` overrides any of them.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path
from typing import Any, Callable

import flax.linen as nn
import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class Objective:
    name: str
    module: str  # vit_flax file
    class_name: str
    encoder_keyword: str  # the torch attribute, and the key of the model's variables in the objective's tree
    defaults: dict = dataclasses.field(default_factory=dict)
    derived: Callable[[nn.Module, Any], dict] = lambda model, info: {}  # keywords vit-pytorch reads off the model
    uses_labels: bool = False
    # after the optimiser update: variables -> variables (DINO / EsViT move the teacher and centres)
    ema_keywords: tuple[str, ...] = ()
    # where the model's variables sit in the objective's tree, when not at the keyword (DINO: the student's `net`)
    nested_path: tuple[str, ...] = ()

    @property
    def encoder_path(self) -> tuple[str, ...]:
        return self.nested_path or (self.encoder_keyword,)

    def flax_module(self):
        return importlib.import_module(f'vit_flax.{self.module}')

    def rng_streams(self) -> tuple[str, ...]:
        return tuple(getattr(self.flax_module(), 'RNG_STREAMS', ()))


def _dino_derived(info):
    """The trainer's images are normalised already and may not be RGB: flips and blurs only (dino.FlipAndBlur)."""
    from vit_flax import dino

    return dict(image_size=info.image_size[0], augment_fn=dino.FlipAndBlur(), augment_fn2=dino.FlipAndBlur())


def _mpp_derived(model, info):
    return dict(patch_size=model.patch_size, dim=model.dim, channels=info.channels,
                mean=list(info.mean), std=list(info.std))


OBJECTIVES: dict[str, Objective] = {objective.name: objective for objective in (
    Objective('mae', 'mae', 'MAE', 'encoder', dict(masking_ratio=0.75, decoder_dim=64, decoder_depth=1,
                                                   decoder_heads=4, decoder_dim_head=16)),
    Objective('simmim', 'simmim', 'SimMIM', 'encoder', dict(masking_ratio=0.5)),
    Objective('mpp', 'mpp', 'MPP', 'transformer', dict(mask_prob=0.15, random_patch_prob=0.30, replace_prob=0.50),
              derived=_mpp_derived),
    Objective('mp3', 'mp3', 'MP3', 'vit', dict(masking_ratio=0.75)),
    Objective('dino', 'dino', 'Dino', 'net',
              dict(hidden_layer='to_latent', projection_hidden_size=256, projection_layers=4, num_classes_K=65336,
                   student_temp=0.9, teacher_temp=0.04, local_upper_crop_scale=0.4, global_lower_crop_scale=0.5,
                   moving_average_decay=0.9, center_moving_average_decay=0.9),
              derived=lambda model, info: _dino_derived(info),
              ema_keywords=('moving_average_decay', 'center_moving_average_decay'),
              nested_path=('student_encoder', 'net')),
    # EsViT projects a hierarchical encoder's feature map: CvT's 'layers' (vit-pytorch's README)
    Objective('esvit', 'es_vit', 'EsViTTrainer', 'net',
              dict(hidden_layer='layers', projection_hidden_size=256, projection_layers=4, num_classes_K=65336,
                   student_temp=0.9, teacher_temp=0.04, local_upper_crop_scale=0.4, global_lower_crop_scale=0.5,
                   moving_average_decay=0.9, center_moving_average_decay=0.9),
              derived=lambda model, info: _dino_derived(info),
              ema_keywords=('moving_average_decay', 'center_moving_average_decay'),
              nested_path=('student_encoder', 'net')),
    Objective('distill', 'distill', 'DistillWrapper', 'student', dict(temperature=3.0, alpha=0.5, hard=False),
              uses_labels=True),
)}

SUPERVISED = 'supervised'
NAMES = (SUPERVISED, *OBJECTIVES)


def keywords(objective: Objective, model: nn.Module, info, overrides: dict) -> dict:
    """The objective's keywords: README defaults, then what it reads off the model and data, then the config."""
    return {**objective.defaults, **objective.derived(model, info), **overrides}


def build(name: str, model: nn.Module, info, overrides: dict | None = None) -> nn.Module:
    """The module the train step differentiates: `model` itself, or `model` wrapped in the objective."""
    if name == SUPERVISED:
        return model
    objective = OBJECTIVES[name]
    kwargs = keywords(objective, model, info, dict(overrides or {}))
    if name == 'distill':
        kwargs['teacher'] = teacher_from_workdir(kwargs.pop('teacher_workdir', ''))
    wrapper = getattr(objective.flax_module(), objective.class_name)
    return wrapper(**{objective.encoder_keyword: model}, **kwargs)


def teacher_from_workdir(workdir: str):
    """A trained run's model as a frozen function of the images (its variables are constants of the step)."""
    from vit_flax import registry
    from vit_flax.training.checkpoint import restore_variables

    if not workdir:
        raise ValueError("objective 'distill' needs config.objective_kwargs.teacher_workdir: a trained run's workdir")
    saved = json.loads((Path(workdir) / 'config.json').read_text())
    teacher = registry.build(saved['model_name'], saved['model'])
    variables = restore_variables(workdir)
    return jax.tree_util.Partial(_apply_teacher, teacher, variables)


def _apply_teacher(teacher, variables, images):
    return teacher.apply(variables, images)


def trainable_mask_fn(module: nn.Module) -> Callable[[Any], Any] | None:
    """params -> a pytree of bools, False for parameters the optimiser must leave alone (DINO's and EsViT's
    teacher, named by their file's `trainable_mask`); None when every parameter trains."""
    return getattr(importlib.import_module(type(module).__module__), 'trainable_mask', None)


def after_step(name: str, module: nn.Module, variables: dict) -> dict:
    """What an objective does after each optimiser update (DINO / EsViT: the teacher's and centres' EMA)."""
    if name == SUPERVISED or not OBJECTIVES[name].ema_keywords:
        return variables
    objective = OBJECTIVES[name]
    ema = {key: getattr(module, key) for key in objective.ema_keywords}
    return objective.flax_module().update_moving_average(variables, **ema)


def encoder_variables(name: str, variables: dict) -> dict:
    """The configured model's variables inside an objective's (what `converters export` writes)."""
    if name == SUPERVISED:
        return variables
    path = OBJECTIVES[name].encoder_path
    out = {}
    for collection, tree in variables.items():
        for key in path:
            tree = tree.get(key, {}) if hasattr(tree, 'get') else {}
        if tree:
            out[collection] = tree
    if 'params' not in out:
        raise KeyError(f"objective {name!r}: the checkpoint has no params{''.join(f'[{k!r}]' for k in path)} for "
                       'the model')
    return out


def example_inputs(name: str, info) -> tuple:
    images = np.zeros((1, *info.image_size, info.channels), np.float32)
    if name != SUPERVISED and OBJECTIVES[name].uses_labels:
        return images, np.zeros((1,), np.int32)
    return (images,)
