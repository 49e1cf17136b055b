"""The one form every pretrained-checkpoint reader produces and every writer takes (issue 20): keywords of
`vit_flax.pretrained_vit.VisionTransformer`, its weights under timm's state-dict keys in torch's layouts, and the
preprocessing the checkpoint expects.

timm's layout is the common tongue because `converters.from_torch` / `to_torch` already map it to and from our
variable tree strictly (every missing, unexpected and mis-shaped key reported at once), so a reader of another
format (big_vision npz, Hugging Face transformers) only renames and reshapes into it, and the strict check is
shared.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

# the preprocessing keys, with timm's pretrained_cfg names: input_size (channels, height, width), interpolation
# ('bicubic', 'bilinear', ...), crop_pct, crop_mode, mean, std (per channel), num_classes, label_names
PREPROCESSING_KEYS = ('input_size', 'interpolation', 'crop_pct', 'crop_mode', 'mean', 'std', 'num_classes',
                      'label_names')


class UnsupportedCheckpointError(ValueError):
    """A checkpoint this library cannot hold exactly: the message names the file, the key, its shape and why."""


@dataclasses.dataclass
class Pretrained:
    """A checkpoint read into memory, before any Flax model is built.

    kwargs: `VisionTransformer` keywords (timm's names) that hold the weights exactly.
    state_dict: timm's keys -> numpy arrays in torch's layouts (Linear (out, in), Conv (out, in, kh, kw)).
    preprocessing: what the checkpoint expects of its input, under PREPROCESSING_KEYS (those known).
    source: where it came from and in which format, for messages.
    arch: timm's architecture name where known ('vit_base_patch16_224'), for `timm.create_model`.
    """

    kwargs: dict[str, Any]
    state_dict: dict[str, np.ndarray]
    preprocessing: dict[str, Any] = dataclasses.field(default_factory=dict)
    source: str = ''
    arch: str | None = None


def describe(array) -> str:
    """'shape (768, 3, 16, 16) float32' for a message."""
    return f'shape {tuple(np.shape(array))} {getattr(array, "dtype", type(array).__name__)}'


def mlp_ratio_for(dim: int, hidden: int) -> float:
    """The shortest decimal r with int(dim * r) == hidden, as timm computes the MLP's width (4.0; 3.7362 for 4304
    at 1152): hidden / dim itself can round below `hidden` in that product."""
    for decimals in range(9):
        ratio = math.ceil(hidden / dim * 10 ** decimals) / 10 ** decimals
        if int(dim * ratio) == hidden:
            return ratio
    return hidden / dim


def same_keyword(key: str, a, b) -> bool:
    """Whether two values of a VisionTransformer keyword build the same model: sizes as (height, width) pairs (an int
    is a square), LayerScale by whether it is there (its init value is not in the weights), lists as tuples."""
    if key in ('img_size', 'patch_size'):
        return tuple(np.broadcast_to(a, 2).tolist()) == tuple(np.broadcast_to(b, 2).tolist())
    if key == 'init_values':
        return bool(a) == bool(b)
    plain = lambda value: tuple(value) if isinstance(value, list) else value  # noqa: E731
    return plain(a) == plain(b)
