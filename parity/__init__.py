"""The test side of vit-flax: what the parity tests, the README table and the benchmarks know of each architecture
beyond the installed library's registry. Not installed with vit-flax; importable from the repository root.

One file per vit_flax architecture file (parity/cait.py for vit_flax/cait.py) holds `SPECS`, {class name: Spec}:
the test configurations, tolerance and README notes, the torch patches that make vit-pytorch draw Flax's random
numbers or fix what cannot run, and the random-configuration sweep. `ENTRIES` joins each registry entry with its
spec, in the registry's order; an entry without a spec, or a spec without an entry, fails here at import.
"""

from __future__ import annotations

import dataclasses
import importlib

from parity.spec import Architecture, Spec
from vit_flax import registry


def _architecture(entry: registry.Entry) -> Architecture:
    specs = importlib.import_module(f'parity.{entry.module}').SPECS
    if entry.class_name not in specs:
        raise LookupError(f'registry entry {entry.name} has no parity spec: add it to parity/{entry.module}.py')
    fields = {field.name: getattr(entry, field.name) for field in dataclasses.fields(entry)}
    return Architecture(**fields, spec=specs[entry.class_name])


ENTRIES: tuple[Architecture, ...] = tuple(_architecture(entry) for entry in registry.ENTRIES)
BY_NAME: dict[str, Architecture] = {entry.name: entry for entry in ENTRIES}


def _check_every_spec_has_an_entry() -> None:
    for module in sorted({entry.module for entry in ENTRIES}):
        for class_name in importlib.import_module(f'parity.{module}').SPECS:
            if f'{module}.{class_name}' not in BY_NAME:
                raise LookupError(f'parity/{module}.py specifies {class_name}, which the registry does not list')


_check_every_spec_has_an_entry()

__all__ = ['Architecture', 'Spec', 'ENTRIES', 'BY_NAME']
