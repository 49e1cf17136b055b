"""Input pipelines for the trainer, built on grain.

`config.dataset` picks the data:
  'digits'        scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes): no download; the
                  default, for demos and tests (vit_flax/data/digits.py)
  'image_folder'  config.data_dir/<split>/<class_name>/*.{jpg,jpeg,png} (vit_flax/data/image_folder.py); every
                  file's header is checked when the folder is loaded, and unreadable files are refused up front
  'synthetic'     deterministic random images and labels of any shape, for benchmarks (vit_flax/data/synthetic.py)

Every dataset is two grain RandomAccessDataSources, train and eval, whose records are
{'image': float32 (H, W, C) in [0, 1], 'label': int32}. Augmentations (vit_flax/data/augment.py) work on
those [0, 1] images; normalisation with the dataset's mean and std comes last. A random resized crop comes first
and gives such images: an image folder's train records reach it at the file's own size, as uint8. Mixup, which
mixes examples across the batch, is the trainer's job, on device.

Multi-host: each JAX process reads its own share (grain's ShardByJaxProcess) and yields per-process batches;
the trainer assembles the global batch with `jax.make_array_from_process_local_data`.

Config keys read here (the dataset modules read their own; `config.get` defaults make them optional):
  dataset, augment (see augment.py), data_workers (grain worker processes for training, default 0 = read in
  the training process), mean / std (replace the dataset's normalisation), skip_bad_images (image_folder: leave
  out the files that fail the check, logging each, instead of refusing them; default False).
"""

from __future__ import annotations

from vit_flax.extras import require

require('train', 'vit_flax.data')

import dataclasses
from typing import Iterator

import grain
import numpy as np

from vit_flax.data import augment, digits, image_folder, synthetic
from vit_flax.data.info import DatasetInfo, configured_image_size  # noqa: F401 (the package's public names)


