"""Single operations of the training steps: vit-flax's form against the form it replaced, and against torch.

    python -m benchmarks.ops [--markdown] [--repeats N] [--quick]

The numbers behind benchmarks/README.md's "Where vit-flax's CPU time goes". Each case times one operation on
CvT-13's or the ViTs' shapes at batch 8, forward alone and forward plus backward (the gradients of every input for
one random cotangent), as a jitted JAX function or a torch eager call, and checks that the JAX forms agree:

- depth-wise 3x3 convolution: `lax.conv_general_dilated(feature_group_count=channels)` against
  `layers.depthwise_conv` (shifted multiply-adds) and torch's `conv2d(groups=channels)`;
- 1x1 convolution: `lax.conv_general_dilated` against a matmul over the channels (what `layers.Conv` runs) and torch;
- attention, softmax(q k^T / sqrt(d)) v: `jax.nn.softmax` against `layers.softmax` and torch;
- bfloat16 products (a linear layer's and the attention's, from float32 inputs cast inside, as mixed precision
  does): `jnp.dot` / `jnp.einsum` with a bfloat16 result against `layers.matmul` / `layers.einsum` (float32
  accumulation) and torch's bfloat16 matmul;
- the six products of a bfloat16 attention's forward and backward, as `layers.einsum` computes them, in GFLOP/s, and
  whether XLA multiplies their bfloat16 operands or float32 copies;
- matmul: JAX against torch, in GFLOP/s.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import os
import platform
import sys
import time
from functools import partial

import numpy as np

from benchmarks.machine import cpu_count, cpu_model, kernel_settings

PROGRAM = 'python -m benchmarks.ops'


def median_ms(call, repeats: int) -> float:
    call()  # compiles, or warms torch's caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def jax_timings(function, inputs, repeats: int) -> tuple[float, float, object]:
    """(forward ms, forward + backward ms, forward output) of a jitted JAX function of `inputs`."""
    import jax

    forward = jax.jit(function)
    output = forward(*inputs)
    cotangent = np.random.default_rng(1).standard_normal(output.shape).astype(output.dtype)
    backward = jax.jit(lambda *a: jax.vjp(function, *a)[1](cotangent))
    return (median_ms(lambda: jax.block_until_ready(forward(*inputs)), repeats),
            median_ms(lambda: jax.block_until_ready(backward(*inputs)), repeats), output)


def torch_timings(function, inputs, repeats: int) -> tuple[float, float]:
    import torch

    tensors = [torch.tensor(np.asarray(x), requires_grad=True) for x in inputs]
    with torch.no_grad():
        cotangent = torch.randn_like(function(*tensors))

    def forward():
        with torch.no_grad():
            function(*tensors)

    def backward():
        for t in tensors:
            t.grad = None
        function(*tensors).backward(cotangent)

    return median_ms(forward, repeats), median_ms(backward, repeats)


def case_rows(op: str, shape: str, jax_forms, inputs, torch_form, torch_inputs, repeats: int, rtol: float,
              atol: float) -> list[dict]:
    """One case's rows: each JAX form (variant, function) of `inputs`, checked against the first form's output, then
    torch's function of `torch_inputs`."""
    rows, reference = [], None
    for variant, function in jax_forms:
        forward, both, output = jax_timings(function, inputs, repeats)
        reference = np.asarray(output) if reference is None else reference
        np.testing.assert_allclose(np.asarray(output), reference, rtol=rtol, atol=atol)
        rows.append({'op': op, 'shape': shape, 'variant': variant, 'forward_ms': forward, 'both_ms': both})
    forward, both = torch_timings(torch_form, torch_inputs, repeats)
    return rows + [{'op': op, 'shape': shape, 'variant': 'torch', 'forward_ms': forward, 'both_ms': both}]


def conv_cases(quick: bool):
    # (height = width, channels in, channels out, stride) of CvT-13's query / key-value projections and FFN
    depthwise = [(8, 8, 8, 1)] if quick else [
        (56, 64, 64, 1), (56, 64, 64, 2), (28, 192, 192, 1), (28, 192, 192, 2), (14, 384, 384, 1), (14, 384, 384, 2)]
    pointwise = [(8, 8, 16, 1)] if quick else [(56, 64, 256, 1), (28, 192, 768, 1), (14, 384, 1536, 1)]
    return depthwise, pointwise


