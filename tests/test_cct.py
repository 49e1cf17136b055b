"""CCT behaviour beyond the registry configs: multi-token parity, presets, stochastic depth, quirks, bad input."""

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
from vit_flax import cct
from vit_flax.cct import CCT

ENTRY = parity.BY_NAME['cct.CCT']
TINY = dict(img_size=16, embedding_dim=32, kernel_size=3, stride=1, padding=1, num_layers=2, num_heads=4,
            mlp_ratio=2, num_classes=10)

# Several tokens each (the registry's configs have one, see its comment): every embedding type, conv stacks,
# kernel / stride / padding and pooling variants, rectangular images.
MULTI_TOKEN = [
    TINY,
    dict(img_size=(12, 20), embedding_dim=24, n_input_channels=1, n_conv_layers=2, kernel_size=5, stride=2,
         padding=2, pooling_kernel_size=2, pooling_stride=1, pooling_padding=0, num_layers=1, num_heads=3,
         mlp_ratio=1.5, num_classes=7, positional_embedding='learnable'),
    dict(img_size=10, embedding_dim=20, n_input_channels=2, n_conv_layers=0, kernel_size=4, stride=3, padding=0,
         pooling_kernel_size=3, pooling_stride=1, pooling_padding=1, num_layers=2, num_heads=5, mlp_ratio=1,
         num_classes=3, positional_embedding='none'),
    dict(img_size=(32, 24), embedding_dim=16, num_layers=2, num_heads=1, mlp_ratio=2, num_classes=5,
         dropout_rate=0.1, stochastic_depth_rate=0.3),
]


def image_batch(config, batch=2, seed=0):
    height, width = cct.pair(config['img_size'])
    return images((batch, height, width, config.get('n_input_channels', 3)), seed)


@pytest.mark.parametrize('index', range(len(MULTI_TOKEN)))
def test_multi_token_parity_and_gradients(index):
    config = MULTI_TOKEN[index]
    x = image_batch(config, seed=index)

    # torch -> Flax
    model, variables, torch_model = converted_pair(ENTRY, config, seed=index)
    assert_close_outputs(apply(model, variables, x), torch_forward(torch_model, x), ENTRY.tolerance)

    # gradients, against the largest gradient of all: attention_pool.bias's true gradient is zero (a shift of all
    # the softmax logits), so ours holds round-off there, which a per-tensor scale cannot compare
    weights = images((2, config['num_classes']), seed=7)
    exact = float64_reference(torch_model)
    (exact(nchw(x)) * torch.from_numpy(weights)).sum().backward()
    grads = jax.jit(jax.grad(lambda p: (model.apply({'params': p}, x) * weights).sum()))(variables['params'])
    flax_grads = converters.to_torch(model, {'params': grads}, as_numpy=True)
    expected = {name: np.zeros(p.shape) if p.grad is None else p.grad.numpy() for name, p in exact.named_parameters()}
    scale = max(float(np.abs(g).max(initial=0.0)) for g in expected.values())
    for name, grad in expected.items():
        np.testing.assert_allclose(flax_grads[name], grad, rtol=1e-4, atol=1e-5 * scale, err_msg=name)
    assert truly_zero(expected['classifier.attention_pool.bias'], scale)
    assert np.abs(flax_grads['classifier.attention_pool.bias']).max() <= 1e-6 * scale
    if config.get('positional_embedding', 'sine') == 'sine':  # requires_grad=False in torch: stopped here
        assert exact.classifier.positional_emb.grad is None
        np.testing.assert_array_equal(flax_grads['classifier.positional_emb'], 0.0)

    # Flax -> torch, strict (Flax's own init, moved off its zero biases and LayerNorm ones)
    if index == 0:
        flax_variables = jax.tree_util.tree_map(lambda a: a + 0.1 * jnp.asarray(images(a.shape, seed=a.size)),
                                                init_variables(model, seed=index))
        torch_model = torch_class(ENTRY)(**config).eval()
        torch_model.load_state_dict(converters.to_torch(model, flax_variables), strict=True)
        assert_close_outputs(apply(model, flax_variables, x), torch_forward(torch_model, x), ENTRY.tolerance)


def flax_torch_shapes(model, x):
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    flat = {path: leaf.shape for path, leaf in traverse_util.flatten_dict(variables).items()}
    return {key: slot.torch_shape for key, slot in rules.slots(flat).items()}


