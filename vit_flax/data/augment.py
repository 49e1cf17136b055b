"""Training augmentations on float32 (H, W, C) images in [0, 1], as grain RandomMaps.

Each transform draws only from the `np.random.Generator` grain hands it with the record. grain derives that
generator from the loader's seed and the record's position in the sampled stream, so an augmented batch is
the same on every run and after a resume from a saved iterator state.

Config (`config.augment`, every key optional; a missing key means off):
  random_crop_padding     pad with zeros by this many pixels on every side, then crop back to the original
                          size at a random offset (torchvision's RandomCrop(size, padding=p)); 0 = off
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
from scipy import ndimage

DEFAULTS = {
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
    samples from outside the image read zeros, like torchvision's affine ops with fill=0. `matrix` is 2x3 in
    (x, y) order; scipy works in (row, column) = (y, x)."""
    height, width, _ = image.shape
    centre = np.array([(height - 1) / 2, (width - 1) / 2])
    linear = np.array([[matrix[1, 1], matrix[1, 0]], [matrix[0, 1], matrix[0, 0]]])
    offset = centre + np.array([matrix[1, 2], matrix[0, 2]]) - linear @ centre
    transform = np.eye(3)
    transform[:2, :2] = linear  # channels map to themselves
    out = ndimage.affine_transform(image, transform, offset=(*offset, 0.0), order=1, mode='grid-constant', cval=0.0)
    return out.astype(image.dtype)


def identity(image, magnitude, rng):
    return image


def autocontrast(image, magnitude, rng):
    """Stretch each channel to span [0, 1] (a constant channel is left alone)."""
    low = image.min(axis=(0, 1), keepdims=True)
    high = image.max(axis=(0, 1), keepdims=True)
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


def train_transforms(augment_config) -> list[grain.transforms.RandomMap]:
    """The augmentations `augment_config` (config.augment: a ConfigDict, dict or None) switches on, in the order
    they run. Keys other than those in DEFAULTS are left for others to read (the trainer's mixup, say)."""

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
    if padding:
        transforms.append(RandomCrop(padding))
    if setting('flip'):
        transforms.append(RandomFlip())
    if num_ops:
        transforms.append(RandAugment(num_ops, magnitude))
    return transforms
