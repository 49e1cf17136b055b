"""CaiT behaviour beyond the registry configs: layer drop replayed in torch, LayerScale init, inputs, bad configs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import parity
from vit_flax import converters
from tests.conftest import apply, assert_close_outputs, converted_pair, images, torch_forward

from vit_flax.cait import CaiT, LayerScale, layer_drop_draw, layers_to_keep
from vit_flax.vit import FeedForward

ENTRY = parity.BY_NAME['cait.CaiT']
TOLERANCE = 2e-5
TINY = dict(image_size=16, patch_size=4, num_classes=10, dim=16, depth=2, cls_depth=1, heads=2, mlp_dim=32, dim_head=8)


def torch_cait():
    return converters.import_vit_pytorch('vit_pytorch.cait')


class TorchReplayingDraws:
    """Stands in for the `torch` module of vit_pytorch.cait: `torch.zeros(n).uniform_(0., 1.)` in its
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


def test_layer_drop_replays_in_torch(monkeypatch):
    """Flax's draw from the 'layer_dropout' stream, fed to torch's own dropout_layers, drops the same layers."""
    model, variables, torch_model = converted_pair(ENTRY, {**TINY, 'depth': 3, 'cls_depth': 2, 'layer_dropout': 0.6})
    x = images((2, 16, 16, 3))
    module = torch_cait()
    run = jax.jit(lambda v, key: model.apply(v, x, train=True, rngs={'layer_dropout': key}, mutable=['intermediates']))
    fallbacks_used = partial_drops = 0
    for seed in range(8):
        out, state = run(variables, jax.random.key(seed))
        draws, keeps = [], []
        for name in ('patch_transformer', 'cls_transformer'):
            sown = state['intermediates'][name]
            draws.append((np.array(sown['layer_drop_uniforms'][0]), int(sown['layer_drop_fallback'][0])))
            keeps.append(np.asarray(sown['layer_keep'][0]))
        replay = TorchReplayingDraws(draws)
        monkeypatch.setattr(module, 'torch', replay)
        monkeypatch.setattr(module, 'randrange', replay.randrange)
        expected = torch_forward(torch_model, x)  # eval mode: vit-pytorch drops layers there too
        monkeypatch.undo()
        assert not replay.draws
        fallbacks_used += replay.calls
        partial_drops += sum(0 < keep.sum() < keep.size for keep in keeps)
        assert_close_outputs(out, expected, TOLERANCE)
    assert fallbacks_used and partial_drops  # both branches of dropout_layers were exercised


def test_layers_to_keep_follows_torch_rule():
    keep = layers_to_keep(jnp.array([0.1, 0.7, 0.3]), jnp.array(0), 0.5)
    np.testing.assert_array_equal(keep, [False, True, False])
    keep = layers_to_keep(jnp.array([0.1, 0.2, 0.3]), jnp.array(2), 0.5)  # all dropped: only the fallback runs
    np.testing.assert_array_equal(keep, [False, False, True])
    uniforms, fallback = layer_drop_draw(jax.random.key(0), 5)
    assert uniforms.shape == (5,) and uniforms.dtype == jnp.float32 and 0 <= int(fallback) < 5


def test_layer_drop_only_in_training_and_reproducible():
    model, variables, _ = converted_pair(ENTRY, {**TINY, 'layer_dropout': 0.5})
    x = images((2, 16, 16, 3))
    eval_out = apply(model, variables, x)
    np.testing.assert_array_equal(eval_out, apply(CaiT(**TINY), variables, x))

    train = lambda seed: apply(model, variables, x, train=True, rngs={'layer_dropout': jax.random.key(seed)})
    np.testing.assert_array_equal(train(1), train(1))
    outs = [train(seed) for seed in range(6)]
    assert any(not np.allclose(out, eval_out) for out in outs)
    assert any(not np.allclose(out, outs[0]) for out in outs[1:])
    with pytest.raises(Exception, match='layer_dropout'):
        model.apply(variables, x, train=True)  # no 'layer_dropout' rng stream given


def test_dropout_only_in_training_and_reproducible():
    small = {**TINY, 'depth': 1}
    model, variables, _ = converted_pair(ENTRY, {**small, 'dropout': 0.3, 'emb_dropout': 0.3})
    x = images((2, 16, 16, 3))
    eval_out = apply(model, variables, x)
    np.testing.assert_array_equal(eval_out, apply(CaiT(**small), variables, x))
    train = lambda seed: apply(model, variables, x, train=True, rngs={'dropout': jax.random.key(seed)})
    np.testing.assert_array_equal(train(1), train(1))
    assert not np.allclose(train(1), train(2)) and not np.allclose(train(1), eval_out)


