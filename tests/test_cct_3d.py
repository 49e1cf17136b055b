"""Video CCT beyond the registry configs: multi-token parity, the sine buffer, presets, stochastic depth, fixed
dropouts, quirks, bad configs and inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util

import parity
from vit_flax import converters
from vit_flax.converters import rules
from tests.conftest import (apply, assert_close_outputs, converted_pair, float64_reference, images, init_variables,
                            nchw, torch_class, torch_forward, truly_zero)
from vit_flax import cct, cct_3d
from vit_flax.cct_3d import CCT

ENTRY = parity.BY_NAME['cct_3d.CCT']
# 4 x 4 x 4 tokens
TINY = dict(img_size=8, num_frames=4, embedding_dim=32, kernel_size=3, stride=1, padding=1, num_layers=2, num_heads=4,
            mlp_ratio=2, num_classes=10)

# Several tokens each (the registry's configs have one): sine and learnable embeddings, a conv stack, frame and
# spatial kernel / stride / padding and pooling variants, rectangular frames.
MULTI_TOKEN = [
    TINY,
    # 2 x 4 x 8 tokens
    dict(img_size=(6, 10), num_frames=5, n_input_channels=1, n_conv_layers=2, frame_kernel_size=2, frame_stride=2,
         frame_padding=1, frame_pooling_kernel_size=3, frame_pooling_stride=1, frame_pooling_padding=1,
         kernel_size=5, stride=1, padding=2, pooling_kernel_size=2, pooling_stride=1, pooling_padding=0,
         embedding_dim=24, num_layers=1, num_heads=3, mlp_ratio=1.5, num_classes=7, positional_embedding='learnable'),
]


def video_batch(config, batch=2, seed=0):
    height, width = cct.pair(config['img_size'])
    return images((batch, config['num_frames'], height, width, config.get('n_input_channels', 3)), seed)


@pytest.mark.parametrize('index', range(len(MULTI_TOKEN)))
def test_multi_token_parity_and_gradients(index):
    config = MULTI_TOKEN[index]
    x = video_batch(config, seed=index)

    # torch -> Flax
    model, variables, torch_model = converted_pair(ENTRY, config, seed=index)
    assert_close_outputs(apply(model, variables, x), torch_forward(torch_model, x), ENTRY.tolerance)

    # gradients, against the largest gradient of all (attention_pool.bias's true gradient is zero: see test_cct.py)
    weights = images((2, config['num_classes']), seed=7)
    exact = float64_reference(torch_model)
    (exact(nchw(x)) * torch.from_numpy(weights)).sum().backward()
    loss = lambda p: (model.apply({**variables, 'params': p}, x) * weights).sum()
    grads = jax.jit(jax.grad(loss))(variables['params'])
    flax_grads = converters.to_torch(model, {**variables, 'params': grads}, as_numpy=True)
    expected = {name: p.grad.numpy() for name, p in exact.named_parameters()}
    scale = max(float(np.abs(g).max(initial=0.0)) for g in expected.values())
    for name, grad in expected.items():
        np.testing.assert_allclose(flax_grads[name], grad, rtol=1e-4, atol=1e-5 * scale, err_msg=name)
    assert truly_zero(expected['classifier.attention_pool.bias'], scale)
    assert np.abs(flax_grads['classifier.attention_pool.bias']).max() <= 1e-6 * scale

    # Flax -> torch, strict (Flax's own init, moved off its zero biases and LayerNorm ones; the sine buffer kept)
    if index == 0:
        flax_variables = init_variables(model, seed=index)
        flax_variables = {**flax_variables, 'params': jax.tree_util.tree_map(
            lambda a: a + 0.1 * jnp.asarray(images(a.shape, seed=a.size)), flax_variables['params'])}
        torch_model = torch_class(ENTRY)(**config).eval()
        torch_model.load_state_dict(converters.to_torch(model, flax_variables), strict=True)
        assert_close_outputs(apply(model, flax_variables, x), torch_forward(torch_model, x), ENTRY.tolerance)


def test_sine_embedding_is_a_buffer_with_torch_table():
    import vit_pytorch.cct_3d

    torch.manual_seed(0)
    torch_model = torch_class(ENTRY)(**TINY)
    assert 'classifier.positional_emb' in dict(torch_model.named_buffers())
    variables = init_variables(CCT(**TINY))
    assert 'positional_emb' not in variables['params']['classifier']
    # vit-pytorch builds the table in float32 itself (torch.FloatTensor): the stored buffer, within 16 ulps
    np.testing.assert_allclose(variables['buffers']['classifier']['positional_emb'],
                               vit_pytorch.cct_3d.sinusoidal_embedding(64, 32), rtol=0, atol=1e-6)
    # a loaded table is the one used, as in torch
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    x = video_batch(TINY)
    with torch.no_grad():
        torch_model.classifier.positional_emb.mul_(3.0)
    variables = converters.from_torch(model, torch_model.state_dict())
    assert_close_outputs(apply(model, variables, x), torch_forward(torch_model, x), ENTRY.tolerance)


def flax_torch_shapes(model, x):
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    flat = {path: leaf.shape for path, leaf in traverse_util.flatten_dict(variables).items()}
    return {key: slot.torch_shape for key, slot in rules.slots(flat).items()}


def test_presets_build_torch_parameter_shapes():
    import vit_pytorch.cct_3d

    kwargs = dict(img_size=16, num_frames=2, num_classes=10, n_conv_layers=2, positional_embedding='learnable')
    for preset in cct_3d.__all__:
        torch.manual_seed(0)
        torch_model = getattr(vit_pytorch.cct_3d, preset)(**kwargs)
        model = getattr(cct_3d, preset)(**kwargs)
        assert isinstance(model, CCT)
        expected = {key: tuple(t.shape) for key, t in torch_model.state_dict().items()}
        assert flax_torch_shapes(model, jnp.zeros((1, 2, 16, 16, 3))) == expected, preset


def test_preset_defaults_follow_torch():
    """Default stride max(1, k // 2 - 1) and padding max(1, k // 2); explicit ones win; frames keep theirs."""
    model = cct_3d.cct_7(kernel_size=7, img_size=32)
    assert (model.num_layers, model.num_heads, model.mlp_ratio, model.embedding_dim) == (7, 4, 2, 256)
    assert (model.kernel_size, model.stride, model.padding) == (7, 2, 3)
    assert (model.frame_kernel_size, model.frame_stride, model.frame_padding) == (3, 1, None)
    assert (cct_3d.cct_2().stride, cct_3d.cct_2().padding) == (1, 1)
    assert (cct_3d.cct_2(stride=2, padding=0).stride, cct_3d.cct_2(stride=2, padding=0).padding) == (2, 0)


def test_dropout_keywords_are_fixed_as_in_torch():
    """torch's CCT passes dropout_rate=0., attention_dropout=0.1 and stochastic_depth=0.1 itself."""
    for keyword in ('dropout_rate', 'attention_dropout', 'stochastic_depth'):
        with pytest.raises(TypeError, match=keyword):
            torch_class(ENTRY)(**TINY, **{keyword: 0.2})
        with pytest.raises(TypeError, match=keyword):
            CCT(**TINY, **{keyword: 0.2})
    torch_model = torch_class(ENTRY)(**TINY)
    assert [b.drop_path.drop_prob for b in torch_model.classifier.blocks] == cct.drop_path_rates(0.1, 2)
    assert (torch_model.classifier.dropout.p, torch_model.classifier.blocks[0].self_attn.attn_drop.p) == (0.0, 0.1)
    assert (cct_3d.DROPOUT_RATE, cct_3d.ATTENTION_DROPOUT, CCT().stochastic_depth_rate) == (0.0, 0.1, 0.1)


def test_stochastic_depth_matches_torch_given_the_same_draw(monkeypatch):
    config = {**TINY, 'num_layers': 3, 'stochastic_depth_rate': 0.6}
    model, variables, torch_model = converted_pair(ENTRY, config)
    x = video_batch(config, batch=6)
    # the fixed attention dropout draws from torch's generator, which Flax cannot replay: switched off both sides
    monkeypatch.setattr(cct_3d, 'ATTENTION_DROPOUT', 0.0)
    for block in torch_model.classifier.blocks:
        block.self_attn.attn_drop.p = 0.0

    run = jax.jit(lambda v, key: model.apply(v, x, train=True, rngs={'drop_path': key}, mutable=['intermediates']))
    out, state = run(variables, jax.random.key(3))
    assert not np.allclose(out, run(variables, jax.random.key(4))[0])
    assert not np.allclose(out, apply(model, variables, x))

    # block 0 has drop probability 0 and draws nothing; each later block draws twice (attention, feed-forward)
    blocks = state['intermediates']['classifier']
    assert 'blocks_0' not in blocks
    draws = [np.asarray(u) for i in (1, 2) for u in blocks[f'blocks_{i}']['drop_path']['drop_path_uniforms']]
    assert len(draws) == 4 and all(d.shape == (6, 1, 1) for d in draws)
    kept = np.concatenate([d < 1 - p for d, p in zip(draws, [0.3, 0.3, 0.0, 0.0])])
    assert kept.any() and not kept.all()

    queue = iter(draws)

    def replay(tensor, a=0.0, b=1.0):  # torch's DropPath: torch.zeros(shape).float().uniform_(0, 1)
        return tensor.copy_(torch.from_numpy(next(queue).copy()))

    monkeypatch.setattr(torch.Tensor, 'uniform_', replay)
    torch_model.train()
    torch_out = torch_forward(torch_model, x)
    assert next(queue, None) is None  # torch drew as many times as Flax
    assert_close_outputs(out, torch_out, ENTRY.tolerance)


def test_attention_dropout_only_in_training_and_reproducible():
    model = CCT(**TINY)
    x = video_batch(TINY)
    variables = init_variables(model)
    eval_out = apply(model, variables, x)

    def train(dropout_seed, drop_path_seed=0):
        rngs = {'dropout': jax.random.key(dropout_seed), 'drop_path': jax.random.key(drop_path_seed)}
        return apply(model, variables, x, train=True, rngs=rngs)

    np.testing.assert_array_equal(train(1), train(1))
    assert not np.allclose(train(1), train(2))  # the fixed attention dropout of 0.1, alone
    assert not np.allclose(train(1), eval_out)
    with pytest.raises(Exception, match='dropout'):
        model.apply(variables, x, train=True, rngs={'drop_path': jax.random.key(0)})  # no 'dropout' rng stream


def test_no_position_embedding_takes_larger_inputs_only():
    config = {**TINY, 'positional_embedding': 'none'}
    model, variables, torch_model = converted_pair(ENTRY, config)
    x = images((2, 5, 12, 10, 3))
    assert_close_outputs(apply(model, variables, x), torch_forward(torch_model, x), ENTRY.tolerance)
    small = images((1, 2, 8, 8, 3))
    with pytest.raises(AttributeError):
        torch_forward(torch_model, small)
    with pytest.raises(ValueError, match=r'fewer tokens \(32\) than sequence_length=64'):
        model.apply(variables, small)


def test_position_embedding_fixes_the_input_size():
    model = CCT(**TINY)
    variables = init_variables(model)
    with pytest.raises(ValueError, match='the input gives 80 tokens, but the positional embedding .* has 64'):
        model.apply(variables, images((1, 5, 8, 8, 3)))


@pytest.mark.parametrize('config, message', [
    (dict(positional_embedding='fixed'), "positional_embedding='fixed'"),
    (dict(num_heads=3), 'embedding_dim=32 must be divisible by num_heads=3'),
    (dict(num_frames=0), 'num_frames=0'),
    (dict(frame_stride=0), 'frame_stride=0'),
    (dict(frame_padding=-1), 'frame_padding=-1'),
    (dict(frame_pooling_kernel_size=3, frame_pooling_padding=2),
     'frame_pooling_padding=2 should be at most half of frame_pooling_kernel_size=3'),
    (dict(num_frames=1, frame_kernel_size=4, frame_padding=1),
     r'conv kernel \(4, 3, 3\) .* larger than its padded input \(3, 10, 10\)'),
    (dict(num_frames=2, frame_pooling_kernel_size=3, frame_pooling_padding=0), r'gives an empty output \(0, 4, 4\)'),
])
def test_bad_configs_fail_at_construction(config, message):
    with pytest.raises(ValueError, match=message):
        CCT(**{**TINY, **config})


@pytest.mark.parametrize('shape, message', [
    ((1, 4, 8, 8, 1), r'expected 3 channels \(channels-last input\), got shape \(1, 4, 8, 8, 1\)'),
    ((1, 3, 4, 8, 8), r'expected 3 channels \(channels-last input\), got shape \(1, 3, 4, 8, 8\)'),
    ((1, 8, 8, 3), r'expected videos of shape \(batch, frames, height, width, channels\), got shape \(1, 8, 8, 3\)'),
])
def test_bad_inputs_name_the_shape(shape, message):
    with pytest.raises(ValueError, match=message):
        CCT(**TINY).init(jax.random.key(0), jnp.zeros(shape))
