"""Every architecture's random-configuration sweep against vit-pytorch (`make test-slow`).

Each parity spec's `random_configuration(rng)` gives a configuration vit-pytorch accepts and example inputs it
accepts; this one test converts a randomised vit-pytorch model of it and compares the outputs with vit-pytorch's
float64 reference, `sweep_draws` times per architecture, from one seed (`Architecture.random_configurations`)."""

import numpy as np
import pytest

import parity
from tests.conftest import apply, assert_close_outputs, converted_pair, run_torch, same_draws

SWEPT = [pytest.param(entry, id=entry.name, marks=[pytest.mark.slow, pytest.mark.xdist_group(f'sweep-{entry.name}')])
         for entry in parity.ENTRIES if entry.spec.random_configuration is not None]


def describe(inputs) -> str:
    shapes = [np.shape(x) if not isinstance(x, list) else [describe(item) for item in x] for x in inputs]
    return str(shapes)


@pytest.mark.parametrize('entry', SWEPT)
def test_random_configurations_match_torch(entry):
    for config, inputs in entry.random_configurations():
        model, variables, torch_model = converted_pair(entry, config)
        rngs, draws = same_draws(entry, model, inputs)
        with draws:
            torch_out = run_torch(entry, torch_model, inputs)
        try:
            assert_close_outputs(apply(model, variables, *inputs, rngs=rngs), torch_out, entry.tolerance)
        except AssertionError as error:
            raise AssertionError(f'{config}, inputs {describe(inputs)}: {error}') from None


def test_every_architecture_has_a_sweep_or_says_why_not():
    unexplained = [entry.name for entry in parity.ENTRIES
                   if entry.spec.random_configuration is None and not entry.spec.no_random_configuration]
    assert not unexplained, f'parity specs with neither a random_configuration nor a no_random_configuration: {unexplained}'
