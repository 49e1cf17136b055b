"""Training augmentations on float32 (H, W, C) images in [0, 1], as grain RandomMaps.

Each transform draws only from the `np.random.Generator` grain hands it with the record. grain derives that
generator from the loader's seed and the record's position in the sampled stream, so an augmented batch is
the same on every run and after a resume from a saved iterator state.

Config (`config.augment`, every key optional; a missing key means off):
  random_resized_crop     crop a random box and resize it to the configured image size (bilinear, antialiased),
                          torchvision's RandomResizedCrop (the "Inception crop"): the box covers a fraction of the
                          image's area drawn uniformly from `random_resized_crop_scale` and has a width / height
                          drawn log-uniformly from `random_resized_crop_ratio`
  random_resized_crop_scale   (0.08, 1.0)
  random_resized_crop_ratio   (3/4, 4/3)
  random_crop_padding     pad with zeros by this many pixels on every side, then crop back to the original
                          size at a random offset (torchvision's RandomCrop(size, padding=p)); 0 = off. Either
                          this or random_resized_crop, not both
  flip                    horizontal flip with probability 1/2
  randaugment_ops         RandAugment (Cubuk et al., 2019): apply this many ops drawn uniformly, with
                          replacement, from `OPS`; 0 = off
  randaugment_magnitude   strength of every op, 0 (no change) .. 1 (the op's largest change)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import grain
import numpy as np
from PIL import Image

DEFAULTS = {
    'random_resized_crop': False,
    'random_resized_crop_scale': (0.08, 1.0),
    'random_resized_crop_ratio': (3 / 4, 4 / 3),
    'random_crop_padding': 0,
    'flip': False,
    'randaugment_ops': 0,
    'randaugment_magnitude': 0.5,
}

# The largest change of each op, reached at magnitude 1. Close to timm's RandAugment ranges at its
# magnitude 10 (of 10), with translation as a fraction of the image so it means the same at 8x8 and 224x224.
MAX_ROTATE_DEGREES = 30.0
MAX_SHEAR = 0.3
MAX_TRANSLATE = 0.45
MAX_ENHANCE = 0.9  # brightness / contrast factor in [1 - 0.9, 1 + 0.9]
MAX_POSTERIZE_BITS_REMOVED = 4


def _signed(magnitude: float, rng: np.random.Generator) -> float:
    """The magnitude with a random sign: RandAugment's geometric and colour ops go either way."""
    return magnitude if rng.random() < 0.5 else -magnitude


