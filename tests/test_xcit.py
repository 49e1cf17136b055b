"""XCiT behaviour beyond the registry configs: BatchNorm in training, layer drop replayed in torch (statistics
included), LayerScale init, l2norm, inputs, bad configs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import parity
from vit_flax import converters
from tests.conftest import apply, assert_close_outputs, converted_pair, float64_reference, images, nchw, torch_forward

from vit_flax.vit import FeedForward
from vit_flax.xcit import XCiT, LayerScale, l2norm

ENTRY = parity.BY_NAME['xcit.XCiT']
TOLERANCE = 2e-5
TINY = ENTRY.configs[0]  # image_size=16, patch_size=4, dim=16, depth=2, cls_depth=1, heads=2, dim_head=8
LAYER_DROP = {**TINY, 'layer_dropout': 0.6}


def torch_xcit():
    return converters.import_vit_pytorch('vit_pytorch.xcit')


def running_statistics(state):
    return {key: np.asarray(value) for key, value in state.items() if key.endswith(('running_mean', 'running_var'))}


class TorchReplayingDraws:
    """Stands in for the `torch` module of vit_pytorch.xcit: `torch.zeros(n).uniform_(0., 1.)` in its
    `dropout_layers` returns given uniforms, and its `randrange(n)` the given fallback index."""

    def __init__(self, draws):
        self.draws = list(draws)  # (uniforms, fallback) per dropout_layers call, in call order
        self.fallback = None
        self.calls = 0

    def zeros(self, num_layers):
        uniforms, self.fallback = self.draws.pop(0)
        assert len(uniforms) == num_layers

        class Draw:
            def uniform_(self, low, high):
                assert (low, high) == (0.0, 1.0)
                return torch.tensor(np.asarray(uniforms, np.float32))

        return Draw()

    def randrange(self, num_layers):
        self.calls += 1
        assert 0 <= self.fallback < num_layers
        return int(self.fallback)

    def __getattr__(self, name):
        return getattr(torch, name)


# BatchNorm in training


def test_train_mode_batch_norm_statistics_match_torch():
    """One training step on the same batch: the same outputs, and every running mean / variance as torch's."""
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    x = images((4, 16, 16, 3), seed=3)
    out, updates = apply(model, variables, x, train=True, mutable=['batch_stats'])
    exact = float64_reference(torch_model).train()
    with torch.no_grad():
        torch_out = exact(nchw(x))
    assert_close_outputs(out, torch_out, TOLERANCE)
    assert not np.allclose(out, apply(model, variables, x), atol=1e-3)  # train mode really uses batch statistics

    exported = converters.to_torch(model, {**variables, **updates}, as_numpy=True)
    before = converters.to_torch(model, variables, as_numpy=True)
    stats = running_statistics(exact.state_dict())
    assert len(stats) == 2 * TINY['depth']
    for key, t in stats.items():
        assert not np.array_equal(t, before[key]), key  # the step did move it
        assert float(np.abs(exported[key] - t).max()) <= 2e-5 * max(1.0, float(np.abs(t).max())), key
    assert updates.keys() == {'batch_stats'}


def test_eval_mode_leaves_statistics():
    model, variables, _ = converted_pair(ENTRY, TINY)
    _, updates = apply(model, variables, images((2, 16, 16, 3)), mutable=['batch_stats'])
    jax.tree_util.tree_map(np.testing.assert_array_equal, updates['batch_stats'], variables['batch_stats'])


# layer drop


