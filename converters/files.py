"""Files: vit-pytorch state dicts as .safetensors or .pt, with a JSON sidecar naming the vit-pytorch class and
keywords, so that a PyTorch user gets a ready model and a Flax user the model that was saved.

    save_torch('vit.safetensors', model, variables)   # + vit.json, the sidecar
    torch_model = load_torch('vit.safetensors')       # a ready vit-pytorch model
    model, variables = load_flax('vit.safetensors')   # and back into Flax

A model with JAX-only options (`scan_layers`, `remat_policy`: registry.FLAX_ONLY_FIELDS) exports to the state dict
and vit-pytorch keywords of the same model without them; its sidecar records the options apart, under
`flax_kwargs`, so `load_flax` gives back the model that was saved (scanned stays scanned). torch is imported only
where torch tensors or `.pt` files are involved: exporting to and importing from .safetensors never loads it (the
trainer's `vit-flax export` stays light).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.metadata
import inspect
import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import flax.linen as nn
from safetensors.numpy import load_file, save_file

from vit_flax import registry
from vit_flax.extractor import Extractor

from .arrays import contiguous, is_torch_tensor, to_numpy, to_tensor
from .tree import from_torch, to_torch
from .vit_pytorch import import_vit_pytorch, torch_twin_name

SIDECAR_FORMAT = 1


def _sidecar_path(path: Path) -> Path:
    return path.with_suffix('.json')


def save_state_dict(path: str | Path, state_dict: Mapping[str, Any]) -> Path:
    """Write a state dict to `.safetensors` (no torch needed) or `.pt` (torch.save)."""
    path = Path(path)
    if path.suffix not in ('.safetensors', '.pt'):
        raise ValueError(f'unknown weights format {path.suffix!r} for {path}: use .safetensors or .pt')
    path.parent.mkdir(parents=True, exist_ok=True)
    with replaced_whole(path) as temporary:
        if path.suffix == '.safetensors':
            save_file({key: contiguous(to_numpy(value)) for key, value in state_dict.items()}, str(temporary))
        else:
            import torch

            torch.save({key: value if is_torch_tensor(value) else to_tensor(to_numpy(value))
                        for key, value in state_dict.items()}, temporary)
    return path


@contextlib.contextmanager
def replaced_whole(path: Path):
    """A temporary name next to `path` to write to; on success it replaces `path` in one rename, so a reader (or a
    kill) sees the old file or the new one, never half of one. On failure `path` is left as it was."""
    temporary = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def replaced_directory(directory: Path, overwrite: bool = False):
    """A new empty directory beside `directory` to write into; on success it takes `directory`'s place (the old one,
    where `overwrite` allows one, moved aside first and deleted after: a directory cannot be renamed over a
    non-empty one), so a reader sees the old directory or the new one whole. On failure nothing is left and the old
    directory stays. An existing `directory` without `overwrite`, or a file there, is refused before anything."""
    directory = Path(directory)
    if directory.exists() and not overwrite:
        raise FileExistsError(f'{directory} exists: pass overwrite=True to replace it')
    if directory.exists() and not directory.is_dir():
        raise FileExistsError(f'{directory} exists and is not a directory')
    directory.parent.mkdir(parents=True, exist_ok=True)
    temporary = directory.with_name(f'.{directory.name}.{os.getpid()}.tmp')
    old = directory.with_name(f'.{directory.name}.{os.getpid()}.old')
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        temporary.mkdir()
        yield temporary
        if directory.exists():
            os.replace(directory, old)
        os.replace(temporary, directory)
    except BaseException:
        if old.exists() and not directory.exists():
            os.replace(old, directory)
        raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def load_state_dict(path: str | Path) -> dict:
    """Read a state dict from `.safetensors` (numpy arrays) or `.pt` (torch tensors, weights only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'no weights file at {path}')
    try:
        if path.suffix == '.safetensors':
            return load_file(str(path))
        if path.suffix == '.pt':
            import torch

            state_dict = torch.load(path, map_location='cpu', weights_only=True)
            if not isinstance(state_dict, Mapping):
                raise ValueError(f'holds a {type(state_dict).__name__}, not a state dict')
            return dict(state_dict)
    except Exception as error:  # a truncated or foreign file: say which
        raise ValueError(f'could not read weights from {path}: {error}') from error
    raise ValueError(f'unknown weights format {path.suffix!r} for {path}: use .safetensors or .pt')


