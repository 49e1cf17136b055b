"""The shared building blocks of vit_flax/layers.py against the torch.nn modules they mirror.

Weights go through the project's converters (a top-level layer maps straight to torch's `weight`, `bias`,
`running_mean`, ...), and torch's weights are randomised away from their init first, so that a swapped or
transposed leaf would show. Flax inputs are channels-last, torch's channels-first. Outputs must agree to
max|flax - torch| <= 2e-5 * max(1, max|torch|), the project's float32 rule, where torch is the module run in
float64 (conftest.float64_reference): the exact answer every float32 implementation rounds.
"""

import functools
import re
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from vit_flax import converters
from tests.conftest import assert_close_outputs, float64_default, float64_reference, nchw
from vit_flax.layers import (
    BatchNorm, ChanLayerNorm, Conv, Embedding, LayerNorm, Linear, add_bias, einsum, gelu, matmul, posemb_sincos_2d,
    residual_boundary,
)
from vit_flax.simple_vit import SimpleViT
from vit_flax.vit import ViT

TOLERANCE = 2e-5


# helpers


def tensor(array):
    return torch.from_numpy(np.ascontiguousarray(array))


def tensor64(array):
    """A float64 tensor of float32 values, for the float64 reference."""
    return tensor(array).double()


def channels_last(array):
    """torch's channels-first layout (a tensor or an array) as channels-last numpy."""
    if isinstance(array, torch.Tensor):
        array = array.detach().numpy()
    return np.moveaxis(array, 1, -1)


def fill_(param: torch.Tensor, values: np.ndarray):
    with torch.no_grad():
        param.copy_(tensor(values.astype(np.float32)))


def randomise_(module: torch.nn.Module, rng):
    """Every parameter N(0, 0.5^2): away from torch's init, and biases nonzero."""
    for param in module.parameters():
        fill_(param, 0.5 * rng.standard_normal(param.shape))


def assert_same_state_dict(exported, state_dict):
    assert sorted(exported) == sorted(state_dict)
    for key, value in state_dict.items():
        assert exported[key].shape == value.shape, key
        np.testing.assert_array_equal(exported[key].numpy(), value.numpy(), err_msg=key)


# Conv

TORCH_CONV = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}

CONV_CASES = [
    # in channels, out channels, input spatial shape, keywords shared by torch and Flax (use_bias -> bias)
    pytest.param(4, 6, (17,), dict(kernel_size=3), id='1d-k3'),
    pytest.param(4, 6, (17,), dict(kernel_size=(5,), stride=2, padding=2), id='1d-tuple-k5-stride2-pad2'),
    pytest.param(4, 6, (16,), dict(kernel_size=(3,), stride=(3,), padding=(1,)), id='1d-tuple-stride-pad'),
    pytest.param(4, 6, (15,), dict(kernel_size=3, padding='same'), id='1d-same-odd'),
    pytest.param(4, 6, (15,), dict(kernel_size=4, padding='same'), id='1d-same-even'),
    pytest.param(4, 6, (15,), dict(kernel_size=4, padding='same', dilation=3), id='1d-same-even-dilated'),
    pytest.param(4, 6, (15,), dict(kernel_size=3, padding='valid', dilation=2), id='1d-valid-dilated'),
    pytest.param(4, 6, (15,), dict(kernel_size=3, padding=1, groups=2, use_bias=False), id='1d-groups2-nobias'),
    pytest.param(4, 8, (15,), dict(kernel_size=5, padding='same', groups=4), id='1d-depthwise-multiplier2'),
    pytest.param(3, 5, (9, 13), dict(kernel_size=3, padding=1), id='2d-k3-pad1-nonsquare'),
    pytest.param(3, 5, (9, 13), dict(kernel_size=(3, 5), stride=(2, 1), padding=(1, 2)), id='2d-tuples'),
    pytest.param(3, 5, (16, 12), dict(kernel_size=4, stride=4), id='2d-patchify'),
    pytest.param(3, 5, (15, 10), dict(kernel_size=4, stride=4, padding='valid'), id='2d-patchify-valid-ragged'),
    pytest.param(3, 5, (9, 12), dict(kernel_size=(2, 4), padding='same'), id='2d-same-even'),
    pytest.param(3, 5, (9, 12), dict(kernel_size=(3, 2), padding='same', dilation=(2, 3)), id='2d-same-dilated'),
    pytest.param(3, 5, (7, 8), dict(kernel_size=1), id='2d-k1'),
    pytest.param(6, 6, (7, 9), dict(kernel_size=3, padding=1, groups=6), id='2d-depthwise'),
    pytest.param(6, 9, (7, 9), dict(kernel_size=3, stride=2, groups=3, use_bias=False), id='2d-groups3-nobias'),
    pytest.param(2, 4, (5, 6, 7), dict(kernel_size=3, padding=1), id='3d-k3-pad1'),
    pytest.param(4, 6, (5, 6, 7), dict(kernel_size=(2, 3, 4), stride=(1, 2, 2), padding=(0, 1, 2), groups=2),
                 id='3d-tuples-groups2'),
    pytest.param(2, 4, (5, 6, 7), dict(kernel_size=(2, 2, 3), padding='same', dilation=(1, 2, 3)),
                 id='3d-same-even-dilated'),
    pytest.param(2, 4, (4, 6, 8), dict(kernel_size=2, stride=2, padding='valid', use_bias=False),
                 id='3d-patchify-nobias'),
    pytest.param(3, 3, (4, 5, 6), dict(kernel_size=3, padding='same', groups=3), id='3d-depthwise-same'),
    pytest.param(6, 6, (9, 8), dict(kernel_size=3, stride=2, padding=1, groups=6, use_bias=False),
                 id='2d-depthwise-stride2'),
    pytest.param(4, 8, (11, 10), dict(kernel_size=3, stride=2, padding=1, groups=4), id='2d-depthwise-multiplier2-stride2'),
    pytest.param(4, 4, (9, 10), dict(kernel_size=(3, 2), padding=(2, 0), dilation=(2, 3), groups=4),
                 id='2d-depthwise-dilated-uneven'),
    pytest.param(3, 5, (7, 8), dict(kernel_size=1, stride=2), id='2d-k1-stride2'),
    pytest.param(3, 5, (7, 8), dict(kernel_size=1, padding=1), id='2d-k1-pad1'),
    pytest.param(3, 5, (4, 5, 6), dict(kernel_size=1, use_bias=False), id='3d-k1-nobias'),
]