@pytest.mark.parametrize('preset', cct.__all__)
def test_presets_build_torch_parameter_shapes(preset):
    import vit_pytorch.cct

    kwargs = dict(img_size=32, num_classes=10, n_conv_layers=2, positional_embedding='learnable')
    torch.manual_seed(0)
    torch_model = getattr(vit_pytorch.cct, preset)(**kwargs)
    model = getattr(cct, preset)(**kwargs)
    assert isinstance(model, CCT)
    expected = {key: tuple(t.shape) for key, t in torch_model.state_dict().items()}
    assert flax_torch_shapes(model, jnp.zeros((1, 32, 32, 3))) == expected


def test_preset_defaults_follow_torch():
    """Default stride max(1, k // 2 - 1) and padding max(1, k // 2); explicit ones win."""
    model = cct.cct_7(kernel_size=7)
    assert (model.num_layers, model.num_heads, model.mlp_ratio, model.embedding_dim) == (7, 4, 2, 256)
    assert (model.kernel_size, model.stride, model.padding) == (7, 2, 3)
    assert (cct.cct_2().stride, cct.cct_2().padding) == (1, 1)
    assert (cct.cct_2(stride=2, padding=0).stride, cct.cct_2(stride=2, padding=0).padding) == (2, 0)


def test_sine_embedding_and_drop_rates_follow_torch():
    import vit_pytorch.cct

    # vit-pytorch builds the table in float32 itself (torch.FloatTensor): the stored init table, within 16 ulps
    for n, dim in [(1, 8), (17, 32), (49, 20)]:
        np.testing.assert_allclose(cct.sinusoidal_embedding(n, dim), vit_pytorch.cct.sinusoidal_embedding(n, dim),
                                   rtol=0, atol=1e-6)
    # vit-pytorch's drop rates, torch.linspace in float32: the float32 nearest each exact rate (torch's float32 kernel
    # rounds some of them either way by the CPU's SIMD width)
    for rate, n in [(0.1, 0), (0.1, 1), (0.1, 7), (0.3, 12), (0.7, 5), (0.1, 9), (0.37, 15), (0.9, 40)]:
        exact = torch.linspace(0, np.float32(rate).item(), n, dtype=torch.float64)
        assert cct.drop_path_rates(rate, n) == [v.item() for v in exact.float()], (rate, n)

    variables = init_variables(CCT(**TINY))  # the sine init is torch's table, a fixed parameter
    np.testing.assert_allclose(variables['params']['classifier']['positional_emb'],
                               vit_pytorch.cct.sinusoidal_embedding(64, 32), rtol=0, atol=1e-6)


def test_stochastic_depth_matches_torch_given_the_same_draw(monkeypatch):
    config = {**TINY, 'num_layers': 3, 'stochastic_depth_rate': 0.6, 'dropout_rate': 0.0, 'attention_dropout': 0.0}
    model, variables, torch_model = converted_pair(ENTRY, config)
    x = image_batch(config, batch=6)

    run = jax.jit(lambda v, key: model.apply(v, x, train=True, rngs={'drop_path': key}, mutable=['intermediates']))
    out, state = run(variables, jax.random.key(3))
    again, _ = run(variables, jax.random.key(3))
    np.testing.assert_array_equal(out, again)
    assert not np.allclose(out, run(variables, jax.random.key(4))[0])
    assert not np.allclose(out, apply(model, variables, x))
    with pytest.raises(Exception, match='drop_path'):
        model.apply(variables, x, train=True)  # no 'drop_path' rng stream given

    # block 0 has drop probability 0 and draws nothing; each later block draws twice (attention, feed-forward)
    blocks = state['intermediates']['classifier']
    assert 'blocks_0' not in blocks
    draws = [np.asarray(u) for i in (1, 2) for u in blocks[f'blocks_{i}']['drop_path']['drop_path_uniforms']]
    assert len(draws) == 4 and all(d.shape == (6, 1, 1) for d in draws)
    keep_probs = [1 - p for p in cct.drop_path_rates(0.6, 3)[1:] for _ in range(2)]
    kept = np.concatenate([d < k for d, k in zip(draws, keep_probs)])
    assert kept.any() and not kept.all()

    queue = iter(draws)

    def replay(tensor, a=0.0, b=1.0):  # torch's DropPath: torch.zeros(shape).float().uniform_(0, 1)
        return tensor.copy_(torch.from_numpy(next(queue).copy()))

    monkeypatch.setattr(torch.Tensor, 'uniform_', replay)
    torch_model.train()
    torch_out = torch_forward(torch_model, x)
    assert next(queue, None) is None  # torch drew as many times as Flax
    assert_close_outputs(out, torch_out, ENTRY.tolerance)