def _affine(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Output pixel p (relative to the image centre) takes the input at `matrix @ p`, bilinearly interpolated;
    samples from outside the image read zeros. `matrix` is 2x3 in (x, y) order. PIL does the work, one float32
    channel at a time: the same code and edge handling as torchvision's affine ops on PIL images with fill=0, and
    about 5x faster than scipy.ndimage here."""
    height, width, _ = image.shape
    # PIL maps output (x, y) to input (a x + b y + c, d x + e y + f) with pixel centres at half-integers, whose
    # image centre is (width / 2, height / 2)
    centre = np.array([width / 2, height / 2])
    linear = matrix[:, :2]
    offset = centre + matrix[:, 2] - linear @ centre
    coefficients = (*linear[0], offset[0], *linear[1], offset[1])
    return _per_channel(image, lambda channel: channel.transform(
        (width, height), Image.Transform.AFFINE, coefficients, Image.Resampling.BILINEAR, fillcolor=0.0))


def _per_channel(image: np.ndarray, operation: Callable[[Image.Image], Image.Image]) -> np.ndarray:
    """`operation` applied to each channel of a float32 (H, W, C) image as a PIL 'F' (float32) image."""
    channels = [np.asarray(operation(Image.fromarray(np.ascontiguousarray(image[..., c]), 'F')))
                for c in range(image.shape[-1])]
    return np.stack(channels, axis=-1)


def identity(image, magnitude, rng):
    return image


def autocontrast(image, magnitude, rng):
    """Stretch each channel to span [0, 1] (a constant channel is left alone)."""
    # channel by channel: numpy's reduction over the first two axes at once is 20x slower on a 224x224x3 image
    low = np.array([image[..., c].min() for c in range(image.shape[-1])], image.dtype)
    high = np.array([image[..., c].max() for c in range(image.shape[-1])], image.dtype)
    span = np.where(high > low, high - low, 1)
    return np.where(high > low, (image - low) / span, image).astype(image.dtype)


def brightness(image, magnitude, rng):
    factor = 1 + _signed(MAX_ENHANCE * magnitude, rng)
    return np.clip(image * factor, 0, 1).astype(image.dtype)


def contrast(image, magnitude, rng):
    """Blend with the image's mean grey level, as PIL's ImageEnhance.Contrast does."""
    factor = 1 + _signed(MAX_ENHANCE * magnitude, rng)
    return np.clip(image.mean() + factor * (image - image.mean()), 0, 1).astype(image.dtype)


def solarize(image, magnitude, rng):
    """Invert the pixels above 1 - magnitude (none at magnitude 0)."""
    return np.where(image > 1 - magnitude, 1 - image, image).astype(image.dtype)


def posterize(image, magnitude, rng):
    """Keep the top 8 - round(4 * magnitude) bits of each 8-bit pixel value."""
    step = 2 ** round(MAX_POSTERIZE_BITS_REMOVED * magnitude)
    levels = np.floor(np.round(image * 255) / step) * step
    return (levels / 255).astype(image.dtype)


def rotate(image, magnitude, rng):
    angle = math.radians(_signed(MAX_ROTATE_DEGREES * magnitude, rng))
    cos, sin = math.cos(angle), math.sin(angle)
    return _affine(image, np.array([[cos, -sin, 0], [sin, cos, 0]]))


def shear_x(image, magnitude, rng):
    return _affine(image, np.array([[1, _signed(MAX_SHEAR * magnitude, rng), 0], [0, 1, 0]]))


def shear_y(image, magnitude, rng):
    return _affine(image, np.array([[1, 0, 0], [_signed(MAX_SHEAR * magnitude, rng), 1, 0]]))


def translate_x(image, magnitude, rng):
    shift = _signed(MAX_TRANSLATE * magnitude, rng) * image.shape[1]
    return _affine(image, np.array([[1, 0, shift], [0, 1, 0]]))


def translate_y(image, magnitude, rng):
    shift = _signed(MAX_TRANSLATE * magnitude, rng) * image.shape[0]
    return _affine(image, np.array([[1, 0, 0], [0, 1, shift]]))


# op(image, magnitude in [0, 1], rng) -> image of the same shape and dtype, values in [0, 1]
OPS: dict[str, Callable[[np.ndarray, float, np.random.Generator], np.ndarray]] = {
    op.__name__: op
    for op in (identity, autocontrast, brightness, contrast, solarize, posterize,
               rotate, shear_x, shear_y, translate_x, translate_y)
}


def resized_crop_box(height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
                     rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, box height, box width) of a random resized crop of a height x width image, drawn as
    torchvision's RandomResizedCrop draws it: up to 10 tries of an area fraction uniform in `scale` and a
    width / height log-uniform in `ratio`, keeping the first box that fits; else the largest central box whose
    width / height lies in `ratio`."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        box_width = round(math.sqrt(target_area * aspect))
        box_height = round(math.sqrt(target_area / aspect))
        if 0 < box_width <= width and 0 < box_height <= height:
            top = int(rng.integers(0, height - box_height + 1))
            left = int(rng.integers(0, width - box_width + 1))
            return top, left, box_height, box_width
    aspect = width / height
    if aspect < ratio[0]:
        box_width, box_height = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        box_width, box_height = round(height * ratio[1]), height
    else:
        box_width, box_height = width, height
    return (height - box_height) // 2, (width - box_width) // 2, box_height, box_width


@dataclasses.dataclass(frozen=True)
class RandomResizedCrop(grain.transforms.RandomMap):
    """A `resized_crop_box` of the image, resized to `size` (height, width) with PIL's antialiased bilinear filter
    (what torchvision does to PIL images). Takes images of any size, uint8 in [0, 255] (an image folder's files at
    their own size: vit_flax.data reads them so when this crop is on) or float32 in [0, 1], and gives float32 in
    [0, 1] at `size`."""

    size: tuple[int, int]
    scale: tuple[float, float]
    ratio: tuple[float, float]

    def random_map(self, element, rng):
        image = element['image']
        height, width, channels = image.shape
        top, left, box_height, box_width = resized_crop_box(height, width, self.scale, self.ratio, rng)

        def crop(picture: Image.Image) -> Image.Image:
            return picture.resize(self.size[::-1], Image.Resampling.BILINEAR,
                                  box=(left, top, left + box_width, top + box_height))

        if image.dtype == np.uint8 and channels in (1, 3):  # PIL's 8-bit modes: one call for all channels
            picture = Image.fromarray(image[..., 0] if channels == 1 else image, 'L' if channels == 1 else 'RGB')
            cropped = np.asarray(crop(picture), np.float32).reshape(*self.size, channels) / 255
        else:
            scaled = image / np.float32(255) if image.dtype == np.uint8 else image.astype(np.float32, copy=False)
            cropped = _per_channel(scaled, crop)
        return {**element, 'image': cropped}


@dataclasses.dataclass(frozen=True)
class RandomCrop(grain.transforms.RandomMap):
    padding: int

    def random_map(self, element, rng):
        image = element['image']
        height, width, _ = image.shape
        p = self.padding
        padded = np.pad(image, ((p, p), (p, p), (0, 0)))
        top, left = rng.integers(0, 2 * p + 1, size=2)
        return {**element, 'image': padded[top:top + height, left:left + width]}


@dataclasses.dataclass(frozen=True)
class RandomFlip(grain.transforms.RandomMap):
    """Horizontal flip with probability 1/2."""

    def random_map(self, element, rng):
        if rng.random() < 0.5:
            return {**element, 'image': element['image'][:, ::-1]}
        return element


@dataclasses.dataclass(frozen=True)
class RandAugment(grain.transforms.RandomMap):
    num_ops: int
    magnitude: float

    def random_map(self, element, rng):
        image = element['image']
        names = list(OPS)
        for choice in rng.integers(0, len(names), size=self.num_ops):
            image = OPS[names[choice]](image, self.magnitude, rng)
        return {**element, 'image': image}


def train_transforms(augment_config, image_size: tuple[int, int] | None = None) -> list[grain.transforms.RandomMap]:
    """The augmentations `augment_config` (config.augment: a ConfigDict, dict or None) switches on, in the order
    they run; `image_size` (height, width) is what a random resized crop resizes to. Keys other than those in
    DEFAULTS are left for others to read (the trainer's mixup, say)."""

    def setting(key):
        return DEFAULTS[key] if augment_config is None else augment_config.get(key, DEFAULTS[key])

    padding, num_ops = int(setting('random_crop_padding')), int(setting('randaugment_ops'))
    magnitude = float(setting('randaugment_magnitude'))
    if padding < 0:
        raise ValueError(f'config.augment.random_crop_padding={padding}: must be >= 0')
    if num_ops < 0:
        raise ValueError(f'config.augment.randaugment_ops={num_ops}: must be >= 0')
    if not 0 <= magnitude <= 1:
        raise ValueError(f'config.augment.randaugment_magnitude={magnitude}: must be in [0, 1]')

    transforms = []
    if setting('random_resized_crop'):
        if padding:
            raise ValueError(f'config.augment.random_crop_padding={padding} with random_resized_crop=True: '
                             'choose one crop')
        if image_size is None:
            raise ValueError('config.augment.random_resized_crop=True needs the image size to resize the crops to')
        scale = _range('random_resized_crop_scale', setting('random_resized_crop_scale'), upper=1.0)
        ratio = _range('random_resized_crop_ratio', setting('random_resized_crop_ratio'), upper=math.inf)
        transforms.append(RandomResizedCrop(tuple(int(side) for side in image_size), scale, ratio))
    if padding:
        transforms.append(RandomCrop(padding))
    if setting('flip'):
        transforms.append(RandomFlip())
    if num_ops:
        transforms.append(RandAugment(num_ops, magnitude))
    return transforms


def _range(key: str, value, *, upper: float) -> tuple[float, float]:
    """config.augment.<key> as (low, high) with 0 < low <= high <= upper, else a ValueError naming it."""
    try:
        low, high = (float(bound) for bound in value)
    except (TypeError, ValueError):
        raise ValueError(f'config.augment.{key}={value!r}: expected two numbers (low, high)') from None
    if not 0 < low <= high <= upper:
        raise ValueError(f'config.augment.{key}={value!r}: expected 0 < low <= high'
                         + (f' <= {upper:g}' if upper < math.inf else ''))
    return low, high