@pytest.mark.filterwarnings('ignore:Using padding=.same. with even kernel lengths')
@pytest.mark.parametrize('in_channels, out_channels, spatial, keywords', CONV_CASES)
def test_conv_matches_torch(in_channels, out_channels, spatial, keywords, rng):
    keywords = dict(keywords)
    use_bias = keywords.pop('use_bias', True)
    torch_conv = TORCH_CONV[len(spatial)](in_channels, out_channels, bias=use_bias, **keywords)
    randomise_(torch_conv, rng)
    x = rng.standard_normal((2, *spatial, in_channels)).astype(np.float32)
    model = Conv(out_channels, use_bias=use_bias, **keywords)

    state_dict = torch_conv.state_dict()
    variables = converters.from_torch(model, state_dict, example_inputs=(x,))
    assert_same_state_dict(converters.to_torch(model, variables, example_inputs=(x,)), state_dict)

    # outputs
    y, vjp = jax.vjp(lambda params: model.apply({'params': params}, x), variables['params'])
    exact = float64_reference(torch_conv)
    torch_y = exact(nchw(x))
    assert_close_outputs(y, channels_last(torch_y), TOLERANCE)

    # gradients w.r.t. the weights, for the same random cotangent
    cotangent = rng.standard_normal(y.shape).astype(np.float32)
    (torch_y * nchw(cotangent)).sum().backward()
    (grads,) = vjp(jnp.asarray(cotangent))
    torch_grads = converters.to_torch(model, {'params': grads}, example_inputs=(x,))
    assert sorted(torch_grads) == sorted(name for name, _ in exact.named_parameters())
    for name, param in exact.named_parameters():
        expected = param.grad.numpy()
        np.testing.assert_allclose(
            torch_grads[name].numpy(), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max(), err_msg=name
        )


@pytest.mark.parametrize('features, keywords, shape', [
    pytest.param(6, dict(kernel_size=3, padding=1, groups=6), (2, 9, 8, 6), id='depthwise'),
    pytest.param(12, dict(kernel_size=3, stride=2, groups=6), (2, 9, 8, 6), id='depthwise-multiplier2'),
    pytest.param(5, dict(kernel_size=1), (2, 9, 8, 6), id='pointwise'),
])
def test_depthwise_and_pointwise_conv_bypass_xla_convolution(features, keywords, shape):
    # XLA's CPU convolution is 11-59x slower than fused multiply-adds for depth-wise kernels and slower than a
    # matmul for 1x1 ones (python -m benchmarks.ops): neither may lower to a convolution, forward or backward
    model = Conv(features, **keywords)
    x = jnp.ones(shape)
    variables = model.init(jax.random.key(0), x)
    step = jax.grad(lambda variables, x: model.apply(variables, x).sum(), argnums=(0, 1))
    assert 'conv_general_dilated' not in str(jax.make_jaxpr(step)(variables, x))
    general = Conv(features, **{**keywords, 'kernel_size': 2, 'groups': 1})
    assert 'conv_general_dilated' in str(jax.make_jaxpr(general.apply)(general.init(jax.random.key(0), x), x))
    # one input channel makes groups=1 equal the channels, but that is an ordinary convolution (a 16 x 16 patch
    # embedding of a grayscale image would be 256 shifted copies of it)
    gray = jnp.ones((*shape[:-1], 1))
    single = Conv(features, 3)
    assert 'conv_general_dilated' in str(jax.make_jaxpr(single.apply)(single.init(jax.random.key(0), gray), gray))