def test_dropout_only_in_training_and_reproducible():
    config = {**TINY, 'num_layers': 1}
    model = CCT(**{**config, 'dropout_rate': 0.3, 'attention_dropout': 0.3, 'stochastic_depth_rate': 0.0})
    x = image_batch(config)
    variables = init_variables(model)
    eval_out = apply(model, variables, x)
    np.testing.assert_array_equal(eval_out, apply(CCT(**config), variables, x))

    train = lambda seed: apply(model, variables, x, train=True, rngs={'dropout': jax.random.key(seed)})
    np.testing.assert_array_equal(train(1), train(1))
    assert not np.allclose(train(1), train(2))
    assert not np.allclose(train(1), eval_out)
    with pytest.raises(Exception, match='dropout'):
        model.apply(variables, x, train=True)  # no 'dropout' rng stream given


def test_no_position_embedding_takes_larger_inputs_only():
    config = {**TINY, 'positional_embedding': 'none'}
    model, variables, torch_model = converted_pair(ENTRY, config)
    x = images((2, 24, 20, 3))
    assert_close_outputs(apply(model, variables, x), torch_forward(torch_model, x), ENTRY.tolerance)
    small = images((1, 8, 16, 3))
    with pytest.raises(AttributeError):
        torch_forward(torch_model, small)
    with pytest.raises(ValueError, match=r'fewer tokens \(32\) than sequence_length=64'):
        model.apply(variables, small)


def test_position_embedding_fixes_the_input_size():
    model, variables, _ = converted_pair(ENTRY, TINY)
    with pytest.raises(ValueError, match='the input gives 80 tokens, but the positional embedding .* has 64'):
        model.apply(variables, images((1, 16, 20, 3)))


def test_num_classes_zero_gives_empty_logits():
    model, variables, torch_model = converted_pair(ENTRY, {**TINY, 'num_classes': 0})
    x = image_batch(TINY)
    out = apply(model, variables, x)
    assert out.shape == (2, 0)
    assert_close_outputs(out, torch_forward(torch_model, x), ENTRY.tolerance)


@pytest.mark.parametrize('config, message', [
    (dict(positional_embedding='fixed'), "positional_embedding='fixed'"),
    (dict(num_heads=3), 'embedding_dim=32 must be divisible by num_heads=3'),
    (dict(num_heads=0), 'num_heads=0'),
    (dict(stride=0), 'stride=0'),
    (dict(pooling_stride=0), 'pooling_stride=0'),
    (dict(pooling_padding=2), 'pooling_padding=2 should be at most half of pooling_kernel_size=3'),
    (dict(num_classes=-1), 'num_classes=-1'),
    (dict(n_input_channels=0), 'n_input_channels=0'),
    (dict(img_size=2, kernel_size=7, padding=2), r'kernel_size=7 is larger than its padded input \(6, 6\)'),
    (dict(img_size=4, n_conv_layers=3, kernel_size=1, padding=0, stride=2, pooling_kernel_size=2,
          pooling_padding=0), r'gives an empty output \(0, 0\)'),
])
def test_bad_configs_fail_at_construction(config, message):
    with pytest.raises(ValueError, match=message):
        CCT(**{**TINY, **config})


@pytest.mark.parametrize('shape, message', [
    ((1, 16, 16, 1), r'expected 3 channels \(channels-last input\), got shape \(1, 16, 16, 1\)'),
    ((1, 3, 16, 16), r'expected 3 channels \(channels-last input\), got shape \(1, 3, 16, 16\)'),
    ((16, 16, 3), r'expected images of shape \(batch, height, width, channels\), got shape \(16, 16, 3\)'),
])
def test_bad_inputs_name_the_shape(shape, message):
    with pytest.raises(ValueError, match=message):
        CCT(**TINY).init(jax.random.key(0), jnp.zeros(shape))
