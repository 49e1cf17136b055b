"""orbax checkpoints under WORKDIR/checkpoints/<step>/: the train state and the data iterator's position, so a
killed run resumes exactly. A checkpoint that cannot be restored is an error, never a silent fresh start."""

from __future__ import annotations

import json
import math
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    pass


def with_shardings(abstract_tree, shardings):
    """Abstract arrays that orbax restores straight into their shards."""
    return jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                  abstract_tree, shardings)


# orbax refuses arrays with no elements (google/orbax#2587), which vit-pytorch's layouts have (ViT's cls_token with
# pool='mean' is (0, dim)). They hold no values: each is saved as a node {EMPTY + dtype: its shape} and rebuilt.
EMPTY = 'empty_array_of_'


def _is_empty(leaf) -> bool:
    return math.prod(leaf.shape) == 0


def storable(tree):
    """`tree` with every zero-size array (or abstract array) replaced by a node holding its shape."""
    def store(leaf):
        if not _is_empty(leaf):
            return leaf
        shape = np.array(leaf.shape, np.int64)
        if isinstance(leaf, jax.ShapeDtypeStruct):
            shape = jax.ShapeDtypeStruct(shape.shape, shape.dtype, sharding=leaf.sharding)
        return {EMPTY + jnp.dtype(leaf.dtype).name: shape}
    return jax.tree_util.tree_map(store, tree)


def _is_placeholder(node) -> bool:
    return isinstance(node, dict) and len(node) == 1 and next(iter(node)).startswith(EMPTY)


def rebuilt(tree, abstract_tree=None):
    """`tree` as restored, with each zero-size array rebuilt from its node (in `abstract_tree`'s sharding)."""
    def rebuild(node, abstract=None):
        if not _is_placeholder(node):
            return node
        (key, shape), = node.items()
        empty = np.zeros(tuple(int(side) for side in np.asarray(shape)), jnp.dtype(key[len(EMPTY):]))
        return jax.device_put(empty, abstract.sharding) if getattr(abstract, 'sharding', None) else empty
    if abstract_tree is None:
        return jax.tree_util.tree_map(rebuild, tree, is_leaf=_is_placeholder)
    return jax.tree_util.tree_map(rebuild, tree, abstract_tree, is_leaf=_is_placeholder)


class Checkpoints:
    def __init__(self, workdir: str | Path, keep: int):
        self.directory = Path(workdir).absolute() / 'checkpoints'
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=True),
            item_handlers={'state': ocp.StandardCheckpointHandler(), 'data': grain.checkpoint.CheckpointHandler()},
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_iterator):
        """Asynchronous: the state is copied off the devices, then written while training goes on."""
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(storable(state)),
                                                        data=grain.checkpoint.CheckpointSave(data_iterator)))

    class _SavedDataPosition:
        """Stands in for the data iterator while orbax reads a checkpoint's data item: keeps grain's state."""
        state = None

        def set_state(self, state: bytes):
            self.state = state

        def start_prefetch(self):
            pass

    def restore(self, step: int, abstract_state, data_iterator):
        """The state at `step` (laid out like `abstract_state`); moves `data_iterator` to where it was. A checkpoint
        of other training data is refused, naming it as it was and as it is (grain's state holds the data
        source's repr: an image folder's names its file list)."""
        path = self.directory / str(step)
        try:
            saved = self.manager.restore(step, args=ocp.args.Composite(
                data=grain.checkpoint.CheckpointRestore(self._SavedDataPosition())))['data'].state
            then, now = (json.loads(state).get('data_source') for state in (saved, data_iterator.get_state()))
            if then != now:
                raise CheckpointError(
                    f'the training data changed since checkpoint {path} was written, so the run cannot resume from '
                    f'it:\n  then: {then}\n  now:  {now}\nFor an image folder, files were added, removed or renamed '
                    '(config.skip_bad_images also leaves files out). Put the data back as it was to resume, or train '
                    "in a new workdir, starting from this run's weights with "
                    f"config.init_from='{self.directory.parent}'.")
            data_iterator.set_state(saved)
            data_iterator.start_prefetch()  # reads ahead while the train state is restored
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(storable(abstract_state))))
        except CheckpointError:
            raise
        except Exception as error:
            raise CheckpointError(
                f'checkpoint {path} could not be restored: {type(error).__name__}: {error}\n'
                'It is corrupt or was written by a different model or config. Nothing was overwritten: move it '
                'away to resume from an earlier checkpoint, or train in a new workdir.'
            ) from error
        return rebuilt(restored['state'], abstract_state)

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.close()


VARIABLE_COLLECTIONS = ('params', 'batch_stats', 'buffers')


def restore_variables(directory: str | Path) -> dict:
    """The model variables ({'params': ..., 'batch_stats': ..., 'buffers': ...}, those it has), as numpy arrays, of
    a trainer checkpoint folder (its latest step) or of a folder written by `python -m vit_flax import`.

    Any process can read any checkpoint: the arrays are restored into host memory whatever devices and processes
    wrote them (orbax's partial restore of the variables alone, with a target built from the checkpoint's
    metadata: the optimiser state stays on disk). The caller puts them on its devices (`jax.device_put` of a numpy
    array onto a sharding spanning several processes works where a one-device array would not)."""
    directory = Path(directory).absolute()
    if (directory / 'checkpoints').is_dir():
        directory = directory / 'checkpoints'
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False), item_handlers={
        'state': ocp.PyTreeCheckpointHandler(), 'data': grain.checkpoint.CheckpointHandler()})  # data: read, unused
    step = manager.latest_step()
    if step is None:
        raise CheckpointError(f'no checkpoint in {directory}')
    try:
        saved = manager.item_metadata(step)['state'].tree
        target = {name: saved[name] for name in VARIABLE_COLLECTIONS if name in saved}
        restore_args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
        state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            target, restore_args=restore_args, partial_restore=True)))['state']
    except Exception as error:
        raise CheckpointError(f'checkpoint {directory / str(step)} could not be read: {error}') from error
    finally:
        manager.close()
    state = rebuilt(state)
    return {'params': state['params'], **{name: state[name] for name in VARIABLE_COLLECTIONS[1:] if state.get(name)}}


def save_variables(directory: str | Path, variables: dict):
    """Model variables as a step-0 checkpoint that `restore_variables` (and so `config.init_from`) reads."""
    manager = ocp.CheckpointManager(Path(directory).absolute(), item_handlers={'state': ocp.StandardCheckpointHandler()},
                                    options=ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False))
    state = {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {}),
             'buffers': variables.get('buffers', {})}
    manager.save(0, args=ocp.args.Composite(state=ocp.args.StandardSave(storable(state))))
    manager.wait_until_finished()
    manager.close()
