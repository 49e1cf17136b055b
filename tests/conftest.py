"""Shared test set-up: exact float32 matmuls, one torch thread per pytest worker, vit-pytorch importable, and the
float64 oracle every parity comparison is judged against."""

import contextlib
import copy
import gc
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util

from vit_flax import converters

# float32 parity needs exact matmuls (no TF32 / bf16 passes on accelerators)
jax.config.update('jax_default_matmul_precision', 'highest')
# Compiling dominates the suite's time and the tests run each program a few times at most: XLA's and LLVM's
# optimisation passes cost more than they save here (about 30% of the suite), and so do XLA's CPU fusion emitters
# and its parallel code generation, which two pytest workers on two cores cannot use (another 40%: XLA falls back to
# its element-wise emitters, one LLVM module a program). Numerics do not depend on them (no fast-math either way):
# tests/test_parity.py reruns parity with users' settings (COMPILE_AS_USERS=1). The environment carries the settings
# to the subprocesses (training runs, notebooks), set before JAX starts its CPU backend.
TEST_XLA_FLAGS = '--xla_cpu_use_fusion_emitters=false --xla_cpu_parallel_codegen_split_count=1'
if not os.environ.get('COMPILE_AS_USERS'):
    if TEST_XLA_FLAGS not in os.environ.get('XLA_FLAGS', ''):  # pytest-xdist's workers inherit them
        os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()
    os.environ['JAX_DISABLE_MOST_OPTIMIZATIONS'] = '1'
    jax.config.update('jax_disable_most_optimizations', True)
# pytest-xdist runs one worker per core; `make test-kernels` gives torch two (TORCH_TEST_THREADS=2), which changes
# how it splits and sums its work
torch.set_num_threads(int(os.environ.get('TORCH_TEST_THREADS', '1')))


def torch_class(entry):
    """The vit-pytorch class an entry mirrors."""
    return getattr(converters.import_vit_pytorch(entry.torch_module), entry.torch_class_name)


# Compiling is most of a tiny model's test time, so each pytest worker compiles a configuration's init and its
# forward-and-backward program once and the parity tests share them (`--dist loadgroup` keeps a configuration's
# tests on one worker: tests/test_xdist_groups.py). The cache is bounded: compiled programs are large, and a worker's
# memory would grow with every configuration of every test module (XLA has crashed compiling when it ran short).
_compiled = {}
_CACHE_SIZE = 24


def _cached(key, make):
    if key not in _compiled:
        if len(_compiled) >= _CACHE_SIZE:
            _forget_compiled()
        _compiled[key] = make()
    return _compiled[key]


def _forget_compiled():
    _compiled.clear()
    jax.clear_caches()
    gc.collect()


@pytest.fixture(autouse=True, scope='module')
def _fresh_compile_cache_per_module():
    yield
    _forget_compiled()


def _model_key(model):
    # every field, the JAX-only ones included: a scanned model (scan_layers=True) is another program and tree
    return type(model), repr(model)


def init_variables(model, seed=0):
    """Random Flax variables for a registered model (jitted: one compile instead of one per operation)."""
    from vit_flax import registry

    init = _cached((*_model_key(model), 'init'), lambda: jax.jit(model.init))
    return init(registry.init_rngs(jax.random.key(seed)), *registry.example_inputs(model))


def apply(model, variables, *inputs, train=False, rngs=None, mutable=False):
    """model.apply under jit, as users run it. `mutable=['batch_stats']` returns (outputs, updated statistics)."""
    mutable = tuple(mutable) if isinstance(mutable, (list, tuple)) else mutable
    run = _cached((*_model_key(model), 'apply', train, mutable),
                  lambda: jax.jit(lambda v, r, *xs: model.apply(v, *xs, train=train, rngs=r, mutable=mutable)))
    return run(variables, rngs, *inputs)


def outputs_and_gradients(model, variables, inputs, rngs, weights):
    """(model.apply's outputs in eval mode, d(sum(output * w)) / d(params)) from one program under jit, which the
    parity tests of a configuration share: compiling is most of their time, and a plain apply would be another
    program. `weights` holds w, one array per output, in the order of the outputs' leaves."""
    def run(variables, rngs, inputs, weights):
        others = {name: collection for name, collection in variables.items() if name != 'params'}
        def forward(params):
            return model.apply({**others, 'params': params}, *inputs, train=False, rngs=rngs)

        out, pullback = jax.vjp(forward, variables['params'])
        return out, pullback(jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out), weights))[0]

    compiled = _cached((*_model_key(model), 'outputs_and_gradients'), lambda: jax.jit(run))
    return compiled(variables, rngs, tuple(inputs), [jnp.asarray(w) for w in weights])


