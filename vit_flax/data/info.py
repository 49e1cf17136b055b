"""What a dataset tells the model and the trainer (shared by the dataset modules and the pipelines)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the model and the trainer need to know about a dataset; the sizes are of whole splits."""

    image_size: tuple[int, int]  # (height, width) of the images the model sees
    channels: int
    num_classes: int
    num_train: int
    num_eval: int
    mean: tuple[float, ...]  # per-channel normalisation applied to [0, 1] pixels: (x - mean) / std
    std: tuple[float, ...]
    class_names: tuple[str, ...]


def configured_image_size(config) -> tuple[int, int] | None:
    """config.image_size as (height, width): an int means a square; None when the key is absent."""
    size = config.get('image_size')
    if size is None:
        return None
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if height <= 0 or width <= 0:
        raise ValueError(f'config.image_size={size}: sizes must be positive')
    return int(height), int(width)
