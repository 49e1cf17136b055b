"""NaViT packing against padding every image to the largest size, on a stream of mixed-resolution images.

    .venv/bin/python -m benchmarks.na_vit_packing [--num-images N] [--dim D] ... [--json results.json]

Both methods run the same model, on the same images, with the same number of token positions per step:

- packed: `vit_flax.na_vit.packed_dataset` (grain's first-fit packing) puts several images in each row of
  `max_seq_len` tokens; attention is masked per image.
- padded: each image is zero-padded to image_size x image_size and is one row of (image_size / patch_size)^2
  tokens; the padding tokens are masked out (image_ids -1), so the model computes exactly what it computes
  for the packed image (the benchmark checks the logits agree), but every image costs as much as the largest.

Token efficiency is the fraction of token positions that hold real tokens (`PackedBatch.fill`, averaged over
the batches). Throughput is images of the stream per second, for a jitted forward and a jitted train step
(adamw, cross entropy over the real image slots), timed after a warm-up call that compiles, over batches
already on the device (the host's packing time is reported apart); the median of `--repeats` passes counts.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import sys
import time

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from benchmarks.machine import cpu_count, cpu_model
from vit_flax.na_vit import NaViT, PackedBatch, packed_dataset, patch_positions, to_patches, unpack

PROGRAM = 'python -m benchmarks.na_vit_packing'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    stream = parser.add_argument_group('stream')
    stream.add_argument('--num-images', type=int, default=2048, help='images in the stream')
    stream.add_argument('--size-decay', type=float, default=0.5,
                        help='a side of k patches is drawn with probability proportional to k ** -decay '
                             '(0: uniform sizes; larger: more small images)')
    stream.add_argument('--seed', type=int, default=0)
    model = parser.add_argument_group('model')
    model.add_argument('--image-size', type=int, default=64)
    model.add_argument('--patch-size', type=int, default=8)
    model.add_argument('--dim', type=int, default=64)
    model.add_argument('--depth', type=int, default=4)
    model.add_argument('--heads', type=int, default=4)
    model.add_argument('--dim-head', type=int, default=16)
    model.add_argument('--mlp-dim', type=int, default=128)
    model.add_argument('--num-classes', type=int, default=10)
    packing = parser.add_argument_group('packing')
    packing.add_argument('--max-seq-len', type=int, default=256,
                         help='tokens per packed row (at least (image_size / patch_size) ** 2)')
    packing.add_argument('--rows', type=int, default=8,
                         help='packed rows per step; the padded baseline gets as many rows as give the same '
                              'token positions per step')
    packing.add_argument('--max-images-per-seq', type=int, default=32, help='image slots per packed row')
    parser.add_argument('--repeats', type=int, default=3,
                        help='timed passes over the stream per method and program, the methods alternating; the '
                             'median pass counts')
    parser.add_argument('--json', metavar='PATH', help='also write the results as JSON to PATH')
    parser.add_argument('--no-progress', action='store_true', help='no progress bars')
    return parser.parse_args(argv)


# the stream


def make_stream(args) -> list[dict]:
    """Reproducible records {'image': (h, w, 3) float32, 'label': int} of mixed sizes and aspect ratios.

    Height and width are drawn independently (so aspect ratios vary from 1:n to n:1) as multiples of the
    patch size, small sides more often than large ones (p(k patches) ~ k^-size_decay), so there are many small
    images and some large. Pixels are random: speed does not depend on them.
    """
    rng = np.random.default_rng(args.seed)
    sides = np.arange(1, args.image_size // args.patch_size + 1)
    weights = sides ** -args.size_decay
    heights, widths = rng.choice(sides, size=(2, args.num_images), p=weights / weights.sum()) * args.patch_size
    labels = rng.integers(0, args.num_classes, args.num_images)
    return [{'image': rng.standard_normal((h, w, 3), dtype=np.float32), 'label': int(label)}
            for h, w, label in zip(heights, widths, labels)]


# host-side batches: (PackedBatch, labels (rows, slots), example_index (rows, slots))


def packed_batches(model, records, args):
    dataset = packed_dataset(model, grain.MapDataset.source(records), rows=args.rows, max_seq_len=args.max_seq_len,
                             max_images_per_seq=args.max_images_per_seq)
    return list(dataset)


def padded_batches(model, records, rows: int):
    """One image per row, zero-padded at the bottom and right to image_size x image_size.

    The real patches keep their (row, column) positions, since padding only adds patches after them; the padding
    patches get image_ids -1 (masked, as in a PackedBatch) and position 0. The last batch is filled with empty
    rows so every step has the same shape.
    """
    size, p = model.image_size, model.patch_size
    grid = size // p
    all_positions = patch_positions(grid, grid)
    batches = []
    for start in range(0, len(records), rows):
        chunk = records[start:start + rows]
        patches = np.zeros((rows, grid * grid, p * p * model.channels), np.float32)
        positions = np.zeros((rows, grid * grid, 2), np.int32)
        image_ids = np.full((rows, grid * grid), -1, np.int32)
        labels = np.full((rows, 1), -1, np.int32)
        index = np.full((rows, 1), -1, np.int32)
        for r, record in enumerate(chunk):
            image = record['image']
            h, w = image.shape[0] // p, image.shape[1] // p
            padded = np.zeros((size, size, model.channels), np.float32)
            padded[:image.shape[0], :image.shape[1]] = image
            real = (all_positions[:, 0] < h) & (all_positions[:, 1] < w)
            patches[r] = to_patches(padded, p)
            positions[r] = np.where(real[:, None], all_positions, 0)
            image_ids[r] = np.where(real, 0, -1)
            labels[r, 0], index[r, 0] = record['label'], start + r
        num_images = (index[:, 0] >= 0).astype(np.int32)
        batches.append((PackedBatch(patches, positions, image_ids, num_images, max_images=1), labels, index))
    return batches


# the timed programs


def make_programs(model):
    """(forward, train_step, optimizer); the steps are jitted and compile once per batch shape."""
    tx = optax.adamw(1e-3)

    @jax.jit
    def forward(variables, batch):
        return model.apply(variables, batch)

    def loss_fn(params, buffers, batch, labels):
        logits = model.apply({'params': params, 'buffers': buffers}, batch, train=True)
        # empty slots (and empty rows) carry no loss: their logits are meaningless and their labels -1
        real = batch.image_mask & (labels >= 0)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(real, labels, 0))
        return jnp.sum(jnp.where(real, losses, 0.0)) / jnp.maximum(jnp.sum(real), 1)

    @jax.jit
    def train_step(params, buffers, opt_state, batch, labels):
        loss, grads = jax.value_and_grad(loss_fn)(params, buffers, batch, labels)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return forward, train_step, tx


def forward_pass(forward, variables, batches, desc, progress):
    """Seconds for a forward over every batch, and the logits."""
    outputs = []
    start = time.perf_counter()
    for batch, _, _ in tqdm(batches, desc=desc, unit='batch', leave=False, disable=not progress):
        outputs.append(forward(variables, batch))
    jax.block_until_ready(outputs)
    return time.perf_counter() - start, outputs


def train_pass(train_step, params, buffers, opt_state, batches, desc, progress):
    """Seconds for a train step on every batch in turn, from (params, opt_state), and the last loss."""
    start = time.perf_counter()
    for batch, labels, _ in tqdm(batches, desc=desc, unit='batch', leave=False, disable=not progress):
        params, opt_state, loss = train_step(params, buffers, opt_state, batch, labels)
    jax.block_until_ready((params, opt_state, loss))
    return time.perf_counter() - start, float(loss)


def logits_per_image(outputs, batches):
    """The forward's logits of every image of the stream, in stream order."""
    logits = np.concatenate([np.asarray(o).reshape(-1, o.shape[-1]) for o in outputs])
    index = np.concatenate([i.reshape(-1) for _, _, i in batches])
    # unpack wants (rows, slots) index; the flattened batches are rows of one slot
    return unpack(logits[:, None], index[:, None])[:, 0]


