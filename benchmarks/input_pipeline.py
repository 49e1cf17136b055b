"""vit-flax's grain image-folder pipeline against a torch DataLoader doing the same work on the same JPEG files.

    .venv/bin/python -m benchmarks.input_pipeline [--images N] [--workers 0 1 2] [--batches B] ... [--json PATH]

The files: `--images` JPEGs (quality 90) of `--file-size` pixels square, smooth random RGB images in 10 class
folders of a temporary image folder. Each pipeline decodes every JPEG with PIL, takes a random resized crop of it
at `--image-size` (bilinear), flips it, applies two RandAugment ops at magnitude 0.5 (`AUGMENT`:
vit_flax.data.augment switches them all off by default), normalises it and batches `--batch` images:

- grain: `vit_flax.data.train_loader`, the trainer's own pipeline, with `data_workers` worker processes (0 reads in
  the calling process);
- torch: `torch.utils.data.DataLoader(num_workers=workers, shuffle=True)` over a Dataset that calls the same
  decode and the same augmentation functions per image. torchvision cannot load beside the CPU torch build this
  project uses, so the per-image work is the same code on both sides and what is compared is the loaders:
  sampling, worker processes, batching and the transfer of batches between processes.

Timing: each loader draws `--warmup` batches first (its workers start and read their first files), then the time
to draw `--batches` more counts; images/s is their images over that time, the median of `--repeats` fresh loaders.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import ml_collections
import numpy as np

from benchmarks.machine import cpu_count, cpu_model, kernel_settings

PROGRAM = 'python -m benchmarks.input_pipeline'
CLASSES = 10


def write_jpegs(root: Path, images: int, file_size: int, seed: int = 0) -> Path:
    """root/{train,val}/<class>/<i>.jpg: `images` smooth random RGB JPEGs in train (upsampled 8 x 8 noise, so that
    they compress like photographs rather than like noise), one per class in val. Returns root."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (('train', images), ('val', CLASSES)):
        for i in range(count):
            path = root / split / f'class_{i % CLASSES}' / f'{i}.jpg'
            path.parent.mkdir(parents=True, exist_ok=True)
            small = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), 'RGB')
            small.resize((file_size, file_size), Image.Resampling.BICUBIC).save(path, quality=90)
    return root


# an ImageNet-style training augmentation (vit_flax.data.augment's defaults switch them all off): a random resized
# crop of the file, a flip, two RandAugment ops at half their largest change
AUGMENT = {'random_resized_crop': True, 'flip': True, 'randaugment_ops': 2, 'randaugment_magnitude': 0.5}


def pipeline_config(root: Path, image_size: int, workers: int) -> ml_collections.ConfigDict:
    """What the trainer's config says about its data: an RGB image folder at `image_size`, AUGMENT, `workers`
    grain processes."""
    return ml_collections.ConfigDict({
        'dataset': 'image_folder', 'data_dir': str(root), 'image_size': image_size, 'channels': 3,
        'data_workers': workers, 'augment': dict(AUGMENT)})


class SameWorkDataset:
    """A torch map-style Dataset of the same records and operations as the grain pipeline
    (`vit_flax.data.train_records`: the image folder's decode, the augmentations with a generator per draw, then
    `Normalize`)."""

    def __init__(self, config):
        import grain

        from vit_flax import data

        self.source, self.operations = data.train_records(config)
        self.random = [isinstance(operation, grain.transforms.RandomMap) for operation in self.operations]
        self.draws = 0

    def __len__(self):
        return len(self.source)

    def __getitem__(self, index):
        import torch

        self.draws += 1  # a fresh generator per draw: in a worker, torch seeds each worker apart
        rng = np.random.default_rng([torch.initial_seed() % 2**32, index, self.draws])
        element = self.source[index]
        for operation, random in zip(self.operations, self.random):
            element = operation.random_map(element, rng) if random else operation.map(element)
        return element