def test_layer_drop_replays_in_torch_with_statistics(monkeypatch):
    """Flax's draws from the 'layer_dropout' stream, fed to torch's own dropout_layers in a training step, drop the
    same layers: same outputs, and a dropped layer's BatchNorm statistics stay where they were on both sides."""
    model, variables, torch_model = converted_pair(ENTRY, LAYER_DROP)
    x = images((2, 16, 16, 3), seed=1)
    module = torch_xcit()
    before = running_statistics(torch_model.state_dict())
    fallbacks_used = partial_drops = untouched = 0
    for seed in range(8):
        out, state = apply(model, variables, x, train=True, rngs={'layer_dropout': jax.random.key(seed)},
                           mutable=['batch_stats', 'intermediates'])
        draws, keeps = [], []
        for name in ('xcit_transformer', 'cls_transformer'):
            sown = state['intermediates'][name]
            draws.append((np.array(sown['layer_drop_uniforms'][0]), int(sown['layer_drop_fallback'][0])))
            keeps.append(np.asarray(sown['layer_keep'][0]))
        replay = TorchReplayingDraws(draws)
        torch_step = float64_reference(torch_model).train()
        monkeypatch.setattr(module, 'torch', replay)
        monkeypatch.setattr(module, 'randrange', replay.randrange)
        with torch.no_grad():
            expected = torch_step(nchw(x))
        monkeypatch.undo()
        assert not replay.draws
        assert_close_outputs(out, expected, TOLERANCE)

        exported = converters.to_torch(model, {**variables, 'batch_stats': state['batch_stats']}, as_numpy=True)
        for key, t in running_statistics(torch_step.state_dict()).items():
            layer = int(key.split('.')[2])  # xcit_transformer.layers.<i>.1.fn.net.3.running_*
            if keeps[0][layer]:
                assert float(np.abs(exported[key] - t).max()) <= 2e-5 * max(1.0, float(np.abs(t).max())), key
            else:
                np.testing.assert_array_equal(t, before[key])
                np.testing.assert_array_equal(exported[key], before[key])
                untouched += 1
        fallbacks_used += replay.calls
        partial_drops += sum(0 < keep.sum() < keep.size for keep in keeps)
    assert fallbacks_used and partial_drops and untouched  # every branch was exercised


def test_layer_drop_only_in_training_and_reproducible():
    model, variables, _ = converted_pair(ENTRY, LAYER_DROP)
    x = images((2, 16, 16, 3), seed=1)
    eval_out = apply(model, variables, x)
    np.testing.assert_array_equal(eval_out, apply(XCiT(**TINY), variables, x))

    def train(seed):
        rngs = {'layer_dropout': jax.random.key(seed)}
        return apply(model, variables, x, train=True, rngs=rngs, mutable=['batch_stats', 'intermediates'])[0]

    np.testing.assert_array_equal(train(1), train(1))
    outs = [train(seed) for seed in range(6)]
    assert any(not np.allclose(out, outs[0]) for out in outs[1:])
    with pytest.raises(Exception, match='layer_dropout'):
        model.apply(variables, x, train=True, mutable=['batch_stats'])  # no 'layer_dropout' rng stream given


def test_dropout_only_in_training_and_reproducible():
    model, variables, _ = converted_pair(ENTRY, {**TINY, 'dropout': 0.3, 'emb_dropout': 0.3})
    x = images((2, 16, 16, 3))
    eval_out = apply(model, variables, x)
    np.testing.assert_array_equal(eval_out, apply(XCiT(**TINY), variables, x))

    def train(seed):
        return apply(model, variables, x, train=True, rngs={'dropout': jax.random.key(seed)},
                     mutable=['batch_stats'])[0]

    np.testing.assert_array_equal(train(1), train(1))
    assert not np.allclose(train(1), train(2))


# pieces


@pytest.mark.parametrize('depth', [1, 18, 19, 24, 25])
def test_layer_scale_init_follows_torch_quirk(depth):
    """torch's `18 > depth <= 24` is never true past 18: 1e-6 from layer 19 on, not 1e-5."""
    # the stored float32 init constant itself, computed by neither side
    torch_scale = torch_xcit().LayerScale(4, torch.nn.Identity(), depth=depth).scale.detach().numpy()
    layer = LayerScale(4, FeedForward(4, 8, parent=None), depth=depth)
    params = layer.init(jax.random.key(0), jnp.zeros((1, 2, 4)))['params']
    np.testing.assert_array_equal(params['layer_scale'], torch_scale)
    assert params['layer_scale'].shape == (4,) and params['layer_scale'].dtype == jnp.float32
    assert torch_scale[0] == np.float32(0.1 if depth <= 18 else 1e-6)


