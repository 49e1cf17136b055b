"""What the benchmarks ran on, for their reports."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_count() -> int:
    """The cores this process may use (a container's share, not the host's count, where the OS says)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()


def cpu_model(cpuinfo: str = '/proc/cpuinfo') -> str:
    """The CPU by name, family and model, with the vector units that change float32 kernels and speed: a
    virtualised AMD EPYC reports only 'AMD EPYC' as its name, and Zen 3 and Zen 4 differ in AVX-512."""
    fields = {}
    try:
        with open(cpuinfo) as f:
            for line in f:
                if not line.strip():  # the first processor's block is enough
                    break
                key, _, value = line.partition(':')
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    if 'model name' not in fields:
        return platform.processor() or platform.machine()
    flags = set(fields.get('flags', '').split())
    units = [name for name, flag in (('AVX2', 'avx2'), ('AVX-512', 'avx512f'), ('AMX', 'amx_tile')) if flag in flags]
    return (f"{fields['model name']} (family {fields.get('cpu family', '?')} model {fields.get('model', '?')}; "
            f"{', '.join(units) or 'no AVX2'})")


# environment variables that change which kernels run, how many threads run them, how idle threads wait and how
# memory is allocated (glibc malloc's tunables, a preloaded allocator): a benchmark's numbers hold only with the same
# settings
KERNEL_SETTINGS = ('XLA_FLAGS', 'OMP_NUM_THREADS', 'OMP_WAIT_POLICY', 'GOMP_SPINCOUNT', 'KMP_BLOCKTIME',
                   'KMP_AFFINITY', 'MKL_NUM_THREADS', 'MKL_CBWR', 'ONEDNN_MAX_CPU_ISA', 'ATEN_CPU_CAPABILITY',
                   'GLIBC_TUNABLES', 'MALLOC_ARENA_MAX', 'MALLOC_MMAP_MAX_', 'MALLOC_MMAP_THRESHOLD_',
                   'MALLOC_TRIM_THRESHOLD_', 'LD_PRELOAD')


def kernel_settings(environ=None) -> dict[str, str]:
    """Those of KERNEL_SETTINGS that are set, as the benchmark's processes see them."""
    environ = os.environ if environ is None else environ
    return {name: environ[name] for name in KERNEL_SETTINGS if environ.get(name)}


def transparent_huge_pages(setting: str = '/sys/kernel/mm/transparent_hugepage/enabled') -> str | None:
    """Linux's transparent huge page mode ('always', 'madvise' or 'never'); None where the kernel does not say. With
    'madvise', memory is faulted in 4 KiB pages unless the allocator asks for huge ones (glibc:
    GLIBC_TUNABLES=glibc.malloc.hugetlb=1), which changes what a step's fresh temporaries cost."""
    try:
        modes = Path(setting).read_text().split()
    except OSError:
        return None
    chosen = [mode[1:-1] for mode in modes if mode.startswith('[') and mode.endswith(']')]
    return chosen[0] if chosen else None


def process_cpu_seconds(pid: int) -> float | None:
    """CPU time used so far by process `pid`'s threads and those of its living descendants (torch.compile's compile
    workers, say), to the nanosecond, from Linux's /proc/<pid>/task/<tid>/schedstat; None where /proc does not say.
    Threads that have exited are not counted: this is for processes whose thread pools live on."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            for task in Path(f'/proc/{current}/task').iterdir():
                total += int((task / 'schedstat').read_text().split()[0])  # nanoseconds on a CPU
                pending += [int(child) for child in (task / 'children').read_text().split()]
        except (OSError, IndexError, ValueError):  # no /proc, or a process or thread that just exited
            if current == pid:
                return None
    return total / 1e9