def test_depthwise_conv_accumulates_half_precision_in_float32(rng):
    model = Conv(8, 3, padding=1, groups=8, use_bias=False)
    x = rng.standard_normal((2, 12, 12, 8)).astype(np.float32)
    variables = model.init(jax.random.key(0), x)
    exact = np.asarray(model.apply(variables, x))
    half = model.apply(jax.tree.map(lambda v: v.astype(jnp.bfloat16), variables), x.astype(jnp.bfloat16))
    assert half.dtype == jnp.bfloat16
    # the nine products summed in bfloat16 would add up to nine roundings; float32 accumulation rounds once,
    # besides the rounding of the inputs
    inputs_rounded = np.asarray(model.apply(
        jax.tree.map(lambda v: v.astype(jnp.bfloat16).astype(jnp.float32), variables),
        x.astype(jnp.bfloat16).astype(np.float32)))
    np.testing.assert_array_equal(np.asarray(half, np.float32), np.asarray(
        jnp.asarray(inputs_rounded).astype(jnp.bfloat16), np.float32))
    assert np.abs(np.asarray(half, np.float32) - exact).max() < 0.05 * np.abs(exact).max()


HALF_IN_FLOAT32 = [  # (module, how it is called): computed in float32 on half-precision inputs
    pytest.param(Conv(8, 3, padding=1, groups=8, use_bias=False), {}, id='depthwise-conv'),
    pytest.param(Conv(8, 3, stride=2, padding=1, groups=8, use_bias=False), {}, id='depthwise-conv-stride-2'),
    pytest.param(BatchNorm(), {'train': True, 'mutable': ['batch_stats']}, id='batchnorm-train'),
    pytest.param(BatchNorm(), {}, id='batchnorm-eval'),
    pytest.param(ChanLayerNorm(8), {}, id='channel-layernorm'),
]


@pytest.mark.parametrize('model, keywords', HALF_IN_FLOAT32)
def test_half_precision_inputs_are_computed_in_float32_forward_and_backward(model, keywords, rng):
    """The output and the input's gradient are the float32 computation on the half-precision values, rounded once
    to bfloat16: the taps' gradients are summed, and the normalisations' backward reductions run, in float32 (in
    bfloat16 they would round at every step, and XLA's CPU code runs those reductions several times slower)."""
    x = jnp.asarray(rng.standard_normal((2, 12, 12, 8)) * 2 + 1, jnp.bfloat16)
    variables = model.init(jax.random.key(0), x.astype(jnp.float32))
    variables = jax.tree.map(lambda v: v + jnp.asarray(rng.standard_normal(v.shape) * 0.1, v.dtype), variables)
    # the parameters in half precision, BatchNorm's statistics in float32, as the trainer casts them (cast_floats)
    half_variables = {**variables, 'params': jax.tree.map(lambda v: v.astype(jnp.bfloat16), variables['params'])}

    def run(variables, x):
        out = model.apply(variables, x, **keywords)
        return out[0] if keywords.get('mutable') else out

    out, pullback = jax.vjp(lambda x: run(half_variables, x), x)
    wide = jax.tree.map(lambda v: v.astype(jnp.float32), half_variables)
    expected, expected_pullback = jax.vjp(lambda x: run(wide, x), x.astype(jnp.float32))
    assert out.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(expected.astype(jnp.bfloat16), np.float32))
    cotangent = jnp.asarray(rng.standard_normal(out.shape), jnp.bfloat16)
    (gradient,), (expected_gradient,) = pullback(cotangent), expected_pullback(cotangent.astype(jnp.float32))
    assert gradient.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(gradient, np.float32),
                                  np.asarray(expected_gradient.astype(jnp.bfloat16), np.float32))


HALF_PRODUCTS = [  # (what, its spec for numpy, shapes of the operands)
    pytest.param(matmul, 'bni,io->bno', ((3, 5, 40), (40, 24)), id='matmul'),
    pytest.param(functools.partial(einsum, '...id,...jd->...ij'), 'bhid,bhjd->bhij', ((2, 3, 7, 16), (2, 3, 9, 16)),
                 id='attention-logits'),
    pytest.param(functools.partial(einsum, 'bhij,bhjd->bhid'), 'bhij,bhjd->bhid', ((2, 3, 7, 9), (2, 3, 9, 16)),
                 id='attention-values'),
]