def output_weights(outputs):
    """The weights w of the scalar sum(output * w) whose gradients the parity tests compare: standard normal, one
    array per output leaf (numpy arrays, JAX arrays or tensors)."""
    return [np.random.default_rng(7 + i).standard_normal(leaf.shape, dtype=np.float32)
            for i, leaf in enumerate(numpy_tree(outputs))]


def new_torch_model(entry, config):
    """A freshly initialised vit-pytorch model for a registry config, in eval mode (built under the input spec's
    `torch_construction()` context where it has one: vit-pytorch's Dino runs torchvision transforms in __init__)."""
    with entry.torch_construction():
        return torch_class(entry)(**converters.torch_keywords(config)).eval()


def offline_hub_repo(monkeypatch, cache, repo: str, torch_model):
    """Put timm's `torch_model` into a Hugging Face cache at `cache` as the hub repository `repo`, as
    huggingface_hub lays a download out (models--<owner>--<name>/refs/main -> snapshots/<commit>/...), written by
    timm's own hub writer; then point huggingface_hub at that cache, offline (this machine has no network)."""
    import huggingface_hub
    from huggingface_hub import constants
    from timm.models._hub import save_for_hf

    commit = '0123456789abcdef0123456789abcdef01234567'
    repo_dir = cache / f"models--{repo.replace('/', '--')}"
    save_for_hf(torch_model, repo_dir / 'snapshots' / commit, safe_serialization=True)
    (repo_dir / 'refs').mkdir()
    (repo_dir / 'refs' / 'main').write_text(commit)
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(cache))
    monkeypatch.setattr(huggingface_hub.file_download.constants, 'HF_HUB_CACHE', str(cache), raising=False)


def images(shape, seed=0):
    """Random float32 images (or any array) of `shape`."""
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def randomised_torch_model(entry, config, seed=0):
    """A vit-pytorch model in eval mode whose every weight and BatchNorm statistic is moved off its init.

    LayerNorm scales of exactly 1 and biases of 0 would hide a swapped or misplaced norm.
    """
    torch.manual_seed(seed)
    model = new_torch_model(entry, config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.copy_(0.1 * torch.randn_like(module.running_mean))
                module.running_var.copy_(0.5 + torch.rand_like(module.running_var))
    return model


def randomised_flax_variables(model, seed=0):
    """Flax init moved off its LayerNorm ones / zeros. The noise is added in numpy: an eager JAX op per leaf would
    compile once per shape (dozens of compiles a model), and float32 addition is the same in both."""
    rng = np.random.default_rng(seed)
    flat = traverse_util.flatten_dict(init_variables(model, seed))
    noisy = {}
    for path, leaf in flat.items():
        if path[0] == 'buffers':  # index tables and masks are structure, not weights
            noisy[path] = leaf
        elif path[0] == 'batch_stats' and path[-1] == 'var':
            noisy[path] = jnp.asarray(0.5 + rng.random(leaf.shape, np.float32))
        else:
            dtype = np.asarray(leaf).dtype
            noise = (0.1 * rng.standard_normal(leaf.shape, np.float32)).astype(dtype)
            noisy[path] = jnp.asarray((np.asarray(leaf, np.float32) + noise.astype(np.float32)).astype(dtype))
    return traverse_util.unflatten_dict(noisy)


def converted_pair(entry, config, seed=0):
    """(Flax model, its variables, the randomised vit-pytorch model they were converted from)."""
    torch_model = randomised_torch_model(entry, config, seed)
    model = entry.flax_class(**config)
    return model, converters.from_torch(model, torch_model.state_dict()), torch_model


@contextlib.contextmanager
def float64_default():
    """torch's default dtype float64 inside: what vit-pytorch computes with tensors it makes itself (in a forward,
    or a constructor's initial values) comes out exact."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(default)


def float64_reference(torch_model):
    """A float64 copy of a vit-pytorch model: the exact answer that its float32 self, and ours, round.

    Parity is judged against this copy, never against torch's float32 run: float32 round-off depends on the CPU
    (oneDNN and MKL pick other kernels, so other summation orders, on an AVX-512 Intel than on an AMD EPYC), on
    ATen's SIMD width and on the thread count, and a float32 oracle makes a test pass or fail by the machine it runs
    on. Our float32 results keep their tolerances against the truth.

    The copy runs with torch's default dtype float64, so the tensors vit-pytorch makes in its forward (MAE's
    `torch.zeros` for the decoder tokens) are float64 too; where it casts to float32 itself and feeds a layer
    (CrossFormer's `rel_pos.float()`), the layer takes the tensor in float64: such casts carry small integers or
    masks, which float64 holds exactly.
    """
    exact = copy.deepcopy(torch_model).double()

    def float64_inputs(module, args, kwargs):
        cast = lambda a: a.double() if isinstance(a, torch.Tensor) and a.dtype == torch.float32 else a  # noqa: E731
        return tuple(cast(a) for a in args), {name: cast(a) for name, a in kwargs.items()}

    for module in exact.modules():
        module.register_forward_pre_hook(float64_inputs, with_kwargs=True)

    def forward_in_float64(*args, **kwargs):
        # the class's forward at call time: a test context may patch it (mae.torch_runs_on_2d_pos_embedding)
        with float64_default():
            return type(exact).forward(exact, *args, **kwargs)

    exact.forward = forward_in_float64
    return exact


def truly_zero(exact_gradient, largest):
    """Whether a float64 reference gradient is zero but for round-off: below 1e-9 of the model's largest gradient
    (float64 round-off is about 1e-16 of it, float32's about 1e-7, so the line sits far from both). Such a gradient
    cannot be compared relatively: ours must then be round-off small."""
    return float(np.abs(np.asarray(exact_gradient)).max(initial=0.0)) <= 1e-9 * largest


def assert_close_gradients(flax_grads, exact_grads):
    """Our float32 gradients (a state dict of numpy arrays) against vit-pytorch's exact ones, per parameter: within
    relative 1e-4, or round-off small next to the model's largest gradient where the true gradient is zero."""
    largest = max(float(np.abs(g).max(initial=0.0)) for g in exact_grads.values())
    for name, expected in exact_grads.items():
        if truly_zero(expected, largest):
            assert np.abs(flax_grads[name]).max(initial=0.0) <= 1e-5 * largest, name
            continue
        scale = float(np.abs(expected).max(initial=0.0))
        np.testing.assert_allclose(flax_grads[name], expected, rtol=1e-4, atol=1e-4 * scale, err_msg=name)


def assert_matches_float64_reference(model, variables, torch_model, x, tolerance):
    """A single-output Flax model on images `x` against its torch twin's float64 reference: the outputs, and the
    gradients of sum(output * w) for every parameter (compared in torch's layout)."""
    exact = float64_reference(torch_model)
    out = exact(nchw(x))
    assert_close_outputs(jax.jit(model.apply)(variables, x), out.detach(), tolerance)
    w = np.random.default_rng(7).standard_normal(tuple(out.shape), dtype=np.float32)
    (out * torch.from_numpy(w)).sum().backward()
    others = {key: value for key, value in variables.items() if key != 'params'}
    grads = jax.jit(jax.grad(lambda p: (model.apply({**others, 'params': p}, x) * w).sum()))(variables['params'])
    assert_close_gradients(converters.to_torch(model, {**others, 'params': grads}, example_inputs=(x,), as_numpy=True),
                           {key: np.zeros(p.shape) if p.grad is None else p.grad.numpy()
                            for key, p in exact.named_parameters()})


def nchw(x, dtype=torch.float64):
    """Channels-last images as vit-pytorch takes them (channels first), float64 by default for the reference."""
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(x), -1, 1))).to(dtype)