def convolutions(quick: bool, repeats: int, batch: int) -> list[dict]:
    import jax
    import jax.numpy as jnp
    import torch

    from vit_flax.layers import depthwise_conv

    depthwise, pointwise = conv_cases(quick)
    rows = []
    rng = np.random.default_rng(0)
    for kind, cases in (('depth-wise 3x3', depthwise), ('1x1', pointwise)):
        for size, cin, cout, stride in cases:
            x = rng.standard_normal((batch, size, size, cin)).astype(np.float32)
            k = 3 if kind.startswith('depth') else 1
            groups = cin if kind.startswith('depth') else 1
            kernel = rng.standard_normal((k, k, cin // groups, cout)).astype(np.float32)
            padding = ((k // 2, k // 2),) * 2
            lax_conv = partial(jax.lax.conv_general_dilated, window_strides=(stride, stride), padding=padding,
                               dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=groups)
            ours = (partial(depthwise_conv, stride=(stride, stride), padding=padding, dilation=(1, 1))
                    if groups > 1 else lambda x, kernel: jnp.matmul(x, kernel.reshape(cin, cout)))
            torch_conv = partial(torch.nn.functional.conv2d, stride=stride, padding=k // 2, groups=groups)
            rows += case_rows(
                f'{kind} convolution', f'{batch}x{size}x{size}x{cin} -> {cout}, stride {stride}',
                (('lax.conv_general_dilated', lax_conv), ('vit-flax', ours)), (x, kernel),
                torch_conv, (x.transpose(0, 3, 1, 2).copy(), np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))),
                repeats, rtol=1e-4, atol=1e-4)
    return rows


def attention(quick: bool, repeats: int, batch: int) -> list[dict]:
    import jax
    import jax.numpy as jnp

    from vit_flax.layers import softmax

    # (heads, queries, keys): CvT-13's first stage, a ViT-B/16 layer, a ViT-S/16 layer
    cases = [(2, 16, 8)] if quick else [(1, 3136, 784), (12, 197, 197), (6, 197, 197)]
    rows = []
    rng = np.random.default_rng(0)
    dim_head = 64
    for heads, n, m in cases:
        q, k, v = (rng.standard_normal((batch, heads, length, dim_head)).astype(np.float32) for length in (n, m, m))

        def attend(q, k, v, normalise):
            return jnp.einsum('bhij,bhjd->bhid', normalise(jnp.einsum('bhid,bhjd->bhij', q, k) * dim_head**-0.5), v)

        rows += case_rows(
            'attention', f'{batch}x{heads} heads, {n} queries x {m} keys',
            (('jax.nn.softmax', partial(attend, normalise=partial(jax.nn.softmax, axis=-1))),
             ('vit-flax (layers.softmax)', partial(attend, normalise=partial(softmax, axis=-1)))), (q, k, v),
            lambda q, k, v: ((q @ k.transpose(-1, -2)) * dim_head**-0.5).softmax(-1) @ v, (q, k, v),
            repeats, rtol=1e-5, atol=1e-6)
    return rows


def bfloat16_products(quick: bool, repeats: int, batch: int) -> list[dict]:
    import jax.numpy as jnp

    from vit_flax import layers

    def half(*arrays):
        return [a.astype(jnp.bfloat16) for a in arrays]

    def torch_half(*tensors):
        return [t.bfloat16() for t in tensors]

    tokens, dim, hidden, heads = (16, 8, 24, 2) if quick else (197, 384, 1536, 6)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, tokens, dim)).astype(np.float32)
    kernel = (rng.standard_normal((dim, hidden)) * dim**-0.5).astype(np.float32)
    rows = case_rows(
        'bfloat16 linear', f'{batch}x{tokens}x{dim} @ {dim}x{hidden}',
        (('jnp.dot (bfloat16 result)', lambda x, w: jnp.dot(*half(x, w))),
         ('vit-flax (layers.matmul)', lambda x, w: layers.matmul(*half(x, w)))), (x, kernel),
        lambda x, w: (lambda x, w: x @ w)(*torch_half(x, w)), (x, kernel), repeats, rtol=2e-2, atol=5e-2)
    q, k, v = (rng.standard_normal((batch, heads, tokens, 64)).astype(np.float32) for _ in range(3))

    def attend(einsum):
        def function(q, k, v):
            q, k, v = half(q, k, v)
            return einsum('bhij,bhjd->bhid', layers.softmax(einsum('bhid,bhjd->bhij', q, k) * 0.125, axis=-1), v)
        return function

    def torch_attend(q, k, v):
        q, k, v = torch_half(q, k, v)
        return ((q @ k.transpose(-1, -2)) * 0.125).softmax(-1) @ v

    rows += case_rows(
        'bfloat16 attention', f'{batch}x{heads} heads, {tokens} queries x {tokens} keys',
        (('jnp.einsum (bfloat16 results)', attend(jnp.einsum)), ('vit-flax (layers.einsum)', attend(layers.einsum))),
        (q, k, v), torch_attend, (q, k, v), repeats, rtol=2e-2, atol=5e-2)
    return rows


def attention_products(quick: bool, repeats: int, batch: int) -> list[dict]:
    """The six products of a bfloat16 attention's forward and backward, each as `layers.einsum` computes it
    (bfloat16 operands, float32 accumulation, rounded to bfloat16), in GFLOP/s; the variant says whether XLA's
    compiled product takes the bfloat16 operands as they are (its YNNPACK fusion) or float32 copies of them."""
    import jax
    import jax.numpy as jnp

    tokens, heads = (16, 2) if quick else (197, 6)
    rng = np.random.default_rng(0)
    rows = []
    for name, spec in (('S = Q K^T', 'bhid,bhjd->bhij'), ('O = P V', 'bhij,bhjd->bhid'),
                       ('dP = dO V^T', 'bhid,bhjd->bhij'), ('dQ = dS K', 'bhij,bhjd->bhid'),
                       ('dV = P^T dO', 'bhij,bhid->bhjd'), ('dK = dS^T Q', 'bhij,bhid->bhjd')):
        shapes = {'i': tokens, 'j': tokens, 'd': 64}
        a, b = (jnp.asarray(rng.standard_normal((batch, heads, *(shapes[c] for c in part[2:]))), jnp.bfloat16)
                for part in spec.split('->')[0].split(','))
        product = jax.jit(partial(lambda spec, a, b: jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)
                                  .astype(jnp.bfloat16), spec))
        native = '__ynn_fusion' in product.lower(a, b).compile().as_text()
        ms = median_ms(lambda: jax.block_until_ready(product(a, b)), repeats)
        rows.append({'op': 'bfloat16 attention product', 'shape': f'{batch}x{heads} heads, {tokens} tokens',
                     'variant': f"{name} ('{spec}'; XLA: {'bfloat16 operands' if native else 'float32 copies'})",
                     'forward_ms': ms, 'gflops': 2 * batch * heads * tokens * tokens * 64 / ms / 1e6})
    return rows


