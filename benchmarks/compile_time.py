"""Compile time of a ViT train step as the model deepens, with and without the layer scan (`scan_layers`).

    .venv/bin/python -m benchmarks.compile_time [--depths 6 12 24] [--remat-policy nothing_saveable] [--quick]

Unrolled, XLA compiles each of the `depth` layers on its own, so compile time grows with depth; scanned
(`scan_layers=True`, vit_flax/scan.py) it compiles one layer body, so compile time stays about flat. The step is
a jitted AdamW train step (cross entropy, gradients, optimizer update) of vit.ViT (or SimpleViT), ViT-S/16 wide by
default; the times are `jax.jit(step).lower(...)` (tracing to StableHLO) and `.compile()` (XLA), on abstract inputs,
so no weights are allocated. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

import jax
import jax.numpy as jnp
import optax

from benchmarks.machine import cpu_count, cpu_model
from vit_flax.scan import REMAT_POLICIES
from vit_flax.simple_vit import SimpleViT
from vit_flax.vit import ViT

PROGRAM = 'python -m benchmarks.compile_time'
MODELS = {'vit.ViT': ViT, 'simple_vit.SimpleViT': SimpleViT}
QUICK = dict(image_size=32, patch_size=8, dim=32, heads=2, dim_head=16, mlp_dim=64, batch=2, num_classes=10,
             depths=[2, 4])


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--model', choices=sorted(MODELS), default='vit.ViT')
    parser.add_argument('--depths', type=int, nargs='+', default=[6, 12, 24])
    parser.add_argument('--image-size', type=int, default=224)
    parser.add_argument('--patch-size', type=int, default=16)
    parser.add_argument('--dim', type=int, default=384)
    parser.add_argument('--heads', type=int, default=6)
    parser.add_argument('--dim-head', type=int, default=64)
    parser.add_argument('--mlp-dim', type=int, default=1536)
    parser.add_argument('--num-classes', type=int, default=1000)
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--remat-policy', choices=REMAT_POLICIES, default=None,
                        help='rematerialise the layers in the backward pass (both variants)')
    parser.add_argument('--quick', action='store_true',
                        help=f'a tiny model at depths 2 and 4 (a smoke test): {QUICK}')
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)
    return args


def train_step_compile_times(model, batch: int, image_size: int, num_classes: int) -> tuple[float, float]:
    """(lower, compile) seconds of a jitted AdamW train step of `model` on a batch of abstract images."""
    optimizer = optax.adamw(1e-3)
    images = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32)
    labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(images.shape))['params'])
    opt_state = jax.eval_shape(optimizer.init, params)

    def train_step(params, opt_state, images, labels, dropout_key):
        def loss(params):
            logits = model.apply({'params': params}, images, train=True, rngs={'dropout': dropout_key})
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    start = time.perf_counter()
    lowered = jax.jit(train_step, donate_argnums=(0, 1)).lower(params, opt_state, images, labels, jax.random.key(0))
    lowered_at = time.perf_counter()
    lowered.compile()
    return lowered_at - start, time.perf_counter() - lowered_at


def device_description() -> str:
    device = jax.devices()[0]
    if device.platform == 'cpu':
        return f'{cpu_count()} cores of {cpu_model()}'
    return device.device_kind


def main(argv=None) -> str:
    args = parse_args(argv)
    config = dict(image_size=args.image_size, patch_size=args.patch_size, num_classes=args.num_classes, dim=args.dim,
                  heads=args.heads, dim_head=args.dim_head, mlp_dim=args.mlp_dim, remat_policy=args.remat_policy)
    # the first compile of a process also pays for setting up the backend: pay it before timing
    jax.jit(lambda x: x + 1).lower(jnp.zeros(())).compile()

    rows = [
        '| depth | unrolled: lower + compile (s) | scanned: lower + compile (s) | unrolled / scanned |',
        '|---:|---:|---:|---:|',
    ]
    for depth in args.depths:
        times = {}
        for scan_layers in (False, True):
            model = MODELS[args.model](**config, depth=depth, scan_layers=scan_layers)
            times[scan_layers] = train_step_compile_times(model, args.batch, args.image_size, args.num_classes)
        (unrolled_lower, unrolled_compile), (scanned_lower, scanned_compile) = times[False], times[True]
        unrolled, scanned = unrolled_lower + unrolled_compile, scanned_lower + scanned_compile
        rows.append(f'| {depth} | {unrolled_lower:.2f} + {unrolled_compile:.2f} = {unrolled:.2f} | '
                    f'{scanned_lower:.2f} + {scanned_compile:.2f} = {scanned:.2f} | {unrolled / scanned:.1f}x |')

    header = (f'{args.model}, dim {args.dim}, heads {args.heads}, mlp {args.mlp_dim}, image {args.image_size}, '
              f'patch {args.patch_size}, batch {args.batch}, remat_policy {args.remat_policy}; AdamW train step; '
              f'jax {jax.__version__} on {device_description()}; '
              f'`{shlex.join([*PROGRAM.split(), *(sys.argv[1:] if argv is None else argv)])}`')
    report = header + '\n\n' + '\n'.join(rows) + '\n'
    print(report, end='')
    return report


if __name__ == '__main__':
    main()
