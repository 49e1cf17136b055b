"""The train state, created already sharded: `jax.eval_shape` for the layout, then a jitted init that writes
every array straight into its shards (no full copy on one device first)."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from vit_flax import registry


class TrainState(struct.PyTreeNode):
    step: jax.Array
    params: Any
    opt_state: Any
    batch_stats: Any  # BatchNorm running statistics; {} for models without BatchNorm
    buffers: Any = struct.field(default_factory=dict)  # torch's persistent buffers (tables, masks, DINO's centres)
    # the first step whose loss, gradients or updated parameters were not finite; 0 while all have been. The trainer
    # reads it before it evaluates or saves, so a saved state always has 0 here.
    nonfinite_step: jax.Array = struct.field(default_factory=lambda: jnp.zeros((), jnp.int32))

    def collections(self) -> dict:
        """The model's variables other than its parameters, those it has."""
        return {name: tree for name, tree in (('batch_stats', self.batch_stats), ('buffers', self.buffers)) if tree}

    def with_collections(self, collections: dict) -> 'TrainState':
        return self.replace(batch_stats=collections.get('batch_stats', self.batch_stats),
                            buffers=collections.get('buffers', self.buffers))

    def variables(self) -> dict:
        """The model's variables, as `model.apply` and the converters take them."""
        return {'params': self.params, **self.collections()}


def _init_state(model: nn.Module, tx: optax.GradientTransformation, example_inputs: tuple, rng) -> TrainState:
    variables = model.init(registry.init_rngs(rng), *example_inputs)
    params = variables['params']
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      batch_stats=variables.get('batch_stats', {}), buffers=variables.get('buffers', {}))


def abstract_state(model, tx, example_inputs) -> TrainState:
    return jax.eval_shape(functools.partial(_init_state, model, tx, example_inputs), jax.random.key(0))


def create_train_state(model, tx, example_inputs: tuple, rng, shardings) -> TrainState:
    """A fresh train state, written straight into `shardings` (from `sharding.state_shardings`)."""
    init = jax.jit(functools.partial(_init_state, model, tx, example_inputs), out_shardings=shardings)
    return init(rng)
