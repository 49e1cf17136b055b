"""Weights both ways between vit-flax (Flax linen) and vit-pytorch.

    variables = converters.from_torch(model, torch_model.state_dict())
    state_dict = converters.to_torch(model, variables)       # loads into vit-pytorch with strict=True

    converters.save_torch('vit.safetensors', model, variables)   # + vit.json, the sidecar
    torch_model = converters.load_torch('vit.safetensors')       # a ready vit-pytorch model
    model, variables = converters.load_flax('vit.safetensors')   # and back into Flax

A model with JAX-only options (`scan_layers`, `remat_policy`: registry.FLAX_ONLY_FIELDS) exports to the state dict
and vit-pytorch keywords of the same model without them; its sidecar records the options apart, under
`flax_kwargs`, so `load_flax` gives back the model that was saved (scanned stays scanned).

`model` is the configured Flax module. The converter learns its variable tree with `jax.eval_shape` from an
example input that the registry derives from the module's own fields (or from `example_inputs=`), then maps
each leaf with the rules in `converters/rules.py`. Conversion is strict: every missing, unexpected and
mis-shaped key is reported in one error. Dtypes are kept (bf16 stays bf16) and the caller's dicts are not
modified. torch is imported only where torch tensors or `.pt` files are involved.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import json
from pathlib import Path
from typing import Any, Mapping

import flax.linen as nn
import jax
import ml_dtypes
import numpy as np
from flax import traverse_util

from converters import legacy
from converters.rules import Slot, batchnorm_counter_keys, slots
from vit_flax import registry

__all__ = [
    'StateDictMismatchError',
    'from_torch',
    'to_torch',
    'save_state_dict',
    'load_state_dict',
    'save_torch',
    'load_torch',
    'load_flax',
    'import_vit_pytorch',
]

SIDECAR_FORMAT = 1


class StateDictMismatchError(ValueError):
    """A state dict and a Flax model disagree: every missing, unexpected and mis-shaped key, with shapes."""

    def __init__(self, what: str, missing=(), unexpected=(), mismatched=()):
        self.missing, self.unexpected, self.mismatched = list(missing), list(unexpected), list(mismatched)
        lines = [f'{what} does not match the model:']
        lines += [f'  missing key {k}' for k in self.missing]
        lines += [f'  unexpected key {k}' for k in self.unexpected]
        lines += [f'  wrong shape for {k}: got {got}, the model expects {want}' for k, got, want in self.mismatched]
        super().__init__('\n'.join(lines))


# the variable tree of a model


def _variable_shapes(model: nn.Module, example_inputs: tuple | None) -> dict[tuple[str, ...], tuple[int, ...]]:
    if example_inputs is None:
        example_inputs = registry.example_inputs(model)
    shapes = jax.eval_shape(lambda: model.init(registry.init_rngs(jax.random.key(0)), *example_inputs))
    return {path: tuple(leaf.shape) for path, leaf in traverse_util.flatten_dict(dict(shapes)).items()}


_TABLES: dict = {}  # tracing a big model's init is slow in Python: one trace per configuration and input shapes


def _input_signature(example_inputs: tuple) -> tuple:
    """Shapes and dtypes of the example inputs, nested lists included (NaViT takes lists of images)."""
    leaves, structure = jax.tree_util.tree_flatten(example_inputs)
    return str(structure), tuple((np.shape(x), str(getattr(x, 'dtype', type(x)))) for x in leaves)


def _configuration(model: nn.Module) -> str:
    """Every field of the module, the JAX-only ones included: a scanned model's tree is not the unscanned one's."""
    return repr([(field.name, getattr(model, field.name)) for field in dataclasses.fields(model)
                 if field.name not in ('parent', 'name')])


def _by_flax_path(table: dict[str, Slot]) -> dict[tuple[str, ...], list[Slot]]:
    """The entries of each Flax leaf: one, or one per layer (in layer order) for a scanned stack's leaf."""
    grouped: dict[tuple[str, ...], list[Slot]] = {}
    for slot in table.values():
        grouped.setdefault(slot.flax_path, []).append(slot)
    return grouped


def _table(model, example_inputs) -> dict[str, Slot]:
    if example_inputs is None:
        example_inputs = registry.example_inputs(model)
    key = (type(model), _configuration(model), _input_signature(example_inputs))
    if key not in _TABLES:
        if len(_TABLES) >= 256:
            _TABLES.clear()
        _TABLES[key] = slots(_variable_shapes(model, example_inputs))
    return _TABLES[key]


# arrays between torch, numpy and jax


def _is_torch_tensor(value) -> bool:
    return type(value).__module__.startswith('torch')


def to_numpy(value) -> np.ndarray:
    """A numpy view of a torch tensor, jax array or array-like, bf16 included."""
    if _is_torch_tensor(value):
        import torch

        tensor = value.detach().cpu()
        if tensor.dtype == torch.bfloat16:  # numpy has no bf16; ml_dtypes does
            return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return tensor.numpy()
    return np.asarray(value)


