"""Deterministic random images and labels of any shape, for benchmarks and smoke tests.

Record i of a split is drawn from its own generator, seeded with (split, i): the data is the same on every run
and machine, costs no memory, and any record can be read first. Pixels are uniform in [0, 1), labels uniform
over the classes; there is nothing to learn.

Config: image_size (int or (height, width)), channels, num_classes, synthetic_size (train records),
synthetic_eval_size (eval records); the defaults below stand in for missing keys.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from vit_flax.data.info import DatasetInfo, configured_image_size

DEFAULT_IMAGE_SIZE = (32, 32)
DEFAULT_CHANNELS = 3
DEFAULT_NUM_CLASSES = 10
DEFAULT_TRAIN_SIZE = 1024
DEFAULT_EVAL_SIZE = 256
SPLIT_IDS = {'train': 0, 'eval': 1}

# The mean and standard deviation of uniform [0, 1) pixels.
MEAN = 0.5
STD = 1 / math.sqrt(12)


@dataclasses.dataclass(frozen=True)
class SyntheticSource:
    split: str
    size: int
    image_shape: tuple[int, int, int]
    num_classes: int

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        if not 0 <= index < self.size:
            raise IndexError(f'index {index} out of range for {self.size} synthetic {self.split} records')
        rng = np.random.default_rng((SPLIT_IDS[self.split], index))
        return {
            'image': rng.random(self.image_shape, dtype=np.float32),
            'label': np.int32(rng.integers(self.num_classes)),
        }


def load(config) -> tuple[SyntheticSource, SyntheticSource, DatasetInfo]:
    image_size = configured_image_size(config) or DEFAULT_IMAGE_SIZE
    channels = config.get('channels', DEFAULT_CHANNELS)
    num_classes = config.get('num_classes', DEFAULT_NUM_CLASSES)
    sizes = {'train': config.get('synthetic_size', DEFAULT_TRAIN_SIZE),
             'eval': config.get('synthetic_eval_size', DEFAULT_EVAL_SIZE)}
    for name, value in (('channels', channels), ('num_classes', num_classes),
                        ('synthetic_size', sizes['train']), ('synthetic_eval_size', sizes['eval'])):
        if value <= 0:
            raise ValueError(f'config.{name}={value}: must be positive')

    train, eval_ = (SyntheticSource(split, sizes[split], (*image_size, channels), num_classes)
                    for split in ('train', 'eval'))
    info = DatasetInfo(
        image_size=image_size,
        channels=channels,
        num_classes=num_classes,
        num_train=len(train),
        num_eval=len(eval_),
        mean=(MEAN,) * channels,
        std=(STD,) * channels,
        class_names=tuple(str(label) for label in range(num_classes)),
    )
    return train, eval_, info