def save_torch(path: str | Path, model: nn.Module, variables: Mapping, *, input_spec: dict | None = None) -> Path:
    """Export a registered Flax model's variables as a vit-pytorch state dict plus its JSON sidecar.

    `input_spec` (layout, size, channels, mean, std, ...) goes into the sidecar's `input` section, so a PyTorch
    user can prepare images the way the model was trained.
    """
    path = Path(path)
    entry = registry.entry_for(model)
    if entry.torch_package != 'vit_pytorch':
        # the pretrained-checkpoint family has timm's layout: its files are timm's, HF's and big_vision's
        raise ValueError(f'{entry.name} has no vit-pytorch twin ({entry.torch_module}.{entry.torch_class_name} is its '
                         "layout): write it with vit_flax.pretrained.export(model, variables, path, format='timm', "
                         "'hf' or 'npz')")
    sidecar = {
        'format': SIDECAR_FORMAT,
        'weights': path.name,
        'module': entry.torch_module,
        'class': entry.torch_class_name,
        'kwargs': _sidecar_kwargs(model),
        'vit_pytorch_version': _version('vit-pytorch'),
        'vit_flax_class': f'vit_flax.{entry.name}',
    }
    flax_kwargs = _flax_only_kwargs(model)
    if flax_kwargs:
        sidecar['flax_kwargs'] = flax_kwargs
    if input_spec is not None:
        sidecar['input'] = input_spec
    sidecar_text = json.dumps(sidecar, indent=2) + '\n'  # fails before anything is written
    save_state_dict(path, to_torch(model, variables, as_numpy=path.suffix == '.safetensors'))
    with replaced_whole(_sidecar_path(path)) as temporary:
        temporary.write_text(sidecar_text)
    return path


def _sidecar_kwargs(model: nn.Module) -> dict[str, Any]:
    """The module's vit-pytorch keywords for JSON. A keyword holding a module (T2TViT's or efficient.ViT's
    `transformer`, Adapter's `vit`) is written as its vit-pytorch twin: {'module', 'class', 'kwargs'}."""

    def encode(value, where):
        if isinstance(value, nn.Module):
            try:
                torch_module, name = torch_twin_name(value)
            except ValueError as error:
                raise ValueError(
                    f'{where}: {error}, so a PyTorch user could not build the model. Export the weights alone '
                    f'with vit_flax.converters.save_state_dict(path, vit_flax.converters.to_torch(model, variables))'
                ) from None
            return {'module': torch_module, 'class': name,
                    'kwargs': {key: encode(v, f'{where}.{key}') for key, v in registry.torch_kwargs(value).items()}}
        if isinstance(value, (tuple, list)):
            return [encode(v, f'{where}[{i}]') for i, v in enumerate(value)]
        if isinstance(value, Extractor):
            raise ValueError(
                f'{where}: an Extractor of {type(value.vit).__name__} has no sidecar form (a sidecar names classes of '
                'architecture files only). Export the weights alone with vit_flax.converters.save_state_dict(path, '
                'vit_flax.converters.to_torch(model, variables))')
        return value

    return {key: encode(value, key) for key, value in registry.torch_kwargs(model).items()}


def _flax_only_kwargs(model: nn.Module) -> dict[str, Any]:
    """The JAX-only options the model sets to other than their defaults (layer scan, remat). They are kept apart
    from `kwargs`, which vit-pytorch's constructor takes as they are; a module-valued keyword is written with its
    vit-pytorch keywords only, so its own JAX-only options are not kept (it loads unscanned, same weights)."""
    return {field.name: getattr(model, field.name) for field in dataclasses.fields(model)
            if field.name in registry.FLAX_ONLY_FIELDS - {'parent', 'name'}
            and getattr(model, field.name) != field.default}


def _is_encoded_module(value) -> bool:
    return isinstance(value, dict) and value.keys() == {'module', 'class', 'kwargs'}


