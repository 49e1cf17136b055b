"""Images in class folders, torchvision ImageFolder style:

    config.data_dir/
      train/<class_name>/*.jpg|*.jpeg|*.png
      eval/<class_name>/...     the eval split: the first of eval/, val/, test/ that exists

Classes are the train split's folder names, sorted; label i is the i-th name. Every train class needs at least
one image; an eval folder must name a train class (it may hold no images, or be missing). Files with other
extensions are skipped, as are hidden files and folders. Eval records are in sorted order (class, then file
name); train records in a fixed shuffled order (see `load`).

Images are decoded with PIL when a record is read (nothing is decoded up front), converted to RGB (or to
grey-scale 'L' with config.channels = 1), and resized to config.image_size with bilinear interpolation, aspect
ratio not kept. Normalisation defaults to the ImageNet statistics; config.mean / config.std replace them.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
from PIL import Image

from vit_flax.data.info import DatasetInfo, configured_image_size

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
TRAIN_SPLIT = 'train'
EVAL_SPLITS = ('eval', 'val', 'test')
MODES = {3: 'RGB', 1: 'L'}  # config.channels -> PIL mode
TRAIN_ORDER_SEED = 0
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# For grey-scale images: the averages of the RGB values.
IMAGENET_GREY_MEAN = (0.449,)
IMAGENET_GREY_STD = (0.226,)


@dataclasses.dataclass(frozen=True, repr=False)
class ImageFolderSource:
    """One split: image paths and their labels, decoded and resized on read."""

    split_dir: str
    paths: tuple[str, ...]
    labels: tuple[int, ...]
    image_size: tuple[int, int]  # (height, width)
    mode: str  # PIL mode, 'RGB' or 'L'

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        path = self.paths[index]
        height, width = self.image_size
        try:
            with Image.open(path) as opened:
                image = opened.convert(self.mode).resize((width, height), Image.Resampling.BILINEAR)
        except (OSError, ValueError) as error:  # PIL's UnidentifiedImageError is an OSError
            raise ValueError(f'cannot read image file {path}: {error}') from error
        pixels = np.asarray(image, np.float32) / 255
        return {'image': pixels.reshape(height, width, -1), 'label': np.int32(self.labels[index])}

    def __repr__(self):
        # grain compares the source's repr when restoring an iterator: it names what the records are.
        return (f'ImageFolderSource({self.split_dir!r}, {len(self)} images, '
                f'{self.image_size[0]}x{self.image_size[1]} {self.mode})')


def _visible_entries(folder: pathlib.Path):
    return sorted(entry for entry in folder.iterdir() if not entry.name.startswith('.'))


def _list_split(split_dir: pathlib.Path, class_names: tuple[str, ...], *, every_class: bool):
    """(paths, labels) of the images under split_dir/<class_name>/, in sorted order."""
    folders = [entry for entry in _visible_entries(split_dir) if entry.is_dir()]
    unknown = [folder.name for folder in folders if folder.name not in class_names]
    if unknown:
        raise ValueError(f'{split_dir} has class folders {unknown} that are not in the train split {list(class_names)}')
    paths, labels = [], []
    for folder in folders:
        images = [str(entry) for entry in _visible_entries(folder)
                  if entry.is_file() and entry.suffix.lower() in IMAGE_EXTENSIONS]
        if every_class and not images:
            raise ValueError(f'class folder {folder} has no {"/".join(IMAGE_EXTENSIONS)} images')
        paths += images
        labels += [class_names.index(folder.name)] * len(images)
    if not paths:
        raise ValueError(f'{split_dir} has no {"/".join(IMAGE_EXTENSIONS)} images in its class folders')
    return tuple(paths), tuple(labels)


def load(config) -> tuple[ImageFolderSource, ImageFolderSource, DatasetInfo]:
    if not config.get('data_dir'):
        raise ValueError("config.dataset='image_folder' needs config.data_dir, the folder holding train/ and eval/")
    image_size = configured_image_size(config)
    if image_size is None:
        raise ValueError("config.dataset='image_folder' needs config.image_size, the size images are resized to")
    channels = config.get('channels', 3)
    if channels not in MODES:
        raise ValueError(f'config.channels={channels}: image folders are read as RGB (3) or grey-scale (1)')

    root = pathlib.Path(config.data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f'config.data_dir={str(root)!r} is not a folder')
    train_dir = root / TRAIN_SPLIT
    if not train_dir.is_dir():
        raise FileNotFoundError(f'{train_dir} is missing: expected {root}/{TRAIN_SPLIT}/<class_name>/<images>')
    eval_dir = next((root / split for split in EVAL_SPLITS if (root / split).is_dir()), None)
    if eval_dir is None:
        raise FileNotFoundError(f'{root} has no eval split: expected one of {", ".join(EVAL_SPLITS)}/ next to train/')
    class_names = tuple(entry.name for entry in _visible_entries(train_dir) if entry.is_dir())
    if not class_names:
        raise ValueError(f'{train_dir} has no class folders: expected {train_dir}/<class_name>/<images>')

    train_paths, train_labels = _list_split(train_dir, class_names, every_class=True)
    # ShardByJaxProcess gives each process a contiguous range of the train records: keep them in a fixed mixed
    # order, not class by class, so that every process trains on every class.
    order = np.random.default_rng(TRAIN_ORDER_SEED).permutation(len(train_paths))
    train = ImageFolderSource(str(train_dir), tuple(train_paths[i] for i in order),
                              tuple(train_labels[i] for i in order), image_size, MODES[channels])
    eval_ = ImageFolderSource(str(eval_dir), *_list_split(eval_dir, class_names, every_class=False),
                              image_size, MODES[channels])
    info = DatasetInfo(
        image_size=image_size,
        channels=channels,
        num_classes=len(class_names),
        num_train=len(train),
        num_eval=len(eval_),
        mean=IMAGENET_MEAN if channels == 3 else IMAGENET_GREY_MEAN,
        std=IMAGENET_STD if channels == 3 else IMAGENET_GREY_STD,
        class_names=class_names,
    )
    return train, eval_, info
