"""Multi-process training (vit_flax/training/distributed.py): the coordinator, process count and id from config keys
or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, checked; and (slow) two CPU processes on
127.0.0.1 train as one process does on the same global batches, resume exactly after SIGKILL, and export from one
process."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest
import torch

from tests.conftest import float64_reference, nchw
from tests.test_train import without_speed
from tests.train_helpers import REPO, run_python
from vit_flax import converters, data
from vit_flax.configs import digits
from vit_flax.train import build_model
from vit_flax.training import distributed
from vit_flax.training.checkpoint import restore_variables
from vit_flax.training.metrics import read_metrics

ENV = {'JAX_COORDINATOR_ADDRESS': '10.0.0.1:1234', 'JAX_NUM_PROCESSES': '4', 'JAX_PROCESS_ID': '3'}


def config_with(**keys):
    config = digits.get_config()
    config.update(keys)
    return config


# the options


def test_default_config_leaves_everything_to_jax():
    config = digits.get_config()
    assert config.coordinator_address == '' and config.num_processes is None and config.process_id is None
    assert distributed.initialize_arguments(config, environ={}) == {}
    assert distributed.initialize_arguments(config_with(distributed=True), environ={}) == {}  # JAX detects


@pytest.mark.parametrize('keys, environ, expected', [
    ({}, ENV, {'coordinator_address': '10.0.0.1:1234', 'num_processes': 4, 'process_id': 3}),
    ({'coordinator_address': 'host-0:99', 'num_processes': 2, 'process_id': 0}, {},
     {'coordinator_address': 'host-0:99', 'num_processes': 2, 'process_id': 0}),
    ({'num_processes': 4}, ENV, {'coordinator_address': '10.0.0.1:1234', 'num_processes': 4, 'process_id': 3}),
    ({}, {'JAX_COORDINATOR_ADDRESS': 'h:1'}, {'coordinator_address': 'h:1'}),  # SLURM etc. give the rest
    ({}, {'JAX_NUM_PROCESSES': ' 2 ', 'JAX_PROCESS_ID': '1', 'JAX_COORDINATOR_ADDRESS': '[::1]:80'},
     {'coordinator_address': '[::1]:80', 'num_processes': 2, 'process_id': 1}),
    ({'num_processes': 1, 'process_id': 0, 'coordinator_address': 'h:1'}, {'JAX_NUM_PROCESSES': ''},
     {'coordinator_address': 'h:1', 'num_processes': 1, 'process_id': 0}),
])
def test_config_keys_and_environment(keys, environ, expected):
    assert distributed.initialize_arguments(config_with(distributed=True, **keys), environ) == expected


@pytest.mark.parametrize('keys, environ, message', [
    ({'num_processes': 2}, ENV, r"^config.num_processes=2 but JAX_NUM_PROCESSES=4: set one of them, or make them "
                                r"agree$"),
    ({'coordinator_address': 'a:1'}, ENV, r"^config.coordinator_address='a:1' but JAX_COORDINATOR_ADDRESS="),
    ({'distributed': False}, ENV, r"^JAX_COORDINATOR_ADDRESS='10.0.0.1:1234' is for a multi-process run: add "
                                  r"--config.distributed=True, or unset it$"),
    ({'distributed': False, 'process_id': 0}, {}, r'^config.process_id=0 is for a multi-process run'),
    ({'num_processes': 2}, {}, r'^config.num_processes=2 without config.process_id or JAX_PROCESS_ID: give both'),
    ({}, {'JAX_PROCESS_ID': '1'}, r'^JAX_PROCESS_ID=1 without config.num_processes or JAX_NUM_PROCESSES'),
    ({}, {**ENV, 'JAX_PROCESS_ID': '4'}, r'^JAX_PROCESS_ID=4 with JAX_NUM_PROCESSES=4: must be in \[0, 4\)$'),
    ({'process_id': -1, 'num_processes': 2, 'coordinator_address': 'h:1'}, {}, r'^config.process_id=-1 with'),
    ({}, {**ENV, 'JAX_NUM_PROCESSES': '0', 'JAX_PROCESS_ID': '0'}, r'^JAX_NUM_PROCESSES=0: must be at least 1$'),
    ({}, {**ENV, 'JAX_NUM_PROCESSES': '2.5'}, r"^JAX_NUM_PROCESSES='2.5': expected an integer$"),
    ({'num_processes': 2, 'process_id': 0}, {}, r'^the process count and id are set but not the coordinator'),
    ({}, {**ENV, 'JAX_COORDINATOR_ADDRESS': '10.0.0.1'}, r"^JAX_COORDINATOR_ADDRESS='10.0.0.1': expected host:port"),
    ({'coordinator_address': 'h:99999'}, {}, r"^config.coordinator_address='h:99999': expected host:port"),
])
def test_bad_settings_are_one_line_errors(keys, environ, message):
    config = config_with(**{'distributed': True, **keys})
    with pytest.raises(ValueError, match=message) as error:
        distributed.initialize_arguments(config, environ)
    assert '\n' not in str(error.value)


def test_initialize_passes_the_arguments_and_explains_what_jax_missed(monkeypatch):
    calls = []
    monkeypatch.setattr('jax.distributed.initialize', lambda **arguments: calls.append(arguments))
    distributed.initialize(config_with(distributed=False), environ={})
    distributed.initialize(config_with(distributed=True), environ=ENV)
    assert calls == [{'coordinator_address': '10.0.0.1:1234', 'num_processes': 4, 'process_id': 3}]

    def undetected(**arguments):
        raise ValueError('coordinator_address should be defined.')
    monkeypatch.setattr('jax.distributed.initialize', undetected)
    with pytest.raises(ValueError, match=r'^jax.distributed.initialize: coordinator_address should be defined. '
                                         r'Outside Cloud TPU, SLURM, Open MPI or Kubernetes, set '
                                         r'JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID \(or '
                                         r'config.coordinator_address, config.num_processes, config.process_id\)'):
        distributed.initialize(config_with(distributed=True), environ={})


def test_the_command_line_refuses_a_multi_process_environment_without_distributed(tmp_path):
    result = subprocess.run(
        [sys.executable, '-m', 'vit_flax.train', '--config=vit_flax/configs/digits.py', f'--workdir={tmp_path}'],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, 'JAX_PLATFORMS': 'cpu', 'JAX_NUM_PROCESSES': '2', 'JAX_PROCESS_ID': '0'})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == ('error: JAX_NUM_PROCESSES=2 is for a multi-process run: add '
                                                       '--config.distributed=True, or unset it')
    assert not (tmp_path / 'checkpoints').exists()


# two processes on 127.0.0.1

RUN = {'total_steps': 60, 'checkpoint_every': 10, 'eval_every': 30, 'model.dropout': 0.1}
KILL_AFTER = 20  # SIGKILL both processes once this step's checkpoint is written


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


def launch(workdir, how: str) -> list[subprocess.Popen]:
    """Both processes of a run, one CPU device each, joined through 127.0.0.1 by environment variables or by
    config keys (`how`); their output goes to WORKDIR.process_<i>.log."""
    address = f'127.0.0.1:{free_port()}'
    environ = {key: value for key, value in os.environ.items() if key not in distributed.ENVIRONMENT.values()}
    environ.update(JAX_PLATFORMS='cpu', JAX_NUM_CPU_DEVICES='1', JAX_DISABLE_MOST_OPTIMIZATIONS='1')
    processes = []
    for index in range(2):
        command = [sys.executable, '-m', 'vit_flax.train', f'--config={workdir.parent / "config.py"}',
                   f'--workdir={workdir}', '--config.distributed=True']
        env = dict(environ)
        if how == 'environment':
            env.update(JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES='2', JAX_PROCESS_ID=str(index))
        else:
            command += [f'--config.coordinator_address={address}', '--config.num_processes=2',
                        f'--config.process_id={index}']
        log = open(f'{workdir}.process_{index}.log', 'w')
        processes.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
        log.close()
    return processes


def kill(processes):
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()


def finish(workdir, processes, timeout=300):
    """Wait for both processes; a failure shows the log of the first that failed and kills the other."""
    try:
        for index, process in enumerate(processes):
            if process.wait(timeout=timeout):
                pytest.fail(f'process {index} of {workdir} exited {process.returncode}:\n'
                            + open(f'{workdir}.process_{index}.log').read()[-3000:])
    finally:
        kill(processes)


# The data pipeline gives each process a fixed shard of the train split (grain's ShardByJaxProcess), so the global
# batch of a 2-process run is process 0's batch from shard 0 next to process 1's from shard 1. The one-process
# reference reads those same shards side by side, on two devices (the mesh the two processes make together).
ONE_PROCESS_REFERENCE = """
import json
import grain
import jax
import numpy as np
from vit_flax import data
from vit_flax.train import train_and_evaluate
from tests.train_helpers import tiny_config

