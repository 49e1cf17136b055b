"""An opt-in memory allocator setting for the trainer (`config.keep_freed_memory`): freed memory stays in the
process for the next step.

XLA's CPU runtime gives each run of a compiled step its temporary buffers as one block (739 MiB for a ViT-S/16 AdamW
step at batch 8) and frees it when the step ends. glibc's malloc serves a block that large from `mmap`, and a thread
other than the main one always does (its arena cannot grow to hold it), then hands it back to the kernel on `free`:
each step faults in about 200,000 fresh zeroed 4 KiB pages. With one arena, no `mmap` and no trimming, the block is
reused from the heap and the steps fault in no pages (`benchmarks/README.md`, "Page faults"). On 2 cores of an AMD
EPYC that made a float32 ViT-B/16 step 6.6 -> 4.7 s in one run, but only a few percent faster in others, and it can
raise the peak: a freed block that later small allocations split no longer fits the next step's, and the heap grows
by another block (ViT-S/16: 1.26 -> 1.85 GiB in some runs, unchanged in others). Hence opt-in. The process keeps its
peak heap until it exits, and all threads share one arena's lock.

mallopt changes the allocator of the running process, so the trainer calls `keep_freed_memory` before JAX starts its
backend's threads (an arena limit holds for the threads that ask for an arena later). A user's own malloc settings in
the environment (`GLIBC_TUNABLES` naming `glibc.malloc.`, or `MALLOC_*` variables) win: then nothing changes.
Elsewhere than Linux with glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import platform
from typing import Mapping

# mallopt's parameters (glibc's malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))  # -1: SIZE_MAX, never trim


def user_malloc_settings(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The environment variables that set glibc malloc's tunables (MALLOC_ARENA_MAX, MALLOC_MMAP_MAX_, ...)."""
    return [name for name, value in environ.items()
            if (name == 'GLIBC_TUNABLES' and 'glibc.malloc.' in value) or name.startswith('MALLOC_')]


def keep_freed_memory(environ: Mapping[str, str] = os.environ) -> bool:
    """Set glibc's malloc to one arena, no mmap and no trimming (see the module docstring). Returns whether it did:
    False elsewhere than glibc, or where the environment sets malloc's tunables."""
    if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc' or user_malloc_settings(environ):
        return False
    libc = ctypes.CDLL(None)  # the process's own C library
    return all(libc.mallopt(parameter, value) == 1 for parameter, value in SETTINGS)
