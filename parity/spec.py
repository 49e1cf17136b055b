"""What the parity tests know of an architecture beyond the registry: configurations, tolerance, README notes,
the torch patches that make vit-pytorch draw Flax's random numbers or run at all, and a random-configuration
sweep."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable, ContextManager

import flax.linen as nn
import numpy as np

from vit_flax import registry


@dataclasses.dataclass(frozen=True)
class Spec:
    configs: tuple[dict[str, Any], ...]  # the first is the tiny default; the rest are the tested variants
    notes: str = ''  # for the README's architecture table
    tolerance: float = 2e-5  # relative to max(1, max|y|); widen only with float64 evidence (DESIGN.md)
    # a context manager factory vit-pytorch's forward runs under, where it needs a fix to be a fair reference
    # (na_vit_nested_tensor: keep autograd through its nested tensors)
    torch_context: Callable[[], ContextManager] | None = None
    # for a model that draws random numbers in every call (masks, crops, token sampling): (model, inputs, seed) ->
    # (the Flax rngs for a call on `inputs`, a context manager under which vit-pytorch draws the very same numbers)
    draws: Callable[[nn.Module, tuple, int], tuple[dict, ContextManager]] | None = None
    # a context manager factory vit-pytorch's constructor runs under (Dino's: the torchvision stand-in's crops)
    torch_construction: Callable[[], ContextManager] | None = None
    # np.random.Generator -> (a configuration vit-pytorch accepts, example inputs it accepts): the sweep that
    # tests/test_random_configurations.py runs `sweep_draws` times against vit-pytorch
    random_configuration: Callable[[np.random.Generator], tuple[dict[str, Any], tuple]] | None = None
    sweep_draws: int = 8
    no_random_configuration: str = ''  # why an architecture has no sweep, where it has none


@dataclasses.dataclass(frozen=True)
class Architecture(registry.Entry):
    """A registry entry with its parity spec: what tests/test_parity.py and the architecture tests take."""

    spec: Spec = None

    @property
    def configs(self) -> tuple[dict[str, Any], ...]:
        return self.spec.configs

    @property
    def tolerance(self) -> float:
        return self.spec.tolerance

    @property
    def notes(self) -> str:
        return self.spec.notes

    def build(self, config_index: int = 0, **overrides) -> nn.Module:
        return self.flax_class(**{**self.configs[config_index], **overrides})

    def same_draws(self, model: nn.Module, inputs: tuple, seed: int = 0) -> tuple[dict | None, ContextManager]:
        """The Flax rngs for a call on `inputs` and a context under which vit-pytorch draws the same numbers (no
        rngs and a null context for a model that draws nothing in eval mode)."""
        if self.spec.draws is None:
            return None, contextlib.nullcontext()
        return self.spec.draws(model, inputs, seed)

    def random_configurations(self, seed: int = 2024):
        """The sweep's (config, inputs) draws, the same wherever they are asked for (tests/test_random_configurations.py
        and any test that checks what the sweep reached)."""
        rng = np.random.default_rng(seed)
        for _ in range(self.spec.sweep_draws):
            yield self.spec.random_configuration(rng)

    def torch_context(self) -> ContextManager:
        return self.spec.torch_context() if self.spec.torch_context else contextlib.nullcontext()

    def torch_construction(self) -> ContextManager:
        return self.spec.torch_construction() if self.spec.torch_construction else contextlib.nullcontext()