@pytest.mark.parametrize('product, spec, shapes', HALF_PRODUCTS)
@pytest.mark.parametrize('dtype', [jnp.bfloat16, jnp.float16])
def test_half_precision_products_accumulate_in_float32_forward_and_backward(product, spec, shapes, dtype, rng):
    """Each of the three products (the output and the two gradients) is the float64 product of the half-precision
    operands rounded once to half precision, within a half unit of it and float32's summation error; all three are
    half x half -> float32 products in the compiled program."""
    a, b = (jnp.asarray(rng.standard_normal(shape) * 0.5, dtype) for shape in shapes)
    out, pullback = jax.vjp(product, a, b)
    cotangent = jnp.asarray(rng.standard_normal(out.shape), dtype)
    a_grad, b_grad = pullback(cotangent)
    assert out.dtype == a_grad.dtype == b_grad.dtype == dtype

    def wide(x, absolute=False):
        x = np.asarray(x, np.float64)
        return np.abs(x) if absolute else x

    spec_a, spec_b, spec_out = spec.replace('->', ',').split(',')
    products = {'output': (out, f'{spec_a},{spec_b}->{spec_out}', a, b),
                'first gradient': (a_grad, f'{spec_out},{spec_b}->{spec_a}', cotangent, b),
                'second gradient': (b_grad, f'{spec_a},{spec_out}->{spec_b}', a, cotangent)}
    unit = 2.0 ** -(jnp.finfo(dtype).nmant + 1)  # half a unit in the last place, relative
    for name, (got, numpy_spec, x, y) in products.items():
        exact = np.einsum(numpy_spec, wide(x), wide(y))
        bound = unit * np.abs(exact) + 2.0 ** -20 * np.einsum(numpy_spec, wide(x, True), wide(y, True))
        assert np.all(np.abs(wide(got) - exact) <= bound), name

    half = {jnp.bfloat16: 'bf16', jnp.float16: 'f16'}[dtype]
    text = jax.jit(lambda a, b, cotangent: jax.vjp(product, a, b)).lower(a, b, cotangent).as_text()
    types = re.findall(r'dot_general.*: \(tensor<[0-9x]+x(\w+)>, tensor<[0-9x]+x(\w+)>\) -> tensor<[0-9x]+x(\w+)>',
                       text)
    assert types == [(half, half, 'f32')]  # the forward product
    text = jax.jit(lambda a, b, cotangent: jax.vjp(product, a, b)[1](cotangent)).lower(a, b, cotangent).as_text()
    types = re.findall(r'dot_general.*: \(tensor<[0-9x]+x(\w+)>, tensor<[0-9x]+x(\w+)>\) -> tensor<[0-9x]+x(\w+)>',
                       text)
    assert types == [(half, half, 'f32')] * 2  # the backward products (the forward one is not needed)


@pytest.mark.parametrize('dtype', [jnp.bfloat16, jnp.float16])
def test_half_precision_bias_gradient_accumulates_in_float32(dtype, rng):
    """A half-precision layer's bias: the output is `y + bias` in half precision, the input's gradient is the
    cotangent itself, and the bias's is the float64 sum of the cotangent rounded once to half precision (float32
    accumulation), computed as a half x half -> float32 product, not a reduction of float32 copies."""
    y = jnp.asarray(rng.standard_normal((3, 5, 24)), dtype)
    bias = jnp.asarray(rng.standard_normal(24), jnp.float32)  # float32 parameters, cast to the compute dtype
    out, pullback = jax.vjp(add_bias, y, bias)
    np.testing.assert_array_equal(out, y + bias.astype(dtype))
    cotangent = jnp.asarray(rng.standard_normal(out.shape), dtype)
    y_grad, bias_grad = pullback(cotangent)
    np.testing.assert_array_equal(y_grad, cotangent)
    assert bias_grad.dtype == jnp.float32
    exact = np.asarray(cotangent, np.float64).sum((0, 1))
    unit = 2.0 ** -(jnp.finfo(dtype).nmant + 1)
    bound = unit * np.abs(exact) + 2.0 ** -20 * np.abs(np.asarray(cotangent, np.float64)).sum((0, 1))
    assert np.all(np.abs(np.asarray(bias_grad, np.float64) - exact) <= bound)
    half = {jnp.bfloat16: 'bf16', jnp.float16: 'f16'}[dtype]
    text = jax.jit(lambda y, bias, cotangent: jax.vjp(add_bias, y, bias)[1](cotangent)).lower(
        y, bias, cotangent).as_text()
    types = re.findall(r'dot_general.*: \(tensor<[0-9x]+x(\w+)>, tensor<[0-9x]+x(\w+)>\) -> tensor<[0-9x]+x(\w+)>',
                       text)
    assert types == [(half, half, 'f32')] and 'stablehlo.reduce' not in text