@dataclasses.dataclass(frozen=True)
class Normalize(grain.transforms.Map):
    """(image - mean) / std per channel, in float32 (images are float32 throughout); the rest of the record
    passes through."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def map(self, element):
        height, width, channels = element['image'].shape
        # As rows of width * channels values, against the statistics tiled to match: numpy broadcasts over a
        # trailing axis of 3 channels several times slower, and this runs on every image.
        rows = element['image'].reshape(height, width * channels) - np.tile(np.float32(self.mean), width)
        rows /= np.tile(np.float32(self.std), width)  # in place: the subtraction made a new array
        return {**element, 'image': rows.reshape(height, width, channels)}


@dataclasses.dataclass(frozen=True)
class _PaddedEvalSource:
    """The eval source with a 'mask' of 1 on every record, extended to `length` records by blank ones with mask 0,
    so that every process gets the same number of whole batches."""

    source: grain.sources.RandomAccessDataSource
    length: int
    image_shape: tuple[int, int, int]

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        if index < len(self.source):
            return {**self.source[index], 'mask': np.float32(1)}
        return {'image': np.zeros(self.image_shape, np.float32), 'label': np.int32(0), 'mask': np.float32(0)}


# Threads reading records in each process (ahead of the consumer). In-memory records gain nothing from them: the
# threads only contend for the GIL (grain's ReadOptions advice). PIL's decoding releases the GIL, so image
# folders use them.
_READ_THREADS = {'digits': 0, 'synthetic': 0, 'image_folder': 16}


def _read_options(config) -> grain.ReadOptions:
    return grain.ReadOptions(num_threads=_READ_THREADS[config.dataset])


def _load(config):
    """(train source, eval source, DatasetInfo) for config.dataset."""
    loaders = {'digits': digits.load, 'image_folder': image_folder.load, 'synthetic': synthetic.load}
    if config.dataset not in loaders:
        raise ValueError(f'config.dataset={config.dataset!r}: expected one of {sorted(loaders)}')
    train, eval_, info = loaders[config.dataset](config)

    for key in ('mean', 'std'):
        value = config.get(key)
        if value is None:
            continue
        value = tuple(float(v) for v in value)
        if len(value) != info.channels:
            raise ValueError(f'config.{key}={value} has {len(value)} values for {info.channels}-channel images')
        if key == 'std' and min(value) <= 0:
            raise ValueError(f'config.std={value}: every value must be positive')
        info = dataclasses.replace(info, **{key: value})
    return train, eval_, info


def dataset_info(config) -> DatasetInfo:
    return _load(config)[2]


def train_loader(config, *, batch_size: int, seed: int) -> grain.DataLoader:
    """An endless, shuffled, augmented stream of this process's share of the train split, in batches of
    `batch_size` (per process) {'image': float32 (B, H, W, C) normalised, 'label': int32 (B,)}.

    Each process shuffles a fixed shard of the train split (ShardByJaxProcess, dropping the remainder so
    shards are equal), with a new order every epoch. `iter(loader)` gives a grain DataLoaderIterator whose
    position `get_state()` / `set_state()` (or grain.checkpoint.CheckpointSave / CheckpointRestore with orbax)
    save and restore exactly. Restoring needs the same dataset, batch size, seed (0 <= seed < 2**32), process
    count and data_workers: the batches' composition depends on all of them. With data_workers > 0, grain's
    worker processes read absl flags, so run under absl.app.run (or mark the flags parsed).
    """
    if batch_size <= 0:
        raise ValueError(f'batch_size={batch_size}: must be positive')
    source, operations = train_records(config)
    shard_options = grain.sharding.ShardByJaxProcess(drop_remainder=True)
    sampler = grain.samplers.IndexSampler(
        num_records=len(source), shard_options=shard_options, shuffle=True, num_epochs=None, seed=seed)
    operations = [*operations, grain.transforms.Batch(batch_size, drop_remainder=True)]
    return grain.DataLoader(
        data_source=source, sampler=sampler, operations=operations, shard_options=shard_options,
        worker_count=config.get('data_workers', 0), read_options=_read_options(config))


class ReadAhead:
    """A train loader's iterator that makes its next batch in a background thread while the caller computes: grain's
    thread prefetch, with the iterator's own checkpoint API, so that grain's orbax handler saves and restores it as
    it would the iterator.

    The trainer reads this way because with data_workers=0 grain makes batches in the calling thread (11 ms per
    batch of the digits), and a JAX step that runs in the calling thread (allocator.keep_freed_memory) does not
    overlap that work otherwise. `get_state()` is the position after the last batch taken, as the iterator's own
    would be: the batches read ahead are not counted, so a checkpoint resumes with the next batch not yet used.
    """

    def __init__(self, iterator, batches: int = 1):
        self._prefetch = grain.experimental.ThreadPrefetchDatasetIterator(iterator, batches)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return next(self._prefetch)

    def get_state(self) -> bytes:
        return self._prefetch.get_state()

    def set_state(self, state: bytes):
        self._prefetch.set_state(state)  # drops what was read ahead

    def start_prefetch(self):
        self._prefetch.start_prefetch()

    def close(self):
        """Stops the thread; the iterator cannot be used after."""
        self._prefetch.close()


def train_records(config) -> tuple[grain.sources.RandomAccessDataSource, list[grain.transforms.Map]]:
    """The train split's source and what `train_loader` does to each of its records, in order: the augmentations
    config.augment switches on, then Normalize. A random resized crop reads an image folder at the files' own
    sizes, to crop from the full-resolution images."""
    source, _, info = _load(config)
    transforms = augment.train_transforms(config.get('augment'), info.image_size)
    if transforms and isinstance(transforms[0], augment.RandomResizedCrop) and isinstance(
            source, image_folder.ImageFolderSource):
        source = dataclasses.replace(source, keep_file_size=True)
    return source, [*transforms, Normalize(info.mean, info.std)]


def eval_batches(config, *, batch_size: int) -> Iterator[dict]:
    """One pass, in a fixed order, over this process's share of the eval split: {'image', 'label', 'mask'}
    batches of exactly `batch_size`, 'mask' float32 (B,) being 1 for real examples and 0 for padding.

    Process i of n takes examples i, i + n, i + 2n, ... of the split padded to a multiple of n * batch_size,
    so the processes together see every example once and all run the same number of eval steps (a multi-host
    eval step is a collective: a process that stopped early would hang the others).
    """
    if batch_size <= 0:
        raise ValueError(f'batch_size={batch_size}: must be positive')
    _, source, info = _load(config)
    shard = grain.sharding.ShardByJaxProcess()
    per_step = batch_size * shard.shard_count
    padded = _PaddedEvalSource(
        source, -(-len(source) // per_step) * per_step, (*info.image_size, info.channels))
    dataset = (grain.MapDataset.source(padded)[shard.shard_index::shard.shard_count]
               .map(Normalize(info.mean, info.std))
               .batch(batch_size))
    return iter(dataset.to_iter_dataset(_read_options(config)))


def raw_eval_split(config, split: str = 'eval') -> tuple[np.ndarray, np.ndarray]:
    """The whole eval split (or `split='train'`), un-normalised: images float32 (N, H, W, C) in [0, 1] and int32
    labels (N,), in the split's order."""
    if split not in ('train', 'eval'):
        raise ValueError(f"split={split!r}: expected 'train' or 'eval'")
    train, evaluation, _ = _load(config)
    source = train if split == 'train' else evaluation
    records = list(grain.MapDataset.source(source).to_iter_dataset(_read_options(config)))
    return np.stack([r['image'] for r in records]), np.array([r['label'] for r in records], np.int32)