# the report


def markdown_table(results) -> str:
    packed, padded = results['packed'], results['padded']
    lines = ['| method | token efficiency | images/s forward | images/s train step | ratio packed/padded '
             '(forward / train) |',
             '|---|---:|---:|---:|---:|']
    for name, r in (('padded to image_size', padded), ('NaViT packed', packed)):
        ratio = (f"{r['images_per_s_forward'] / padded['images_per_s_forward']:.2f}x / "
                 f"{r['images_per_s_train'] / padded['images_per_s_train']:.2f}x")
        lines.append(f"| {name} | {r['token_efficiency']:.1%} | {r['images_per_s_forward']:,.0f} | "
                     f"{r['images_per_s_train']:,.0f} | {ratio} |")
    return '\n'.join(lines)


def report(results) -> str:
    a, m, s = results['args'], results['machine'], results['stream']
    packed, padded = results['packed'], results['padded']
    device = m['device_kind'] if m['device_kind'] == m['platform'] else f"{m['device_kind']} ({m['platform']})"
    return '\n'.join([
        markdown_table(results),
        '',
        f"Stream: {s['num_images']} images, sides {a['patch_size']}..{a['image_size']} px in steps of "
        f"{a['patch_size']} (p(k patches) ~ k^-{a['size_decay']}), {s['mean_tokens_per_image']:.1f} tokens per "
        f"image on average (at most {s['max_tokens_per_image']}).",
        f"Model: NaViT dim {a['dim']}, depth {a['depth']}, heads {a['heads']} x {a['dim_head']}, mlp {a['mlp_dim']}, "
        f"image_size {a['image_size']}, patch_size {a['patch_size']}.",
        f"Same token positions per step: packed {packed['rows']} rows x {packed['seq_len']} tokens "
        f"(up to {a['max_images_per_seq']} images per row), padded {padded['rows']} rows x {padded['seq_len']} "
        f"tokens; {packed['steps']} packed steps against {padded['steps']} padded ones.",
        f"Host preparation (not timed above): packing {packed['host_prep_s']:.1f} s, padding "
        f"{padded['host_prep_s']:.1f} s. Largest |logit difference| packed vs padded: "
        f"{results['max_abs_logit_diff']:.1e}.",
        f"Machine: {device}, {m['cpu_count']} CPU cores ({m['cpu']}), jax {m['jax_version']}; {results['date']}.",
        f"Command: {results['command']}",
    ])


