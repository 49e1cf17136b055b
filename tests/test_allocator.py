"""The trainer's memory setting (vit_flax/training/allocator.py): a step's temporaries reuse the memory of the step
before, with no fresh pages faulted in."""

import subprocess
import sys
import types
from pathlib import Path

import jax
import pytest

from benchmarks.machine import transparent_huge_pages
from vit_flax.training import allocator

# A jitted computation with 128 MiB of XLA temporaries (the sine, read by the product) and a small result, run ten
# times; prints whether the setting took and the minor page faults of the last two runs. The first runs may still
# take fresh blocks with the setting: on a loaded machine other threads' allocations can land above a block (24 runs
# four at a time on 2 cores: up to four more blocks, the last by the fifth run, none after).
STEP_FAULTS = """
import resource, sys
from vit_flax.training import allocator
kept = allocator.keep_freed_memory({}) if sys.argv[1] == 'keep' else False
import jax, jax.numpy as jnp
x = jnp.arange(2**25, dtype=jnp.float32)
step = jax.jit(lambda x: jnp.sin(x).reshape(8192, 4096) @ jnp.cos(x[:4096])).lower(x).compile()
assert step.memory_analysis().temp_size_in_bytes >= 2**27
for _ in range(8):
    step(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(2):
    step(x).block_until_ready()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(kept, jax.config.values['jax_cpu_enable_async_dispatch'], faults)
"""


@pytest.mark.skipif(sys.platform != 'linux', reason="glibc's malloc")
def test_a_steps_temporaries_reuse_the_last_steps_memory():
    """The setting's whole point, end to end: once the heap has settled, XLA's temporary block of one run is the
    memory of the run before, with no fresh pages faulted in; without it, every run faults its block in anew."""
    def run(mode):
        result = subprocess.run([sys.executable, '-c', STEP_FAULTS, mode], capture_output=True, text=True,
                                timeout=300, cwd=Path(__file__).resolve().parents[1], env={'PATH': ''})
        assert result.returncode == 0, result.stderr[-2000:]
        kept, async_dispatch, faults = result.stdout.split()
        return kept, async_dispatch, int(faults)

    pages = 2 * 2**27 // 4096  # two runs' temporaries
    kept, async_dispatch, faults = run('keep')
    assert (kept, async_dispatch) == ('True', 'False') and faults < pages // 100
    kept, async_dispatch, faults = run('default')
    assert (kept, async_dispatch) == ('False', 'True')
    # where huge pages are always on, the kernel backs a fresh mapping with 2 MiB pages: few faults either way
    if transparent_huge_pages() != 'always':
        assert faults > pages // 2  # glibc maps the block afresh: the test can see the difference


@pytest.mark.skipif(sys.platform != 'linux', reason="glibc's malloc")
def test_nothing_changes_once_jax_has_started():
    """The client reads the dispatch setting when it is created: after that, the setting would only half take, so
    it is refused whole."""
    script = ('import jax; jax.devices()\nfrom vit_flax.training import allocator\n'
              'print(allocator.keep_freed_memory({}), jax.config.values["jax_cpu_enable_async_dispatch"])')
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=300,
                            cwd=Path(__file__).resolve().parents[1], env={'PATH': ''})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ['False', 'True']


@pytest.mark.skipif(sys.platform != 'linux', reason="glibc's malloc")
def test_nothing_changes_where_jax_will_look_for_an_accelerator():
    """A GPU or TPU run keeps glibc's defaults and asynchronous dispatch: the setting pays only on CPU steps."""
    script = ('from vit_flax.training import allocator\nimport jax\n'
              'print(allocator.keep_freed_memory({}), jax.config.values["jax_cpu_enable_async_dispatch"])')
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=300,
                            cwd=Path(__file__).resolve().parents[1], env={'PATH': '', 'JAX_PLATFORMS': 'cuda,cpu'})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ['False', 'True']


@pytest.fixture
def no_plugins(monkeypatch):
    """A JAX install with no accelerator plugin and no platforms named."""
    previous = jax.config.jax_platforms
    jax.config.update('jax_platforms', None)
    monkeypatch.setattr(allocator.importlib.util, 'find_spec', lambda name: None)
    monkeypatch.setattr(allocator.importlib.metadata, 'entry_points', lambda group: [])
    yield
    jax.config.update('jax_platforms', previous)


def test_an_accelerator_is_expected_where_jax_finds_one(no_plugins, monkeypatch, tmp_path):
    assert not allocator.accelerator_expected({})
    assert allocator.accelerator_expected({'PJRT_NAMES_AND_LIBRARY_PATHS': 'cuda:/opt/pjrt_c_api_gpu_plugin.so'})
    plugin = types.SimpleNamespace(name='xla_cuda12', value='jax_plugins.xla_cuda12')
    with monkeypatch.context() as patch:
        patch.setattr(allocator.importlib.metadata, 'entry_points',
                      lambda group: [plugin] if group == 'jax_plugins' else [])
        assert allocator.accelerator_expected({})
    (tmp_path / 'xla_cuda12').mkdir()  # a plugin found as a module of the jax_plugins namespace package
    (tmp_path / 'xla_cuda12' / '__init__.py').touch()
    with monkeypatch.context() as patch:
        patch.setattr(allocator.importlib.util, 'find_spec', lambda name: types.SimpleNamespace(
            submodule_search_locations=[str(tmp_path)]) if name == 'jax_plugins' else None)
        assert allocator.accelerator_expected({})
    with monkeypatch.context() as patch:
        patch.setattr(allocator.importlib.util, 'find_spec', lambda name: object() if name == 'libtpu' else None)
        assert allocator.accelerator_expected({})


@pytest.mark.parametrize('platforms, expected', [('cpu', False), ('cuda', True), ('cuda,cpu', True), ('tpu', True)])
def test_the_named_platforms_decide(no_plugins, platforms, expected):
    jax.config.update('jax_platforms', platforms)
    assert allocator.accelerator_expected({'PJRT_NAMES_AND_LIBRARY_PATHS': 'cuda:/x.so'}) is expected


@pytest.mark.parametrize('environ', [
    {'GLIBC_TUNABLES': 'glibc.malloc.arena_max=4'}, {'MALLOC_ARENA_MAX': '2'}, {'MALLOC_TRIM_THRESHOLD_': '0'}])
def test_the_users_malloc_settings_win(environ):
    assert allocator.user_malloc_settings(environ) == list(environ)
    assert allocator.keep_freed_memory(environ) is False  # returns before touching this process's allocator


def test_other_tunables_are_not_malloc_settings():
    assert allocator.user_malloc_settings({'GLIBC_TUNABLES': 'glibc.cpu.hwcaps=-AVX512F', 'XLA_FLAGS': ''}) == []
