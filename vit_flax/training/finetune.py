"""Fine-tuning: where a run starts (`config.init_from`), layer-wise learning-rate decay (`config.layer_decay`) and
training the head alone (`config.freeze_backbone`).

`config.init_from` is one of
  - a trainer workdir, or a folder `vit-flax import` wrote (orbax step folders): its variables, for the model the
    config describes in full (`config.model_name`, `config.model`), as it was trained;
  - a pretrained checkpoint, anything `vit_flax.pretrained.read` takes: a timm hub directory, a timm .safetensors /
    .pth / .bin state dict, a Hugging Face transformers ViT directory, a big_vision .npz, or a hub name
    ('timm/vit_base_patch16_224.augreg2_in21k_ft_in1k'). It needs `config.model_name =
    'pretrained_vit.VisionTransformer'` (vit_flax/configs/finetune.py), and the checkpoint says the model's keywords:
    `config.model` holds only what the run changes or must be sure of:
      - `num_classes` and `img_size`, what is fine-tuned for (default: the dataset's classes and image size): a new
        head where the classes differ (timm's init, drawn from `config.seed`), the position embedding resampled
        (timm's bicubic) where the size does;
      - the JAX-only options (`scan_layers`, `remat_policy`, `attention_impl`), as set;
      - any other keyword, which must be the checkpoint's (a run that must not start from another architecture says
        so), or tells it where the file cannot (a bare state dict's `num_heads`).
    The checkpoint's normalisation (mean, std) replaces the dataset's unless `config.mean` / `config.std` are set.
    The run records the keywords in full in WORKDIR/config.json, so its workdir exports, probes and evaluates like
    any other; the source is read again when the run resumes (it decides the keywords).

Layer-wise learning-rate decay (BEiT; timm's `param_groups_layer_decay`): with depth blocks, block i's parameters
learn at `layer_decay ** (depth - i)` times the learning rate, the embeddings before the first block at
`layer_decay ** (depth + 1)`, and what follows the last block (final norm, pooling, pre-logits, head) at the full
rate. Weight decay is scaled with it, as in timm, whose scale multiplies AdamW's learning rate. `LAYERS` says where
each parameter sits for the models it knows; with `scan_layers=True` each block's row of the stacked parameters gets
its own scale.

`config.freeze_backbone` trains the classification head alone (`LAYERS[...].head`: timm's `head`, vit.ViT's
`mlp_head`); the rest, the final norm and fc_norm included, keeps its values bit for bit, so the head reads the
checkpoint's features exactly as they were: a linear probe, as MAE's and timm's are.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path
from typing import Callable

import jax
import ml_collections
import numpy as np
from flax import traverse_util

from vit_flax import data, registry
from vit_flax.training import objectives

PRETRAINED_MODEL = 'pretrained_vit.VisionTransformer'
# what a fine-tuning run sets rather than takes from a pretrained checkpoint (and the JAX-only options)
TARGETS = ('num_classes', 'img_size')


@dataclasses.dataclass(frozen=True)
class Layers:
    """Where a model's parameters sit in its stack: regular expressions over their paths in `params`
    ('blocks_3/attn/qkv/kernel'), each matching a path's leading components."""

    embeddings: str  # before the first block: layer 0
    block: str  # one block, its index in group 1: layer index + 1
    scanned: str  # the stacked blocks of scan_layers=True: layer 1 + the row on the leading axis
    top: str  # after the last block (final norm, pooling, head): layer depth + 1
    head: str  # what config.freeze_backbone trains


LAYERS = {
    PRETRAINED_MODEL: Layers(embeddings='patch_embed|cls_token|reg_token|pos_embed|norm_pre', block=r'blocks_(\d+)',
                             scanned='blocks_scan', top='norm|fc_norm|attn_pool|pre_logits|head', head='head'),
    'vit.ViT': Layers(embeddings=r'to_patch_embedding_\d+|cls_token|pos_embedding',
                      block=r'transformer/layers_(\d+)_\d+', scanned='transformer/layers_scan',
                      top='transformer/norm|mlp_head', head='mlp_head'),
}


def _match(pattern: str, path: str) -> re.Match | None:
    return re.fullmatch(f'(?:{pattern})(?:/.*)?', path)


def layer_of(layers: Layers, depth: int, path: str) -> int | np.ndarray:
    """The layer (0 embeddings, 1..depth blocks, depth + 1 the top) of the parameter at `path`; for stacked blocks,
    one per row of the leading axis."""
    if _match(layers.embeddings, path):
        return 0
    if block := _match(layers.block, path):
        return int(block.group(1)) + 1
    if _match(layers.scanned, path):
        return np.arange(1, depth + 1)
    if _match(layers.top, path):
        return depth + 1
    raise ValueError(f'config.layer_decay: parameter {path} is in no layer this trainer knows')


