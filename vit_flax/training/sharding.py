"""The device mesh and how arrays are laid out on it: sharding as rules, not code.

Mesh axes ('data', 'fsdp'). Batches are split over both axes. Parameters (and the optimiser state that
mirrors them) are replicated for data parallelism; with an 'fsdp' axis larger than 1 each array of at least
`mesh.fsdp_min_size` elements is split along its largest dimension that the axis size divides (ZeRO-3 style),
and XLA inserts the gathers. Small arrays stay replicated: gathering them costs more than storing them. The
leading layer axis of a scanned stack's parameters (scan_layers=True) is never split: the scan takes one layer
per step, and a split layer axis would have XLA gather every layer at once.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from vit_flax.scan import scanned_axes

MESH_AXES = ('data', 'fsdp')
BATCH_AXES = MESH_AXES
DEFAULT_FSDP_MIN_SIZE = 2**14


def make_mesh(mesh_config) -> Mesh:
    """A mesh over every device; one axis size may be -1 to take the devices the others leave."""
    sizes = [int(mesh_config.get(axis, 1)) for axis in MESH_AXES]
    devices = jax.device_count()
    if sizes.count(-1) > 1:
        raise ValueError(f'mesh {dict(zip(MESH_AXES, sizes))}: at most one axis may be -1')
    if -1 in sizes:
        known = math.prod(s for s in sizes if s != -1)
        if devices % known:
            raise ValueError(f'mesh {dict(zip(MESH_AXES, sizes))} does not divide the {devices} devices')
        sizes[sizes.index(-1)] = devices // known
    if math.prod(sizes) != devices:
        raise ValueError(f'mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, there are {devices}')
    # Auto axes: the partitioner propagates shardings through the model (explicit axes, make_mesh's default in
    # recent JAX, would ask every reshape in the model for an output sharding)
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                         devices=jax.devices())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def param_spec(shape: tuple[int, ...], fsdp_size: int, min_size: int, layer_axes: int = 0) -> P:
    """FSDP rule for one array: split its largest dimension divisible by the fsdp axis, if big enough; never one of
    its first `layer_axes` (a scanned stack's layer axes)."""
    if fsdp_size == 1 or math.prod(shape) < min_size or not shape:
        return P()
    for axis in np.argsort(shape, kind='stable')[::-1]:
        if axis >= layer_axes and shape[axis] % fsdp_size == 0:
            spec = [None] * len(shape)
            spec[axis] = 'fsdp'
            return P(*spec)
    return P()


def state_shardings(mesh: Mesh, abstract_state, fsdp_min_size: int = DEFAULT_FSDP_MIN_SIZE):
    """NamedShardings for every leaf of a (possibly abstract) train state."""
    fsdp_size = mesh.shape['fsdp']

    def sharding(path, leaf):
        return NamedSharding(mesh, param_spec(tuple(leaf.shape), fsdp_size, fsdp_min_size, layer_axes(path)))

    return jax.tree_util.tree_map_with_path(sharding, abstract_state)


def layer_axes(path) -> int:
    """How many leading layer axes the leaf at `path` (a jax.tree_util key path into a train state) has: one per
    scanned module on the way. Optimiser moments mirror the parameters' paths, so theirs are found the same way."""
    return scanned_axes(tuple(str(getattr(key, 'key', getattr(key, 'name', key))) for key in path))


def global_batch(local_batch: dict, sharding: NamedSharding) -> dict:
    """This process's slice of the batch -> one global array per field, laid out over the mesh."""
    return jax.tree_util.tree_map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                                  local_batch)
