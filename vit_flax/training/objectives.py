"""What `config.objective` trains: the configured model itself ('supervised'), or the model wrapped in a
self-supervised or distillation objective of vit-pytorch (MAE, SimMIM, MPP, MP3, DINO, EsViT, DistillWrapper,
LeJEPA; LeVJEPA on clips of repeated images).

Every objective is a Flax module that returns its loss from `apply(variables, images, train=True, rngs=...)` and
states, as class attributes and methods, what the trainer needs to know of it (`Objective`, and optionally
`FreezesParameters` and `UpdatesAfterStep`): the constructor keyword that takes the model, where the model's
variables sit in the objective's tree (so the checkpoint's `params[encoder_path]` is a plain model's and exports to
vit-pytorch as the model itself), the rng streams it draws masks and crops from, whether it takes the labels, the
parameters the optimiser must leave alone and what follows each optimiser update (DINO's and EsViT's EMA teacher).

`OBJECTIVES` maps each name to its wrapper class and keywords. Keyword defaults are those of vit-pytorch's README
(MAE masking 0.75, SimMIM 0.5, MPP mask 0.15 / random 0.3 / replace 0.5, MP3 masking 0.75, DINO's temperatures and
EMA decays, distillation temperature 3 and alpha 0.5); sizes that vit-pytorch derives from the model (patch size,
dim, image size) are taken from it, and `config.objective_kwargs` overrides any of them.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

import flax.linen as nn
import jax
import numpy as np

from vit_flax import dino, distill, es_vit, lejepa, levjepa, mae, mp3, mpp, registry, simmim, wwt
from vit_flax.training.checkpoint import restore_variables


@runtime_checkable
class Objective(Protocol):
    """A training objective's wrapper class, as the trainer reads it."""

    encoder_keyword: str  # the constructor keyword (vit-pytorch's attribute) that takes the configured model
    encoder_path: tuple[str, ...]  # the keys of the model's variables inside the objective's, in every collection
    rng_streams: tuple[str, ...]  # the named rng streams `apply` draws from besides 'dropout', in eval mode too
    takes_labels: bool  # `apply(variables, images, labels, ...)` rather than `apply(variables, images, ...)`


@runtime_checkable
class FreezesParameters(Protocol):
    """An objective with parameters that only follow others (DINO's and EsViT's teacher)."""

    def trainable_mask(self, params) -> Any:
        """A pytree of bools like `params`: False where the optimiser must leave the parameter alone."""


@runtime_checkable
class UpdatesAfterStep(Protocol):
    """An objective that moves its variables after each optimiser update (DINO's and EsViT's EMA)."""

    def after_step(self, variables: dict) -> dict:
        """The variables after the optimiser's update -> the variables the next step starts from."""


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How the trainer builds an objective around the configured model."""

    wrapper: type[Objective]
    defaults: dict = dataclasses.field(default_factory=dict)
    derived: Callable[[nn.Module, Any], dict] = lambda model, info: {}  # keywords vit-pytorch reads off the model
    # config values -> constructor keywords, after the overrides (distill: teacher_workdir -> teacher)
    resolved: Callable[[dict], dict] = lambda kwargs: kwargs
    config_keywords: tuple[str, ...] = ()  # what `resolved` turns into constructor keywords


def _self_distillation_derived(model, info):
    """The trainer's images are normalised already and may not be RGB: flips and blurs only (dino.FlipAndBlur)."""
    return dict(image_size=info.image_size[0], augment_fn=dino.FlipAndBlur(), augment_fn2=dino.FlipAndBlur())


def _mpp_derived(model, info):
    return dict(patch_size=model.patch_size, dim=model.dim, channels=info.channels,
                mean=list(info.mean), std=list(info.std))


def _with_teacher(kwargs):
    kwargs = dict(kwargs)
    kwargs['teacher'] = teacher_from_workdir(kwargs.pop('teacher_workdir', ''))
    return kwargs


class LeVJEPAOnImages(levjepa.LeVJEPA):
    """levjepa.LeVJEPA on the trainer's images: each image (batch, height, width, channels) becomes a clip of the
    encoder's `frames` copies of it (as V-JEPA 2 treats still images), so the configured model is a plain
    levjepa.VideoTransformer that exports to vit-pytorch's; clips (batch, frames, height, width, channels) pass as
    they are. `example_inputs` initialises it with a one-frame clip, which the plain model takes too (parameter shapes
    do not depend on the frame count)."""

    takes_clips = True

    def __call__(self, video, *args, **kwargs):
        if video.ndim == 4:
            video = jax.numpy.repeat(video[:, None], self.encoder.frames, axis=1)
        return super().__call__(video, *args, **kwargs)


def _levjepa_derived(model, info):
    """Views of the image's size (vit-pytorch concatenates the global and local ones, so both); the trainer's images
    are normalised already and may not be RGB: no colour transforms and the identity normalisation, flips only."""
    size = tuple(info.image_size)
    identity = dict(mean=(0.0,), std=(1.0,))
    return dict(image_size=size, local_size=size, global_augment_fn=levjepa.NormalizeVideo(**identity),
                local_augment_fn=levjepa.PhotometricAugment(color_jitter_prob=0.0, grayscale_prob=0.0, **identity))