def test_bias_of_other_dtypes_is_added_as_jnp_does(rng):
    y = jnp.asarray(rng.standard_normal((3, 5, 24)), jnp.float32)
    bias = jnp.asarray(rng.standard_normal(24), jnp.float32)
    np.testing.assert_array_equal(add_bias(y, bias), y + bias)
    gradient = jax.grad(lambda y, bias: (add_bias(y, bias) ** 2).sum(), argnums=(0, 1))(y, bias)
    expected = jax.grad(lambda y, bias: ((y + bias) ** 2).sum(), argnums=(0, 1))(y, bias)
    for got, want in zip(gradient, expected):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize('spec, shapes', [
    pytest.param('...id,...jd->...ij', ((1, 3, 7, 16), (2, 3, 9, 16)), id='broadcast-under-ellipsis'),
    pytest.param('ii,i->i', ((4, 4), (4,)), id='diagonal'),
    pytest.param('ij,jk', ((4, 5), (5, 6)), id='implicit-output'),
    pytest.param('ij,kl->ik', ((4, 5), (6, 7)), id='index-summed-within-one-operand'),
])
def test_other_half_precision_einsums_are_jnp_einsum(spec, shapes, rng):
    a, b = (jnp.asarray(rng.standard_normal(shape), jnp.bfloat16) for shape in shapes)
    np.testing.assert_array_equal(einsum(spec, a, b), jnp.einsum(spec, a, b))
    gradient = jax.grad(lambda a, b: einsum(spec, a, b).astype(jnp.float32).sum(), argnums=(0, 1))
    expected = jax.grad(lambda a, b: jnp.einsum(spec, a, b).astype(jnp.float32).sum(), argnums=(0, 1))
    for got, want in zip(gradient(a, b), expected(a, b)):
        np.testing.assert_array_equal(got, want)


