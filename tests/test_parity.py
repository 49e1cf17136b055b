"""Registry-driven parity with vit-pytorch: every entry, every test configuration, float32 on CPU, eval mode.

- torch -> Flax: a randomised vit-pytorch model, converted, gives the same outputs, and the same gradients of the
  same scalar with respect to the same weights;
- Flax -> torch: a randomised Flax model, exported, loads with strict=True and gives the same outputs;
- round trips are bit-exact, dtypes included (float32 and bfloat16);
- initialisers draw from vit-pytorch's distributions;
- and the optimised programs users run (tests/conftest.py compiles without XLA's optimisations) give the same numbers.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util

import parity
from vit_flax import converters
from tests.conftest import (TEST_XLA_FLAGS, assert_close_gradients, assert_close_outputs, float64_reference,
                            init_variables, new_torch_model, output_weights, outputs_and_gradients,
                            randomised_flax_variables, randomised_torch_model, run_torch, same_draws, torch_context,
                            torch_inputs)


# `make test` checks the first configuration of every entry; `make test-slow` the others (the suite must stay under
# 20 minutes on 2 cores)
FAST_CONFIGS = 1

CASES = [
    pytest.param(entry, index, id=f'{entry.name}-{index}',
                 marks=[pytest.mark.xdist_group(f'{entry.name}-{index}'), *([pytest.mark.slow] * (index >= FAST_CONFIGS))])
    for entry in parity.ENTRIES
    for index in range(len(entry.configs))
]


@pytest.mark.parametrize('entry, index', CASES)
def test_torch_to_flax(entry, index):
    """A randomised vit-pytorch model, converted: the same outputs, and the same gradients of sum(output * w) with
    respect to the same weights. Ours are float32, vit-pytorch's exact (its float64 reference), compared in torch's
    layout (relative 1e-4).

    A parameter whose true gradient is zero (a bias that shifts every softmax logit alike, a shift a later
    LayerNorm removes) holds only round-off in float32, which no relative test can compare: for them Flax's
    gradient must be round-off small next to the largest gradient of the model.
    """
    torch_model = randomised_torch_model(entry, entry.configs[index])
    model = entry.build(index)
    variables = converters.from_torch(model, torch_model.state_dict())
    inputs = entry.inputs.example(model, batch=2, rng=np.random.default_rng(index))
    rngs, draws = same_draws(entry, model, inputs)
    torch_out, exact_grads, weights = torch_outputs_and_gradients(entry, torch_model, inputs, draws)

    out, grads = outputs_and_gradients(model, variables, inputs, rngs, weights)
    assert_close_outputs(out, torch_out, entry.tolerance)
    assert_close_gradients(converters.to_torch(model, {**variables, 'params': grads}, as_numpy=True), exact_grads)


@pytest.mark.parametrize('entry, index', CASES)
def test_flax_to_torch_strict(entry, index):
    model = entry.build(index)
    variables = randomised_flax_variables(model, seed=index)
    torch_model = new_torch_model(entry, entry.configs[index])
    torch_model.load_state_dict(converters.to_torch(model, variables), strict=True)

    inputs = entry.inputs.example(model, batch=2, rng=np.random.default_rng(index))
    rngs, draws = same_draws(entry, model, inputs)
    with draws:
        torch_out = run_torch(entry, torch_model, inputs)
    out, _ = outputs_and_gradients(model, variables, inputs, rngs, output_weights(torch_out))
    assert_close_outputs(out, torch_out, entry.tolerance)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize('entry, index', CASES)
def test_round_trip_is_bit_exact(entry, index, dtype):
    model = entry.build(index)
    # cast in numpy: an eager JAX cast compiles once per shape
    variables = jax.tree_util.tree_map(
        lambda a: jnp.asarray(np.asarray(a).astype(dtype)) if jnp.issubdtype(a.dtype, jnp.floating) else a,
        randomised_flax_variables(model))

    state_dict = converters.to_torch(model, variables)
    expected_torch_dtype = {jnp.float32: torch.float32, jnp.bfloat16: torch.bfloat16}[dtype]
    assert {v.dtype for v in state_dict.values() if v.is_floating_point()} == {expected_torch_dtype}
    back = converters.from_torch(model, state_dict)

    flat, flat_back = traverse_util.flatten_dict(variables), traverse_util.flatten_dict(back)
    assert flat.keys() == flat_back.keys()
    for path in flat:
        assert flat_back[path].dtype == flat[path].dtype, path
        np.testing.assert_array_equal(np.asarray(flat_back[path]), np.asarray(flat[path]), err_msg=str(path))

    # and torch -> Flax -> torch
    torch_state = randomised_torch_model(entry, entry.configs[index]).state_dict()
    again = converters.to_torch(model, converters.from_torch(model, torch_state))
    assert again.keys() == torch_state.keys()
    for key, tensor in torch_state.items():
        assert again[key].dtype == tensor.dtype, key
        assert torch.equal(again[key], tensor), key


def tensor_leaves(tree) -> list:
    """A model's outputs (a tensor, or tuples and lists of them, nested) as a flat list, in numpy_tree's order."""
    if isinstance(tree, (tuple, list)):
        return [leaf for item in tree for leaf in tensor_leaves(item)]
    return [tree]


def torch_outputs_and_gradients(entry, torch_model, inputs, draws):
    """vit-pytorch's exact outputs and gradients of sum(output * w) (its float64 reference), and the weights w."""
    torch_model = float64_reference(torch_model)
    with draws, torch_context(entry):
        out = torch_model(*torch_inputs(entry, inputs))
    outs = tensor_leaves(out)  # nested outputs too (wwt.WWT's task heads' tuples beside its WWTReturn)
    weights = output_weights(outs)
    sum(((t * torch.from_numpy(w)).sum() for t, w in zip(outs, weights)), torch.zeros((), dtype=torch.float64)).backward()
    grads = {name: np.zeros(p.shape) if p.grad is None else p.grad.numpy()
             for name, p in torch_model.named_parameters()}
    return out, grads, weights