def grain_batches(config, batch: int):
    from vit_flax import data

    return iter(data.train_loader(config, batch_size=batch, seed=0))


def torch_batches(config, batch: int):
    import torch

    dataset = SameWorkDataset(config)
    # an endless stream like the grain loader's: a fresh epoch whenever one ends
    sampler = torch.utils.data.RandomSampler(dataset, replacement=False, num_samples=10**9)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, sampler=sampler, drop_last=True,
                                         num_workers=config.data_workers,
                                         persistent_workers=config.data_workers > 0)
    return iter(loader)


def images_per_second(batches, batch: int, warmup: int, count: int) -> float:
    for _ in range(warmup):
        next(batches)
    start = time.perf_counter()
    for _ in range(count):
        record = next(batches)
        assert tuple(record['image'].shape)[0] == batch
    return count * batch / (time.perf_counter() - start)


def run(args, root: Path) -> list[dict]:
    rows = []
    for workers in args.workers:
        config = pipeline_config(root, args.image_size, workers)
        row = {'workers': workers}
        for name, make in (('grain', grain_batches), ('torch', torch_batches)):
            rates = []
            for _ in range(args.repeats):
                batches = make(config, args.batch)
                rates.append(images_per_second(batches, args.batch, args.warmup, args.batches))
                del batches  # its worker processes end with it
            row[name] = float(np.median(rates))
        row['ratio'] = row['grain'] / row['torch']
        rows.append(row)
    return rows


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--images', type=int, default=512, help='JPEG files in the train split')
    parser.add_argument('--file-size', type=int, default=320, help="the files' side in pixels")
    parser.add_argument('--image-size', type=int, default=224, help='the side crops are resized to')
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--batches', type=int, default=8, help='timed batches per loader')
    parser.add_argument('--warmup', type=int, default=2, help='untimed batches first')
    parser.add_argument('--repeats', type=int, default=3, help='fresh loaders per pipeline and worker count')
    parser.add_argument('--workers', type=int, nargs='+', default=[0, 1, 2], help='worker processes')
    parser.add_argument('--json', metavar='PATH', help='also write the results as JSON to PATH')
    args = parser.parse_args(argv)
    if min(args.workers) < 0:
        parser.error(f'--workers {args.workers}: worker counts must be >= 0')
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    from absl import flags

    if not flags.FLAGS.is_parsed():  # grain's worker processes read absl flags (vit_flax.data.train_loader)
        flags.FLAGS.mark_as_parsed()
    import torch

    with tempfile.TemporaryDirectory(prefix='input_pipeline-') as directory:
        rows = run(args, write_jpegs(Path(directory), args.images, args.file_size))
    results = {
        'rows': rows, 'args': vars(args),
        'machine': {'cpu': cpu_model(), 'cpu_count': cpu_count(), 'settings': kernel_settings(),
                    'python': platform.python_version(), 'torch': torch.__version__},
        'date': datetime.date.today().isoformat(),
        'command': ' '.join([PROGRAM, *map(shlex.quote, sys.argv[1:] if argv is None else argv)]),
    }
    print('| workers | grain images/s | torch DataLoader images/s | grain / torch |')
    print('|---:|---:|---:|---:|')
    for row in rows:
        print(f"| {row['workers']} | {row['grain']:,.0f} | {row['torch']:,.0f} | {row['ratio']:.2f}x |")
    print(f"\n{args.images} JPEGs of {args.file_size} x {args.file_size} decoded, cropped at random and resized to "
          f"{args.image_size} (random resized crop), flipped, augmented (RandAugment) and normalised, in batches of "
          f"{args.batch}; medians of "
          f"{args.repeats} loaders, {args.batches} batches each after {args.warmup}. Machine: "
          f"{results['machine']['cpu']}, {results['machine']['cpu_count']} cores; torch {torch.__version__}, "
          f"Python {results['machine']['python']}; {results['date']}.\nCommand: `{results['command']}`")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == '__main__':
    main()