PROCESSES = 2
one_process_loader = data.train_loader


class SideBySide:
    def __init__(self, loaders):
        self.iterators = [iter(loader) for loader in loaders]

    def __iter__(self):
        return self

    def __next__(self):
        parts = [next(iterator) for iterator in self.iterators]
        return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}

    def get_state(self):
        return json.dumps([iterator.get_state().decode() for iterator in self.iterators]).encode()


def train_loader(config, *, batch_size, seed):
    loaders, by_process = [], grain.sharding.ShardByJaxProcess
    try:
        for index in range(PROCESSES):
            def as_process(drop_remainder=False, index=index):
                return grain.sharding.ShardOptions(index, PROCESSES, drop_remainder=drop_remainder)
            grain.sharding.ShardByJaxProcess = as_process
            loaders.append(one_process_loader(config, batch_size=batch_size // PROCESSES, seed=seed))
    finally:
        grain.sharding.ShardByJaxProcess = by_process
    return SideBySide(loaders)


assert jax.process_count() == 1 and jax.device_count() == PROCESSES
jax.config.update('jax_disable_most_optimizations', True)  # as the two processes run: compiling is most of it
data.train_loader = train_loader
"""


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """Workdirs: 'one_process' (the reference), 'two_processes' (launched with environment variables), 'resumed'
    (launched with config keys, SIGKILLed after step KILL_AFTER's checkpoint, relaunched)."""
    root = tmp_path_factory.mktemp('multihost')
    (root / 'config.py').write_text('from tests.train_helpers import tiny_config\n\n\n'
                                    f'def get_config():\n    return tiny_config(**{RUN!r})\n')
    workdirs = {name: root / name for name in ('one_process', 'two_processes', 'resumed')}
    run_python(ONE_PROCESS_REFERENCE + f'train_and_evaluate(tiny_config(**{RUN!r}), {str(workdirs["one_process"])!r})',
               devices=2)
    finish(workdirs['two_processes'], launch(workdirs['two_processes'], 'environment'))

    killed = launch(workdirs['resumed'], 'config keys')
    try:
        deadline = time.time() + 300
        while not (workdirs['resumed'] / 'checkpoints' / str(KILL_AFTER)).exists():
            assert all(p.poll() is None for p in killed) and time.time() < deadline, 'the run ended before the kill'
            time.sleep(0.02)
    finally:
        kill(killed)
    assert max(m['step'] for m in read_metrics(workdirs['resumed'])) < RUN['total_steps']
    finish(workdirs['resumed'], launch(workdirs['resumed'], 'config keys'))
    return workdirs


@pytest.mark.slow
def test_two_processes_log_what_one_process_logs(runs):
    one, two = (without_speed(read_metrics(runs[name])) for name in ('one_process', 'two_processes'))
    assert [row['step'] for row in two] == [row['step'] for row in one] and len(two) == RUN['total_steps'] + 2
    for row_one, row_two in zip(one, two):
        assert row_two.keys() == row_one.keys()
        for key in row_one:
            np.testing.assert_allclose(row_two[key], row_one[key], rtol=1e-6, atol=1e-7, err_msg=f'{key} {row_one}')


@pytest.mark.slow
def test_two_processes_killed_and_resumed_log_what_an_uninterrupted_run_logs(runs):
    assert without_speed(read_metrics(runs['resumed'])) == without_speed(read_metrics(runs['two_processes']))


@pytest.mark.slow
def test_export_of_a_two_process_run_in_one_process(runs, tmp_path):
    workdir, out = runs['two_processes'], tmp_path / 'two_processes.safetensors'
    subprocess.run([sys.executable, '-m', 'vit_flax', 'export', f'--workdir={workdir}', f'--out={out}'], cwd=REPO,
                   check=True, capture_output=True, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})

    config = ml_collections.ConfigDict(json.loads((workdir / 'config.json').read_text()))
    images, labels = data.raw_eval_split(config)
    info = data.dataset_info(config)
    normalised = ((images - np.array(info.mean)) / np.array(info.std)).astype(np.float32)
    flax_logits = np.asarray(build_model(config).apply(restore_variables(workdir), normalised))
    with torch.no_grad():
        torch_logits = float64_reference(converters.load_torch(out))(nchw(normalised)).numpy()
    np.testing.assert_allclose(torch_logits, flax_logits, atol=2e-5 * max(1, np.abs(flax_logits).max()))
    # the restored model scores what the two processes measured at the last step
    logged = [m['eval_accuracy'] for m in read_metrics(workdir) if 'eval_accuracy' in m][-1]
    assert float((flax_logits.argmax(-1) == labels).mean()) == pytest.approx(logged, abs=1e-9)