def torch_forward(torch_model, x):
    """vit-pytorch's exact answer (its float64 reference) on channels-last images, without gradients."""
    with torch.no_grad():
        return float64_reference(torch_model)(nchw(x))


def torch_inputs(entry, inputs, dtype=torch.float64):
    """An entry's example inputs as vit-pytorch takes them (tensors, or lists of tensors for NaViT), floats in
    `dtype`: float64 for the reference, float32 to run vit-pytorch as users do."""
    def convert(a):
        if isinstance(a, (list, tuple)):
            return [convert(item) for item in a]
        t = torch.from_numpy(a)
        return t.to(dtype) if t.is_floating_point() else t

    return [convert(a) for a in entry.inputs.to_torch_layout(inputs)]


def torch_context(entry):
    return entry.torch_context()


def same_draws(entry, model, inputs):
    """(Flax rngs, torch context) under which a model that is random in eval mode draws the same numbers on both
    sides (the parity spec's optional `draws`, e.g. ats_vit's); (None, a null context) for every other model."""
    return entry.same_draws(model, inputs)


def run_torch(entry, torch_model, inputs):
    """vit-pytorch's exact answer (its float64 reference) on an entry's example inputs, without gradients."""
    with torch.no_grad(), torch_context(entry):
        return float64_reference(torch_model)(*torch_inputs(entry, inputs))


def numpy_tree(tree):
    """Model outputs (arrays, tensors, or tuples of them) as a list of numpy arrays."""
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


# `make test` must stay under 20 minutes on 2 cores: tests that use the multi-device training runs go to
# `make test-slow` (the random-configuration sweeps are marked in tests/test_random_configurations.py).
SLOW_FIXTURES = ('layout_losses',)


def pytest_collection_modifyitems(items):
    for item in items:
        if any(name in item.fixturenames for name in SLOW_FIXTURES):
            item.add_marker(pytest.mark.slow)
