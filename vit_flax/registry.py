"""The catalogue of vit-flax: every architecture's Flax class, its vit-pytorch counterpart and the input it takes.

The converters derive an example input from a module's own fields through its entry (parameter shapes do not
depend on it) to learn its variable tree; the trainer and the sidecars build models by name. The registry knows no
torch and no tests: the parity configurations, tolerances and the README table's notes are the test side's
(parity/, one file per architecture file), which checks that every entry here has them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import numpy as np

from vit_flax.cait import CaiT
from vit_flax.cct import CCT
from vit_flax.cvt import CvT
from vit_flax.cross_vit import CrossViT
from vit_flax.deepvit import DeepViT
from vit_flax.layers import pair
from vit_flax.levit import LeViT
from vit_flax.parallel_vit import ViT as ParallelViT
from vit_flax.pit import PiT
from vit_flax.simple_vit import SimpleViT
from vit_flax.t2t import T2TViT
from vit_flax.vit import ViT
from vit_flax import distill, efficient, vit
from vit_flax import vit_for_small_dataset
from vit_flax import vit_with_patch_merger
from vit_flax import mp3
from vit_flax import ats_vit
from vit_flax import learnable_memory_vit
from vit_flax import mobile_vit
from vit_flax import sep_vit
from vit_flax import max_vit
from vit_flax import max_vit_with_registers
from vit_flax import twins_svt
from vit_flax import scalable_vit
from vit_flax import xcit
from vit_flax import regionvit
from vit_flax import crossformer
from vit_flax import nest
from vit_flax import simple_vit_3d, vit_3d
from vit_flax import cct_3d
from vit_flax import vivit
from vit_flax import na_vit, na_vit_nested_tensor
from vit_flax import na_vit_nested_tensor_3d
from vit_flax import mae, simmim
from vit_flax import mpp
from vit_flax import dino
from vit_flax import es_vit
from vit_flax import pretrained_vit
from vit_flax import simple_vit_with_hyper_connections
from vit_flax import simple_vit_orthog_residual_update
from vit_flax import simple_vit_attn_residual
from vit_flax import attn_residual_with_dca_simple_vit
from vit_flax import vit_with_decorr
from vit_flax import simple_vit_with_sparse_gating
from vit_flax import simple_vit_with_relative_proj_pos_bias
from vit_flax import vit_with_patch_dropout
from vit_flax import simple_vit_with_patch_dropout
from vit_flax import simple_vit_with_register_tokens
from vit_flax import simple_vit_with_qk_norm
from vit_flax import vit_1d
from vit_flax import simple_vit_1d
from vit_flax import simple_flash_attn_vit
from vit_flax import simple_flash_attn_vit_3d
from vit_flax import simple_vit_with_value_residual
from vit_flax import simple_vit_with_fft
from vit_flax import simple_uvit
from vit_flax import local_vit
from vit_flax import jumbo_vit
from vit_flax import vit_with_keel_post_ln
from vit_flax import simple_vit_with_specialized_cls
from vit_flax import vit_nd
from vit_flax import vit_nd_rotary
from vit_flax import vit_nd_pope
from vit_flax import looped_vit
from vit_flax import jet_vit
from vit_flax import vit_5
from vit_flax import rvt
from vit_flax import normalized_vit
from vit_flax import look_vit
from vit_flax import vit_detpool
from vit_flax import levjepa, levjepa_nd
from vit_flax import vat, vaat
from vit_flax import vivit_with_moss, accept_video_wrapper
from vit_flax import wwt
from vit_flax import vat_siglip
from vit_flax import lejepa

# the input sizes a configuration takes: each architecture's size arithmetic, as its forward computes it


def _strided(side: int, stride: int = 2) -> int:
    """A side after a conv of `stride` padded by (kernel - 1) / 2 (which keeps a stride-1 map's size): rounded up."""
    return -(-side // stride)


def _conv_output(side: int, kernel: int, stride: int, padding: int) -> int:
    return (side + 2 * padding - kernel) // stride + 1


def _twins_svt_fits(model: twins_svt.TwinsSVT, height: int, width: int) -> bool:
    """TwinsSVT checks its stages' patches, windows and key / value convs itself, on the shape alone."""
    try:
        model.check_input(jax.ShapeDtypeStruct((1, height, width, model.channels), np.float32))
    except ValueError:
        return False
    return True


def _scalable_vit_fits(model: scalable_vit.ScalableViT, height: int, width: int) -> bool:
    """The stride-4 stem and each stride-2 downsample round up; a stage with layers needs its map at least its
    reduction factor (the keys' conv has that kernel) and divisible by its window (None: one window, any map)."""
    sides = (_strided(height, 4), _strided(width, 4))
    for index, config in enumerate(model.stage_configs()):
        if index:
            sides = tuple(_strided(side) for side in sides)
        window = config['iwsa_window_size']
        if config['depth'] and (min(sides) < config['ssa_reduction_factor']
                                or window is not None and any(side % window for side in sides)):
            return False
    return True


def _crossformer_fits(model: crossformer.CrossFormer, height: int, width: int) -> bool:
    """Every kernel of a stage's cross-scale embedding must give one map size (kernels of both parities agree only
    on some sides), of at least a pixel, and a stage with layers needs it divisible by both its windows."""
    sides = (height, width)
    for config in model.stage_configs():
        stride = config['cross_embed_strides']
        outputs = {tuple(_conv_output(side, kernel, stride, (kernel - stride) // 2) for side in sides)
                   for kernel in config['cross_embed_kernel_sizes']}
        if len(outputs) > 1:
            return False
        (sides,) = outputs
        windows = (config['local_window_size'], config['global_window_size'])
        if min(sides) < 1 or config['depth'] and any(side % window for side in sides for window in windows):
            return False
    return True


def _regionvit_fits(model: regionvit.RegionViT, height: int, width: int) -> bool:
    """The image tiles into region patches; the local tokenizer downsamples 4x (rounding as its convs do) and each
    later stage halves both maps, rounding up; a stage with layers needs every region token to own a whole window of
    local tokens, and every stage's window must index inside its relative position table."""
    patch = model.region_patch_size
    if height % patch or width % patch:
        return False
    if model.tokenize_local_3_conv:
        local = tuple(_strided(_strided(side)) for side in (height, width))
    else:
        local = tuple(_conv_output(side, 8, 4, 3) for side in (height, width))
    region = (height // patch, width // patch)
    table_rows = (2 * model.window_size - 1) ** 2
    for index, depth in enumerate(regionvit.cast_tuple(model.depth, 4)):
        if index:
            local, region = (tuple(_strided(side) for side in sides) for sides in (local, region))
        if depth and any(local_side % region_side for local_side, region_side in zip(local, region)):
            return False
        indices = regionvit.local_bias_indices(local[0] // region[0], local[1] // region[1], model.window_size)
        if indices.size and (indices.min() < 0 or indices.max() >= table_rows):
            return False
    return True


def _max_vit_fits(model: max_vit.MaxViT, height: int, width: int) -> bool:
    """The stride-2 stem and each non-empty stage's first (stride-2) MBConv round up; the window divides every
    non-empty stage's map."""
    sides = (_strided(height), _strided(width))
    for depth in model.depth:
        if depth:
            sides = tuple(_strided(side) for side in sides)
            if any(side % model.window_size for side in sides):
                return False
    return True


def _mobile_vit_fits(model: mobile_vit.MobileViT, height: int, width: int) -> bool:
    """Two stride-2 stem convs, then three stride-2 MV2 blocks (all rounding up), each followed by a MobileViT block
    whose map must divide into `patch_size` patches."""
    sides = (_strided(_strided(height)), _strided(_strided(width)))
    for _ in range(3):
        sides = tuple(_strided(side) for side in sides)
        if any(side % patch for side, patch in zip(sides, model.patch_size)):
            return False
    return True


def _levit_fits(model: LeViT, height: int, width: int) -> bool:
    """The conv embedding's four stride-2 convs round up, and the position biases are built for an
    `image_size // 16` map (so an `image_size` that is no multiple of 16 does not fit itself)."""
    return all(_strided(side, 16) == model.image_size // 16 for side in (height, width))


# example inputs


def _draw(shape: tuple[int, ...], rng: np.random.Generator | None) -> np.ndarray:
    """Zeros for shape inference (rng None), else standard normal float32."""
    return np.zeros(shape, np.float32) if rng is None else rng.standard_normal(shape, dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class Images:
    """Images (batch, height, width, channels) at the model's own `image_size` and `channels`.

    vit-pytorch takes (batch, channels, height, width).
    """

    def size(self, model: nn.Module) -> tuple[int, int]:
        return pair(model.image_size)

    def example(self, model: nn.Module, batch: int = 1, rng: np.random.Generator | None = None) -> tuple:
        return (_draw((batch, *self.size(model), model.channels), rng),)

    def to_torch_layout(self, args: tuple) -> tuple:
        (images,) = args
        return (np.ascontiguousarray(np.moveaxis(images, -1, 1)),)


@dataclasses.dataclass(frozen=True)
class TimmImages(Images):
    """Images at a timm-style model's `img_size` with its `in_chans` channels (pretrained_vit.VisionTransformer keeps
    timm's keyword names)."""

    def size(self, model: nn.Module) -> tuple[int, int]:
        return pair(model.img_size)

    def example(self, model: nn.Module, batch: int = 1, rng: np.random.Generator | None = None) -> tuple:
        return (_draw((batch, *self.size(model), model.in_chans), rng),)


@dataclasses.dataclass(frozen=True)
class PatchGridImages(Images):
    """Images for a module with a `patch_size` but no `image_size` (a standalone patch tokenizer such as
    vit_for_small_dataset.SPT): a `grid` of (rows, columns) patches, with the model's own `channels`."""

    grid: tuple[int, int] = (2, 3)

    def size(self, model: nn.Module) -> tuple[int, int]:
        patch_height, patch_width = pair(model.patch_size)
        return self.grid[0] * patch_height, self.grid[1] * patch_width


@dataclasses.dataclass(frozen=True)
class SizedImages(Images):
    """Images of a fixed `size` (height, width) with the model's own `channels`, for a model that takes every image
    size and has no `image_size` (cvt.CvT: its padded convs shrink a map to 1 x 1 at worst)."""

    fixed_size: tuple[int, int] = (32, 32)

    def size(self, model: nn.Module) -> tuple[int, int]:
        return self.fixed_size


@dataclasses.dataclass(frozen=True)
class StagedImages(SizedImages):
    """Images for a model with no `image_size` whose stages each halve the feature map and need its sides divisible
    by a window (sep_vit.SepViT): `fixed_size` for one stage (`len(model.depth) == 1`), doubled per further stage, so
    that every stage's map is whole windows whatever the configuration (SepViT's windows are always 7 x 7)."""

    def size(self, model: nn.Module) -> tuple[int, int]:
        scale = 2 ** max(len(model.depth) - 1, 0)
        return self.fixed_size[0] * scale, self.fixed_size[1] * scale


# the largest square side FittedImages tries: far above the smallest side a real configuration takes (a few hundred
# pixels for the papers' presets), and small enough that a configuration no size fits is told so at once (a side costs
# microseconds to check)
LARGEST_FITTED_SIDE = 8192


@dataclasses.dataclass(frozen=True)
class FittedImages(Images):
    """Images for a model whose stages constrain the input's size (strides, patch sizes and windows per stage), with
    the model's own `channels`: `preferred_size` (height, width), or the model's `image_size` where that is None,
    when the configuration takes it, else the smallest square it takes. `fits(model, height, width)` is the
    architecture's size arithmetic from the model's fields (each stage's map size and what must divide it); the
    converters only need some input the model takes, since parameter shapes do not depend on its size."""

    fits: Callable[[nn.Module, int, int], bool]
    preferred_size: tuple[int, int] | None = None

    def size(self, model: nn.Module) -> tuple[int, int]:
        preferred = self.preferred_size or pair(model.image_size)
        if self.fits(model, *preferred):
            return preferred
        side = next((side for side in range(1, LARGEST_FITTED_SIDE + 1) if self.fits(model, side, side)), None)
        if side is None:
            raise ValueError(
                f'{type(model).__name__}: no image of up to {LARGEST_FITTED_SIDE} x {LARGEST_FITTED_SIDE} pixels fits '
                "this configuration's strides, patch sizes and windows, so no example input can be derived to learn "
                'its variables from; pass one the model takes as example_inputs=(images,)'
            )
        return side, side


@dataclasses.dataclass(frozen=True)
class RGBImages(FittedImages):
    """3-channel FittedImages, for a model whose `channels` keyword is not the input's channel count
    (mobile_vit.MobileViT: its stage widths; the stem conv always takes 3 channels)."""

    def example(self, model: nn.Module, batch: int = 1, rng: np.random.Generator | None = None) -> tuple:
        return (_draw((batch, *self.size(model), 3), rng),)


@dataclasses.dataclass(frozen=True)
class Videos(Images):
    """Videos or volumes (batch, frames, height, width, channels) at the model's own `frames`, `image_size` and
    `channels`. vit-pytorch takes (batch, channels, frames, height, width): the same move of the last axis to the
    second as for images; further inputs (vivit.ViT's (batch, frames) mask) pass as they are."""

    def example(self, model: nn.Module, batch: int = 1, rng: np.random.Generator | None = None) -> tuple:
        return (_draw((batch, model.frames, *self.size(model), model.channels), rng),)

    def to_torch_layout(self, args: tuple) -> tuple:
        videos, *rest = args
        return (*super().to_torch_layout((videos,)), *rest)


@dataclasses.dataclass(frozen=True)
class NDInputs:
    """Inputs of any number of spatial dimensions (batch, *input_shape, channels) at the model's own `ndim`,
    `input_shape` and `channels` (vit_nd.ViTND). vit-pytorch takes (batch, channels, *input_shape): the same move of
    the last axis to the second as for images."""

    def example(self, model: nn.Module, batch: int = 1, rng: np.random.Generator | None = None) -> tuple:
        shape = (model.resolved_input_shape if hasattr(type(model), 'resolved_input_shape')  # looped_vit's own
                 else vit_nd.ensure_tuple(model.input_shape, model.ndim))
        return (_draw((batch, *shape, model.channels), rng),)

    def to_torch_layout(self, args: tuple) -> tuple:
        (inputs,) = args
        return (np.ascontiguousarray(np.moveaxis(inputs, -1, 1)),)


@dataclasses.dataclass(frozen=True)
class MixedResolutionImages:
    """Images of mixed sizes and aspect ratios for a native-resolution model (na_vit.NaViT), each a multiple of the
    model's `patch_size` and at most its `image_size`: `batch` lists of one to three images, each list packed into
    one sequence (rows hold different numbers of images); with `grouped=False` one flat list of `batch` + 1 images
    (na_vit_nested_tensor.NaViT). vit-pytorch takes the same lists of (channels, height, width) tensors."""

    grouped: bool = True

    def _sizes(self, model: nn.Module, count: int) -> list[tuple[int, int]]:
        p = model.patch_size
        rows, columns = (side // p for side in pair(model.image_size))
        grids = [(rows, columns), (max(1, rows // 2), columns), (1, max(1, columns - 1)), (rows, 1),
                 (max(1, rows - 1), max(1, columns // 2))]
        return [(grids[i % len(grids)][0] * p, grids[i % len(grids)][1] * p) for i in range(count)]

    def example(self, model: nn.Module, batch: int = 1, rng: np.random.Generator | None = None) -> tuple:
        if not self.grouped:
            return ([_draw((*size, model.channels), rng) for size in self._sizes(model, batch + 1)],)
        counts = [(2, 1, 3)[i % 3] for i in range(batch)]
        sizes = iter(self._sizes(model, sum(counts)))
        return ([[_draw((*next(sizes), model.channels), rng) for _ in range(count)] for count in counts],)

    def to_torch_layout(self, args: tuple) -> tuple:
        (images,) = args
        channels_first = lambda image: np.ascontiguousarray(np.moveaxis(image, -1, 0))
        if not self.grouped:
            return ([channels_first(image) for image in images],)
        return ([[channels_first(image) for image in group] for group in images],)


@dataclasses.dataclass(frozen=True)
class MixedResolutionVideos(MixedResolutionImages):
    """Videos or volumes of mixed frame counts, sizes and aspect ratios for a native-resolution model
    (na_vit_nested_tensor_3d.NaViT): one flat list of `batch` + 1 arrays (frames, height, width, channels), the frames
    a multiple of the model's `frame_patch_size` up to `max_frames`, the sides as MixedResolutionImages' images.
    vit-pytorch takes the same list of (channels, frames, height, width) tensors."""

    def example(self, model: nn.Module, batch: int = 1, rng: np.random.Generator | None = None) -> tuple:
        pf = model.frame_patch_size
        frame_grid = model.max_frames // pf
        frame_grids = (frame_grid, 1, max(1, frame_grid // 2))
        sizes = self._sizes(model, batch + 1)
        return ([_draw((frame_grids[i % 3] * pf, *size, model.channels), rng) for i, size in enumerate(sizes)],)

    def to_torch_layout(self, args: tuple) -> tuple:
        (videos,) = args
        return ([np.ascontiguousarray(np.moveaxis(video, -1, 0)) for video in videos],)


@dataclasses.dataclass(frozen=True)
class Series:
    """1-D series (batch, seq_len, channels), channels-last, at the model's own `seq_len` and `channels` (vit_1d,
    simple_vit_1d). vit-pytorch takes (batch, channels, seq_len): the same move of the last axis to the second as
    for images."""

    def example(self, model: nn.Module, batch: int = 1, rng: np.random.Generator | None = None) -> tuple:
        return (_draw((batch, model.seq_len, model.channels), rng),)

    def to_torch_layout(self, args: tuple) -> tuple:
        (series,) = args
        return (np.ascontiguousarray(np.moveaxis(series, -1, 1)),)


@dataclasses.dataclass(frozen=True)
class Tokens:
    """Token sequences (batch, n, dim) at the model's own `dim`, for modules that take tokens, not images
    (vit_with_patch_merger.PatchMerger). vit-pytorch takes the same layout."""

    n: int = 6

    def example(self, model: nn.Module, batch: int = 1, rng: np.random.Generator | None = None) -> tuple:
        return (_draw((batch, self.n, model.dim), rng),)

    def to_torch_layout(self, args: tuple) -> tuple:
        return tuple(args)


@dataclasses.dataclass(frozen=True)
class ImagesAndLabels:
    """(images, integer labels) for a training objective that takes both (distill.DistillWrapper): images at
    the student's `image_size` and `channels`, labels in [0, student.num_classes). vit-pytorch takes
    (batch, channels, height, width) images and int64 labels."""

    def example(self, model: nn.Module, batch: int = 1, rng: np.random.Generator | None = None) -> tuple:
        (images,) = Images().example(model.student, batch, rng)
        if rng is None:
            return images, np.zeros((batch,), np.int32)
        return images, rng.integers(0, model.student.num_classes, (batch,)).astype(np.int32)

    def to_torch_layout(self, args: tuple) -> tuple:
        images, labels = args
        return (*Images().to_torch_layout((images,)), np.asarray(labels, np.int64))


@dataclasses.dataclass(frozen=True)
class ImagesAndObjectMasks(Images):
    """(images, boolean pixel masks (batch, height, width)) for a model that attends and pools over an object mask
    (vit_detpool.ViTDetPool): images at the model's `image_size` and `channels`; every pixel in the mask for shape
    inference (rng None), else about a third of the pixels, so some patches fall outside. vit-pytorch takes
    (batch, channels, height, width) images and the same masks."""

    def example(self, model: nn.Module, batch: int = 1, rng: np.random.Generator | None = None) -> tuple:
        (images,) = super().example(model, batch, rng)
        if rng is None:
            return images, np.ones(images.shape[:3], bool)
        return images, rng.random(images.shape[:3]) < 0.3

    def to_torch_layout(self, args: tuple) -> tuple:
        images, masks = args
        return (*super().to_torch_layout((images,)), np.asarray(masks, bool))


@dataclasses.dataclass(frozen=True)
class CroppedImages(Images):
    """Images for a self-distillation learner (dino.Dino, es_vit.EsViTTrainer, lejepa.LeJEPA), which crops them
    itself: square images at the learner's `image_size` with its encoder's channels."""

    def size(self, model: nn.Module) -> tuple[int, int]:
        return model.image_size, model.image_size

    def example(self, model: nn.Module, batch: int = 1, rng: np.random.Generator | None = None) -> tuple:
        return (_draw((batch, *self.size(model), getattr(model.net, 'channels', 3)), rng),)


@dataclasses.dataclass(frozen=True)
class TowerImages(Images):
    """RGB images for an image tower with no `channels` keyword (vat_siglip.SigLIP: its patch embedding always takes
    3 channels): the largest square of whole patches within its `image_size`, which need not be a multiple of the
    patch."""

    def size(self, model: nn.Module) -> tuple[int, int]:
        side = model.image_size // model.patch_size * model.patch_size
        return side, side

    def example(self, model: nn.Module, batch: int = 1, rng: np.random.Generator | None = None) -> tuple:
        return (_draw((batch, *self.size(model), 3), rng),)


@dataclasses.dataclass(frozen=True)
class TokenVideos:
    """Token grids over time (batch, frames, height, width, dim) at the model's own `dim`, of `grid` (frames, height,
    width), for a module that takes video tokens (vivit_with_moss.MOSS). vit-pytorch takes the same layout."""

    grid: tuple[int, int, int] = (4, 3, 5)

    def example(self, model: nn.Module, batch: int = 1, rng: np.random.Generator | None = None) -> tuple:
        return (_draw((batch, *self.grid, model.dim), rng),)

    def to_torch_layout(self, args: tuple) -> tuple:
        return tuple(args)


@dataclasses.dataclass(frozen=True)
class ImageModelVideos(Videos):
    """Videos (batch, frames, height, width, channels) for a wrapper that runs an image model on every frame
    (accept_video_wrapper.AcceptVideoWrapper): each frame of the wrapped model's own example size and channels (its
    entry's input kind), `frames` frames, or the wrapper's `time_seq_len` where its time embedding takes fewer.
    vit-pytorch takes (batch, channels, frames, height, width)."""

    frames: int = 3

    def example(self, model: nn.Module, batch: int = 1, rng: np.random.Generator | None = None) -> tuple:
        (image,) = example_inputs(model.image_model)
        frames = min(self.frames, model.time_seq_len) if model.add_time_pos_emb else self.frames
        return (_draw((batch, frames, *np.shape(image)[1:]), rng),)


@dataclasses.dataclass(frozen=True)
class Audio:
    """Audio for an audio spectrogram transformer (vaat.AST): waveforms (batch, samples), the fewest samples whose
    spectrogram (by the model's spec_* keywords) fills `patch_grid[1]` patches along time; with the model's
    `accept_spec`, spectrograms (batch, time, freq) of `patch_grid` (rows along frequency, columns along time) patches
    and one more step of each, which the model crops. vit-pytorch takes the same layouts."""

    patch_grid: tuple[int, int] = (2, 2)

    def shape(self, model: nn.Module) -> tuple[int, ...]:
        """One example's shape: (samples,), or (time, freq) with `accept_spec`."""
        patch_height, patch_width = pair(model.patch_size)
        if model.accept_spec:
            return self.patch_grid[1] * patch_width + 1, self.patch_grid[0] * patch_height + 1
        return (model.waveform_length(self.patch_grid[1]),)

    def example(self, model: nn.Module, batch: int = 1, rng: np.random.Generator | None = None) -> tuple:
        return (_draw((batch, *self.shape(model)), rng),)

    def to_torch_layout(self, args: tuple) -> tuple:
        return tuple(args)


@dataclasses.dataclass(frozen=True)
class VisionActionInputs:
    """What a vision-action transformer takes (vat.VAT): views (batch, views, height, width, channels) at its `vit`'s
    `image_size` and `channels`, with a frame axis after the views (batch, views, frames, height, width, channels)
    where `time_seq_len > 1`, as many views as `num_views` (one where it is 0, 1 or None); then the conditioning the
    configuration takes, in the model's positional order up to the first it does not take: `extra` (batch,
    dim_extra_token) where `dim_extra_token` is set, then `tasks` (batch,) in [0, num_tasks) where `num_tasks` is,
    then `advantages` (batch,) in [-1, num_advantage_bins) where there are bins (zeros for shape inference).
    vit-pytorch takes (batch, views, channels, [frames,] height, width) and the conditioning as keywords (int64
    ids)."""

    def video(self, model: nn.Module, views: int | None, batch: int, rng: np.random.Generator | None) -> np.ndarray:
        height, width = pair(model.vit.image_size)
        frames = (model.time_seq_len,) if model.time_seq_len > 1 else ()
        return _draw((batch, views if views and views > 1 else 1, *frames, height, width, model.vit.channels), rng)

    def conditioning(self, model: nn.Module, batch: int, rng: np.random.Generator | None) -> list:
        ids = lambda low, high: (np.zeros((batch,), np.int32) if rng is None  # noqa: E731
                                 else rng.integers(low, high, (batch,)).astype(np.int32))
        inputs = []
        if model.dim_extra_token is not None:
            inputs.append(_draw((batch, model.dim_extra_token), rng))
            if model.num_tasks is not None:
                inputs.append(ids(0, model.num_tasks))
                if model.num_advantage_bins > 0:
                    inputs.append(ids(-1, model.num_advantage_bins))
        return inputs

    def example(self, model: nn.Module, batch: int = 1, rng: np.random.Generator | None = None) -> tuple:
        return (self.video(model, model.num_views, batch, rng), *self.conditioning(model, batch, rng))

    @staticmethod
    def torch_conditioning(conditioning) -> list:
        return [a if np.issubdtype(np.asarray(a).dtype, np.floating) else np.asarray(a, np.int64) for a in conditioning]

    def to_torch_layout(self, args: tuple) -> tuple:
        video, *conditioning = args
        # channels-last to vit-pytorch's channel axis, after the views: (b c h w), (b v c h w) or (b v c t h w)
        video = np.ascontiguousarray(np.moveaxis(video, -1, 1 if video.ndim == 4 else 2))
        return (video, *self.torch_conditioning(conditioning))


@dataclasses.dataclass(frozen=True)
class ViewsAndConditioning(VisionActionInputs):
    """VisionActionInputs for vat_siglip.SigLIPVAT, whose views always have a frame axis (batch, views, frames,
    height, width, 3): `time_seq_len` frames of RGB images at TowerImages' size of its tower (`siglip_image_size`,
    `siglip_patch_size`)."""

    def video(self, model: nn.Module, views: int | None, batch: int, rng: np.random.Generator | None) -> np.ndarray:
        side = model.siglip_image_size // model.siglip_patch_size * model.siglip_patch_size
        return _draw((batch, views or 1, model.time_seq_len, side, side, 3), rng)


@dataclasses.dataclass(frozen=True)
class VisionAudioActionInputs(VisionActionInputs):
    """What a vision-audio-action transformer takes (vaat.VAAT): VisionActionInputs' views (as many as
    `num_image_views`), then audio as its `ast` takes it (Audio's waveforms or spectrograms), with a view axis after
    the batch where `num_audio_views > 1`, then the conditioning. vit-pytorch takes the audio as it is."""

    def example(self, model: nn.Module, batch: int = 1, rng: np.random.Generator | None = None) -> tuple:
        video = self.video(model, model.num_image_views, batch, rng)
        views = (model.num_audio_views,) if model.num_audio_views and model.num_audio_views > 1 else ()
        audio = _draw((batch, *views, *Audio().shape(model.ast)), rng)
        return (video, audio, *self.conditioning(model, batch, rng))

    def to_torch_layout(self, args: tuple) -> tuple:
        video, audio, *conditioning = args
        return (np.ascontiguousarray(np.moveaxis(video, -1, 2)), audio, *self.torch_conditioning(conditioning))


@dataclasses.dataclass(frozen=True)
class EncoderInputs:
    """The inputs of a learner's wrapped `encoder` (levjepa.LeVJEPA, levjepa_nd.LeVJEPAND), which it crops or
    augments itself: `inputs` (the encoder's entry's input kind) at the encoder's own sizes and channels."""

    inputs: Any = Videos()

    def example(self, model: nn.Module, batch: int = 1, rng: np.random.Generator | None = None) -> tuple:
        return self.inputs.example(model.encoder, batch, rng)

    def to_torch_layout(self, args: tuple) -> tuple:
        return self.inputs.to_torch_layout(args)


# why recorder.Recorder cannot record a kind of model (registry.Entry.not_recordable)
HIERARCHICAL = ('a hierarchical model: its stages attend over feature maps of different sizes, so the maps '
                'cannot be stacked')
OBJECTIVE = 'a training objective that returns a loss: record its encoder instead'


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str  # '<file>.<Class>', the same for vit-flax and vit-pytorch
    flax_class: type[nn.Module]
    paper: str
    inputs: Any = Images()  # what the model takes: an example of it for the converters
    # the vit-pytorch '<file>.<Class>' to compare with and export to, where the namesake cannot run (its forward
    # is broken) but another class has the same state dict and the same outputs
    torch_name: str | None = None
    # the package of the torch twin: vit-pytorch, or for the pretrained-checkpoint family the library whose layout
    # the checkpoints have ('timm.models': torch_name 'vision_transformer.VisionTransformer')
    torch_package: str = 'vit_pytorch'
    # recorder.Recorder: the architecture's `transformer` is a stack of plain softmax attention layers of one shape,
    # whose maps are tested against vit-pytorch's Recorder; otherwise `not_recordable` says why not
    recordable: bool = False
    not_recordable: str = ''

    @property
    def module(self) -> str:
        return self.name.rsplit('.', 1)[0]

    @property
    def class_name(self) -> str:
        return self.name.rsplit('.', 1)[1]

    @property
    def torch_module(self) -> str:
        return f"{self.torch_package}.{(self.torch_name or self.name).rsplit('.', 1)[0]}"

    @property
    def torch_class_name(self) -> str:
        return (self.torch_name or self.name).rsplit('.', 1)[1]


ENTRIES: tuple[Entry, ...] = (
    Entry(
        name='vit.ViT',
        flax_class=ViT,
        recordable=True,
        paper='An Image is Worth 16x16 Words (Dosovitskiy et al., 2020)',
    ),
    Entry(
        name='simple_vit.SimpleViT',
        flax_class=SimpleViT,
        recordable=True,
        paper='Better plain ViT baselines for ImageNet-1k (Beyer et al., 2022)',
    ),
    Entry(
        name='parallel_vit.ViT',
        flax_class=ParallelViT,
        recordable=True,
        paper='Three things everyone should know about Vision Transformers (Touvron et al., 2022)',
    ),
    Entry(
        name='deepvit.DeepViT',
        flax_class=DeepViT,
        not_recordable="re-attention mixes the heads' maps after the softmax, which vit-pytorch computes inline "
                       '(there is no `attend` to hook, so no reference to match)',
        paper='DeepViT: Towards Deeper Vision Transformer (Zhou et al., 2021)',
    ),
    Entry(
        name='vit_for_small_dataset.ViT',
        flax_class=vit_for_small_dataset.ViT,
        recordable=True,
        paper='Vision Transformer for Small-Size Datasets (Lee et al., 2021)',
    ),
    Entry(
        name='vit_for_small_dataset.SPT',
        flax_class=vit_for_small_dataset.SPT,
        not_recordable='a patch tokenizer, with no attention',
        paper='Vision Transformer for Small-Size Datasets (Lee et al., 2021)',
        inputs=PatchGridImages(),
    ),
    Entry(
        name='cait.CaiT',
        flax_class=CaiT,
        not_recordable='no `transformer`: its patch and class-attention stacks (`patch_transformer`, '
                       '`cls_transformer`) have maps of different shapes',
        paper='Going deeper with Image Transformers (Touvron et al., 2021)',
    ),
    Entry(
        name='vit_with_patch_merger.ViT',
        flax_class=vit_with_patch_merger.ViT,
        not_recordable='the patch merger changes the token count mid-stack, so the maps cannot be stacked',
        paper='Learning to Merge Tokens in Vision Transformers (Renggli et al., 2022)',
    ),
    Entry(
        name='vit_with_patch_merger.PatchMerger',
        flax_class=vit_with_patch_merger.PatchMerger,
        not_recordable='a token merger, with no self-attention layers',
        paper='Learning to Merge Tokens in Vision Transformers (Renggli et al., 2022)',
        inputs=Tokens(),
    ),
    Entry(
        name='t2t.T2TViT',
        flax_class=T2TViT,
        recordable=True,
        paper='Tokens-to-Token ViT (Yuan et al., 2021)',
    ),
    Entry(
        name='cct.CCT',
        flax_class=CCT,
        not_recordable='no `transformer` (its encoder is `classifier`), and vit-pytorch computes the softmax '
                       'inline (there is no `attend` to hook, so no reference to match)',
        paper='Escaping the Big Data Paradigm with Compact Transformers (Hassani et al., 2021)',
    ),
    Entry(
        name='mp3.ViT',
        flax_class=mp3.ViT,
        recordable=True,
        paper='Position Prediction as an Effective Pretraining Strategy (Zhai et al., 2022)',
    ),
    Entry(
        name='cross_vit.CrossViT',
        flax_class=CrossViT,
        not_recordable='no `transformer`: two scales and cross attention give maps of several shapes '
                       "(Extractor(model, layer_name='multi_scale_encoder') gives both scales' embeddings)",
        paper='CrossViT: Cross-Attention Multi-Scale Vision Transformer (Chen et al., 2021)',
    ),
    Entry(
        name='pit.PiT',
        flax_class=PiT,
        not_recordable=HIERARCHICAL,
        paper='Rethinking Spatial Dimensions of Vision Transformers (Heo et al., 2021)',
    ),
    Entry(
        name='efficient.ViT',
        flax_class=efficient.ViT,
        recordable=True,
        paper='An Image is Worth 16x16 Words (Dosovitskiy et al., 2020), any (efficient) transformer plugged in',
    ),
    Entry(
        name='distill.DistillableViT',
        flax_class=distill.DistillableViT,
        recordable=True,
        paper='Training data-efficient image transformers & distillation through attention (Touvron et al., 2020)',
    ),
    Entry(
        name='distill.DistillableT2TViT',
        flax_class=distill.DistillableT2TViT,
        recordable=True,
        paper='Training data-efficient image transformers & distillation through attention (Touvron et al., 2020)',
        torch_name='t2t.T2TViT',
    ),
    Entry(
        name='distill.DistillableEfficientViT',
        flax_class=distill.DistillableEfficientViT,
        recordable=True,
        paper='Training data-efficient image transformers & distillation through attention (Touvron et al., 2020)',
        torch_name='efficient.ViT',
    ),
    Entry(
        name='distill.DistillWrapper',
        flax_class=distill.DistillWrapper,
        not_recordable=OBJECTIVE,
        paper='Training data-efficient image transformers & distillation through attention (Touvron et al., 2020)',
        inputs=ImagesAndLabels(),
    ),
    Entry(
        name='cvt.CvT',
        flax_class=CvT,
        not_recordable=HIERARCHICAL,
        paper='CvT: Introducing Convolutions to Vision Transformers (Wu et al., 2021)',
        inputs=SizedImages(fixed_size=(24, 20)),
    ),
    Entry(
        name='ats_vit.ViT',
        flax_class=ats_vit.ViT,
        not_recordable='adaptive token sampling drops tokens between layers, so the maps cannot be stacked',
        paper='Adaptive Token Sampling For Efficient Vision Transformers (Fayyaz et al., 2021)',
    ),
    Entry(
        name='learnable_memory_vit.ViT',
        flax_class=learnable_memory_vit.ViT,
        recordable=True,
        paper='Fine-tuning Image Transformers using Learnable Memory (Sandler et al., 2022)',
    ),
    Entry(
        name='learnable_memory_vit.Adapter',
        flax_class=learnable_memory_vit.Adapter,
        not_recordable="no `transformer` of its own: it runs the wrapped ViT's with memory tokens (record the "
                       'ViT itself)',
        paper='Fine-tuning Image Transformers using Learnable Memory (Sandler et al., 2022)',
    ),
    Entry(
        name='levit.LeViT',
        flax_class=LeViT,
        not_recordable=HIERARCHICAL,
        paper="LeViT: a Vision Transformer in ConvNet's Clothing for Faster Inference (Graham et al., 2021)",
        inputs=FittedImages(_levit_fits),
    ),
    Entry(
        name='scalable_vit.ScalableViT',
        flax_class=scalable_vit.ScalableViT,
        not_recordable=HIERARCHICAL,
        paper='ScalableViT: Rethinking the Context-oriented Generalization of Vision Transformer (Yang et al., 2022)',
        inputs=FittedImages(_scalable_vit_fits, preferred_size=(32, 24)),
    ),
    Entry(
        name='sep_vit.SepViT',
        flax_class=sep_vit.SepViT,
        not_recordable=HIERARCHICAL,
        paper='SepViT: Separable Vision Transformer (Li et al., 2022)',
        inputs=StagedImages(fixed_size=(28, 28)),
    ),
    Entry(
        name='twins_svt.TwinsSVT',
        flax_class=twins_svt.TwinsSVT,
        not_recordable=HIERARCHICAL,
        paper='Twins: Revisiting the Design of Spatial Attention in Vision Transformers (Chu et al., 2021)',
        inputs=FittedImages(_twins_svt_fits, preferred_size=(8, 12)),
    ),
    Entry(
        name='max_vit.MaxViT',
        flax_class=max_vit.MaxViT,
        not_recordable=HIERARCHICAL,
        paper='MaxViT: Multi-Axis Vision Transformer (Tu et al., 2022)',
        inputs=FittedImages(_max_vit_fits, preferred_size=(32, 64)),
    ),
    Entry(
        name='xcit.XCiT',
        flax_class=xcit.XCiT,
        not_recordable='cross-covariance attention attends over feature channels, not tokens, and no '
                       '`transformer`',
        paper='XCiT: Cross-Covariance Image Transformers (El-Nouby et al., 2021)',
    ),
    Entry(
        name='mobile_vit.MobileViT',
        flax_class=mobile_vit.MobileViT,
        not_recordable=HIERARCHICAL,
        paper='MobileViT: Light-weight, General-purpose, and Mobile-friendly Vision Transformer (Mehta & Rastegari, 2021)',
        inputs=RGBImages(_mobile_vit_fits),
    ),
    Entry(
        name='crossformer.CrossFormer',
        flax_class=crossformer.CrossFormer,
        not_recordable=HIERARCHICAL,
        paper='CrossFormer: A Versatile Vision Transformer Hinging on Cross-scale Attention (Wang et al., 2021)',
        inputs=FittedImages(_crossformer_fits, preferred_size=(32, 16)),
    ),
    Entry(
        name='regionvit.RegionViT',
        flax_class=regionvit.RegionViT,
        not_recordable=HIERARCHICAL,
        paper='RegionViT: Regional-to-Local Attention for Vision Transformers (Chen et al., 2021)',
        inputs=FittedImages(_regionvit_fits, preferred_size=(16, 32)),
    ),
    Entry(
        name='nest.NesT',
        flax_class=nest.NesT,
        not_recordable=HIERARCHICAL,
        paper='Nested Hierarchical Transformer (Zhang et al., 2021)',
    ),
    Entry(
        name='vit_3d.ViT',
        flax_class=vit_3d.ViT,
        recordable=True,
        paper='An Image is Worth 16x16 Words (Dosovitskiy et al., 2020), on video / volume patches',
        inputs=Videos(),
    ),
    Entry(
        name='simple_vit_3d.SimpleViT',
        flax_class=simple_vit_3d.SimpleViT,
        recordable=True,
        paper='Better plain ViT baselines for ImageNet-1k (Beyer et al., 2022), on video / volume patches',
        inputs=Videos(),
    ),
    Entry(
        name='cct_3d.CCT',
        flax_class=cct_3d.CCT,
        not_recordable='no `transformer` (its encoder is `classifier`), and vit-pytorch computes the softmax '
                       'inline (there is no `attend` to hook, so no reference to match)',
        paper='Escaping the Big Data Paradigm with Compact Transformers (Hassani et al., 2021)',
        inputs=Videos(),
    ),
    Entry(
        name='vivit.ViT',
        flax_class=vivit.ViT,
        not_recordable='no single `transformer`: the factorised encoders (`spatial_transformer`, '
                       '`temporal_transformer`) attend over different token counts',
        paper='ViViT: A Video Vision Transformer (Arnab et al., 2021)',
        inputs=Videos(),
        torch_name='vivit.ViViT',
    ),
    Entry(
        name='na_vit.NaViT',
        flax_class=na_vit.NaViT,
        not_recordable="vit-pytorch computes NaViT's attention with F.scaled_dot_product_attention, which never "
                       'forms the maps (no reference to match)',
        paper="Patch n' Pack: NaViT, a Vision Transformer for any Aspect Ratio and Resolution (Dehghani et al., 2023)",
        inputs=MixedResolutionImages(),
    ),
    Entry(
        name='na_vit_nested_tensor.NaViT',
        flax_class=na_vit_nested_tensor.NaViT,
        not_recordable="vit-pytorch computes NaViT's attention with F.scaled_dot_product_attention, which never "
                       'forms the maps (no reference to match)',
        paper="Patch n' Pack: NaViT, a Vision Transformer for any Aspect Ratio and Resolution (Dehghani et al., 2023)",
        inputs=MixedResolutionImages(grouped=False),
    ),
    Entry(
        name='mp3.MP3',
        flax_class=mp3.MP3,
        not_recordable=OBJECTIVE,
        paper='Position Prediction as an Effective Pretraining Strategy (Zhai et al., 2022)',
    ),
    Entry(
        name='mae.MAE',
        flax_class=mae.MAE,
        not_recordable=OBJECTIVE,
        paper='Masked Autoencoders Are Scalable Vision Learners (He et al., 2021)',
    ),
    Entry(
        name='simmim.SimMIM',
        flax_class=simmim.SimMIM,
        not_recordable=OBJECTIVE,
        paper='SimMIM: A Simple Framework for Masked Image Modeling (Xie et al., 2021)',
    ),
    Entry(
        name='mpp.MPP',
        flax_class=mpp.MPP,
        not_recordable=OBJECTIVE,
        paper='An Image is Worth 16x16 Words (Dosovitskiy et al., 2020), masked patch prediction (appendix B.1.2)',
    ),
    Entry(
        name='dino.Dino',
        flax_class=dino.Dino,
        not_recordable=OBJECTIVE,
        paper='Emerging Properties in Self-Supervised Vision Transformers (Caron et al., 2021)',
        inputs=CroppedImages(),
    ),
    Entry(
        name='es_vit.EsViTTrainer',
        flax_class=es_vit.EsViTTrainer,
        not_recordable=OBJECTIVE,
        paper='Efficient Self-supervised Vision Transformers for Representation Learning (Li et al., 2021)',
        inputs=CroppedImages(),
    ),
    Entry(
        name='pretrained_vit.VisionTransformer',
        flax_class=pretrained_vit.VisionTransformer,
        torch_package='timm.models',
        torch_name='vision_transformer.VisionTransformer',
        not_recordable="timm's layout, not vit-pytorch's: Recorder hooks vit-pytorch's `transformer.layers`",
        paper='An Image is Worth 16x16 Words (Dosovitskiy et al., 2020), as timm, big_vision and Hugging Face '
              'publish its checkpoints; DeiT, DeiT III, registers, SigLIP options',
        inputs=TimmImages(),
    ),
    Entry(
        name='simple_vit_with_value_residual.SimpleViT',
        flax_class=simple_vit_with_value_residual.SimpleViT,
        recordable=True,
        paper='Value Residual Learning For Alleviating Attention Concentration In Transformers (Zhou et al., 2024)',
    ),
    Entry(
        name='vit_with_patch_dropout.ViT',
        flax_class=vit_with_patch_dropout.ViT,
        recordable=True,
        paper='PatchDropout: Economizing Vision Transformers Using Patch Dropout (Liu et al., 2022)',
    ),
    Entry(
        name='simple_vit_with_patch_dropout.SimpleViT',
        flax_class=simple_vit_with_patch_dropout.SimpleViT,
        recordable=True,
        paper='PatchDropout: Economizing Vision Transformers Using Patch Dropout (Liu et al., 2022)',
    ),
    Entry(
        name='simple_vit_with_register_tokens.SimpleViT',
        flax_class=simple_vit_with_register_tokens.SimpleViT,
        recordable=True,
        paper='Vision Transformers Need Registers (Darcet et al., 2023)',
    ),
    Entry(
        name='simple_vit_with_qk_norm.SimpleViT',
        flax_class=simple_vit_with_qk_norm.SimpleViT,
        recordable=True,
        paper='Scaling Vision Transformers to 22 Billion Parameters (Dehghani et al., 2023), query-key normalisation',
    ),
    Entry(
        name='vit_1d.ViT',
        flax_class=vit_1d.ViT,
        recordable=True,
        paper='An Image is Worth 16x16 Words (Dosovitskiy et al., 2020), on patches of 1-D series',
        inputs=Series(),
    ),
    Entry(
        name='simple_vit_1d.SimpleViT',
        flax_class=simple_vit_1d.SimpleViT,
        recordable=True,
        paper='Better plain ViT baselines for ImageNet-1k (Beyer et al., 2022), on patches of 1-D series',
        inputs=Series(),
    ),
    Entry(
        name='simple_flash_attn_vit.SimpleViT',
        flax_class=simple_flash_attn_vit.SimpleViT,
        not_recordable="vit-pytorch computes the attention with F.scaled_dot_product_attention, which never forms "
                       'the maps (no reference to match)',
        paper='Better plain ViT baselines for ImageNet-1k (Beyer et al., 2022), with FlashAttention (Dao et al., 2022)',
    ),
    Entry(
        name='simple_flash_attn_vit_3d.SimpleViT',
        flax_class=simple_flash_attn_vit_3d.SimpleViT,
        not_recordable="vit-pytorch computes the attention with F.scaled_dot_product_attention, which never forms "
                       'the maps (no reference to match)',
        paper='Better plain ViT baselines for ImageNet-1k (Beyer et al., 2022), with FlashAttention (Dao et al., '
              '2022), on video / volume patches',
        inputs=Videos(),
    ),
    Entry(
        name='simple_vit_with_hyper_connections.SimpleViT',
        flax_class=simple_vit_with_hyper_connections.SimpleViT,
        recordable=True,
        paper='Hyper-Connections (Zhu et al., 2024), with register tokens',
    ),
    Entry(
        name='simple_vit_with_fft.SimpleViT',
        flax_class=simple_vit_with_fft.SimpleViT,
        recordable=True,
        paper='Better plain ViT baselines for ImageNet-1k (Beyer et al., 2022), with 2D FFT patch tokens',
    ),
    Entry(
        name='simple_uvit.SimpleUViT',
        flax_class=simple_uvit.SimpleUViT,
        recordable=True,
        paper='All are Worth Words: A ViT Backbone for Diffusion Models (Bao et al., 2022)',
    ),
    Entry(
        name='simple_vit_attn_residual.SimpleViTAttnResidual',
        flax_class=simple_vit_attn_residual.SimpleViTAttnResidual,
        not_recordable='its attention layers compute the softmax inline (there is no `attend` to hook) and pool '
                       'over depth as well as tokens',
        paper='Attention residuals: each block attends over the outputs of all earlier blocks',
    ),
    Entry(
        name='local_vit.LocalViT',
        flax_class=local_vit.LocalViT,
        recordable=True,
        paper='LocalViT: Bringing Locality to Vision Transformers (Li et al., 2021)',
    ),
    Entry(
        name='jumbo_vit.JumboViT',
        flax_class=jumbo_vit.JumboViT,
        not_recordable='no `transformer`: its attention layers are the model\'s own `layers`, beside the jumbo '
                       'feed-forward they share',
        paper='Simpler Fast Vision Transformers with a Jumbo CLS Token (Fuller et al., 2025)',
    ),
    Entry(
        name='vit_with_keel_post_ln.ViT',
        flax_class=vit_with_keel_post_ln.ViT,
        recordable=True,
        paper='An Image is Worth 16x16 Words (Dosovitskiy et al., 2020), with KEEL scaled post-LayerNorm residuals',
    ),
    Entry(
        name='simple_vit_with_specialized_cls.SimpleViT',
        flax_class=simple_vit_with_specialized_cls.SimpleViT,
        recordable=True,
        paper='Better plain ViT baselines for ImageNet-1k (Beyer et al., 2022), with a class token of its own norms '
              'and early q, k, v projections (Marouani et al., 2026)',
    ),
    Entry(
        name='attn_residual_with_dca_simple_vit.SimpleViT',
        flax_class=attn_residual_with_dca_simple_vit.SimpleViT,
        not_recordable='its attention layers compute the softmax inline (there is no `attend` to hook) and read '
                       'depth mixes of the history, not one residual stream',
        paper='Attention Residuals (Kimi, 2026) with DeepCrossAttention (Heddes et al., 2025)',
    ),
    Entry(
        name='vit_nd.ViTND',
        flax_class=vit_nd.ViTND,
        not_recordable="vit-pytorch computes ViTND's attention in nd_attention (flex_attention, or an inline masked "
                       'softmax), with no `attend` to hook (no reference to match)',
        paper='An Image is Worth 16x16 Words (Dosovitskiy et al., 2020), on inputs of 1 to 7 dimensions, optionally '
              'causal along some',
        inputs=NDInputs(),
    ),
    Entry(
        name='vit_with_decorr.ViT',
        flax_class=vit_with_decorr.ViT,
        recordable=True,
        paper='Decorrelation speeds up vision transformers (arXiv 2510.14657), as an auxiliary loss',
    ),
    Entry(
        name='vit_5.ViT',
        flax_class=vit_5.ViT,
        recordable=True,
        paper='ViT-5: Vision Transformers for The Mid-2020s (Wang et al., 2026)',
    ),
    Entry(
        name='simple_vit_with_sparse_gating.SimpleViTWithSparseGating',
        flax_class=simple_vit_with_sparse_gating.SimpleViTWithSparseGating,
        recordable=True,
        paper='SimpleViT with sparse sigmoid gating of attention and register tokens as attention sinks',
    ),
    Entry(
        name='simple_vit_with_relative_proj_pos_bias.SimpleViT',
        flax_class=simple_vit_with_relative_proj_pos_bias.SimpleViT,
        recordable=True,
        paper='SimpleViT with a relative position bias projected from a learned distance basis (Thinking Machines '
              'Inkling), N-dimensional',
    ),
    Entry(
        name='rvt.RvT',
        flax_class=rvt.RvT,
        not_recordable="vit-pytorch's attention folds the heads into the batch, so its Recorder's maps are "
                       '(batch * heads, n, n) per layer, not per head (no reference to match)',
        paper='Rotary Vision Transformer: 2D axial RoFormer embeddings (Su et al., 2021) with depth-wise conv queries',
    ),
    Entry(
        name='normalized_vit.nViT',
        flax_class=normalized_vit.nViT,
        not_recordable="no `transformer`, and vit-pytorch's attention is scaled_dot_product_attention (there is no "
                       '`attend` to hook, so no reference to match)',
        paper='nGPT: Normalized Transformer with Representation Learning on the Hypersphere (Loshchilov et al., '
              '2024), for images',
    ),
    Entry(
        name='vit_nd_rotary.ViTND',
        flax_class=vit_nd_rotary.ViTND,
        not_recordable="vit-pytorch computes the attention in nd_attention (flex_attention, or an inline masked "
                       'softmax), with no `attend` to hook (no reference to match)',
        paper='On n-dimensional rotary positional embeddings (Xiong, 2025: golden gate RoPE), in a ViT on inputs of '
              '1 to 7 dimensions',
        inputs=NDInputs(),
    ),
    Entry(
        name='max_vit_with_registers.MaxViT',
        flax_class=max_vit_with_registers.MaxViT,
        not_recordable=HIERARCHICAL,
        paper='MaxViT: Multi-Axis Vision Transformer (Tu et al., 2022), with register tokens per window (Darcet et '
              'al., 2023)',
        inputs=FittedImages(_max_vit_fits, preferred_size=(16, 32)),
    ),
    Entry(
        name='vit_nd_pope.ViTND',
        flax_class=vit_nd_pope.ViTND,
        not_recordable="vit-pytorch computes the attention in nd_attention (flex_attention, or an inline masked "
                       'softmax), with no `attend` to hook (no reference to match)',
        paper='Decoupling the "What" and "Where" With Polar Coordinate Positional Embeddings (Gopalakrishnan et al., '
              '2025), with Golden Gate N-dimensional frequencies, in a ViT on inputs of 1 to 7 dimensions',
        inputs=NDInputs(),
    ),
    Entry(
        name='look_vit.LookViT',
        flax_class=look_vit.LookViT,
        not_recordable='no `transformer`: main and high-resolution tokens attend over token sets of different sizes',
        paper='LookupViT: Compressing visual information to a limited number of tokens (Koner et al., 2024)',
    ),
    Entry(
        name='na_vit_nested_tensor_3d.NaViT',
        flax_class=na_vit_nested_tensor_3d.NaViT,
        not_recordable="vit-pytorch computes NaViT's attention with F.scaled_dot_product_attention, which never "
                       'forms the maps (no reference to match)',
        paper="Patch n' Pack: NaViT, a Vision Transformer for any Aspect Ratio and Resolution (Dehghani et al., 2023), "
              'on videos / volumes, with register tokens',
        inputs=MixedResolutionVideos(),
    ),
    Entry(
        name='vit_detpool.ViTDetPool',
        flax_class=vit_detpool.ViTDetPool,
        not_recordable="vit-pytorch's Recorder passes the model images only, never the object mask that decides its "
                       'attention (no reference to match)',
        paper='Learning to Grasp Anything By Playing with Random Toys (Niu et al., 2026): DetPool, attention and '
              'pooling within an object mask',
        inputs=ImagesAndObjectMasks(),
    ),
    Entry(
        name='looped_vit.LoopedViT',
        flax_class=looped_vit.LoopedViT,
        not_recordable="vit-pytorch computes LoopedViT's attention with F.scaled_dot_product_attention, with no "
                       '`attend` to hook (no reference to match)',
        paper='Looped Diffusion Transformer (Chng et al., 2026), as a classifier on inputs of 1 to 7 dimensions',
        inputs=NDInputs(),
    ),
    Entry(
        name='simple_vit_orthog_residual_update.SimpleViT',
        flax_class=simple_vit_orthog_residual_update.SimpleViT,
        recordable=True,
        paper='Revisiting Residual Connections: Orthogonal Updates for Stable and Efficient Deep Networks '
              '(Oh et al., 2025)',
    ),
    Entry(
        name='jet_vit.JetViT',
        flax_class=jet_vit.JetViT,
        not_recordable="vit-pytorch's JetViT has three attentions per layer, the used one drawn per call; its Recorder "
                       "hooks every `attend` module, whose maps need not match any one option's",
        paper='JetViT (vit-pytorch, by Pranoy): a ViT of ReLU linear attention with squeeze dynamic convolution, '
              'window and full attention layers, chosen by post-training attention search (a draw per layer)',
        inputs=Images(),
    ),
    Entry(
        name='lejepa.LeJEPA',
        flax_class=lejepa.LeJEPA,
        not_recordable=OBJECTIVE,
        paper='LeJEPA: Provable and Scalable Self-Supervised Learning Without the Heuristics (Balestriero & LeCun, '
              '2025)',
        inputs=CroppedImages(),
    ),
    Entry(
        name='vat_siglip.SigLIP',
        flax_class=vat_siglip.SigLIP,
        not_recordable='no `transformer`: its layers are the model\'s own `layers` (return_hiddens gives their inputs)',
        paper='Sigmoid Loss for Language Image Pre-Training (Zhai et al., 2023), its image tower (SoViT-400m/14 by '
              'default), in vit-pytorch\'s layout',
        inputs=TowerImages(),
    ),
    Entry(
        name='vat_siglip.SigLIPVAT',
        flax_class=vat_siglip.SigLIPVAT,
        not_recordable="no `transformer`: the SigLIP tower's self-attention and the VAT's cross- and self-attention "
                       'maps have different shapes',
        paper='VAT: Vision Action Transformer by Unlocking Full Representation of ViT (ICLR 2026 submission), on a '
              'SigLIP tower, with gated attention (Qiu et al., 2025)',
        inputs=ViewsAndConditioning(),
    ),
    Entry(
        name='wwt.WWT',
        flax_class=wwt.WWT,
        not_recordable='no `transformer`: mutual attention between patch tokens and slot levels of different sizes, '
                       'its maps carried as mask logits',
        paper='What-Where Transformer: A Slot-Centric Visual Backbone for Concurrent Representation and Localization '
              '(Yoshihashi et al., 2026)',
    ),
    Entry(
        name='vivit_with_moss.ViViT',
        flax_class=vivit_with_moss.ViViT,
        not_recordable='no single `transformer`: the spatial and temporal transformers attend over different token '
                       'counts, and vit-pytorch computes them with F.scaled_dot_product_attention by default',
        paper='ViViT: A Video Vision Transformer (Arnab et al., 2021), with MOSS: Exploring High-Order '
              'Self-Similarity for Video Understanding (Co6SCyBIjo)',
        inputs=Videos(),
    ),
    Entry(
        name='vivit_with_moss.MOSS',
        flax_class=vivit_with_moss.MOSS,
        not_recordable='a motion encoder of space-time self-similarities, with no attention',
        paper='Exploring High-Order Self-Similarity for Video Understanding (MOSS, Co6SCyBIjo)',
        inputs=TokenVideos(),
    ),
    Entry(
        name='accept_video_wrapper.AcceptVideoWrapper',
        flax_class=accept_video_wrapper.AcceptVideoWrapper,
        not_recordable="a wrapper that runs an image model on every frame: record the image model instead",
        paper='An image model applied per frame, with a time embedding and optional MOSS (vit-pytorch)',
        inputs=ImageModelVideos(),
    ),
    Entry(
        name='vat.ViT',
        flax_class=vat.ViT,
        recordable=True,
        paper='An Image is Worth 16x16 Words (Dosovitskiy et al., 2020), with register tokens and per-head output '
              'gates (Qiu et al., 2025): the vision tower of VAT',
    ),
    Entry(
        name='vat.VAT',
        flax_class=vat.VAT,
        not_recordable="no `transformer`: its action tokens cross-attend over the ViT's layers (record the ViT "
                       'itself)',
        paper="Vision-action transformer (openreview TalHOvvLZu): action tokens cross-attend to a ViT's "
              'representation trajectory, FiLM task conditioning',
        inputs=VisionActionInputs(),
    ),
    Entry(
        name='vaat.AST',
        flax_class=vaat.AST,
        recordable=True,
        paper='AST: Audio Spectrogram Transformer (Gong et al., 2021), with register tokens and per-head output gates',
        inputs=Audio(),
    ),
    Entry(
        name='vaat.VAAT',
        flax_class=vaat.VAAT,
        not_recordable="no `transformer`: its action tokens cross-attend over the ViT's and the AST's layers (record "
                       'those themselves)',
        paper="Vision-audio-action transformer: VAT's action tokens cross-attend to a ViT's and an AST's "
              'representation trajectories',
        inputs=VisionAudioActionInputs(),
    ),
    Entry(
        name='levjepa.VideoTransformer',
        flax_class=levjepa.VideoTransformer,
        not_recordable="vit-pytorch computes the attention with flex_attention, with no `attend` to hook (no reference "
                       'to match)',
        paper='LeVJEPA: Efficient & Scalable Video Pretraining without the Heuristics (Kuhn et al., 2026): its '
              'block-causal video encoder with factorised rotary embeddings',
        inputs=Videos(),
    ),
    Entry(
        name='levjepa.LeVJEPA',
        flax_class=levjepa.LeVJEPA,
        not_recordable=OBJECTIVE,
        paper='LeVJEPA: Efficient & Scalable Video Pretraining without the Heuristics (Kuhn et al., 2026), with '
              'SIGReg (Balestriero & LeCun, 2025)',
        inputs=EncoderInputs(Videos()),
    ),
    Entry(
        name='levjepa_nd.NDTransformer',
        flax_class=levjepa_nd.NDTransformer,
        not_recordable="vit-pytorch computes the attention in nd_attention (flex_attention, or an inline masked "
                       'softmax), with no `attend` to hook (no reference to match)',
        paper="LeVJEPA's block-causal encoder (Kuhn et al., 2026) on inputs of 1 to 7 dimensions, causal along some",
        inputs=NDInputs(),
    ),
    Entry(
        name='levjepa_nd.LeVJEPAND',
        flax_class=levjepa_nd.LeVJEPAND,
        not_recordable=OBJECTIVE,
        paper='LeVJEPA (Kuhn et al., 2026) on inputs of 1 to 7 dimensions, with SIGReg (Balestriero & LeCun, 2025)',
        inputs=EncoderInputs(NDInputs()),
    ),
    # new entries go above this line
)

BY_NAME: dict[str, Entry] = {entry.name: entry for entry in ENTRIES}
BY_CLASS: dict[type, Entry] = {entry.flax_class: entry for entry in ENTRIES}


def tuples_from_json(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Keywords read from JSON or ml_collections, which have no tuples: vit-pytorch's `pair()` tests for one."""
    return {key: tuple(value) if isinstance(value, list) else value for key, value in kwargs.items()}


def build(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """A registered model from its name ('vit.ViT') and vit-pytorch keywords."""
    if name not in BY_NAME:
        raise KeyError(f'unknown model {name!r}; the registry has {", ".join(BY_NAME)}')
    return BY_NAME[name].flax_class(**tuples_from_json(kwargs))


def entry_for(model: nn.Module) -> Entry:
    try:
        return BY_CLASS[type(model)]
    except KeyError:
        raise KeyError(
            f'{type(model).__name__} is not in the vit-flax registry; pass example_inputs=... to the converter'
        ) from None


# every rng stream a registered module may ask for at init; unused streams are ignored by Flax
RNG_STREAMS = ('params', 'dropout')


def init_rngs(key) -> dict:
    return dict(zip(RNG_STREAMS, jax.random.split(key, len(RNG_STREAMS))))


def example_inputs(model: nn.Module, batch: int = 1, rng: np.random.Generator | None = None) -> tuple:
    return entry_for(model).inputs.example(model, batch, rng)


# JAX-only fields of a Flax module that have no vit-pytorch keyword (layer scan and remat: vit_flax/scan.py)
FLAX_ONLY_FIELDS = frozenset({'parent', 'name', 'scan_layers', 'remat_policy', 'attention_impl'})


def torch_kwargs(model: nn.Module) -> dict[str, Any]:
    """The vit-pytorch constructor keywords of a registered Flax module."""
    return {
        field.name: getattr(model, field.name)
        for field in dataclasses.fields(model)
        if field.name not in FLAX_ONLY_FIELDS
    }