# A sidecar is data from outside: it may name only a class vit-flax mirrors (a class of a registered architecture's
# file, which vit-pytorch has under the same file and name), with JSON keywords that class takes. Nothing else in it
# is imported or called.
_JSON_SCALARS = (str, int, float, bool, type(None))


def _checked_class(value: dict, where: str) -> tuple[str, str]:
    """(vit-flax file, class name) of an encoded module {'module': 'vit_pytorch.<file>', 'class', 'kwargs'}, after
    checking it names a class that vit-flax mirrors; ValueError naming the field and value otherwise."""
    module, class_name = value['module'], value['class']
    files = {entry.module for entry in registry.ENTRIES}
    file = module.removeprefix('vit_pytorch.') if isinstance(module, str) else None
    if not isinstance(module, str) or not module.startswith('vit_pytorch.') or file not in files:
        raise ValueError(f'{where}.module={module!r}: a sidecar may only name a vit_pytorch file that vit-flax '
                         f'mirrors ({", ".join(sorted(files))})')
    flax_class = getattr(importlib.import_module(f'vit_flax.{file}'), class_name, None) \
        if isinstance(class_name, str) and class_name.isidentifier() and not class_name.startswith('_') else None
    if not (isinstance(flax_class, type) and issubclass(flax_class, nn.Module)):
        raise ValueError(f'{where}.class={class_name!r}: vit_flax.{file} mirrors no such class')
    if not isinstance(value['kwargs'], dict):
        raise ValueError(f'{where}.kwargs must be a JSON object, got {type(value["kwargs"]).__name__}')
    keywords = {field.name for field in dataclasses.fields(flax_class)} - registry.FLAX_ONLY_FIELDS
    unknown = sorted(set(value['kwargs']) - keywords)
    if unknown:
        raise ValueError(f'{where}.kwargs: {file}.{class_name} takes no keyword {unknown[0]!r}')
    return file, class_name


# the vit-pytorch keywords whose value is a dict of options (JSON data under string keys); an object anywhere else
# is refused
DICT_KEYWORDS = frozenset({
    'orthog_residual_update_kwargs',  # simple_vit_orthog_residual_update
    'sigreg_loss_kwargs',  # lejepa
    'moss',  # accept_video_wrapper: MOSS's keywords
})


def _decoded_kwargs(kwargs: dict, where: str, build) -> dict[str, Any]:
    """The keywords of a sidecar with every encoded module built by `build(file, class_name, kwargs)`; every other
    value must be JSON data (numbers, strings, booleans, null, lists of them; an object only for DICT_KEYWORDS)."""

    def decode(value, at):
        if _is_encoded_module(value):
            file, class_name = _checked_class(value, at)
            return build(file, class_name, _decoded_kwargs(value['kwargs'], f'{at}.kwargs', build))
        if isinstance(value, dict) and at.rsplit('.', 1)[-1] in DICT_KEYWORDS:
            return {key: decode(item, f'{at}.{key}') for key, item in value.items()}
        if isinstance(value, list):
            return [decode(item, f'{at}[{i}]') for i, item in enumerate(value)]
        if not isinstance(value, _JSON_SCALARS):
            raise ValueError(f'{at}: a keyword value must be JSON data or an encoded module, got {value!r}')
        return value

    return registry.tuples_from_json({key: decode(value, f'{where}.{key}') for key, value in kwargs.items()})


def _torch_kwargs_from_sidecar(kwargs: dict[str, Any], where: str = 'kwargs') -> dict[str, Any]:
    return _decoded_kwargs(kwargs, where, lambda file, class_name, keywords: _torch_class(file, class_name)(**keywords))


def _flax_kwargs_from_sidecar(kwargs: dict[str, Any], where: str = 'kwargs') -> dict[str, Any]:
    return _decoded_kwargs(kwargs, where, lambda file, class_name, keywords: getattr(
        importlib.import_module(f'vit_flax.{file}'), class_name)(**keywords))