@pytest.mark.parametrize('depth', [1, 18, 19, 24, 25, 40])
def test_layer_scale_init_follows_the_layer_index(depth):
    torch_scale = torch_cait().LayerScale(4, torch.nn.Identity(), depth=depth).scale.detach().numpy()
    layer = LayerScale(4, FeedForward(4, 8, parent=None), depth=depth)
    params = layer.init(jax.random.key(0), jnp.zeros((1, 2, 4)))['params']
    np.testing.assert_array_equal(params['layer_scale'], torch_scale)  # float32 inits: one constant, rounded once
    assert params['layer_scale'].dtype == jnp.float32


@pytest.mark.parametrize('size', [(8, 16), (16, 8), (4, 12), (8, 8)])
def test_smaller_and_rectangular_inputs_slice_the_position_embedding(size):
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    x = images((2, *size, 3))
    assert_close_outputs(apply(model, variables, x), torch_forward(torch_model, x), TOLERANCE)


def test_larger_input_is_refused_with_sizes():
    model, variables, _ = converted_pair(ENTRY, TINY)
    with pytest.raises(ValueError, match=r'input of size \(20, 16\) gives 20 patches, more than the 16'):
        model.apply(variables, images((1, 20, 16, 3)))


def test_num_classes_zero_keeps_an_empty_head():
    model, variables, torch_model = converted_pair(ENTRY, {**TINY, 'num_classes': 0})
    x = images((2, 16, 16, 3))
    out = apply(model, variables, x)
    assert out.shape == (2, 0) and variables['params']['mlp_head_1']['kernel'].shape == (16, 0)
    assert_close_outputs(out, torch_forward(torch_model, x), TOLERANCE)


def test_parameter_shapes_follow_torch():
    params = jax.eval_shape(CaiT(**TINY).init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))['params']
    assert params['pos_embedding'].shape == (1, 16, 16) and params['cls_token'].shape == (1, 1, 16)
    attention = params['cls_transformer']['layers_0_0']
    assert attention['layer_scale'].shape == (1, 1, 16) and attention['fn']['mix_heads_pre_attn'].shape == (2, 2)
    assert set(params['patch_transformer']) == {'layers_0_0', 'layers_0_1', 'layers_1_0', 'layers_1_1'}


@pytest.mark.parametrize('change, message', [
    (dict(image_size=18), r'divisible by the patch size: image_size=18, patch_size=4'),
    (dict(image_size=(16, 16)), r'single int image_size .* image_size=\(16, 16\)'),
    (dict(patch_size=(4, 4)), r'single int patch_size'),
    (dict(patch_size=0), r'patch_size=0'),
    (dict(depth=-1), r'depth=-1'),
    (dict(depth=0, layer_dropout=0.1), r'layer_dropout=0.1 needs at least one layer .* depth=0'),
    (dict(cls_depth=0, layer_dropout=0.1), r'cls_depth=0'),
])
def test_bad_configurations_name_the_value(change, message):
    with pytest.raises(ValueError, match=message):
        CaiT(**{**TINY, **change})


def test_torch_refuses_the_same_configurations():
    with pytest.raises(AssertionError):
        torch_cait().CaiT(**{**TINY, 'image_size': 18})
    with pytest.raises(TypeError):
        torch_cait().CaiT(**{**TINY, 'image_size': (16, 16)})
    torch_model = torch_cait().CaiT(**{**TINY, 'depth': 0, 'layer_dropout': 0.1})
    with pytest.raises(ValueError):  # random.randrange(0) on the empty patch transformer
        torch_model(torch.zeros(1, 3, 16, 16))


def test_bad_inputs_name_the_shape():
    model = CaiT(**TINY)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    with pytest.raises(ValueError, match=r'expected 3 channels .* shape \(1, 16, 16, 1\)'):
        jax.eval_shape(model.apply, variables, jnp.zeros((1, 16, 16, 1)))
    with pytest.raises(ValueError, match=r'not divisible by patch size'):
        jax.eval_shape(model.apply, variables, jnp.zeros((1, 16, 14, 3)))