# on the worker of the entry's first configuration (--dist loadgroup), which has compiled its init already
@pytest.mark.parametrize('entry', [pytest.param(entry, id=entry.name, marks=pytest.mark.xdist_group(f'{entry.name}-0'))
                                   for entry in parity.ENTRIES])
def test_init_follows_torch_distributions(entry):
    """Each Flax parameter is drawn like its vit-pytorch twin: same mean and spread (and range) per tensor."""
    torch.manual_seed(0)
    torch_state = new_torch_model(entry, entry.configs[0]).state_dict()
    model = entry.build(0)
    variables = init_variables(model)
    flax_state = converters.to_torch(model, variables, as_numpy=True)
    drawn = 0  # tensors whose distribution was compared: a model of only small or constant tensors proves nothing
    for key, tensor in torch_state.items():
        t, f = tensor.double().numpy(), flax_state[key].astype(np.float64)
        if t.size < 64:  # too few draws to tell distributions apart
            continue
        n, spread = t.size, t.std()
        if spread == 0:  # a constant init (LayerNorm ones / zeros)
            np.testing.assert_array_equal(f, t, err_msg=key)
            continue
        drawn += 1
        # five standard errors: a wrong distribution (std 0.02 for randn, a normal for a uniform) is far outside
        assert abs(f.mean() - t.mean()) < 5 * spread * np.sqrt(2 / n), key
        assert abs(np.log(f.std() / spread)) < 5 / np.sqrt(n), key
        if n >= 256:  # the family: a uniform's extremes sit at 1.73 std, a normal's beyond 2 std
            if np.abs(t).max() < 2 * spread:
                assert np.abs(f).max() <= 1.05 * np.abs(t).max(), key
            else:
                assert np.abs(f).max() > 2 * f.std(), key
    assert drawn > 0, f'no tensor of {entry.name} has 64 or more random draws to compare'


# plain attention; BatchNorm, convolutions and index buffers; a random mask and gathers
OPTIMISED_PARITY = ('vit.ViT', 'levit.LeViT', 'mae.MAE')


def test_parity_holds_with_xla_optimisations():
    """The suite compiles with `jax_disable_most_optimizations` and without XLA's CPU fusion emitters
    (tests/conftest.py: compiling dominates its time), which changes how XLA's CPU backend generates code (LLVM
    passes, vectorised reductions), so float32 round-off too; users compile with both. A fresh process with users'
    settings reruns torch -> Flax outputs and gradients for a few architectures against vit-pytorch's float64
    reference, at the same tolerances."""
    users_xla_flags = os.environ['XLA_FLAGS'].replace(TEST_XLA_FLAGS, '').strip()
    script = textwrap.dedent(f"""
        import os
        import jax
        import parity
        from tests import test_parity  # and the suite's helpers, which keep users' settings here
        assert not jax.config.read('jax_disable_most_optimizations')
        assert os.environ['XLA_FLAGS'] == {users_xla_flags!r}
        for name in {OPTIMISED_PARITY!r}:
            test_parity.test_torch_to_flax(parity.BY_NAME[name], 0)
    """)
    env = {name: value for name, value in os.environ.items() if name != 'JAX_DISABLE_MOST_OPTIMIZATIONS'}
    env.update(JAX_PLATFORMS='cpu', COMPILE_AS_USERS='1', XLA_FLAGS=users_xla_flags)
    result = subprocess.run([sys.executable, '-c', script], cwd=Path(__file__).resolve().parents[1], env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