def lr_scale_fn(config, model) -> Callable[[str], np.ndarray] | None:
    """path -> the learning-rate scale of config.layer_decay (see the module docstring); None when it is off."""
    if config.layer_decay == 1:
        return None
    layers, depth, decay = LAYERS[config.model_name], model.depth, config.layer_decay
    return lambda path: decay ** (depth + 1 - np.asarray(layer_of(layers, depth, path), np.float64))


def trainable_fn(config, model) -> Callable | None:
    """params -> a pytree of bools, False where the optimiser must leave a parameter alone: the objective's own
    frozen parameters (DINO's teacher), or everything but the head with config.freeze_backbone."""
    if not config.freeze_backbone:
        return objectives.trainable_mask_fn(model)
    head = LAYERS[config.model_name].head
    return lambda params: traverse_util.unflatten_dict(
        {path: bool(_match(head, '/'.join(path))) for path in traverse_util.flatten_dict(params)})


def is_trainer_checkpoint(path: str | Path) -> bool:
    """A trainer workdir (checkpoints/) or a `vit-flax import` folder: orbax step folders, told by the metadata file
    orbax writes in each (a folder of pretrained checkpoints may well have numbered folders too)."""
    path = Path(path)
    return path.is_dir() and ((path / 'checkpoints').is_dir() or any(
        child.name.isdigit() and (child / '_CHECKPOINT_METADATA').is_file() for child in path.iterdir()))


def _plain(value):
    """numpy scalars as Python's, tuples as lists: what config.json holds."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


def prepare(config: ml_collections.ConfigDict) -> tuple[ml_collections.ConfigDict, dict | None]:
    """(the config the run trains, the variables it starts from): for a pretrained `config.init_from`, a copy of
    `config` with the checkpoint's keywords in `config.model` and its normalisation in `config.mean` / `config.std`
    (see the module docstring), and the checkpoint's variables for that model; otherwise `config` as it is and None
    (a trainer checkpoint is read once the train state exists). Reads; writes nothing."""
    source = config.init_from
    if not source or is_trainer_checkpoint(source):
        return config, None
    if config.model_name != PRETRAINED_MODEL:
        if not Path(source).exists():
            raise ValueError(f'config.init_from={source!r}: no such file or directory')
        raise ValueError(f'config.init_from={source!r} is no trainer workdir or `vit-flax import` folder (it holds no '
                         f'orbax checkpoint); a pretrained checkpoint (timm, Hugging Face, big_vision) fine-tunes '
                         f"with config.model_name='{PRETRAINED_MODEL}', not {config.model_name!r}")
    if config.objective != objectives.SUPERVISED:
        raise ValueError(f'config.init_from={source!r}: a pretrained checkpoint fine-tunes a classifier, '
                         f"config.objective='supervised', not {config.objective!r}")
    from vit_flax import converters, pretrained  # the [torch] extra, for pretrained sources only

    requested = config.model.to_dict()
    options = {key: requested.pop(key) for key in list(requested) if key in pretrained.JAX_OPTIONS}
    targets = {key: requested.pop(key) for key in TARGETS if key in requested}
    hints = registry.tuples_from_json(requested)
    try:
        try:
            checkpoint = pretrained.read(source)
        except pretrained.UnsupportedCheckpointError:
            if not hints:
                raise
            checkpoint = pretrained.read(source, **hints)  # a file that cannot say them all: a bare state dict
    except (OSError, ValueError) as error:
        raise ValueError(f'config.init_from={source!r}: {error}') from None
    for key, value in hints.items():
        if not pretrained.same_keyword(key, value, checkpoint.kwargs[key]):
            raise ValueError(f'config.model.{key}={_plain(value)!r} but config.init_from={source!r} holds '
                             f'{key}={_plain(checkpoint.kwargs[key])!r}: leave config.model.{key} out to take the '
                             "checkpoint's")
    info = data.dataset_info(config)
    if checkpoint.kwargs['in_chans'] != info.channels:
        raise ValueError(f'config.init_from={source!r} holds a model for {checkpoint.kwargs["in_chans"]}-channel '
                         f'images but dataset {config.dataset!r} has {info.channels}-channel images (config.channels)')
    checkpoint = pretrained.adapted(checkpoint, num_classes=targets.get('num_classes', info.num_classes),
                                    img_size=targets.get('img_size', info.image_size),
                                    rng=jax.random.key(config.seed))
    keywords = {key: _plain(value) for key, value in {**checkpoint.kwargs, **options}.items()}
    model = registry.build(PRETRAINED_MODEL, keywords)
    variables = converters.from_torch(model, checkpoint.state_dict)

    config = copy.deepcopy(config)
    with config.unlocked():
        config.model = ml_collections.ConfigDict(keywords)
        for key in ('mean', 'std'):
            if config.get(key) is None and key in checkpoint.preprocessing:
                config[key] = _plain(checkpoint.preprocessing[key])
    return config, variables
