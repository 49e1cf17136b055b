"""Images in class folders, torchvision ImageFolder style:

    config.data_dir/
      train/<class_name>/*.jpg|*.jpeg|*.png
      eval/<class_name>/...     the eval split: the first of eval/, val/, test/ that exists

Classes are the train split's folder names, sorted; label i is the i-th name. Every train class needs at least
one image; an eval folder must name a train class (it may hold no images, or be missing). Files with other
extensions are skipped, as are hidden files and folders. Eval records are in sorted order (class, then file
name); train records in a fixed shuffled order (see `load`).

Every listed file is checked when the folder is loaded, before any training step, without decoding pixels: PIL
must identify its header, and a JPEG or PNG must end with its end marker (the end-of-image marker, the IEND
chunk), which a truncated file lacks; a file without one is decoded to be sure (data after the marker is
harmless). That costs about 50 us a file whatever its size (decoding a 4000x3000 JPEG takes 2,000 times
longer), in threads; a progress bar shows when it takes over a second (config.progress_bar). Unreadable files
(empty, truncated, not an image) are refused in one error naming them, unless config.skip_bad_images = True
(default False), which leaves them out and logs each one (absl WARNING). A file that passes the check but fails
to decode when its record is read is an error naming it.

Images are decoded with PIL when a record is read, converted to RGB (or to grey-scale 'L' with config.channels =
1), and resized to config.image_size with bilinear interpolation, aspect ratio not kept. With a random resized
crop (config.augment.random_resized_crop) the train records keep the file's own size, as uint8, and the crop
resizes them (vit_flax.data.train_loader): crops then come from the full-resolution image. Normalisation defaults
to the ImageNet statistics; config.mean / config.std replace them.

A split's repr names its file list by a hash (grain compares it when a checkpoint's data position is restored),
so resuming after files were added, removed or renamed is refused, saying so (training/checkpoint.py).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import os
import pathlib
import sys

import jax
import numpy as np
from absl import logging
from PIL import Image
from tqdm import tqdm

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

# The file check: the end marker must lie in the last TAIL_BYTES of a JPEG or PNG. Threads overlap the reads of
# files not in the page cache: 8 checked 2,000 such JPEGs 2.8x faster than one, on 2 cores.
TAIL_BYTES = 4096
JPEG_END_OF_IMAGE, JPEG_START_OF_SCAN = b'\xff\xd9', b'\xff\xda'
PNG_END = b'\x00\x00\x00\x00IEND\xaeB`\x82'  # the IEND chunk: length 0, type, CRC
CHECK_THREADS = 8
CHECK_CHUNK = 256  # files a thread checks per task
NAMED_BAD_FILES = 10  # the most unreadable files an error names


@dataclasses.dataclass(frozen=True, repr=False)
class ImageFolderSource:
    """One split: image paths and their labels, decoded and resized on read."""

    split_dir: str
    paths: tuple[str, ...]
    labels: tuple[int, ...]
    image_size: tuple[int, int]  # (height, width)
    mode: str  # PIL mode, 'RGB' or 'L'
    # records at the file's own size, uint8 in [0, 255], for an augmentation that resizes them (a random resized
    # crop); else float32 in [0, 1] at image_size
    keep_file_size: bool = False

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        path = self.paths[index]
        height, width = self.image_size
        try:
            with Image.open(path) as opened:
                image = opened.convert(self.mode)
                if not self.keep_file_size:
                    image = image.resize((width, height), Image.Resampling.BILINEAR)
        except (OSError, ValueError) as error:  # PIL's UnidentifiedImageError is an OSError
            raise ValueError(f'cannot read image file {path}: {error}') from error
        label = np.int32(self.labels[index])
        if self.keep_file_size:
            return {'image': np.asarray(image).reshape(image.height, image.width, -1), 'label': label}
        pixels = np.asarray(image, np.float32) / 255
        return {'image': pixels.reshape(height, width, -1), 'label': label}

    @functools.cached_property
    def file_list_hash(self) -> str:
        """A hash of the file names (relative to split_dir), in record order."""
        return _hash(os.path.relpath(path, self.split_dir) for path in self.paths)

    def __repr__(self):
        # grain compares the source's repr when restoring an iterator: it names what the records are.
        size = 'file size, uint8' if self.keep_file_size else f'{self.image_size[0]}x{self.image_size[1]}'
        return (f'ImageFolderSource({self.split_dir!r}, {len(self)} images, file list {self.file_list_hash}, '
                f'{size} {self.mode})')


def _hash(strings) -> str:
    return hashlib.sha256('\0'.join(strings).encode('utf-8', 'surrogateescape')).hexdigest()[:12]


def unreadable(path: str) -> str | None:
    """Why the image file at `path` cannot be read, or None. PIL parses the header (no pixels are decoded); a JPEG
    or PNG must also end with its end marker, else it is decoded: a truncated file fails that, one with data after
    its marker passes."""
    try:
        with open(path, 'rb') as file:
            size = os.fstat(file.fileno()).st_size
            if not size:
                return 'the file is empty'
            file.seek(max(0, size - TAIL_BYTES))
            tail = file.read()
            file.seek(0)
            with Image.open(file) as image:
                if _ends_whole(image.format, tail):
                    return None
                try:
                    image.load()
                except Exception as error:
                    return (f'truncated: its last {TAIL_BYTES} bytes hold no {image.format} end marker, and it fails '
                            f'to decode ({_describe(error)})')
    except Image.UnidentifiedImageError:
        return 'PIL cannot identify it as an image'
    except Exception as error:  # whatever PIL raises on a malformed file: the check only reports it
        return _describe(error)
    return None


def _describe(error: Exception) -> str:
    return f'{type(error).__name__}: {error}'


def _ends_whole(image_format: str, tail: bytes) -> bool:
    """Whether the last bytes of a file of this format hold its end marker (any other format passes)."""
    if image_format in ('JPEG', 'MPO'):
        # the last end-of-image marker, with no scan after it (an embedded thumbnail ends with one too)
        end = tail.rfind(JPEG_END_OF_IMAGE)
        return end >= 0 and JPEG_START_OF_SCAN not in tail[end:]
    if image_format == 'PNG':
        return PNG_END in tail
    return True


# Listing hash -> {path: why} of its unreadable files, from the last check: the data pipelines load the folder
# again for every eval, and recheck only the files found unreadable (which may have been fixed meanwhile).
_UNREADABLE: dict[str, dict[str, str]] = {}


def _unreadable_files(paths: list[str], *, progress_bar: bool) -> tuple[dict[str, str], dict[str, str]]:
    """({path: why} of the unreadable files among `paths`, those of them not known from an earlier check)."""
    key = _hash(paths)
    known = _UNREADABLE.get(key)
    to_check = paths if known is None else list(known)
    chunks = [to_check[i:i + CHECK_CHUNK] for i in range(0, len(to_check), CHECK_CHUNK)]
    bad = {}
    with (concurrent.futures.ThreadPoolExecutor(CHECK_THREADS) as pool,
          tqdm(total=len(to_check), desc='checking image files', unit='file', dynamic_ncols=True, delay=1.0,
               mininterval=0.1 if sys.stderr.isatty() else 10.0, disable=not progress_bar) as progress):
        for chunk, reasons in zip(chunks, pool.map(lambda chunk: [unreadable(path) for path in chunk], chunks)):
            bad.update((path, why) for path, why in zip(chunk, reasons) if why)
            progress.update(len(chunk))
    _UNREADABLE[key] = bad
    return bad, {path: why for path, why in bad.items() if path not in (known or {})}


def _bad_files_error(root, bad: dict[str, str], total: int) -> ValueError:
    lines = [f'cannot read image file {path}: {why}' for path, why in list(bad.items())[:NAMED_BAD_FILES]]
    if len(bad) > NAMED_BAD_FILES:
        lines.append(f'... and {len(bad) - NAMED_BAD_FILES} more')
    return ValueError(
        f'{len(bad)} of {total} image files under {root} cannot be read (checked when the folder is loaded):\n  '
        + '\n  '.join(lines)
        + '\nReplace or remove them, or set config.skip_bad_images=True to train without them (each one is logged).')


def _visible_entries(folder: pathlib.Path):
    return sorted(entry for entry in folder.iterdir() if not entry.name.startswith('.'))


def _list_split(split_dir: pathlib.Path, class_names: tuple[str, ...]) -> dict[pathlib.Path, list[str]]:
    """The images under split_dir/<class_name>/, by class folder, in sorted order."""
    folders = [entry for entry in _visible_entries(split_dir) if entry.is_dir()]
    unknown = [folder.name for folder in folders if folder.name not in class_names]
    if unknown:
        raise ValueError(f'{split_dir} has class folders {unknown} that are not in the train split {list(class_names)}')
    return {folder: [str(entry) for entry in _visible_entries(folder)
                     if entry.is_file() and entry.suffix.lower() in IMAGE_EXTENSIONS]
            for folder in folders}


def _records(split_dir: pathlib.Path, folders: dict[pathlib.Path, list[str]], class_names: tuple[str, ...], *,
             every_class: bool, skipped: str):
    """(paths, labels) of a split's images; `skipped` qualifies "images" in the errors when files were left out."""
    paths, labels = [], []
    for folder, images in folders.items():
        if every_class and not images:
            raise ValueError(f'class folder {folder} has no {"/".join(IMAGE_EXTENSIONS)} images{skipped}')
        paths += images
        labels += [class_names.index(folder.name)] * len(images)
    if not paths:
        raise ValueError(f'{split_dir} has no {"/".join(IMAGE_EXTENSIONS)} images in its class folders{skipped}')
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

    splits = {train_dir: _list_split(train_dir, class_names), eval_dir: _list_split(eval_dir, class_names)}
    listed = [path for folders in splits.values() for images in folders.values() for path in images]
    first_process = jax.process_index() == 0
    bad, new = _unreadable_files(listed, progress_bar=config.get('progress_bar', True) and first_process)
    skipped = ''
    if bad and not config.get('skip_bad_images', False):
        raise _bad_files_error(root, bad, len(listed))
    if bad:
        if new and first_process:
            for path, why in new.items():
                logging.warning('skipping unreadable image file %s: %s', path, why)
            logging.warning('skipped %d of %d image files under %s (config.skip_bad_images)', len(bad), len(listed),
                            root)
        splits = {split_dir: {folder: [path for path in images if path not in bad]
                              for folder, images in folders.items()}
                  for split_dir, folders in splits.items()}
        skipped = ' left after skipping unreadable ones (config.skip_bad_images)'

    train_paths, train_labels = _records(train_dir, splits[train_dir], class_names, every_class=True, skipped=skipped)
    # ShardByJaxProcess gives each process a contiguous range of the train records: keep them in a fixed mixed
    # order, not class by class, so that every process trains on every class.
    order = np.random.default_rng(TRAIN_ORDER_SEED).permutation(len(train_paths))
    train = ImageFolderSource(str(train_dir), tuple(train_paths[i] for i in order),
                              tuple(train_labels[i] for i in order), image_size, MODES[channels])
    eval_ = ImageFolderSource(str(eval_dir), *_records(eval_dir, splits[eval_dir], class_names, every_class=False,
                                                       skipped=skipped),
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
