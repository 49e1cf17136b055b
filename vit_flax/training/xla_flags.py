"""The XLA settings the trainer runs with, and how a process takes them.

XLA reads `XLA_FLAGS` once, when JAX starts its first backend. jax 0.10.2's CPU compiler reads its scheduler choice
only from there: `jax.jit(..., compiler_options=...)` accepts the same name and ignores it (the step's temporary
buffers do not move). So the trainer's command line sets the variable before its first JAX call, and each flag the
user's own `XLA_FLAGS` names keeps the user's value.
"""

from __future__ import annotations

import os
from typing import MutableMapping

# XLA's concurrency-optimised CPU scheduler (on by default) orders a step's ops to run independent ones side by side,
# and in doing so keeps more buffers alive at once and moves rematerialised values back into the forward pass. Off,
# on 2 cores of an AMD EPYC, a ViT-S/16 training step's temporaries fall from 968 to 823 MiB, and rematerialisation
# takes effect (with remat_policy='dots_saveable', 522 MiB), with the step time unchanged or shorter
# (benchmarks/README.md, Training memory on CPU). GPU and TPU compilers ignore the flag.
TRAINER_XLA_FLAGS = ('--xla_cpu_enable_concurrency_optimized_scheduler=false',)


def flag_name(flag: str) -> str:
    return flag.split('=', 1)[0]


def with_trainer_flags(xla_flags: str) -> str:
    """`xla_flags` with each of TRAINER_XLA_FLAGS that it does not name appended."""
    named = {flag_name(flag) for flag in xla_flags.split()}
    missing = [flag for flag in TRAINER_XLA_FLAGS if flag_name(flag) not in named]
    return ' '.join([xla_flags.strip(), *missing]).strip()


def use_trainer_flags(environ: MutableMapping[str, str] = os.environ) -> None:
    """Sets `XLA_FLAGS` in `environ` to the trainer's. Call it before the process's first JAX computation."""
    environ['XLA_FLAGS'] = with_trainer_flags(environ.get('XLA_FLAGS', ''))
