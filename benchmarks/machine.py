"""What the benchmarks ran on, for their reports."""

from __future__ import annotations

import os
import platform


def cpu_count() -> int:
    """The cores this process may use (a container's share, not the host's count, where the OS says)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()


def cpu_model() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            return next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()