def _torch_class(file: str, class_name: str):
    import torch

    torch_class = getattr(import_vit_pytorch(f'vit_pytorch.{file}'), class_name, None)
    # vit-pytorch writes some modules as functions of that file returning one (wwt.FeedForward, an nn.Sequential),
    # which vit-flax mirrors as classes of the same name (_checked_class has found the Flax class)
    if inspect.isfunction(torch_class) and torch_class.__module__ == f'vit_pytorch.{file}':
        return torch_class
    if not (isinstance(torch_class, type) and issubclass(torch_class, torch.nn.Module)):
        raise ValueError(f'vit_pytorch.{file} has no module class {class_name!r}')
    return torch_class


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _read_sidecar(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f'no weights file at {path}')
    sidecar_path = _sidecar_path(path)
    if not sidecar_path.is_file():
        raise FileNotFoundError(f'{path} has no sidecar {sidecar_path.name} naming its vit-pytorch class and keywords')
    try:
        sidecar = json.loads(sidecar_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f'sidecar {sidecar_path} is not valid JSON: {error}') from error
    if not isinstance(sidecar, dict):
        raise ValueError(f'sidecar {sidecar_path} holds a {type(sidecar).__name__}, not a JSON object')
    for field in ('module', 'class', 'kwargs'):
        if field not in sidecar:
            raise ValueError(f'sidecar {sidecar_path} lacks the field {field!r}')
    try:
        _checked_class(sidecar, 'sidecar')
        name = sidecar.get('vit_flax_class')
        if name is not None and (not isinstance(name, str) or name.removeprefix('vit_flax.') not in registry.BY_NAME):
            raise ValueError(f'sidecar.vit_flax_class={name!r} is not a registered vit-flax class')
        flax_kwargs = sidecar.get('flax_kwargs', {})
        options = registry.FLAX_ONLY_FIELDS - {'parent', 'name'}
        if not isinstance(flax_kwargs, dict) or not set(flax_kwargs) <= options \
                or not all(isinstance(value, _JSON_SCALARS) for value in flax_kwargs.values()):
            raise ValueError(f'sidecar.flax_kwargs={flax_kwargs!r}: only JSON values of {sorted(options)}')
    except ValueError as error:
        raise ValueError(f'refusing sidecar {sidecar_path}: {error}') from None
    return sidecar


def load_torch(path: str | Path):
    """The ready vit-pytorch model (eval mode) saved by `save_torch`: class and keywords from the sidecar."""
    path = Path(path)
    sidecar = _read_sidecar(path)
    torch_class = _torch_class(sidecar['module'].removeprefix('vit_pytorch.'), sidecar['class'])
    try:
        kwargs = _torch_kwargs_from_sidecar(sidecar['kwargs'])
    except ValueError as error:
        raise ValueError(f'refusing sidecar {_sidecar_path(path)}: {error}') from None
    torch_model = torch_class(**kwargs)
    state_dict = {key: value if is_torch_tensor(value) else to_tensor(value)
                  for key, value in load_state_dict(path).items()}
    torch_model.load_state_dict(state_dict, strict=True)
    return torch_model.eval()


def load_flax(path: str | Path) -> tuple[nn.Module, dict]:
    """The Flax model and variables for a vit-pytorch state dict with a sidecar, with the JAX-only options it was
    saved with (its `flax_kwargs`: a model saved scanned loads scanned). The same weights load into the model with
    other options too: `converters.from_torch(model, converters.load_state_dict(path))`."""
    path = Path(path)
    sidecar = _read_sidecar(path)
    # the Flax class saved it (a DistillableT2TViT exports as vit-pytorch's T2TViT), else vit-pytorch's namesake
    name = sidecar.get('vit_flax_class', '').removeprefix('vit_flax.') or (
        f"{sidecar['module'].removeprefix('vit_pytorch.')}.{sidecar['class']}")
    try:
        kwargs = _flax_kwargs_from_sidecar(sidecar['kwargs'])
    except ValueError as error:
        raise ValueError(f'refusing sidecar {_sidecar_path(path)}: {error}') from None
    model = registry.build(name, {**kwargs, **sidecar.get('flax_kwargs', {})})
    return model, from_torch(model, load_state_dict(path))