def test_matmul_of_other_dtypes_is_jnp_dot(rng):
    x = jnp.asarray(rng.standard_normal((4, 6)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((6, 3)), jnp.float32)
    np.testing.assert_array_equal(matmul(x, kernel), jnp.dot(x, kernel))
    mixed = matmul(x.astype(jnp.bfloat16), kernel)  # mixed dtypes promote as jnp.dot does
    assert mixed.dtype == jnp.float32
    np.testing.assert_array_equal(mixed, jnp.dot(x.astype(jnp.bfloat16), kernel))


@pytest.mark.parametrize('keywords, shape, words', [
    pytest.param(dict(features=8, kernel_size=3, groups=4), (1, 9, 6), ['groups=4', '(6)', '(8)'],
                 id='groups-vs-in'),
    pytest.param(dict(features=6, kernel_size=3, groups=4), (1, 9, 8), ['groups=4', '(8)', '(6)'],
                 id='groups-vs-out'),
    pytest.param(dict(features=4, kernel_size=(3, 3)), (1, 9, 4), ['kernel_size=(3, 3)', '2 entries', '1 spatial'],
                 id='kernel-tuple'),
    pytest.param(dict(features=4, kernel_size=3, stride=(1, 2, 1)), (1, 9, 9, 4),
                 ['stride=(1, 2, 1)', '3 entries', '2 spatial'], id='stride-tuple'),
    pytest.param(dict(features=4, kernel_size=3, padding=(1,)), (1, 5, 5, 5, 4),
                 ['padding=(1,)', '1 entries', '3 spatial'], id='padding-tuple'),
    pytest.param(dict(features=4, kernel_size=3, dilation=(1, 2)), (1, 5, 5, 5, 4),
                 ['dilation=(1, 2)', '2 entries', '3 spatial'], id='dilation-tuple'),
    pytest.param(dict(features=4, kernel_size=3), (2, 4), ['(2, 4)'], id='rank-2'),
    pytest.param(dict(features=4, kernel_size=3), (1, 2, 3, 4, 5, 4), ['(1, 2, 3, 4, 5, 4)'], id='rank-6'),
])
def test_conv_errors_name_the_offending_values(keywords, shape, words):
    with pytest.raises(ValueError) as error:
        Conv(**keywords).init(jax.random.key(0), jnp.zeros(shape))
    for word in words:
        assert word in str(error.value), (word, str(error.value))


@pytest.mark.parametrize('padding', ['SAME', 'full'])
def test_conv_unknown_padding_string_is_named(padding):
    with pytest.raises(ValueError, match=repr(padding)):
        Conv(4, 3, padding=padding).init(jax.random.key(0), jnp.zeros((1, 8, 8, 4)))


def test_conv_groups_must_be_positive():
    with pytest.raises(ValueError, match='groups=0 must be a positive integer'):
        Conv(4, 3, groups=0).init(jax.random.key(0), jnp.zeros((1, 8, 8, 4)))


# BatchNorm

BATCHNORM_CASES = [
    # torch class, torch (channels-first) input shape
    pytest.param(torch.nn.BatchNorm1d, (4, 5), id='1d-BC'),
    pytest.param(torch.nn.BatchNorm1d, (4, 5, 7), id='1d-BCL'),
    pytest.param(torch.nn.BatchNorm2d, (2, 3, 6, 5), id='2d'),
    pytest.param(torch.nn.BatchNorm3d, (2, 3, 4, 5, 3), id='3d'),
]


def random_batchnorm(torch_class, channels, rng, momentum=0.1):
    torch_bn = torch_class(channels, momentum=momentum)
    fill_(torch_bn.weight, rng.uniform(0.5, 2.0, channels))
    fill_(torch_bn.bias, rng.standard_normal(channels))
    fill_(torch_bn.running_mean, 2.0 * rng.standard_normal(channels))
    fill_(torch_bn.running_var, rng.uniform(0.5, 3.0, channels))
    return torch_bn


def batch(shape, rng):
    """A channels-first batch with a nonzero mean and per-channel spread, and its channels-last twin."""
    x = (3.0 + 2.0 * rng.standard_normal(shape) * rng.uniform(0.5, 2.0, (1, shape[1]) + (1,) * (len(shape) - 2)))
    x = x.astype(np.float32)
    return x, channels_last(x)


@pytest.mark.parametrize('torch_class, shape', BATCHNORM_CASES)
def test_batchnorm_eval_matches_torch(torch_class, shape, rng):
    torch_bn = random_batchnorm(torch_class, shape[1], rng).eval()
    x, flax_x = batch(shape, rng)
    model = BatchNorm()
    variables = converters.from_torch(model, torch_bn.state_dict(), example_inputs=(flax_x,))
    np.testing.assert_array_equal(variables['batch_stats']['var'], torch_bn.running_var.numpy())
    assert_close_outputs(model.apply(variables, flax_x), channels_last(float64_reference(torch_bn)(tensor64(x))),
                         TOLERANCE)


@pytest.mark.parametrize('momentum', [0.1, 0.3])
@pytest.mark.parametrize('torch_class, shape', BATCHNORM_CASES)
def test_batchnorm_train_step_matches_torch(torch_class, shape, momentum, rng):
    torch_bn = random_batchnorm(torch_class, shape[1], rng, momentum)
    x, flax_x = batch(shape, rng)
    model = BatchNorm(momentum=momentum)
    variables = converters.from_torch(model, torch_bn.state_dict(), example_inputs=(flax_x,))

    exact = float64_reference(torch_bn).train()
    torch_y = channels_last(exact(tensor64(x)))
    y, updates = model.apply(variables, flax_x, train=True, mutable=['batch_stats'])
    assert_close_outputs(y, torch_y, TOLERANCE)
    # torch updates the running variance with the unbiased batch variance
    assert_close_outputs(updates['batch_stats']['mean'], exact.running_mean, TOLERANCE)
    assert_close_outputs(updates['batch_stats']['var'], exact.running_var, TOLERANCE)

    # export: num_batches_tracked is regenerated and the state dict loads strictly into a fresh torch module
    exported = converters.to_torch(model, {**variables, **updates}, example_inputs=(flax_x,))
    assert exported['num_batches_tracked'].dtype == torch.int64
    assert exported['num_batches_tracked'].shape == ()
    assert sorted(exported) == sorted(torch_bn.state_dict())
    fresh = torch_class(shape[1], momentum=momentum)
    fresh.load_state_dict(exported, strict=True)  # a float32 module, as users load the export
    fresh.eval()
    assert_close_outputs(model.apply({**variables, **updates}, flax_x),
                         channels_last(float64_reference(fresh)(tensor64(x))), TOLERANCE)


# Embedding, Linear, LayerNorm


def test_embedding_matches_torch_both_ways(rng):
    ids = rng.integers(0, 10, (3, 7)).astype(np.int32)
    model = Embedding(10, 6)

    torch_embedding = torch.nn.Embedding(10, 6)
    randomise_(torch_embedding, rng)
    variables = converters.from_torch(model, torch_embedding.state_dict(), example_inputs=(ids,))
    # a lookup has no round-off: torch's float32 run is exact, and so must ours be
    np.testing.assert_array_equal(model.apply(variables, ids), torch_embedding(tensor(ids).long()).detach().numpy())

    flax_variables = model.init(jax.random.key(1), ids)
    fresh = torch.nn.Embedding(10, 6)
    fresh.load_state_dict(converters.to_torch(model, flax_variables, example_inputs=(ids,)), strict=True)
    np.testing.assert_array_equal(fresh(tensor(ids).long()).detach().numpy(), model.apply(flax_variables, ids))


@pytest.mark.filterwarnings('ignore:Initializing zero-element tensors is a no-op')
@pytest.mark.parametrize('use_bias', [True, False], ids=['bias', 'nobias'])
@pytest.mark.parametrize('features', [7, 0])
def test_linear_matches_torch_both_ways(features, use_bias, rng):
    x = rng.standard_normal((2, 5, 8)).astype(np.float32)  # (batch, seq, dim)
    model = Linear(features, use_bias=use_bias)

    torch_linear = torch.nn.Linear(8, features, bias=use_bias)
    randomise_(torch_linear, rng)
    variables = converters.from_torch(model, torch_linear.state_dict(), example_inputs=(x,))
    assert variables['params']['kernel'].shape == (8, features)
    assert_close_outputs(model.apply(variables, x), float64_reference(torch_linear)(tensor64(x)), TOLERANCE)

    flax_variables = model.init(jax.random.key(1), x)
    fresh = torch.nn.Linear(8, features, bias=use_bias)
    fresh.load_state_dict(converters.to_torch(model, flax_variables, example_inputs=(x,)), strict=True)
    assert_close_outputs(model.apply(flax_variables, x), float64_reference(fresh)(tensor64(x)), TOLERANCE)


@pytest.mark.parametrize('shape, spread', [((2, 9, 48), 2.0), ((2, 9, 768), 2.0), ((3, 768), 1.0)])
def test_layernorm_matches_torch_on_raw_pixels(shape, spread, rng):
    # Raw-pixel patches (vit-pytorch's patch LayerNorm, patch_dim = 3 * p * p): a large mean, a small spread.
    # Flax's fast variance E[x^2] - E[x]^2 cancels catastrophically here; the exact two-pass variance does not.
    # (Flatter rows reach float32's limit at this offset: the float32 row mean, a sum of values near 200 divided by
    # the row length, is a few ulp(200) = 1.5e-5 off, and the output sees that divided by the spread. At spread 0.5
    # on 48-wide rows this layer misses the float64 answer by 2.4e-5 in the tolerance's units, torch's float32 by
    # 1.4e-5; on these rows it stays within 1e-5.)
    x = (200.0 + spread * rng.standard_normal(shape)).astype(np.float32)
    torch_norm = torch.nn.LayerNorm(shape[-1])
    fill_(torch_norm.weight, rng.uniform(0.5, 1.5, shape[-1]))
    fill_(torch_norm.bias, 0.5 * rng.standard_normal(shape[-1]))
    torch_y = float64_reference(torch_norm)(tensor64(x)).detach().numpy()
    variables = converters.from_torch(LayerNorm(), torch_norm.state_dict(), example_inputs=(x,))
    assert_close_outputs(LayerNorm().apply(variables, x), torch_y, TOLERANCE)

    # the setting matters: with fast variance the same layer misses by far more than the tolerance (25x or more)
    fast = nn.LayerNorm(epsilon=1e-5, use_fast_variance=True)
    with pytest.raises(AssertionError, match=r'max \|flax - torch\|'):
        assert_close_outputs(fast.apply(variables, x), torch_y, TOLERANCE)


# softmax


@pytest.mark.parametrize('axis', [-1, -2, 0, 2])
def test_softmax_and_its_derivatives_are_jax_nn_softmaxs(axis, rng):
    from vit_flax.layers import softmax

    x = rng.standard_normal((3, 4, 6)).astype(np.float32)
    x[0, 1, :2] = np.finfo(np.float32).min  # masked positions, as attention writes them
    np.testing.assert_array_equal(softmax(x, axis), jax.nn.softmax(x, axis=axis))
    with jax.enable_x64(True):
        x, t = x.astype(np.float64), rng.standard_normal(x.shape)
        ours, theirs = (lambda x: softmax(x, axis)), (lambda x: jax.nn.softmax(x, axis=axis))
        for derivative in (lambda f: jax.jvp(f, (x,), (t,))[1],
                           lambda f: jax.grad(lambda x: (f(x) * t).sum())(x),
                           lambda f: jax.hessian(lambda x: f(x)[0, 0, 0] + f(x)[1, 2, 3])(x)):
            np.testing.assert_allclose(derivative(ours), derivative(theirs), rtol=1e-12, atol=1e-15)


def test_softmax_backward_sums_rows_with_a_matrix_product():
    # the point of layers.softmax: XLA's CPU code fuses jax.nn.softmax's row-sum reduction into the matmul before it,
    # up to 1.7x slower for an attention's forward and backward (python -m benchmarks.ops)
    from vit_flax.layers import softmax

    x = jnp.ones((2, 3, 5, 7))
    grad = lambda f: jax.make_jaxpr(jax.grad(lambda x: (f(x) ** 2).sum()))(x)
    assert 'dot_general' in str(grad(lambda x: softmax(x, -1)))
    assert 'dot_general' not in str(grad(lambda x: jax.nn.softmax(x, axis=-1)))


# gelu and the sin-cos position embedding


def test_gelu_is_torch_exact_gelu(rng):
    x = np.concatenate([np.linspace(-8, 8, 4001), 3 * rng.standard_normal(1000)]).astype(np.float32)
    exact = float64_reference(torch.nn.GELU())(tensor64(x))
    assert_close_outputs(gelu(jnp.asarray(x)), exact, TOLERANCE)
    # and not the tanh approximation, which differs by ~5e-4 somewhere in this range
    approx = np.asarray(nn.gelu(jnp.asarray(x), approximate=True))
    assert np.abs(approx - exact.numpy()).max() > 1e-4


@pytest.fixture(scope='module')
def torch_posemb():
    """simple_vit's posemb_sincos_2d in float64: it builds its frequencies in torch's default dtype."""
    posemb = converters.import_vit_pytorch('vit_pytorch.simple_vit').posemb_sincos_2d

    def float64_posemb(h, w, dim, temperature=10000):
        with float64_default():
            return posemb(h, w, dim, temperature, dtype=torch.float64)

    return float64_posemb


@pytest.mark.parametrize('h, w, dim, temperature', [
    (1, 1, 8, 10000),
    (4, 4, 8, 10000),
    (3, 5, 16, 10000),
    (7, 2, 64, 10000),
    (14, 14, 384, 10000),
    (8, 16, 1024, 10000),
    (6, 4, 32, 100),
])
def test_posemb_sincos_2d_matches_simple_vit(h, w, dim, temperature, torch_posemb):
    y = posemb_sincos_2d(h, w, dim, temperature)
    assert y.dtype == np.float32 and y.shape == (h * w, dim)
    assert_close_outputs(y, torch_posemb(h, w, dim, temperature), TOLERANCE)


@pytest.mark.parametrize('dim, words', [(6, ['multiple of 4', 'dim=6']), (30, ['multiple of 4', 'dim=30']),
                                        (4, ['dim >= 8', 'dim=4']), (0, ['dim >= 8', 'dim=0'])])
def test_posemb_sincos_2d_errors(dim, words):
    with pytest.raises(ValueError) as error:
        posemb_sincos_2d(4, 4, dim)
    for word in words:
        assert word in str(error.value), (word, str(error.value))


def test_posemb_sincos_2d_dim_4_is_nan_in_torch(torch_posemb):
    # why dim=4 is refused rather than mirrored: torch divides by dim // 4 - 1 = 0
    assert torch.isnan(torch_posemb(2, 2, 4)).any()


def fused_adds_in_backward(model_class, depth: int) -> int:
    """How many additions XLA's optimised CPU program for a tiny model's gradient computes: its backward work."""
    model = model_class(image_size=16, patch_size=8, num_classes=4, dim=16, depth=depth, heads=2, mlp_dim=32,
                        dim_head=8)
    images = jnp.ones((2, 16, 16, 3))
    params = jax.eval_shape(model.init, jax.random.key(0), images)['params']
    grad = jax.jit(jax.grad(lambda p: model.apply({'params': p}, images).sum()))
    return sum(' add(' in line for line in grad.lower(params).compile().as_text().splitlines())


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason="the marks act on XLA's CPU fusion only")
@pytest.mark.parametrize('model_class', [ViT, pytest.param(SimpleViT, marks=pytest.mark.slow)],
                         ids=['vit', 'simple_vit'])