def main(argv=None) -> dict:
    args = parse_args(argv)
    grid = args.image_size // args.patch_size
    tokens_per_image = grid * grid
    if args.max_seq_len < tokens_per_image:
        raise SystemExit(f'--max-seq-len {args.max_seq_len} cannot hold an image of {tokens_per_image} tokens')
    progress = not args.no_progress

    model = NaViT(image_size=args.image_size, patch_size=args.patch_size, num_classes=args.num_classes, dim=args.dim,
                  depth=args.depth, heads=args.heads, dim_head=args.dim_head, mlp_dim=args.mlp_dim)
    records = make_stream(args)

    start = time.perf_counter()
    packed = packed_batches(model, records, args)
    packed_prep = time.perf_counter() - start
    # the baseline gets as many token positions per step as packing (rows * max_seq_len), rounded down to whole
    # images when max_seq_len is not a multiple of an image's tokens
    padded_rows = max(1, args.rows * args.max_seq_len // tokens_per_image)
    start = time.perf_counter()
    padded = padded_batches(model, records, padded_rows)
    padded_prep = time.perf_counter() - start

    packed_images = sum(int(b.num_images.sum()) for b, _, _ in packed)
    assert packed_images == len(records), f'packing lost images: {packed_images} of {len(records)}'

    variables = jax.jit(model.init)(jax.random.key(args.seed), packed[0][0])
    forward, train_step, tx = make_programs(model)
    # batches go to the device before timing: the comparison is of the model's work, not of host transfers
    on_device = {name: jax.device_put(batches) for name, batches in (('packed', packed), ('padded', padded))}

    params, buffers = variables['params'], variables['buffers']
    opt_state = tx.init(params)
    # warm-up: compile each program for each batch shape before anything is timed
    for batches in on_device.values():
        jax.block_until_ready(forward(variables, batches[0][0]))
        jax.block_until_ready(train_step(params, buffers, opt_state, batches[0][0], batches[0][1]))

    # The passes of the two methods alternate and the median pass counts: on a shared machine the load changes
    # while the benchmark runs, and alternating spreads it over both methods; a lucky pass (or an unlucky one)
    # moves a median less than a minimum. Each train pass starts from the same initial state.
    times = {name: {'forward': [], 'train': []} for name in on_device}
    outputs, last_loss = {}, {}
    for _ in range(args.repeats):
        for name, batches in on_device.items():
            seconds, outputs[name] = forward_pass(forward, variables, batches, f'{name} forward', progress)
            times[name]['forward'].append(seconds)
            seconds, last_loss[name] = train_pass(train_step, params, buffers, opt_state, batches, f'{name} train',
                                                  progress)
            times[name]['train'].append(seconds)

    results = {}
    for name, batches, prep in (('padded', padded, padded_prep), ('packed', packed, packed_prep)):
        forward_s, train_s = (float(np.median(times[name][key])) for key in ('forward', 'train'))
        first = batches[0][0]
        results[name] = {
            'token_efficiency': float(np.mean([b.fill for b, _, _ in batches])),
            'images_per_s_forward': len(records) / forward_s,
            'images_per_s_train': len(records) / train_s,
            'forward_s': forward_s,
            'train_s': train_s,
            'forward_s_per_pass': times[name]['forward'],
            'train_s_per_pass': times[name]['train'],
            'host_prep_s': prep,
            'steps': len(batches),
            'rows': first.image_ids.shape[0],
            'seq_len': first.image_ids.shape[1],
            'image_slots_per_row': first.max_images,
            'last_train_loss': last_loss[name],
        }
    for key in ('forward', 'train'):
        results[f'ratio_{key}'] = results['packed'][f'images_per_s_{key}'] / results['padded'][f'images_per_s_{key}']
    # the baseline is only fair if it computes the same thing: per-image masking makes both give the same logits
    logits = {name: logits_per_image(outputs[name], batches) for name, batches in (('packed', packed),
                                                                                   ('padded', padded))}
    results['max_abs_logit_diff'] = float(np.max(np.abs(logits['packed'] - logits['padded'])))

    sizes = np.array([r['image'].shape[:2] for r in records]) // args.patch_size
    results['stream'] = {'num_images': len(records), 'mean_tokens_per_image': float(np.prod(sizes, 1).mean()),
                         'max_tokens_per_image': tokens_per_image}
    results['args'] = {k: v for k, v in vars(args).items() if k not in ('json', 'no_progress')}
    device = jax.devices()[0]
    results['machine'] = {'device_kind': device.device_kind, 'platform': device.platform, 'cpu': cpu_model(),
                          'cpu_count': cpu_count(), 'python': platform.python_version(),
                          'jax_version': jax.__version__}
    results['date'] = datetime.date.today().isoformat()
    results['command'] = ' '.join([PROGRAM, *map(shlex.quote, sys.argv[1:] if argv is None else argv)])

    print(report(results))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == '__main__':
    main()
