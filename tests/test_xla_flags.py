"""The XLA settings the trainer runs with (vit_flax/training/xla_flags.py), set with its memory setting before JAX
starts."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vit_flax import train
from vit_flax.training import xla_flags

SCHEDULER = '--xla_cpu_enable_concurrency_optimized_scheduler'


@pytest.mark.parametrize('given, expected', [
    ('', f'{SCHEDULER}=false'),
    ('  --xla_cpu_use_onednn=true ', f'--xla_cpu_use_onednn=true {SCHEDULER}=false'),
    (f'{SCHEDULER}=true', f'{SCHEDULER}=true'),  # the user's value wins
    (f'--a=1 {SCHEDULER}=false --b', f'--a=1 {SCHEDULER}=false --b'),
])
def test_the_trainers_flags_are_added_where_the_user_names_none(given, expected):
    assert xla_flags.TRAINER_XLA_FLAGS == (f'{SCHEDULER}=false',)
    assert xla_flags.with_trainer_flags(given) == expected
    environ = {'XLA_FLAGS': given} if given else {}
    xla_flags.use_trainer_flags(environ)
    assert environ == {'XLA_FLAGS': expected}


def test_the_trainer_sets_its_flags_and_allocator_before_its_first_jax_call(monkeypatch):
    monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_use_onednn=true')
    seen = []

    def initialize(config):  # the trainer's first step that may start a JAX backend
        seen.append(os.environ['XLA_FLAGS'])
        raise ValueError('stop here')

    monkeypatch.setattr(train.distributed, 'initialize', initialize)
    # recorded, not applied: this test process keeps glibc's defaults (tests/test_allocator.py applies it)
    monkeypatch.setattr(train.allocator, 'keep_freed_memory', lambda: seen.append('allocator'))
    monkeypatch.setattr(train, 'FLAGS', type('Flags', (), {'config': {'keep_freed_memory': True}, 'workdir': 'unused'}))
    with pytest.raises(SystemExit, match='stop here'):
        train.main([])
    assert seen == ['allocator', f'--xla_cpu_use_onednn=true {SCHEDULER}=false']


def test_importing_the_trainer_and_every_model_starts_no_backend():
    # XLA reads XLA_FLAGS when the first backend starts: one started by an import would ignore the trainer's flags
    code = ('import vit_flax.train, vit_flax.registry\n'  # the registry imports every model file
            'from jax._src import xla_bridge\n'
            'assert not xla_bridge.backends_are_initialized()\n')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr[-2000:]
