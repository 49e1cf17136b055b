"""Shared test set-up: exact float32 matmuls, one torch thread per pytest worker, vit-pytorch importable."""

import jax
import numpy as np
import pytest
import torch

# float32 parity needs exact matmuls (no TF32 / bf16 passes on accelerators)
jax.config.update('jax_default_matmul_precision', 'highest')
torch.set_num_threads(1)  # pytest-xdist runs one worker per core

# The oracle is the real vit-pytorch package. Its __init__ imports torchvision (for Dino's augmentations),
# which cannot load against the CPU torch build on our machines: converters.oracle puts a minimal stand-in
# module in its place when, and only when, the real one fails to import.
from converters.oracle import ensure_torchvision  # noqa: E402

ensure_torchvision()


def torch_class(entry):
    """The vit-pytorch class an entry mirrors."""
    import converters

    return getattr(converters.import_vit_pytorch(entry.torch_module), entry.class_name)


# Compiling is most of a tiny model's test time, so each pytest worker compiles a configuration's init and
# apply once and the parity tests share them (`--dist loadgroup` keeps a configuration's tests on one worker).
_compiled = {}


def _model_key(model):
    from vit_flax import registry

    return type(model), repr(sorted(registry.torch_kwargs(model).items()))


def init_variables(model, seed=0):
    """Random Flax variables for a registered model (jitted: one compile instead of one per operation)."""
    from vit_flax import registry

    key = (*_model_key(model), 'init')
    if key not in _compiled:
        _compiled[key] = jax.jit(model.init)
    return _compiled[key](registry.init_rngs(jax.random.key(seed)), *registry.example_inputs(model))


def apply(model, variables, *inputs, train=False, rngs=None):
    """model.apply under jit, as users run it."""
    key = (*_model_key(model), 'apply', train)
    if key not in _compiled:
        _compiled[key] = jax.jit(lambda v, r, *xs: model.apply(v, *xs, train=train, rngs=r))
    return _compiled[key](variables, rngs, *inputs)


def numpy_tree(tree):
    """Model outputs (arrays, tensors, or tuples of them) as a list of numpy arrays."""
    import converters

    if isinstance(tree, (tuple, list)):
        return [leaf for item in tree for leaf in numpy_tree(item)]
    return [np.asarray(converters.to_numpy(tree.detach() if isinstance(tree, torch.Tensor) else tree))]


def assert_close_outputs(flax_out, torch_out, tolerance):
    """Every output within tolerance * max(1, max|y|) of vit-pytorch's."""
    flax_leaves, torch_leaves = numpy_tree(flax_out), numpy_tree(torch_out)
    assert len(flax_leaves) == len(torch_leaves)
    for f, t in zip(flax_leaves, torch_leaves):
        assert f.shape == t.shape, (f.shape, t.shape)
        scale = max(1.0, float(np.abs(t).max(initial=0.0)))
        error = float(np.abs(f.astype(np.float64) - t).max(initial=0.0))
        assert error <= tolerance * scale, f'max |flax - torch| = {error:.3g} > {tolerance} * {scale:.3g}'


@pytest.fixture
def rng():
    return np.random.default_rng(0)
