"""scikit-learn's bundled handwritten digits: 1797 images of 8x8 pixels, one channel, classes '0'..'9'.

Bundled with scikit-learn, so training needs no download. Pixel values 0..16 are divided by 16 into [0, 1].
The split is fixed (stratified, 20% eval, random_state=0): 1437 train and 360 eval images, the same on every
machine. Mean and std are those of the train split's pixels.

The images are 8x8 and one channel and are not resized: `config.image_size` and `config.channels` may be left
out, and if given must say 8 (or (8, 8)) and 1, so a model configured for other inputs fails here, by name.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from vit_flax.data.info import DatasetInfo, configured_image_size

IMAGE_SIZE = (8, 8)
CHANNELS = 1
CLASS_NAMES = tuple(str(digit) for digit in range(10))
EVAL_FRACTION = 0.2
SPLIT_SEED = 0


@dataclasses.dataclass(frozen=True, repr=False)
class DigitsSource:
    """One split in memory: images float32 (N, 8, 8, 1) in [0, 1], labels int32 (N,)."""

    split: str
    images: np.ndarray
    labels: np.ndarray

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return {'image': self.images[index], 'label': self.labels[index]}

    def __repr__(self):
        # grain compares the source's repr when restoring an iterator; keep the arrays out of it.
        return f'DigitsSource(split={self.split!r}, size={len(self)})'


def splits() -> tuple[DigitsSource, DigitsSource]:
    """The fixed (train, eval) split."""
    digits = load_digits()
    images = (digits.images / 16).astype(np.float32)[..., None]
    labels = digits.target.astype(np.int32)
    train_images, eval_images, train_labels, eval_labels = train_test_split(
        images, labels, test_size=EVAL_FRACTION, random_state=SPLIT_SEED, stratify=labels)
    return DigitsSource('train', train_images, train_labels), DigitsSource('eval', eval_images, eval_labels)


def load(config) -> tuple[DigitsSource, DigitsSource, DatasetInfo]:
    size, channels = configured_image_size(config), config.get('channels')
    if size not in (None, IMAGE_SIZE) or channels not in (None, CHANNELS):
        raise ValueError(
            f'config.image_size={config.get("image_size")}, config.channels={channels}: the digits dataset is '
            f'{IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} pixels, {CHANNELS} channel, and is not resized; set image_size=8 '
            'and channels=1, or leave them out')
    train, eval_ = splits()
    info = DatasetInfo(
        image_size=IMAGE_SIZE,
        channels=CHANNELS,
        num_classes=len(CLASS_NAMES),
        num_train=len(train),
        num_eval=len(eval_),
        mean=(float(train.images.mean(dtype=np.float64)),),
        std=(float(train.images.std(dtype=np.float64)),),
        class_names=CLASS_NAMES,
    )
    return train, eval_, info


def write_image_folder(root, classes=CLASS_NAMES) -> Path:
    """The fixed split as an image folder, root/{train,val}/<class>/<i>.png (8-bit grey PNGs), holding only
    `classes`: a subset of the digits for a pretraining run whose classes a fine-tune then extends (make
    finetune-demo). Returns root."""
    from PIL import Image

    root = Path(root)
    for split, source in zip(('train', 'val'), splits()):
        for i, (image, label) in enumerate(zip(source.images, source.labels)):
            if CLASS_NAMES[label] in classes:
                path = root / split / CLASS_NAMES[label] / f'{i}.png'
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.uint8(np.round(255 * image[..., 0])), 'L').save(path)
    return root