def test_l2norm_matches_torch_with_a_zero_vector():
    """torch clamps the norm at 1e-12: a zero vector stays zero and its gradient is 1e12 on both sides, not NaN."""
    t = images((3, 5))
    t[1] = 0.0
    exact = torch.from_numpy(t).double()
    np.testing.assert_allclose(l2norm(jnp.asarray(t)), torch.nn.functional.normalize(exact, dim=-1), rtol=1e-6,
                               atol=1e-7)
    torch_t = exact.requires_grad_()
    torch.nn.functional.normalize(torch_t, dim=-1).sum().backward()
    grad = jax.grad(lambda a: l2norm(a).sum())(jnp.asarray(t))
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, torch_t.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_variable_tree_mirrors_torch_state_dict():
    model = XCiT(**TINY)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    params = variables['params']
    assert params['pos_embedding'].shape == (1, 16, 16) and params['cls_token'].shape == (16,)
    layer = params['xcit_transformer']['layers_0_0']
    assert layer['layer_scale'].shape == (16,) and layer['fn']['temperature'].shape == (2, 1, 1)
    assert params['xcit_transformer']['layers_0_1']['fn']['net_2']['kernel'].shape == (3, 3, 1, 16)  # depthwise
    assert set(params['xcit_transformer']) == {f'layers_{i}_{j}' for i in range(2) for j in range(3)}
    torch_state = torch_xcit().XCiT(**TINY).state_dict()
    exported = converters.to_torch(model, jax.tree_util.tree_map(jnp.zeros_like, variables), as_numpy=True)
    assert {k: tuple(v.shape) for k, v in exported.items()} == {k: tuple(v.shape) for k, v in torch_state.items()}


# inputs


@pytest.mark.parametrize('size', [(8, 16), (12, 4)])
def test_smaller_and_rectangular_inputs_slice_the_position_embedding(size):
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    x = images((2, *size, 3))
    assert_close_outputs(apply(model, variables, x), torch_forward(torch_model, x), TOLERANCE)


def test_larger_input_is_refused_with_sizes():
    model, variables, _ = converted_pair(ENTRY, TINY)
    with pytest.raises(ValueError, match=r'input of size \(20, 16\) gives 20 patches, more than the 16'):
        model.apply(variables, images((1, 20, 16, 3)))


def test_bad_inputs_name_the_shape():
    model = XCiT(**TINY)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    with pytest.raises(ValueError, match=r'expected 3 channels .* shape \(1, 16, 16, 1\)'):
        jax.eval_shape(model.apply, variables, jnp.zeros((1, 16, 16, 1)))
    with pytest.raises(ValueError, match=r'not divisible by patch size'):
        jax.eval_shape(model.apply, variables, jnp.zeros((1, 16, 14, 3)))


# configurations


@pytest.mark.parametrize('change, message', [
    (dict(image_size=18), r'divisible by the patch size: image_size=18, patch_size=4'),
    (dict(image_size=(16, 16)), r'single int image_size .* image_size=\(16, 16\)'),
    (dict(patch_size=0), r'patch_size=0'),
    (dict(depth=-1), r'depth=-1'),
    (dict(heads=0), r'heads=0'),
    (dict(local_patch_kernel_size=4), r'local_patch_kernel_size .* got 4'),
    (dict(local_patch_kernel_size=-1), r'got -1'),
    (dict(depth=0, layer_dropout=0.1), r'layer_dropout=0.1 needs at least one layer .* depth=0'),
    (dict(cls_depth=0, layer_dropout=0.1), r'cls_depth=0'),
])
def test_bad_configurations_name_the_value(change, message):
    with pytest.raises(ValueError, match=message):
        XCiT(**{**TINY, **change})


def test_torch_refuses_the_same_configurations():
    module = torch_xcit()
    with pytest.raises(AssertionError):
        module.XCiT(**{**TINY, 'image_size': 18})
    with pytest.raises(AssertionError):
        module.XCiT(**{**TINY, 'local_patch_kernel_size': 4})
    torch_model = module.XCiT(**{**TINY, 'cls_depth': 0, 'layer_dropout': 0.1})
    with pytest.raises(ValueError):  # random.randrange(0) on the empty class transformer
        torch_model(torch.zeros(1, 3, 16, 16))


def test_even_kernel_size_is_accepted_without_layers():
    """torch asserts on the kernel size inside a layer only, so depth=0 takes any value."""
    config = {**TINY, 'depth': 0, 'local_patch_kernel_size': 4}
    model, variables, torch_model = converted_pair(ENTRY, config)
    x = images((2, 16, 16, 3))
    assert_close_outputs(apply(model, variables, x), torch_forward(torch_model, x), TOLERANCE)


def test_num_classes_zero_keeps_an_empty_head():
    model, variables, torch_model = converted_pair(ENTRY, {**TINY, 'num_classes': 0})
    x = images((2, 16, 16, 3))
    out = apply(model, variables, x)
    assert out.shape == (2, 0) and variables['params']['mlp_head_1']['kernel'].shape == (16, 0)
    assert_close_outputs(out, torch_forward(torch_model, x), TOLERANCE)
