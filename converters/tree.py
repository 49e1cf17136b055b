"""The two directions between a Flax variable tree and a vit-pytorch state dict.

    variables = from_torch(model, torch_model.state_dict())
    state_dict = to_torch(model, variables)       # loads into vit-pytorch with strict=True

`model` is the configured Flax module. The converter learns its variable tree with `jax.eval_shape` from an
example input that the registry derives from the module's own fields (or from `example_inputs=`), then maps each
leaf with the rules in `rules.py`. Conversion is strict: every missing, unexpected and mis-shaped key is reported
in one error. Float widths are kept (bf16 stays bf16; float64 needs jax_enable_x64), values of the wrong kind (integers or
booleans for float parameters, complex numbers) are refused with their keys, and the caller's dicts are not modified.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import ml_dtypes
import numpy as np
from flax import traverse_util

from vit_flax import registry

from . import legacy
from .arrays import contiguous, to_numpy, to_tensor
from .rules import Slot, batchnorm_counter_keys, slots


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


def _variable_leaves(model: nn.Module, example_inputs: tuple) -> dict[tuple[str, ...], jax.ShapeDtypeStruct]:
    leaves = jax.eval_shape(lambda: model.init(registry.init_rngs(jax.random.key(0)), *example_inputs))
    return traverse_util.flatten_dict(dict(leaves))


@dataclasses.dataclass(frozen=True)
class _Layout:
    slots: dict[str, Slot]  # torch key -> slot
    kinds: dict[tuple[str, ...], str]  # Flax path -> numpy dtype kind: 'f' float, 'i' integer, 'b' bool


_LAYOUTS: dict = {}  # tracing a big model's init is slow in Python: one trace per configuration and input shapes


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


def _layout(model, example_inputs) -> _Layout:
    if example_inputs is None:
        example_inputs = registry.example_inputs(model)
    key = (type(model), _configuration(model), _input_signature(example_inputs))
    if key not in _LAYOUTS:
        if len(_LAYOUTS) >= 256:
            _LAYOUTS.clear()
        leaves = _variable_leaves(model, example_inputs)
        _LAYOUTS[key] = _Layout(slots({path: tuple(leaf.shape) for path, leaf in leaves.items()}),
                                {path: np.dtype(leaf.dtype).kind for path, leaf in leaves.items()})
    return _LAYOUTS[key]


def _table(model, example_inputs) -> dict[str, Slot]:
    return _layout(model, example_inputs).slots


# what each kind of Flax leaf takes from a state dict. Floats keep their width (bf16 stays bf16); float64 only where
# JAX holds it (jax_enable_x64), since jnp.asarray would otherwise round it to float32 without a word.
_ACCEPTED_KINDS = {'f': 'floating', 'i': 'integer', 'u': 'integer', 'b': 'bool'}


def _dtype_problem(key: str, array: np.ndarray, kind: str) -> str | None:
    """Why `array` cannot become a Flax leaf of dtype kind `kind`, or None."""
    dtype = array.dtype
    wanted = _ACCEPTED_KINDS[kind]
    found = ('floating' if dtype.kind == 'f' or dtype == ml_dtypes.bfloat16 else
             'integer' if dtype.kind in 'iu' else 'bool' if dtype.kind == 'b' else dtype.kind)
    if found != wanted:
        return f'{key}: dtype {dtype}, the model holds {wanted} values here'
    if dtype == np.float64 and not jax.config.jax_enable_x64:
        return (f'{key}: dtype float64, which JAX holds only with jax_enable_x64; cast the state dict to float32 '
                f'(torch: .float()) or enable x64')
    if wanted == 'integer' and array.size:
        limits = np.iinfo(jax.dtypes.canonicalize_dtype(np.int64))
        if array.min() < limits.min or array.max() > limits.max:
            return f'{key}: integer values in [{array.min()}, {array.max()}] do not fit JAX\'s {limits.dtype}'
    return None


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
    kinds = _layout(model, example_inputs).kinds
    problems = [problem for key, slot in table.items()
                if (problem := _dtype_problem(key, arrays[key], kinds[slot.flax_path]))]
    if problems:
        raise ValueError(f'state dict for {type(model).__name__} has values of the wrong type:\n  '
                        + '\n  '.join(problems))

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
