"""orbax checkpoints under WORKDIR/checkpoints/<step>/: the train state and the data iterator's position, so a
killed run resumes exactly. A checkpoint that cannot be restored is an error, never a silent fresh start."""

from __future__ import annotations

from pathlib import Path

import grain
import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    pass


def with_shardings(abstract_tree, shardings):
    """Abstract arrays that orbax restores straight into their shards."""
    return jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                  abstract_tree, shardings)


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
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        data=grain.checkpoint.CheckpointSave(data_iterator)))

    def restore(self, step: int, abstract_state, data_iterator):
        """The state at `step` (laid out like `abstract_state`); moves `data_iterator` to where it was."""
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=grain.checkpoint.CheckpointRestore(data_iterator)))
        except Exception as error:
            raise CheckpointError(
                f'checkpoint {self.directory / str(step)} could not be restored: {type(error).__name__}: {error}\n'
                'It is corrupt or was written by a different model or config. Nothing was overwritten: move it '
                'away to resume from an earlier checkpoint, or train in a new workdir.'
            ) from error
        return restored['state']

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.close()


def restore_variables(directory: str | Path) -> dict:
    """The model variables ({'params': ..., 'batch_stats': ..., 'buffers': ...}, those it has) of a trainer checkpoint folder (its latest step)
    or of a folder written by `python -m vit_flax import`."""
    directory = Path(directory).absolute()
    if (directory / 'checkpoints').is_dir():
        directory = directory / 'checkpoints'
    manager = ocp.CheckpointManager(directory, item_handlers={'state': ocp.StandardCheckpointHandler()},
                                    options=ocp.CheckpointManagerOptions(create=False))
    step = manager.latest_step()
    if step is None:
        raise CheckpointError(f'no checkpoint in {directory}')
    try:
        state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))['state']
    except Exception as error:
        raise CheckpointError(f'checkpoint {directory / str(step)} could not be read: {error}') from error
    finally:
        manager.close()
    return {'params': state['params'], **{name: state[name] for name in ('batch_stats', 'buffers') if state.get(name)}}


def save_variables(directory: str | Path, variables: dict):
    """Model variables as a step-0 checkpoint that `restore_variables` (and so `config.init_from`) reads."""
    manager = ocp.CheckpointManager(Path(directory).absolute(), item_handlers={'state': ocp.StandardCheckpointHandler()},
                                    options=ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False))
    state = {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {}),
             'buffers': variables.get('buffers', {})}
    manager.save(0, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
    manager.wait_until_finished()
    manager.close()