def test_residual_boundaries_keep_the_backward_pass_linear_in_depth(model_class, monkeypatch):
    """Without `residual_boundary`, XLA's CPU fusion recomputes the running sum of the residual gradient inside every
    layer's backward fusions: the additions grow with depth squared. With it, each layer adds the same number."""
    def growth():  # the additions each further layer brings, from depth 1 to 4
        return np.diff([fused_adds_in_backward(model_class, depth) for depth in (1, 2, 3, 4)])

    steps = growth()
    assert len(set(steps)) == 1, steps
    module = sys.modules[model_class.__module__]
    monkeypatch.setattr(module, 'residual_boundary', lambda x: x)
    steps = growth()
    assert (np.diff(steps) > 0).all(), steps  # the quadratic growth the marks remove, so this test can fail


def test_residual_boundary_is_the_identity_for_every_transformation():
    x = jax.random.normal(jax.random.key(0), (2, 3, 4))
    t = jax.random.normal(jax.random.key(1), (2, 3, 4))
    out, tangent = jax.jvp(residual_boundary, (x,), (t,))
    np.testing.assert_array_equal(out, x)
    np.testing.assert_array_equal(tangent, t)
    f = lambda x: jnp.sum(jnp.sin(residual_boundary(x)) ** 2)
    plain = lambda x: jnp.sum(jnp.sin(x) ** 2)
    np.testing.assert_allclose(jax.jit(jax.grad(f))(x), jax.grad(plain)(x), rtol=1e-6)
    # forward over reverse (Hessian-vector products) and batching
    np.testing.assert_allclose(jax.jvp(jax.grad(f), (x,), (t,))[1], jax.jvp(jax.grad(plain), (x,), (t,))[1],
                               rtol=1e-5)
    np.testing.assert_allclose(jax.vmap(jax.grad(f))(x), jax.vmap(jax.grad(plain))(x), rtol=1e-6)
    # a NaN in the primal takes the conditional's other branch, which returns the tangent too
    nan = x.at[0, 0, 0].set(jnp.nan)
    np.testing.assert_array_equal(jax.jit(lambda x, t: jax.jvp(residual_boundary, (x,), (t,))[1])(nan, t), t)