def contiguous(array) -> np.ndarray:
    """A C-contiguous array of the same shape (np.ascontiguousarray would turn a 0-d array into shape (1,))."""
    return np.require(array, requirements='C')


def to_tensor(array: np.ndarray):
    """A torch tensor owning a contiguous copy of `array`, bf16 included."""
    import torch

    array = np.array(array, copy=True, order='C')
    if array.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


# parameters a vit-pytorch module holds twice


def shared_keys(model: nn.Module, table: dict[str, Slot]) -> dict[str, str]:
    """Alias key -> key, for parameters that vit-pytorch's state dict lists under two names because one module is
    an attribute of two parents (mpp.MPP's `patch_to_emb = nn.Sequential(transformer.to_patch_embedding[1:])`).
    Flax holds each once; the model names the aliases with a `torch_aliases()` method, {alias prefix: prefix}."""
    prefixes = model.torch_aliases() if hasattr(type(model), 'torch_aliases') else {}
    keys = [*table, *sorted(batchnorm_counter_keys(table))]  # BatchNorm step counters are repeated too
    return {alias + key[len(prefix):]: key
            for alias, prefix in prefixes.items() for key in keys if key.startswith(prefix)}


def _drop_shared_keys(model: nn.Module, table: dict[str, Slot], arrays: dict) -> dict:
    """`arrays` without the aliases of shared parameters, after checking each equals its original."""
    shared = shared_keys(model, table)
    differing = [
        f'{alias} {tuple(arrays[alias].shape)} and {key} {tuple(arrays[key].shape)}'
        for alias, key in shared.items()
        if alias in arrays and key in arrays
        and (arrays[alias].shape != arrays[key].shape or not np.array_equal(arrays[alias], arrays[key]))
    ]
    if differing:
        raise ValueError(
            f'state dict for {type(model).__name__}: these keys name one shared vit-pytorch parameter but hold '
            f'different values: ' + '; '.join(differing)
        )
    # aliases are optional on import: their values are their originals'
    return {key: value for key, value in arrays.items() if key not in shared}


# the two directions


def from_torch(model: nn.Module, state_dict: Mapping[str, Any], *, example_inputs: tuple | None = None) -> dict:
    """A vit-pytorch state dict (torch tensors or arrays) as Flax variables for `model`."""
    arrays = {key: to_numpy(value) for key, value in state_dict.items()}
    arrays = legacy.migrate(model, arrays)
    table = _table(model, example_inputs)
    optional = batchnorm_counter_keys(table)
    arrays = _drop_shared_keys(model, table, arrays)

    missing = [key for key in table if key not in arrays]
    unexpected = [key for key in arrays if key not in table and key not in optional]
    mismatched = [
        (key, tuple(arrays[key].shape), slot.torch_shape)
        for key, slot in table.items()
        if key in arrays and tuple(arrays[key].shape) != slot.torch_shape
    ]
    if missing or unexpected or mismatched:
        raise StateDictMismatchError(
            f'state dict for {type(model).__name__}', missing, unexpected, mismatched
        )

    flat = {}
    for path, path_slots in _by_flax_path(table).items():
        layers = [slot.rule.from_torch(arrays[slot.torch_key]) for slot in path_slots]
        # a scanned stack's leaf stacks its layers (np.ndindex's order is the C order of the layer axes)
        leaf = np.stack(layers).reshape(path_slots[0].flax_shape) if path_slots[0].layer else layers[0]
        flat[path] = jax.numpy.asarray(leaf)
    return traverse_util.unflatten_dict(flat)


def to_torch(
    model: nn.Module, variables: Mapping, *, example_inputs: tuple | None = None, as_numpy: bool = False
) -> dict:
    """Flax variables of `model` as a vit-pytorch state dict (torch tensors, or numpy arrays with `as_numpy`)."""
    table = _table(model, example_inputs)
    by_path = _by_flax_path(table)
    flat = traverse_util.flatten_dict(dict(variables))

    def name(path):
        if path not in by_path:
            return '/'.join(path)
        keys = [slot.torch_key for slot in by_path[path]]
        return '/'.join(path) + (f' ({keys[0]})' if len(keys) == 1 else f' ({keys[0]} ... {keys[-1]})')

    missing = [name(path) for path in by_path if path not in flat]
    unexpected = [name(path) for path in flat if path not in by_path]
    mismatched = [
        (name(path), tuple(np.shape(flat[path])), path_slots[0].flax_shape)
        for path, path_slots in by_path.items()
        if path in flat and tuple(np.shape(flat[path])) != path_slots[0].flax_shape
    ]
    if missing or unexpected or mismatched:
        raise StateDictMismatchError(f'variables for {type(model).__name__}', missing, unexpected, mismatched)

    state_dict = {slot.torch_key: slot.rule.to_torch(slot.of_leaf(np.asarray(flat[slot.flax_path])))
                  for slot in table.values()}
    for key in sorted(batchnorm_counter_keys(table)):
        # Flax keeps no step counter; 0 is what torch starts from and only matters for momentum=None
        state_dict[key] = np.zeros((), np.int64)
    for alias, key in shared_keys(model, table).items():
        state_dict[alias] = state_dict[key]
    convert = contiguous if as_numpy else to_tensor
    return {key: convert(value) for key, value in state_dict.items()}


