"""Multi-process start-up: `jax.distributed.initialize` with the coordinator, process count and process id taken
from the config or the environment.

    config.coordinator_address  JAX_COORDINATOR_ADDRESS  'host:port' of process 0's coordination service
    config.num_processes        JAX_NUM_PROCESSES        how many processes the run has
    config.process_id           JAX_PROCESS_ID           this process's index, 0 .. num_processes - 1

A config key left empty (None, '') falls back to its environment variable; one set in both places must agree, or
the run stops naming both (a stale `export` in a shell is a common slip). What neither gives, JAX detects:
on Cloud TPU, SLURM, Open MPI and Kubernetes (JobSet / indexed Jobs) all three may be left out. The process count
and id come together, and with them the coordinator address. Any of the three with config.distributed=False is an
error: that process would train alone into a workdir meant for several. jax.distributed.initialize itself also reads
JAX_COORDINATOR_ADDRESS, JAX_LOCAL_DEVICE_IDS (the accelerators this process drives, e.g. one GPU per process),
JAX_COORDINATOR_PORT and JAX_COORDINATOR_BIND_ADDRESS; it does not read JAX_NUM_PROCESSES or JAX_PROCESS_ID, which
is why this module does.
"""

from __future__ import annotations

import os
from typing import Mapping

import jax

# config key: the environment variable that stands in for it
ENVIRONMENT = {
    'coordinator_address': 'JAX_COORDINATOR_ADDRESS',
    'num_processes': 'JAX_NUM_PROCESSES',
    'process_id': 'JAX_PROCESS_ID',
}
AUTO_DETECTED = 'Cloud TPU, SLURM, Open MPI or Kubernetes'


def given_settings(config, environ: Mapping[str, str] = os.environ) -> dict:
    """{key: (where it was set, value)} for the keys the config or the environment sets (integers parsed)."""
    given = {}
    for key, variable in ENVIRONMENT.items():
        sources = []
        for name, value in ((f'config.{key}', config.get(key)), (variable, environ.get(variable))):
            if value is None or value == '':
                continue
            if key != 'coordinator_address':
                try:
                    value = int(str(value).strip())  # not int(value): it would truncate a float
                except ValueError:
                    raise ValueError(f'{name}={value!r}: expected an integer') from None
            sources.append((name, value))
        if len(sources) == 2 and sources[0][1] != sources[1][1]:
            raise ValueError(f'{sources[0][0]}={sources[0][1]!r} but {sources[1][0]}={sources[1][1]!r}: '
                             'set one of them, or make them agree')
        if sources:
            given[key] = sources[0]
    return given


def initialize_arguments(config, environ: Mapping[str, str] = os.environ) -> dict:
    """The keywords for `jax.distributed.initialize`: those the config or the environment gives, checked; the
    others are left to JAX's cluster detection. Raises ValueError (one line, naming the key or variable)."""
    given = given_settings(config, environ)
    if not config.get('distributed', False):
        if given:
            name, value = next(iter(given.values()))
            raise ValueError(f'{name}={value!r} is for a multi-process run: add --config.distributed=True, '
                             'or unset it')
        return {}
    for present, missing in (('num_processes', 'process_id'), ('process_id', 'num_processes')):
        if present in given and missing not in given:
            name, value = given[present]
            raise ValueError(f'{name}={value} without config.{missing} or {ENVIRONMENT[missing]}: give both, '
                             f'or neither for {AUTO_DETECTED} to detect them')
    arguments = {key: value for key, (_, value) in given.items()}
    if 'num_processes' in arguments:
        count, index = arguments['num_processes'], arguments['process_id']
        if count < 1:
            raise ValueError(f'{given["num_processes"][0]}={count}: must be at least 1')
        if not 0 <= index < count:
            raise ValueError(f'{given["process_id"][0]}={index} with {given["num_processes"][0]}={count}: must be '
                             f'in [0, {count})')
        if 'coordinator_address' not in arguments:
            raise ValueError('the process count and id are set but not the coordinator: set '
                             'config.coordinator_address or JAX_COORDINATOR_ADDRESS (host:port of process 0) too')
    if 'coordinator_address' in arguments:
        name, address = given['coordinator_address']
        host, _, port = address.rpartition(':')
        if not host or not port.isdigit() or not 0 < int(port) < 2**16:
            raise ValueError(f"{name}={address!r}: expected host:port, process 0's address and a free port, the "
                             'same on every process')
    return arguments


def initialize(config, environ: Mapping[str, str] = os.environ) -> None:
    """Join the multi-process run when `config.distributed` (before any other JAX call); nothing otherwise."""
    arguments = initialize_arguments(config, environ)
    if not config.get('distributed', False):
        return
    try:
        jax.distributed.initialize(**arguments)
    except ValueError as error:  # JAX could not detect what was not given
        raise ValueError(f'jax.distributed.initialize: {error} Outside {AUTO_DETECTED}, set '
                         f'{", ".join(ENVIRONMENT.values())} (or config.{", config.".join(ENVIRONMENT)}) '
                         f'on every process') from None
