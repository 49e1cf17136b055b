"""Every vit-flax model as a Flax NNX module, through `flax.nnx.bridge.ToNNX`, with its variables both ways.

    from flax import nnx
    from vit_flax import converters
    from vit_flax.nnx import to_nnx, linen_variables, load_linen_variables
    from vit_flax.vit import ViT

    model = ViT(image_size=256, patch_size=32, num_classes=1000, dim=1024, depth=6, heads=16, mlp_dim=2048)
    nnx_model = to_nnx(model, rngs=nnx.Rngs(0))     # initialised on the registry's example input
    preds = nnx_model(images)                       # (batch, 1000); under nnx.jit, nnx.grad, nnx.Optimizer ...

    state_dict = converters.to_torch(model, linen_variables(nnx_model))   # loads into vit-pytorch, strict=True
    nnx_model = to_nnx(model, variables=converters.from_torch(model, torch_model.state_dict()))
    load_linen_variables(nnx_model, variables)      # into an initialised module, in place

The NNX module is a `bridge.ToNNX`: it holds the linen model's variables as NNX Variables (`nnx.Param` for
'params', `nnx.BatchStat` for 'batch_stats', a Variable type the bridge registers for 'buffers', the index tables
and teacher centres some models keep) under the linen names, and each call runs the linen `apply` on them. The
linen model's `__call__` keywords pass through (`train=True`, MAE's `method=...`, ...); nothing else of the model
changes, so an NNX module computes what `model.apply` computes with the same variables and keys.

Random streams. A call draws one key per stream of its `rngs` (the call's, else the module's own, given to
`to_nnx`), as nnx.Rngs does: `nnx.Rngs(0)` alone serves every stream (linen falls back to 'params' for a stream it
is not given), `nnx.Rngs(params=0, dropout=1, masking=2)` seeds them apart. For the very draws of
`model.apply(..., rngs={'masking': key})` (a replay, a parity test), give the call `rngs=LinenRngs(masking=key)`.

Mutable collections. As in linen, a call updates a collection only when told: `nnx_model(x, train=True,
mutable=['batch_stats'])` returns the outputs and stores the new running statistics in the module (DINO's and
EsViT's teacher centres: mutable=['buffers']). Sown 'intermediates' (the Recorder's attention maps, CaiT's layer
drops) are the linen model's business: use the linen model on `linen_variables(nnx_model)` to collect them.

Needs a Flax with `nnx.bridge` (tested with 0.12); the models themselves stay linen.
"""

from __future__ import annotations

from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import core, nnx, traverse_util
from flax.nnx import bridge
from flax.nnx.bridge import variables as bridge_variables

from vit_flax import registry


class LinenKey(nnx.RngStream):
    """A stream that yields its key as it is, every time (an nnx.RngStream folds a counter into it)."""

    def __call__(self) -> jax.Array:
        return self.key[...]


class LinenRngs(nnx.Rngs):
    """The rngs of an NNX call that hand the linen model each stream's key as it is: the call then draws what
    `model.apply(variables, ..., rngs={stream: key})` draws. Unlike `nnx.Rngs` they do not advance: every call given
    the same `LinenRngs` draws the same numbers, as every `apply` given the same keys does (so give them to a call,
    not to `to_nnx`, whose `bridge.ToNNX` forks its rngs into plain ones)."""

    def __init__(self, **keys: jax.Array):
        super().__init__()
        for stream, key in keys.items():
            setattr(self, stream, LinenKey(key, tag=stream))


def to_nnx(
    model: nn.Module, *example_inputs, variables: Mapping | None = None, rngs: nnx.Rngs | None = None
) -> bridge.ToNNX:
    """`model` as an NNX module (`bridge.ToNNX`), its variables initialised or given.

    Without `variables`, the linen init runs once on `example_inputs` (by default the registry's example for the
    model) with keys the module draws from `rngs`, as `bridge.lazy_init` would; `rngs` then serve the calls. With
    `variables` (a linen variable dict: `converters.from_torch`'s, `model.init`'s, a checkpoint's), they are the
    module's and nothing is initialised.
    """
    nnx_model = bridge.ToNNX(model, rngs=rngs)
    if variables is None:
        if rngs is None:
            raise ValueError(f'to_nnx needs rngs to initialise {type(model).__name__}, or its variables')
        # bridge.lazy_init's keys; but not bridge.lazy_init itself, which runs linen's init op by op (several times
        # slower than one compiled program) and cannot store a variable named like a method of the linen class
        # (NaViT's `transformer`, CCT's `tokenizer`: its hasattr finds the method)
        keys = {stream: draw() for stream, draw in nnx_model.to_nnx__rngs.items()}
        if 'params' not in keys and 'default' in keys:
            keys['params'] = keys.pop('default')
        variables = jax.jit(model.init)(keys, *(example_inputs or registry.example_inputs(model)))
    for name, value in _nnx_attributes(variables).items():
        setattr(nnx_model, name, value)
    return nnx_model


def linen_variables(nnx_model: bridge.ToNNX) -> dict:
    """The linen variable dict of an NNX-wrapped model ({'params': ..., 'batch_stats': ..., 'buffers': ...}): what
    `model.apply` and `converters.to_torch(model, ...)` take. The arrays are the module's, not copies."""
    flat = {}
    for path, variable in nnx.to_flat_state(nnx.state(nnx_model, nnx.Not(nnx.RngState))):
        flat[(nnx.variable_name_from_type(type(variable)), *path)] = variable.get_value()
    return traverse_util.unflatten_dict(flat)


def load_linen_variables(nnx_model: bridge.ToNNX, variables: Mapping) -> None:
    """Set an initialised NNX-wrapped model's variables from a linen variable dict of the same tree (shapes and
    dtypes included), in place: its nnx.Variable objects stay, so an nnx.Optimizer built on the module still
    holds them."""
    def signatures(tree):
        return {path: (np.shape(leaf), np.dtype(leaf.dtype))
                for path, leaf in traverse_util.flatten_dict(tree).items()}

    current, given = signatures(linen_variables(nnx_model)), signatures(core.unfreeze(variables))
    mismatched = sorted('/'.join(path) for path in current.keys() | given.keys()
                        if current.get(path) != given.get(path))
    if mismatched:
        raise ValueError(f'the variables do not fit {type(nnx_model.to_nnx__module).__name__}: missing, unexpected '
                         f'or of another shape or dtype: {", ".join(mismatched)}')
    nnx.update(nnx_model, nnx.State(_nnx_attributes(variables)))


def _nnx_attributes(variables: Mapping) -> dict:
    """A linen variable dict as bridge.ToNNX keeps it: one tree of nnx.Variables, collections merged."""
    arrays = jax.tree_util.tree_map(jnp.asarray, core.unfreeze(variables))
    return bridge_variables.linen_vars_to_nnx_attrs(arrays)
