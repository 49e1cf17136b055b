"""Pretrained ViT checkpoints in and out: timm, big_vision and Hugging Face (issue 20).

    from vit_flax import pretrained

    model, variables = pretrained.load('timm/vit_base_patch16_224.augreg2_in21k_ft_in1k')   # a hub name, or
    model, variables = pretrained.load('vit.npz', num_classes=10, img_size=384)              # a file or directory
    pretrained.load_config('timm/vit_base_patch16_224.augreg2_in21k_ft_in1k')               # mean, std, crop, ...
    pretrained.export(model, variables, 'out/', format='timm')                              # or 'hf', 'npz'

The model is a `pretrained_vit.VisionTransformer` (timm's layout, a registry entry like every architecture), so it
trains, scans its layers and shards like the rest. Every format is read into one form (converters/pretrained_form.py:
keywords, timm-keyed weights, preprocessing) and mapped onto the model by the strict converter, which names every
missing, unexpected or mis-shaped key; nothing is built from a file that does not fit whole.

Sources, detected by what they are:
- a hub name ('timm/vit_base_patch16_224.augreg2_in21k_ft_in1k', 'google/vit-base-patch16-224', an 'hf-hub:'
  prefix allowed): fetched with huggingface_hub's snapshot_download, which keeps its cache and honours
  HF_HUB_OFFLINE; then read as the directory it is;
- a directory: timm's hub layout (config.json naming an `architecture`), transformers' ViT (`model_type` 'vit') or
  SigLIP vision tower ('siglip_vision_model', or a two-tower 'siglip' whose image tower is read; its MAP head is
  global_pool='map');
- a file: `.npz` (big_vision / vision_transformer, converters/big_vision.py), or a timm state dict in `.safetensors`,
  `.pth`, `.pt` or `.bin` (`arch=` or `num_heads=` where the file names no architecture).

`load`'s overrides: `num_classes` replaces the head (a new one drawn like timm's, from `rng`; 0 removes it), and
`img_size` resamples the position embedding to the new patch grid (as timm's loader does by default: bicubic with
antialiasing; `resample='bicubic'` without, `'big_vision'` for its linear zoom). Other keywords (`num_heads`, `global_pool`, `act_layer`, ...) tell a reader what
a file cannot say and are checked against what it does; the JAX-only ones (`scan_layers`, `remat_policy`,
`attention_impl`) choose how the model runs.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any, Mapping

from vit_flax.extras import require

require('torch', 'vit_flax.pretrained')

import jax  # noqa: E402
import numpy as np  # noqa: E402

from vit_flax import converters, registry  # noqa: E402
from vit_flax.converters import big_vision, hf_vit, timm  # noqa: E402
from vit_flax.converters.pretrained_form import Pretrained, UnsupportedCheckpointError, same_keyword  # noqa: E402
from vit_flax.layers import pair, trunc_normal  # noqa: E402
from vit_flax.pretrained_vit import VisionTransformer, resample_abs_pos_embed, resample_posemb_big_vision  # noqa: E402

FORMATS = ('timm', 'hf', 'npz', 'vit-pytorch')
JAX_OPTIONS = frozenset(registry.FLAX_ONLY_FIELDS - {'parent', 'name'})
# how `img_size` resamples the position embedding: timm's checkpoint loader (bicubic with antialiasing, what
# timm.create_model(..., pretrained=True, img_size=...) does), plain bicubic (timm's resample_abs_pos_embed with
# antialias=False, its resize_pos_embed), big_vision's linear zoom
RESAMPLERS = ('timm', 'bicubic', 'big_vision')
# a hub repository id: 'owner/name', with timm's '.tag' and transformers' '-' names
_HUB_NAME = re.compile(r'^(hf-hub:)?[A-Za-z0-9][\w.-]*/[\w.-]+$')
_HUB_FILES = ['config.json', 'model.safetensors', 'model.safetensors.index.json', 'model-*.safetensors',
              'preprocessor_config.json', 'pytorch_model.bin', '*.npz']

__all__ = ['load', 'load_config', 'read', 'adapted', 'export', 'to_pretrained', 'same_keyword', 'FORMATS',
           'Pretrained', 'UnsupportedCheckpointError']


def _resolve(source: str | os.PathLike) -> Path:
    """A local path, or the snapshot directory of a hub repository (downloaded into, or found in, HF's cache)."""
    path = Path(source)
    if path.exists():
        return path
    name = str(source)
    if not _HUB_NAME.match(name):
        raise FileNotFoundError(f'no checkpoint file or directory at {name}, and it is not a hub name (owner/name)')
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    repo_id = name.removeprefix('hf-hub:')
    try:
        return Path(snapshot_download(repo_id, allow_patterns=_HUB_FILES))
    except LocalEntryNotFoundError as error:
        raise FileNotFoundError(f'{repo_id} is not in the Hugging Face cache and cannot be downloaded now (offline, '
                                f'or no network): {error}') from error
    except HfHubHTTPError as error:
        raise FileNotFoundError(f'could not fetch {repo_id} from the Hugging Face hub: {error}') from error


def read(source: str | os.PathLike, **hints) -> Pretrained:
    """The checkpoint at `source` (file, directory or hub name) as a `Pretrained`: keywords, timm-keyed weights and
    preprocessing. `hints`: keywords the file cannot say (num_heads, ...), or `arch=` for a bare timm state dict."""
    path = _resolve(source)
    if path.is_dir():
        if hf_vit.is_hf_vit_dir(path):
            return hf_vit.read_hf_vit(path) if not hints else _checked(hf_vit.read_hf_vit(path), hints)
        if hf_vit.is_hf_siglip_dir(path):
            return hf_vit.read_hf_siglip(path, **hints)
        if timm.is_timm_dir(path):
            return timm.read_timm(path, **hints)
        npz = sorted(path.glob('*.npz'))
        if len(npz) == 1:
            return big_vision.read_npz(npz[0], **hints)
        raise UnsupportedCheckpointError(f'{path}: neither a timm hub directory (config.json with an architecture), '
                                         'a transformers ViT or SigLIP directory (model_type vit, siglip_vision_model, '
                                         'siglip) nor one .npz')
    if path.suffix == '.npz':
        return big_vision.read_npz(path, **hints)
    return timm.read_timm(path, **hints)


def _checked(pretrained: Pretrained, hints: Mapping[str, Any]) -> Pretrained:
    """A reader's result after checking the caller's hints agree with it (formats that say everything)."""
    for key, value in hints.items():
        if key not in pretrained.kwargs or not same_keyword(key, pretrained.kwargs[key], value):
            raise UnsupportedCheckpointError(f'{pretrained.source}: holds {key}={pretrained.kwargs.get(key)!r}, '
                                             f'not {value!r}')
    return pretrained


def load_config(source: str | os.PathLike, **hints) -> dict[str, Any]:
    """The preprocessing `source` expects (timm's pretrained_cfg names: input_size, interpolation, crop_pct,
    crop_mode, mean, std, num_classes, label_names, those the checkpoint records), with the model's keywords under
    'model'."""
    pretrained = read(source, **hints)
    return {**pretrained.preprocessing, 'model': dict(pretrained.kwargs), 'source': pretrained.source,
            **({'architecture': pretrained.arch} if pretrained.arch else {})}


def load(source: str | os.PathLike, *, num_classes: int | None = None, img_size=None, resample: str = 'timm',
         rng: jax.Array | None = None, **options) -> tuple[VisionTransformer, dict]:
    """(model, variables) for the checkpoint at `source`; see the module docstring for the overrides."""
    jax_options = {key: options.pop(key) for key in list(options) if key in JAX_OPTIONS}
    pretrained = read(source, **options)
    pretrained = adapted(pretrained, num_classes=num_classes, img_size=img_size, resample=resample, rng=rng)
    model = VisionTransformer(**pretrained.kwargs, **jax_options)
    return model, converters.from_torch(model, pretrained.state_dict)


def adapted(pretrained: Pretrained, *, num_classes: int | None = None, img_size=None, resample: str = 'timm',
            rng: jax.Array | None = None) -> Pretrained:
    """`pretrained` with a new head for `num_classes` and its position embedding resampled to `img_size` (the
    fine-tuning start); unchanged where they are None or already so."""
    kwargs, state_dict = dict(pretrained.kwargs), dict(pretrained.state_dict)
    if resample not in RESAMPLERS:
        raise ValueError(f'resample={resample!r}: one of {RESAMPLERS}')
    if img_size is not None and tuple(pair(img_size)) != tuple(kwargs['img_size']):
        new_size = tuple(int(s) for s in pair(img_size))
        patch = pair(kwargs['patch_size'])
        if any(side % p for side, p in zip(new_size, patch)):
            raise ValueError(f'img_size={img_size} is not a whole number of {tuple(patch)} patches')
        old_grid = tuple(side // p for side, p in zip(kwargs['img_size'], patch))
        new_grid = tuple(side // p for side, p in zip(new_size, patch))
        prefix = 0 if kwargs['no_embed_class'] else int(kwargs['class_token']) + kwargs['reg_tokens']
        posemb = np.asarray(state_dict['pos_embed'])
        if resample in ('timm', 'bicubic'):
            state_dict['pos_embed'] = resample_abs_pos_embed(posemb, new_grid, old_grid, prefix,
                                                             antialias=resample == 'timm')
        else:
            state_dict['pos_embed'] = resample_posemb_big_vision(posemb, new_grid, old_grid, prefix)
        kwargs['img_size'] = new_size
    if num_classes is not None and num_classes != kwargs['num_classes']:
        state_dict = {key: value for key, value in state_dict.items() if not key.startswith('head.')}
        if num_classes:
            features = kwargs.get('representation_size') or kwargs['embed_dim']
            # timm's head init (init_weights_vit_timm): truncated normal std 0.02, zero bias
            weight = trunc_normal(0.02)(rng if rng is not None else jax.random.key(0), (features, num_classes))
            state_dict['head.weight'] = np.asarray(weight, np.float32).T.copy()
            state_dict['head.bias'] = np.zeros(num_classes, np.float32)
        kwargs['num_classes'] = num_classes
    preprocessing = dict(pretrained.preprocessing)
    if kwargs['num_classes'] != pretrained.kwargs['num_classes']:
        preprocessing.pop('label_names', None)
        preprocessing['num_classes'] = kwargs['num_classes']
    if kwargs['img_size'] != pretrained.kwargs['img_size']:
        preprocessing['input_size'] = (kwargs['in_chans'], *kwargs['img_size'])
    return dataclasses.replace(pretrained, kwargs=kwargs, state_dict=state_dict, preprocessing=preprocessing)


def to_pretrained(model: VisionTransformer, variables: Mapping, preprocessing: Mapping | None = None,
                  arch: str | None = None) -> Pretrained:
    """Our model and variables in the common form (timm's keys), ready for a writer."""
    if not isinstance(model, VisionTransformer):
        raise TypeError(f'{type(model).__name__} is not a pretrained_vit.VisionTransformer: export it to vit-pytorch '
                        'with vit_flax.converters.save_torch')
    kwargs = {key: getattr(model, key) for key in timm.KEYWORDS}
    kwargs['img_size'] = tuple(pair(kwargs['img_size']))
    kwargs['patch_size'] = tuple(pair(kwargs['patch_size']))
    state_dict = converters.to_torch(model, variables, as_numpy=True)
    return Pretrained(kwargs=kwargs, state_dict=state_dict, preprocessing=dict(preprocessing or {}),
                      source=f'vit_flax {type(model).__name__}', arch=arch)


def export(model: VisionTransformer, variables: Mapping, path: str | os.PathLike, format: str = 'timm', *,
           preprocessing: Mapping | None = None, arch: str | None = None, overwrite: bool = False,
           npz_layout: str = 'big_vision') -> Path:
    """Write `model`'s weights in `format`: 'timm' (a hub directory timm.create_model('local-dir:...') loads), 'hf'
    (a transformers ViT directory), 'npz' (big_vision's names, `npz_layout` 'augreg' for vision_transformer's).
    'vit-pytorch' is refused with the reason: vit-pytorch's ViT has no layout for these weights. `preprocessing`
    (timm's pretrained_cfg names) goes into the files' configs."""
    if format not in FORMATS:
        raise ValueError(f'format={format!r}: one of {FORMATS}')
    if format == 'vit-pytorch':
        raise UnsupportedCheckpointError(
            "vit_pytorch.vit.ViT cannot hold a timm-layout ViT: its patch embedding is LayerNorm -> Linear -> LayerNorm "
            '(no setting makes those norms the identity), its to_qkv has no bias, and its LayerNorm eps is 1e-5; '
            "export with format='timm', 'hf' or 'npz'")
    pretrained = to_pretrained(model, variables, preprocessing, arch)
    path = Path(path)
    if format == 'timm':
        return timm.write_timm(path, pretrained, overwrite=overwrite)
    if format == 'hf':
        return hf_vit.write_hf_vit(path, pretrained, overwrite=overwrite)
    if path.exists() and not overwrite:
        raise FileExistsError(f'{path} exists: pass overwrite=True to replace it')
    return big_vision.write_npz(path, pretrained, layout=npz_layout)
