"""The trainer's malloc setting (vit_flax/training/allocator.py): a large block freed by one thread is reused by the
next, with no fresh pages faulted in."""

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.machine import transparent_huge_pages
from vit_flax.training import allocator

# A 256 MiB block allocated, touched and freed by one new thread, then by another, as XLA's threads run consecutive
# steps; prints the minor page faults of the second allocation.
SECOND_BLOCK_FAULTS = """
import ctypes, resource, sys, threading
from vit_flax.training import allocator
if sys.argv[1] == 'keep':
    assert allocator.keep_freed_memory({})
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def step():
    # malloc and free as XLA's runtime calls them (numpy would ask the kernel for huge pages, fewer faults)
    block = libc.malloc(2**28)
    ctypes.memset(block, 1, 2**28)  # every page written
    libc.free(block)

threading.Thread(target=step).start() or None
for thread in threading.enumerate()[1:]:
    thread.join()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
second = threading.Thread(target=step)
second.start()
second.join()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(sys.platform != 'linux', reason="glibc's malloc")
def test_a_freed_block_is_reused_without_page_faults():
    def faults(mode):
        result = subprocess.run([sys.executable, '-c', SECOND_BLOCK_FAULTS, mode], capture_output=True, text=True,
                                timeout=120, cwd=Path(__file__).resolve().parents[1], env={'PATH': ''})
        assert result.returncode == 0, result.stderr[-2000:]
        return int(result.stdout.split()[-1])

    pages = 2**28 // 4096
    # where huge pages are always on, the kernel backs a fresh mapping with 2 MiB pages: few faults either way
    if transparent_huge_pages() != 'always':
        assert faults('default') > pages // 2  # glibc maps the block afresh: the test can see the difference
    assert faults('keep') < pages // 100


@pytest.mark.parametrize('environ', [
    {'GLIBC_TUNABLES': 'glibc.malloc.arena_max=4'}, {'MALLOC_ARENA_MAX': '2'}, {'MALLOC_TRIM_THRESHOLD_': '0'}])
def test_the_users_malloc_settings_win(environ):
    assert allocator.user_malloc_settings(environ) == list(environ)
    assert allocator.keep_freed_memory(environ) is False  # returns before touching this process's allocator


def test_other_tunables_are_not_malloc_settings():
    assert allocator.user_malloc_settings({'GLIBC_TUNABLES': 'glibc.cpu.hwcaps=-AVX512F', 'XLA_FLAGS': ''}) == []