_SELF_DISTILLATION = dict(projection_hidden_size=256, projection_layers=4, num_classes_K=65336, student_temp=0.9,
                          teacher_temp=0.04, local_upper_crop_scale=0.4, global_lower_crop_scale=0.5,
                          moving_average_decay=0.9, center_moving_average_decay=0.9)

OBJECTIVES: dict[str, Recipe] = {
    'mae': Recipe(mae.MAE, dict(masking_ratio=0.75, decoder_dim=64, decoder_depth=1, decoder_heads=4,
                                decoder_dim_head=16)),
    'simmim': Recipe(simmim.SimMIM, dict(masking_ratio=0.5)),
    'mpp': Recipe(mpp.MPP, dict(mask_prob=0.15, random_patch_prob=0.30, replace_prob=0.50), derived=_mpp_derived),
    'mp3': Recipe(mp3.MP3, dict(masking_ratio=0.75)),
    'dino': Recipe(dino.Dino, dict(hidden_layer='to_latent', **_SELF_DISTILLATION), derived=_self_distillation_derived),
    # EsViT projects a hierarchical encoder's feature map: CvT's 'layers' (vit-pytorch's README)
    'esvit': Recipe(es_vit.EsViTTrainer, dict(hidden_layer='layers', **_SELF_DISTILLATION),
                    derived=_self_distillation_derived),
    'distill': Recipe(distill.DistillWrapper, dict(temperature=3.0, alpha=0.5, hard=False), resolved=_with_teacher,
                       config_keywords=('teacher_workdir',)),
    # vit-pytorch's quick run: SIGReg (the default target), the projector and weights of its example
    'lejepa': Recipe(lejepa.LeJEPA, dict(hidden_layer='to_latent', projection_hidden_size=256, projection_layers=4,
                                         num_classes_K=65336, target_loss_weight=1.0, sigreg_loss_weight=1.0),
                     derived=_self_distillation_derived),
    # vit-flax's own (vit-pytorch has no WWT wrapper): the slots reconstruct the patches, plus SIGReg at LeJEPA's
    # default weight on the levels the model's sigreg_slots selects
    'wwt': Recipe(wwt.WWTAutoencoder, dict(sigreg_loss_weight=1.0)),
    # vit-pytorch's quick run (LeVJEPA's defaults) on clips of repeated images; the local crops take a quarter to a
    # half of an 8 x 8 digit (its 0.02 would cut a pixel or two)
    'levjepa': Recipe(LeVJEPAOnImages, dict(num_local_views=4, num_classes_K=256, projection_hidden=256,
                                            local_crop_scale=(0.25, 0.5), global_crop_scale=(0.8, 1.0), drop_ratio=0.95,
                                            sigreg_loss_weight=0.02), derived=_levjepa_derived),
}

SUPERVISED = 'supervised'
NAMES = (SUPERVISED, *OBJECTIVES)


def keywords(recipe: Recipe, model: nn.Module, info, overrides: dict) -> dict:
    """The objective's keywords: README defaults, then what it reads off the model and data, then the config."""
    return recipe.resolved({**recipe.defaults, **recipe.derived(model, info), **overrides})


def build(name: str, model: nn.Module, info, overrides: dict | None = None) -> nn.Module:
    """The module the train step differentiates: `model` itself, or `model` wrapped in the objective."""
    if name == SUPERVISED:
        return model
    recipe = OBJECTIVES[name]
    kwargs = keywords(recipe, model, info, dict(overrides or {}))
    return recipe.wrapper(**{recipe.wrapper.encoder_keyword: model}, **kwargs)


def teacher_from_workdir(workdir: str):
    """A trained run's model as a frozen function of the images (its variables are constants of the step)."""
    if not workdir:
        raise ValueError("objective 'distill' needs config.objective_kwargs.teacher_workdir: a trained run's workdir")
    saved = json.loads((Path(workdir) / 'config.json').read_text())
    teacher = registry.build(saved['model_name'], saved['model'])
    variables = restore_variables(workdir)
    return jax.tree_util.Partial(_apply_teacher, teacher, variables)


def _apply_teacher(teacher, variables, images):
    return teacher.apply(variables, images)


def trainable_mask_fn(module: nn.Module) -> Callable[[Any], Any] | None:
    """params -> a pytree of bools, False for parameters the optimiser must leave alone; None when every
    parameter trains."""
    return module.trainable_mask if isinstance(module, FreezesParameters) else None


def after_step(module: nn.Module, variables: dict) -> dict:
    """What the trained module does after each optimiser update (DINO / EsViT: the teacher's and centres' EMA)."""
    return module.after_step(variables) if isinstance(module, UpdatesAfterStep) else variables


def encoder_variables(name: str, variables: dict) -> dict:
    """The configured model's variables inside an objective's (what `vit-flax export` writes)."""
    if name == SUPERVISED:
        return variables
    path = OBJECTIVES[name].wrapper.encoder_path
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
    if name != SUPERVISED and OBJECTIVES[name].wrapper.takes_labels:
        return images, np.zeros((1,), np.int32)
    if name != SUPERVISED and getattr(OBJECTIVES[name].wrapper, 'takes_clips', False):
        return (images[:, None],)  # a one-frame clip (levjepa)
    return (images,)