# files: .safetensors and .pt, with a JSON sidecar naming the vit-pytorch class and keywords


def _sidecar_path(path: Path) -> Path:
    return path.with_suffix('.json')


def save_state_dict(path: str | Path, state_dict: Mapping[str, Any]) -> Path:
    """Write a state dict to `.safetensors` (no torch needed) or `.pt` (torch.save)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == '.safetensors':
        from safetensors.numpy import save_file

        save_file({key: contiguous(to_numpy(value)) for key, value in state_dict.items()}, str(path))
    elif path.suffix == '.pt':
        import torch

        torch.save({key: value if _is_torch_tensor(value) else to_tensor(to_numpy(value))
                    for key, value in state_dict.items()}, path)
    else:
        raise ValueError(f'unknown weights format {path.suffix!r} for {path}: use .safetensors or .pt')
    return path


def load_state_dict(path: str | Path) -> dict:
    """Read a state dict from `.safetensors` (numpy arrays) or `.pt` (torch tensors, weights only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'no weights file at {path}')
    try:
        if path.suffix == '.safetensors':
            from safetensors.numpy import load_file

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
    _sidecar_path(path).write_text(sidecar_text)
    return path


def _sidecar_kwargs(model: nn.Module) -> dict[str, Any]:
    """The module's vit-pytorch keywords for JSON. A keyword holding a module (T2TViT's or efficient.ViT's
    `transformer`, Adapter's `vit`) is written as its vit-pytorch twin: {'module', 'class', 'kwargs'}."""

    def encode(value, where):
        if isinstance(value, nn.Module):
            try:
                torch_module, name = registry.torch_twin_name(value)
            except ValueError as error:
                raise ValueError(
                    f'{where}: {error}, so a PyTorch user could not build the model. Export the weights alone '
                    f'with converters.save_state_dict(path, converters.to_torch(model, variables))'
                ) from None
            return {'module': torch_module, 'class': name,
                    'kwargs': {key: encode(v, f'{where}.{key}') for key, v in registry.torch_kwargs(value).items()}}
        if isinstance(value, (tuple, list)):
            return [encode(v, f'{where}[{i}]') for i, v in enumerate(value)]
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


def _torch_kwargs_from_sidecar(kwargs: dict[str, Any]) -> dict[str, Any]:
    def decode(value):
        if _is_encoded_module(value):
            torch_class = getattr(import_vit_pytorch(value['module']), value['class'])
            return torch_class(**_torch_kwargs_from_sidecar(value['kwargs']))
        return value

    return registry.tuples_from_json({key: decode(value) for key, value in kwargs.items()})


def _flax_kwargs_from_sidecar(kwargs: dict[str, Any]) -> dict[str, Any]:
    def decode(value):
        if _is_encoded_module(value):
            flax_module = importlib.import_module('vit_flax.' + value['module'].removeprefix('vit_pytorch.'))
            return getattr(flax_module, value['class'])(**_flax_kwargs_from_sidecar(value['kwargs']))
        return value

    return registry.tuples_from_json({key: decode(value) for key, value in kwargs.items()})


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _read_sidecar(path: Path) -> dict:
    sidecar_path = _sidecar_path(path)
    if not sidecar_path.is_file():
        raise FileNotFoundError(f'{path} has no sidecar {sidecar_path.name} naming its vit-pytorch class and keywords')
    try:
        sidecar = json.loads(sidecar_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f'sidecar {sidecar_path} is not valid JSON: {error}') from error
    for field in ('module', 'class', 'kwargs'):
        if field not in sidecar:
            raise ValueError(f'sidecar {sidecar_path} lacks the field {field!r}')
    return sidecar


def import_vit_pytorch(module: str):
    """Import a vit_pytorch module, standing in for torchvision where it cannot load (see converters.oracle)."""
    from converters.oracle import ensure_torchvision

    ensure_torchvision()
    return importlib.import_module(module)


def load_torch(path: str | Path):
    """The ready vit-pytorch model (eval mode) saved by `save_torch`: class and keywords from the sidecar."""
    path = Path(path)
    sidecar = _read_sidecar(path)
    torch_class = getattr(import_vit_pytorch(sidecar['module']), sidecar['class'])
    torch_model = torch_class(**_torch_kwargs_from_sidecar(sidecar['kwargs']))
    state_dict = {key: value if _is_torch_tensor(value) else to_tensor(value)
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
    model = registry.build(name, {**_flax_kwargs_from_sidecar(sidecar['kwargs']), **sidecar.get('flax_kwargs', {})})
    return model, from_torch(model, load_state_dict(path))