def matmuls(quick: bool, repeats: int) -> list[dict]:
    import jax
    import torch

    # (m, k, n): a ViT-S/16 or CvT-13 stage-3 FFN at batch 8, and its transposes
    cases = [(32, 16, 24)] if quick else [(1576, 384, 1536), (1576, 1536, 384), (384, 1576, 1536), (1568, 384, 384)]
    rows = []
    rng = np.random.default_rng(0)
    for m, k, n in cases:
        a, b = rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((k, n)).astype(np.float32)
        product = jax.jit(lambda a, b: a @ b)
        ta, tb = torch.tensor(a), torch.tensor(b)
        for variant, call in (('jax', lambda: jax.block_until_ready(product(a, b))), ('torch', lambda: ta @ tb)):
            ms = median_ms(call, repeats)
            rows.append({'op': 'matmul', 'shape': f'{m}x{k} @ {k}x{n}', 'variant': variant, 'forward_ms': ms,
                         'gflops': 2 * m * k * n / ms / 1e6})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ['| op | shape | variant | forward ms | forward + backward ms (matmul: GFLOP/s) |',
             '|---|---|---|---:|---:|']
    for row in rows:
        last = f"{row['gflops']:,.0f} GFLOP/s" if 'gflops' in row else f"{row['both_ms']:,.2f}"
        lines.append(f"| {row['op']} | {row['shape']} | {row['variant']} | {row['forward_ms']:,.2f} | {last} |")
    return '\n'.join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.split('\n\n')[0])
    parser.add_argument('--repeats', type=int, default=10, help='timed calls per variant (the median is reported)')
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--quick', action='store_true', help='tiny shapes, 2 repeats: a smoke test')
    parser.add_argument('--markdown', action='store_true', help='print a markdown table')
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.batch = 2, 2
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    from vit_flax.training.xla_flags import use_trainer_flags

    use_trainer_flags()  # as the trainer runs; before JAX starts its backend
    rows = (convolutions(args.quick, args.repeats, args.batch) + attention(args.quick, args.repeats, args.batch)
            + bfloat16_products(args.quick, args.repeats, args.batch)
            + attention_products(args.quick, args.repeats, args.batch) + matmuls(args.quick, args.repeats))
    settings = ', '.join(f'{k}={v!r}' for k, v in kernel_settings().items()) or 'none'
    print(markdown(rows) if args.markdown else '\n'.join(map(str, rows)))
    command = ' '.join([PROGRAM, *(sys.argv[1:] if argv is None else argv)])
    load = ', '.join(f'{x:.2f}' for x in os.getloadavg())
    print(f"\nCPU ({cpu_model()}, {cpu_count()} cores); jax {importlib.metadata.version('jax')}, torch "
          f"{importlib.metadata.version('torch')}, Python {platform.python_version()}; kernel, thread and allocator "
          f"settings {settings}; load average at the end {load}; {datetime.date.today().isoformat()}.\n"
          f"Command: `{command}`")
    return rows


if __name__ == '__main__':
    main()
