"""The trainer's memory setting for CPU runs (`config.keep_freed_memory`, on by default): a step's temporaries reuse
the memory of the step before instead of fresh pages from the kernel.

XLA's CPU runtime gives each run of a compiled step its temporary buffers as one block (739 MiB for a ViT-S/16 AdamW
step at batch 8) and frees it when the step ends. glibc's malloc serves a block that large from `mmap` and hands it
back to the kernel on `free`: each step faults in about 200,000 fresh zeroed 4 KiB pages (`benchmarks/README.md`,
"Page faults"). Three settings make the block stay:

- JAX's CPU client runs each computation in the thread that calls it (`jax_cpu_enable_async_dispatch` off), so the
  block comes from the main thread's malloc arena. A block allocated by one of XLA's threads comes from that thread's
  arena, whose heap cannot grow so large, and glibc then maps it whatever the settings below say.
- No `mmap` for large blocks: the main arena grows its heap instead.
- No trimming: freed memory at the top of the heap stays in the process for the next step.

Other threads keep their own arenas. In four runs of the side-by-side harness (ViT-S/16, 2 cores of an AMD EPYC) the
steps faulted in no pages, took 1,383-1,468 ms (median) against 1,557-1,791 ms in four runs without the setting
within the same two hours, and peaked at 1,155-1,201 MiB, below the 1,217-1,254 MiB without it.

What it costs: Python no longer runs ahead of a step, so host work between steps is not overlapped with them. The
trainer makes its next batch in a background thread (`vit_flax.data.ReadAhead`) for that reason: the digits demo's 3,000
steps of about 15 ms train in 57-58 s with this setting, 53-54 s without (twice each, 2 cores of an AMD EPYC); before
the trainer read ahead, 71 s against 47 s. The process also keeps its peak heap until it exits, and a buffer that
outlived a step above its block in the heap makes the next block take fresh memory until the heap has room: in a small
test on a loaded machine, up to four more blocks in the first five steps, none after. (The first form of this setting
shared one arena among all threads instead; in the harness that grew the heap in three of four runs, to 1.85 GiB.)

It applies to runs on CPU only: where JAX will find an accelerator (`JAX_PLATFORMS` names one, or none is named and
a GPU or TPU plugin is installed), the host's memory is left as glibc has it, and dispatch asynchronous. Call
`keep_freed_memory` before JAX creates its CPU backend (the trainer does it before its first JAX call): the client
reads the dispatch setting then, and once it exists nothing is changed. A user's own malloc settings in the
environment (`GLIBC_TUNABLES` naming `glibc.malloc.`, or `MALLOC_*` variables) win: then nothing changes either.
Elsewhere than Linux with glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import pkgutil
import platform
from typing import Mapping

import jax
from jax._src import xla_bridge

# mallopt's parameters (glibc's malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
SETTINGS = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))  # -1: SIZE_MAX, never trim


def user_malloc_settings(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The environment variables that set glibc malloc's tunables (MALLOC_ARENA_MAX, MALLOC_MMAP_MAX_, ...)."""
    return [name for name, value in environ.items()
            if (name == 'GLIBC_TUNABLES' and 'glibc.malloc.' in value) or name.startswith('MALLOC_')]


def accelerator_expected(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether JAX will look for a GPU or TPU when it starts: the platforms named (`jax_platforms`, which
    JAX_PLATFORMS sets) include one other than the CPU, or none are named and a PJRT plugin (jax-cuda, jax-rocm, ...)
    or libtpu is installed, found as JAX finds them (`jax._src.xla_bridge.discover_pjrt_plugins`)."""
    named = jax.config.jax_platforms
    if named:
        return any(name.strip() != 'cpu' for name in named.split(','))
    plugins = importlib.util.find_spec('jax_plugins')
    return bool((plugins and any(pkgutil.iter_modules(plugins.submodule_search_locations)))
                or importlib.metadata.entry_points(group='jax_plugins')
                or importlib.util.find_spec('libtpu') or environ.get('PJRT_NAMES_AND_LIBRARY_PATHS'))


def keep_freed_memory(environ: Mapping[str, str] = os.environ) -> bool:
    """Run JAX's CPU computations in the calling thread and set glibc's malloc to no mmap and no trimming (see the
    module docstring). Returns whether it did: False elsewhere than glibc, where the environment sets malloc's
    tunables, where JAX will look for an accelerator, or once JAX's backends exist (jax has no public test for
    that; its bridge's is used)."""
    if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc' or user_malloc_settings(environ):
        return False
    if accelerator_expected(environ):
        return False
    if xla_bridge.backends_are_initialized():
        return False
    jax.config.update('jax_cpu_enable_async_dispatch', False)
    libc = ctypes.CDLL(None)  # the process's own C library
    return all(libc.mallopt(parameter, value) == 1 for parameter, value in SETTINGS)
