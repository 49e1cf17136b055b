"""The mapping between a Flax variable tree and a vit-pytorch state dict: a naming rule and leaf rules.

Naming rule: Flax submodules are named after the torch attributes, and a run of integer segments joins the
preceding name with `_`, so `transformer.layers.0.1.net.1` is the module path `transformer/layers_0_1/net_1`.

Leaf rules: each Flax leaf (collection, name, rank) has one torch name and a pair of array transforms that
are exact inverses of each other (tested). Everything here is numpy only; torch is not needed.

Scanned layers (vit_flax/scan.py): a leaf under a module named `<list>_scan` holds the layers of torch's module
list `<list>` stacked on a leading axis, so it is `depth` torch entries, one per layer, each with the leaf rule of
one layer's array: `transformer/layers_scan/0/to_qkv/kernel` (depth, dim, 3 * inner) is
`transformer.layers.{i}.0.to_qkv.weight`, (3 * inner, dim) each. This is one generic rule rather than an override
pair per architecture: the scan changes where the layer index lives and nothing else, the same way for every
architecture that scans its layers, so each of them gets export and import by naming its scanned module.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable

import numpy as np

from vit_flax.layers import PARAMETER_LIST_LEAF
from vit_flax.scan import per_layer_path, scanned_axes

_TRAILING_INTEGERS = re.compile(r'^(.*?[^_\d].*?)((?:_\d+)+)$')


def torch_module_path(flax_path: tuple[str, ...]) -> str:
    """('transformer', 'layers_0_1', 'net_1') -> 'transformer.layers.0.1.net.1'."""
    parts = []
    for name in flax_path:
        match = _TRAILING_INTEGERS.match(name)
        if match:
            parts.append(match.group(1))
            parts.extend(match.group(2).lstrip('_').split('_'))
        else:
            parts.append(name)
    return '.'.join(parts)


def _identity(a):
    return a


def _conv_to_torch(kernel):
    # (*spatial, in, out) -> (out, in, *spatial)
    n = kernel.ndim
    return np.transpose(kernel, (n - 1, n - 2, *range(n - 2)))


def _conv_from_torch(weight):
    # (out, in, *spatial) -> (*spatial, in, out)
    return np.transpose(weight, (*range(2, weight.ndim), 1, 0))


def _buffer_to_torch(buffer):
    # torch index buffers are int64; JAX holds integers as int32 unless x64 is enabled
    return buffer.astype(np.int64) if np.issubdtype(buffer.dtype, np.integer) else buffer


@dataclasses.dataclass(frozen=True)
class LeafRule:
    """How one kind of Flax leaf becomes one torch state-dict entry, and back."""

    collection: str
    flax_name: str | None  # None: any name (raw parameters)
    torch_name: str | None  # None: the Flax name
    ranks: tuple[int, ...] | None  # None: any rank
    to_torch: Callable[[np.ndarray], np.ndarray] = _identity
    from_torch: Callable[[np.ndarray], np.ndarray] = _identity
    what: str = ''

    def matches(self, collection: str, name: str, rank: int) -> bool:
        return (
            self.collection == collection
            and (self.flax_name is None or self.flax_name == name)
            and (self.ranks is None or rank in self.ranks)
        )

    def torch_leaf(self, name: str) -> str:
        return name if self.torch_name is None else self.torch_name


# First match wins, so the catch-all raw-parameter rule comes last.
LEAF_RULES: tuple[LeafRule, ...] = (
    LeafRule('params', 'kernel', 'weight', (2,), np.transpose, np.transpose, 'Linear: (in, out) <-> (out, in)'),
    LeafRule('params', 'kernel', 'weight', (3, 4, 5), _conv_to_torch, _conv_from_torch, 'Conv: (*k, in, out) <-> (out, in, *k)'),
    # a torch nn.Parameter named `scale` (CaiT's and XCiT's LayerScale) cannot keep its name: Flax norms own it
    LeafRule('params', 'layer_scale', 'scale', None, what='LayerScale: torch nn.Parameter `scale`'),
    LeafRule('params', 'scale', 'weight', None, what='LayerNorm / BatchNorm / GroupNorm scale'),
    LeafRule('params', 'embedding', 'weight', (2,), what='Embedding table'),
    # normalized_vit's NormLinear: torch.nn.utils.parametrize keeps the raw weight under the parametrized one's name
    LeafRule('params', 'original_kernel', 'parametrizations.weight.original', (2,), np.transpose, np.transpose,
             'Linear weight under torch parametrize: (in, out) <-> (out, in), normalised in the forward'),
    # the module path already names the entry: `transformer/ls1_0/parameter_list_entry` is `transformer.ls1.0`
    LeafRule('params', PARAMETER_LIST_LEAF, '', None, what='nn.ParameterList entry: the module path is the key'),
    LeafRule('params', 'bias', 'bias', None, what='bias'),
    LeafRule('batch_stats', 'mean', 'running_mean', (1,), what='BatchNorm running mean'),
    LeafRule('batch_stats', 'var', 'running_var', (1,), what='BatchNorm running variance'),
    LeafRule('params', None, None, None, what='nn.Parameter, copied as is'),
    LeafRule('buffers', None, None, None, _buffer_to_torch, _identity,
             'persistent buffer (register_buffer); integers as int64, like torch index buffers'),
)

# torch's BatchNorm also saves a step counter that Flax does not keep: regenerated on export, dropped on import.
BATCHNORM_COUNTER = 'num_batches_tracked'


def leaf_rule(collection: str, name: str, rank: int) -> LeafRule:
    for rule in LEAF_RULES:
        if rule.matches(collection, name, rank):
            return rule
    raise KeyError(f'no converter rule for a rank-{rank} leaf {name!r} in collection {collection!r}')


@dataclasses.dataclass(frozen=True)
class Slot:
    """One state-dict entry: where it lives in the Flax tree and how it is transformed."""

    torch_key: str
    flax_path: tuple[str, ...]  # (collection, *modules, leaf)
    rule: LeafRule
    flax_shape: tuple[int, ...]  # the whole leaf's, layer axes included
    layer: tuple[int, ...] = ()  # the index on the leaf's leading layer axes, for a scanned stack's leaf

    @property
    def torch_shape(self) -> tuple[int, ...]:
        # a zero-stride view: transposes a shape without allocating the array
        layer_shape = self.flax_shape[len(self.layer):]
        return tuple(self.rule.to_torch(np.broadcast_to(np.zeros((), np.int8), layer_shape)).shape)

    def of_leaf(self, leaf: np.ndarray) -> np.ndarray:
        """This entry's part of the Flax leaf: one layer of a scanned stack's leaf, else the leaf."""
        return leaf[self.layer] if self.layer else leaf


def slots(flax_shapes: dict[tuple[str, ...], tuple[int, ...]]) -> dict[str, Slot]:
    """Torch key -> Slot for every leaf of a flattened Flax variable tree (path -> shape)."""
    table: dict[str, Slot] = {}
    for path, shape in flax_shapes.items():
        collection, *modules, name = path
        layer_axes = scanned_axes(tuple(modules))
        rule = leaf_rule(collection, name, len(shape) - layer_axes)
        for layer in np.ndindex(*shape[:layer_axes]):  # one empty index for a leaf outside scanned stacks
            module_path = per_layer_path(tuple(modules), layer)
            key = '.'.join(filter(None, (torch_module_path(module_path), rule.torch_leaf(name))))
            if key in table:
                raise ValueError(f'Flax leaves {table[key].flax_path} and {path} both map to torch key {key!r}')
            table[key] = Slot(key, tuple(path), rule, tuple(shape), layer)
    return table


def batchnorm_counter_keys(table: dict[str, Slot]) -> set[str]:
    """The `num_batches_tracked` keys torch has for the BatchNorm layers in `table`."""
    return {
        key[: -len('running_mean')] + BATCHNORM_COUNTER
        for key, slot in table.items()
        if slot.rule.torch_name == 'running_mean'
    }
