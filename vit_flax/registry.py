"""Every architecture of vit-flax, with its vit-pytorch counterpart, test configurations and example inputs.

The registry drives the parity tests (tests/test_parity.py), the converters (which derive an example input
from a module's own fields to learn its variable tree) and the README's architecture table
(`python -m vit_flax.registry` prints it). Adding an architecture means adding an entry here and nothing else
to get it tested.
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
from vit_flax import mae, simmim
from vit_flax import mpp
from vit_flax import dino
from vit_flax import es_vit

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
class PatchGridImages(Images):
    """Images for a module with a `patch_size` but no `image_size` (a standalone patch tokenizer such as
    vit_for_small_dataset.SPT): a `grid` of (rows, columns) patches, with the model's own `channels`."""

    grid: tuple[int, int] = (2, 3)

    def size(self, model: nn.Module) -> tuple[int, int]:
        patch_height, patch_width = pair(model.patch_size)
        return self.grid[0] * patch_height, self.grid[1] * patch_width


@dataclasses.dataclass(frozen=True)
class SizedImages(Images):
    """Images of a fixed `size` (height, width) with the model's own `channels`, for a model that takes any image
    size and has no `image_size` (cvt.CvT)."""

    fixed_size: tuple[int, int] = (32, 32)

    def size(self, model: nn.Module) -> tuple[int, int]:
        return self.fixed_size


@dataclasses.dataclass(frozen=True)
class StagedImages(SizedImages):
    """Images for a model with no `image_size` whose stages each halve the feature map and need its sides divisible
    by a window (sep_vit.SepViT): `fixed_size` for one stage (`len(model.depth) == 1`), doubled per further stage."""

    def size(self, model: nn.Module) -> tuple[int, int]:
        scale = 2 ** max(len(model.depth) - 1, 0)
        return self.fixed_size[0] * scale, self.fixed_size[1] * scale


@dataclasses.dataclass(frozen=True)
class RGBImages(Images):
    """3-channel images at the model's `image_size`, for a model whose `channels` keyword is not the input's channel
    count (mobile_vit.MobileViT: its stage widths; the stem conv always takes 3 channels)."""

    def example(self, model: nn.Module, batch: int = 1, rng: np.random.Generator | None = None) -> tuple:
        return (_draw((batch, *self.size(model), 3), rng),)


@dataclasses.dataclass(frozen=True)
class Videos(Images):
    """Videos or volumes (batch, frames, height, width, channels) at the model's own `frames`, `image_size` and
    `channels`. vit-pytorch takes (batch, channels, frames, height, width): the same move of the last axis to the
    second as for images."""

    def example(self, model: nn.Module, batch: int = 1, rng: np.random.Generator | None = None) -> tuple:
        return (_draw((batch, model.frames, *self.size(model), model.channels), rng),)


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
class TokenSampledImages(Images):
    """Images for a model that draws random numbers even in eval mode (ats_vit.ViT: Gumbel noise to sample
    tokens). `randomness(model, inputs, seed)` gives the Flax rngs for a call on `inputs` and a context manager
    under which vit-pytorch's `sample_gumbel` returns the very noise Flax draws with them: Flax draws over fixed
    token slots, torch asks a layer of budget k for (batch, k, n) and gets the first n columns."""

    def randomness(self, model: nn.Module, inputs: tuple, seed: int = 0):
        from unittest import mock

        import torch

        from vit_flax.converters import import_vit_pytorch

        rngs = {ats_vit.TOKEN_SAMPLING: jax.random.key(seed)}
        noise = model.apply({}, *inputs, rngs=rngs, method=type(model).token_sampling_noise)
        by_budget = {}  # a budget's first layer is the only one that can sample
        for layer_noise in noise:
            if layer_noise is not None:
                by_budget.setdefault(layer_noise.shape[1], np.asarray(layer_noise))

        def sample_gumbel(shape, device, dtype, eps=1e-6):
            batch, budget, n = shape
            assert n <= by_budget[budget].shape[-1], (shape, by_budget[budget].shape)
            return torch.from_numpy(by_budget[budget][:, :, :n].copy()).to(device=device, dtype=dtype)

        return rngs, mock.patch.object(import_vit_pytorch('vit_pytorch.ats_vit'), 'sample_gumbel', sample_gumbel)


@dataclasses.dataclass(frozen=True)
class MaskedPositionImages(Images):
    """Images for mp3.MP3, which draws its masking permutation in every call: `randomness(model, inputs, seed)`
    gives the Flax rngs for a call on `inputs` and a context manager under which vit-pytorch's `torch.rand`
    (batch, n) returns the very uniform noise whose argsort is the Flax permutation."""

    def randomness(self, model: nn.Module, inputs: tuple, seed: int = 0):
        from unittest import mock

        import torch

        rngs = {mp3.MASKING: jax.random.key(seed)}
        noise = np.asarray(model.apply({}, *inputs, rngs=rngs, method=type(model).masking_noise))

        def rand(*shape, device=None, **kwargs):
            shape = tuple(shape[0]) if len(shape) == 1 and not isinstance(shape[0], int) else shape
            assert shape == noise.shape, (shape, noise.shape)
            return torch.from_numpy(noise.copy()).to(device=device)

        return rngs, mock.patch.object(torch, 'rand', rand)


@dataclasses.dataclass(frozen=True)
class MaskedImages(Images):
    """Images for a masked-image-modelling objective (mae.MAE, simmim.SimMIM), which masks patches in every call:
    `randomness(model, inputs, seed)` gives the Flax rngs for a call on `inputs` and a context manager under which
    vit-pytorch's `torch.rand(batch, num_patches)` returns the very noise that masks the Flax call."""

    def randomness(self, model: nn.Module, inputs: tuple, seed: int = 0):
        rngs = {mae.MASKING: jax.random.key(seed)}
        noise = np.asarray(model.apply({}, *inputs, rngs=rngs, method=type(model).masking_noise))
        return rngs, mae.torch_draws(noise)


@dataclasses.dataclass(frozen=True)
class CorruptedPatchImages(Images):
    """Images for mpp.MPP, which chooses and corrupts patches in every call: `randomness(model, inputs, seed)` gives
    the Flax rngs for a call on `inputs` and a context manager under which vit-pytorch's MPP makes the very draws
    of the Flax call (`MPP.masking_draws`: chosen patches, random-patch decisions and indices, mask-token
    decisions)."""

    def randomness(self, model: nn.Module, inputs: tuple, seed: int = 0):
        rngs = {mpp.MASKING: jax.random.key(seed)}
        draws = model.apply({}, *inputs, rngs=rngs, method=type(model).masking_draws)
        return rngs, model.torch_draws(draws)


@dataclasses.dataclass(frozen=True)
class CroppedImages(Images):
    """Images for dino.Dino, which crops (and augments) in every call: square images at the learner's
    `image_size` with its encoder's channels. `randomness(model, inputs, seed)` gives the Flax rngs for a call on
    `inputs` and a context manager under which vit-pytorch's crops (a torchvision stand-in, `dino.torch_transforms`)
    cut the very boxes of the Flax call; `torch_construction()` is the stand-in alone, for vit-pytorch's
    constructor. Parity needs identity augmentations on both sides (the registry's `RandomApply(L2Norm(), p=0.)`)."""

    def size(self, model: nn.Module) -> tuple[int, int]:
        return model.image_size, model.image_size

    def example(self, model: nn.Module, batch: int = 1, rng: np.random.Generator | None = None) -> tuple:
        return (_draw((batch, *self.size(model), getattr(model.net, 'channels', 3)), rng),)

    def randomness(self, model: nn.Module, inputs: tuple, seed: int = 0):
        rngs = dict(zip(dino.RNG_STREAMS, jax.random.split(jax.random.key(seed), len(dino.RNG_STREAMS))))
        boxes = model.apply({}, *inputs, rngs=rngs, method=type(model).crop_boxes)
        return rngs, dino.torch_transforms(np.asarray(boxes))

    def torch_construction(self):
        return dino.torch_transforms()


@dataclasses.dataclass(frozen=True)
class EsViTImages(CroppedImages):
    """CroppedImages for es_vit.EsViTTrainer, whose vit-pytorch constructor's training-mode mock forward also counts
    batches in a CvT's BatchNorms: `torch_construction()` (es_vit.torch_construction) resets those counters."""

    def torch_construction(self):
        return es_vit.torch_construction()


# why recorder.Recorder cannot record a kind of model (registry.Entry.not_recordable)
HIERARCHICAL = ('a hierarchical model: its stages attend over feature maps of different sizes, so the maps '
                'cannot be stacked')
OBJECTIVE = 'a training objective that returns a loss: record its encoder instead'


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str  # '<file>.<Class>', the same for vit-flax and vit-pytorch
    flax_class: type[nn.Module]
    paper: str
    configs: tuple[dict[str, Any], ...]  # the first is the tiny default; the rest are the tested variants
    inputs: Any = Images()
    tolerance: float = 2e-5  # relative to max(1, max|y|); widen only with float64 evidence (see DESIGN.md)
    notes: str = ''
    # the vit-pytorch '<file>.<Class>' to compare with and export to, where the namesake cannot run (its forward
    # is broken) but another class has the same state dict and the same outputs
    torch_name: str | None = None
    # a context manager factory the parity tests run vit-pytorch under, where its forward needs a fix to be a fair
    # reference (na_vit_nested_tensor: keep autograd through its nested tensors)
    torch_context: Callable[[], Any] | None = None
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
        return f"vit_pytorch.{(self.torch_name or self.name).rsplit('.', 1)[0]}"

    @property
    def torch_class_name(self) -> str:
        return (self.torch_name or self.name).rsplit('.', 1)[1]

    def build(self, config_index: int = 0, **overrides) -> nn.Module:
        return self.flax_class(**{**self.configs[config_index], **overrides})


ENTRIES: tuple[Entry, ...] = (
    Entry(
        name='vit.ViT',
        flax_class=ViT,
        recordable=True,
        paper='An Image is Worth 16x16 Words (Dosovitskiy et al., 2020)',
        configs=(
            dict(image_size=32, patch_size=8, num_classes=10, dim=32, depth=2, heads=4, mlp_dim=64, dim_head=8),
            dict(image_size=(24, 40), patch_size=(8, 4), num_classes=7, dim=24, depth=1, heads=2, mlp_dim=32,
                 dim_head=12, channels=1, pool='mean'),
            dict(image_size=16, patch_size=4, num_classes=3, dim=16, depth=2, heads=1, mlp_dim=32, dim_head=16,
                 channels=2),
            dict(image_size=(16, 24), patch_size=(4, 8), num_classes=0, dim=16, depth=1, heads=2, mlp_dim=16,
                 dim_head=4),
        ),
        notes='pool cls/mean; `num_classes=0` returns tokens; smaller inputs slice the position embedding',
    ),
    Entry(
        name='simple_vit.SimpleViT',
        flax_class=SimpleViT,
        recordable=True,
        paper='Better plain ViT baselines for ImageNet-1k (Beyer et al., 2022)',
        configs=(
            dict(image_size=32, patch_size=8, num_classes=10, dim=32, depth=2, heads=4, mlp_dim=64, dim_head=8),
            dict(image_size=(24, 40), patch_size=(8, 4), num_classes=5, dim=24, depth=1, heads=2, mlp_dim=32,
                 dim_head=12, channels=1),
            dict(image_size=16, patch_size=4, num_classes=0, dim=16, depth=2, heads=1, mlp_dim=32, dim_head=16,
                 channels=2),
        ),
        notes='fixed 2D sin-cos position embedding, mean pooling',
    ),
    Entry(
        name='parallel_vit.ViT',
        flax_class=ParallelViT,
        recordable=True,
        paper='Three things everyone should know about Vision Transformers (Touvron et al., 2022)',
        configs=(
            dict(image_size=32, patch_size=8, num_classes=10, dim=32, depth=2, heads=4, mlp_dim=64, dim_head=8),
            dict(image_size=(24, 40), patch_size=(8, 4), num_classes=7, dim=24, depth=1, heads=3, mlp_dim=32,
                 dim_head=12, channels=1, pool='mean', num_parallel_branches=3),
            dict(image_size=16, patch_size=4, num_classes=3, dim=16, depth=2, heads=1, mlp_dim=32, dim_head=16,
                 channels=2, num_parallel_branches=1),
            dict(image_size=(16, 24), patch_size=(4, 8), num_classes=5, dim=20, depth=1, heads=5, mlp_dim=16,
                 dim_head=4, num_parallel_branches=4),
        ),
        notes='parallel attention / feed-forward branches summed per layer; pool cls/mean',
    ),
    Entry(
        name='deepvit.DeepViT',
        flax_class=DeepViT,
        not_recordable="re-attention mixes the heads' maps after the softmax, which vit-pytorch computes inline "
                       '(there is no `attend` to hook, so no reference to match)',
        paper='DeepViT: Towards Deeper Vision Transformer (Zhou et al., 2021)',
        configs=(
            dict(image_size=16, patch_size=4, num_classes=10, dim=32, depth=2, heads=4, mlp_dim=64, dim_head=8),
            dict(image_size=24, patch_size=8, num_classes=7, dim=24, depth=1, heads=3, mlp_dim=32, dim_head=12,
                 channels=1, pool='mean'),
            # heads=1 (reattn_weights then gets no gradient) is tested in tests/test_deepvit.py
            dict(image_size=16, patch_size=4, num_classes=3, dim=16, depth=3, heads=2, mlp_dim=32, dim_head=16,
                 channels=2),
            dict(image_size=12, patch_size=2, num_classes=5, dim=20, depth=2, heads=5, mlp_dim=16, dim_head=4,
                 pool='mean'),
        ),
        notes='re-attention (learned head mixing + LayerNorm over heads); square int sizes; pool cls/mean',
    ),
    Entry(
        name='vit_for_small_dataset.ViT',
        flax_class=vit_for_small_dataset.ViT,
        recordable=True,
        paper='Vision Transformer for Small-Size Datasets (Lee et al., 2021)',
        configs=(
            dict(image_size=32, patch_size=8, num_classes=10, dim=32, depth=2, heads=4, mlp_dim=64, dim_head=8),
            dict(image_size=(24, 40), patch_size=8, num_classes=7, dim=24, depth=1, heads=3, mlp_dim=32,
                 dim_head=12, channels=1, pool='mean'),
            dict(image_size=16, patch_size=4, num_classes=3, dim=16, depth=2, heads=1, mlp_dim=32, dim_head=16,
                 channels=2),
            dict(image_size=(6, 10), patch_size=2, num_classes=5, dim=20, depth=1, heads=5, mlp_dim=16,
                 dim_head=4, dropout=0.1, emb_dropout=0.1),
        ),
        notes='shifted patch tokens (SPT), locality self-attention (learned temperature, no self-attention); '
              'int patch_size only; mean pooling includes the cls token',
    ),
    Entry(
        name='vit_for_small_dataset.SPT',
        flax_class=vit_for_small_dataset.SPT,
        not_recordable='a patch tokenizer, with no attention',
        paper='Vision Transformer for Small-Size Datasets (Lee et al., 2021)',
        configs=(
            dict(dim=32, patch_size=4),
            dict(dim=12, patch_size=3, channels=1),
            dict(dim=20, patch_size=1, channels=2),
        ),
        inputs=PatchGridImages(),
        notes='the shifted patch tokenizer alone: images (b, H, W, c) -> tokens (b, n, dim)',
    ),
    Entry(
        name='cait.CaiT',
        flax_class=CaiT,
        not_recordable='no `transformer`: its patch and class-attention stacks (`patch_transformer`, '
                       '`cls_transformer`) have maps of different shapes',
        paper='Going deeper with Image Transformers (Touvron et al., 2021)',
        configs=(
            dict(image_size=16, patch_size=4, num_classes=10, dim=16, depth=2, cls_depth=1, heads=2, mlp_dim=32,
                 dim_head=8),
            dict(image_size=24, patch_size=8, num_classes=7, dim=24, depth=1, cls_depth=2, heads=3, mlp_dim=20,
                 dim_head=5),
            dict(image_size=12, patch_size=2, num_classes=3, dim=20, depth=3, cls_depth=1, heads=1, mlp_dim=16,
                 dim_head=20),
        ),
        notes='LayerScale, talking heads, class attention; 3 channels, square sizes; '
              "layer drop in training only (rng stream 'layer_dropout')",
    ),
    Entry(
        name='vit_with_patch_merger.ViT',
        flax_class=vit_with_patch_merger.ViT,
        not_recordable='the patch merger changes the token count mid-stack, so the maps cannot be stacked',
        paper='Learning to Merge Tokens in Vision Transformers (Renggli et al., 2022)',
        configs=(
            dict(image_size=32, patch_size=8, num_classes=10, dim=32, depth=2, heads=4, mlp_dim=64, dim_head=8,
                 patch_merge_num_tokens=4),
            dict(image_size=(24, 40), patch_size=(8, 4), num_classes=7, dim=24, depth=3, heads=3, mlp_dim=32,
                 dim_head=12, channels=1, patch_merge_layer=3, patch_merge_num_tokens=5),
            # the merger never runs (patch_merge_layer=0) but owns parameters; no attention projection
            dict(image_size=16, patch_size=4, num_classes=0, dim=16, depth=2, heads=1, mlp_dim=32, dim_head=16,
                 channels=2, patch_merge_layer=0, patch_merge_num_tokens=3),
            dict(image_size=(16, 24), patch_size=(4, 8), num_classes=5, dim=20, depth=1, heads=5, mlp_dim=16,
                 dim_head=4, patch_merge_layer=1),
        ),
        notes='one PatchMerger after layer `patch_merge_layer` (default depth // 2; 0 never merges); mean pooling',
    ),
    Entry(
        name='vit_with_patch_merger.PatchMerger',
        flax_class=vit_with_patch_merger.PatchMerger,
        not_recordable='a token merger, with no self-attention layers',
        paper='Learning to Merge Tokens in Vision Transformers (Renggli et al., 2022)',
        configs=(
            dict(dim=16, num_tokens_out=4),
            dict(dim=24, num_tokens_out=1),
            dict(dim=20, num_tokens_out=9),
        ),
        inputs=Tokens(),
        notes='the token merger alone: tokens (b, n, dim) -> (b, num_tokens_out, dim)',
    ),
    Entry(
        name='t2t.T2TViT',
        flax_class=T2TViT,
        recordable=True,
        paper='Tokens-to-Token ViT (Yuan et al., 2021)',
        configs=(
            dict(image_size=16, num_classes=10, dim=32, depth=2, heads=4, mlp_dim=64, dim_head=8,
                 t2t_layers=((3, 2), (3, 2))),
            dict(image_size=32, num_classes=7, dim=24, depth=1, heads=3, mlp_dim=32, dim_head=5, channels=1,
                 pool='mean'),  # the default t2t_layers ((7, 4), (3, 2), (3, 2))
            dict(image_size=12, num_classes=3, dim=16, depth=2, heads=1, mlp_dim=32, dim_head=16, channels=2,
                 t2t_layers=((4, 4),)),
            dict(image_size=9, num_classes=5, dim=20, depth=1, heads=5, mlp_dim=16, dim_head=4, channels=1,
                 pool='mean', dropout=0.1, emb_dropout=0.1, t2t_layers=((3, 1), (2, 2), (3, 1))),
        ),
        notes='soft split (nn.Unfold, `(c kh kw)` order) + one-head transformers; any t2t_layers; '
              'external `transformer` module; single int image_size; pool cls/mean',
    ),
    Entry(
        name='cct.CCT',
        flax_class=CCT,
        not_recordable='no `transformer` (its encoder is `classifier`), and vit-pytorch computes the softmax '
                       'inline (there is no `attend` to hook, so no reference to match)',
        paper='Escaping the Big Data Paradigm with Compact Transformers (Hassani et al., 2021)',
        # one token per config; multi-token configs (where `attention_pool.bias` gets no gradient) are tested in
        # tests/test_cct.py
        configs=(
            dict(img_size=4, embedding_dim=32, kernel_size=3, stride=2, padding=1, num_layers=2, num_heads=4,
                 mlp_ratio=2, num_classes=10),
            dict(img_size=(6, 10), embedding_dim=24, n_input_channels=1, kernel_size=5, stride=3, padding=2,
                 pooling_kernel_size=4, pooling_stride=3, pooling_padding=1, num_layers=1, num_heads=3,
                 mlp_ratio=1.5, num_classes=7, positional_embedding='learnable'),
            dict(img_size=7, embedding_dim=20, n_input_channels=2, n_conv_layers=0, kernel_size=4, stride=3,
                 padding=0, pooling_kernel_size=2, pooling_stride=2, pooling_padding=0, num_layers=3, num_heads=5,
                 mlp_ratio=1, num_classes=3, positional_embedding='none'),
            dict(img_size=16, embedding_dim=16, n_conv_layers=3, num_layers=2, num_heads=1, mlp_ratio=2,
                 num_classes=5, dropout_rate=0.1, stochastic_depth_rate=0.3),
        ),
        notes='conv tokenizer (conv, ReLU, max pool), sequence pooling; sine / learnable / no position embedding; '
              "stochastic depth in training only (rng stream 'drop_path'); presets cct_2 ... cct_16",
    ),
    Entry(
        name='mp3.ViT',
        flax_class=mp3.ViT,
        recordable=True,
        paper='Position Prediction as an Effective Pretraining Strategy (Zhai et al., 2022)',
        configs=(
            dict(num_classes=10, image_size=16, patch_size=4, dim=32, depth=2, heads=4, mlp_dim=64, dim_head=8),
            dict(num_classes=7, image_size=(24, 40), patch_size=(8, 4), dim=24, depth=1, heads=3, mlp_dim=32,
                 dim_head=12, channels=1, dropout=0.1),
            # one head with dim_head == dim: the output projection is kept, unlike vit.py
            dict(num_classes=3, image_size=(12, 16), patch_size=(4, 2), dim=16, depth=3, heads=1, mlp_dim=24,
                 dim_head=16, channels=2),
        ),
        notes="sin-cos position embedding from each input's patch grid; mean pooling; attention takes a `context` "
              '(separate to_q / to_kv) for the MP3 objective',
    ),
    Entry(
        name='cross_vit.CrossViT',
        flax_class=CrossViT,
        not_recordable='no `transformer`: two scales and cross attention give maps of several shapes '
                       "(Extractor(model, layer_name='multi_scale_encoder') gives both scales' embeddings)",
        paper='CrossViT: Cross-Attention Multi-Scale Vision Transformer (Chen et al., 2021)',
        configs=(
            dict(image_size=16, num_classes=10, sm_dim=16, lg_dim=32, sm_patch_size=4, sm_enc_depth=1,
                 sm_enc_heads=2, sm_enc_mlp_dim=32, sm_enc_dim_head=8, lg_patch_size=8, lg_enc_depth=1,
                 lg_enc_heads=4, lg_enc_mlp_dim=32, lg_enc_dim_head=8, cross_attn_depth=1, cross_attn_heads=2,
                 cross_attn_dim_head=8, depth=1),
            dict(image_size=24, num_classes=7, sm_dim=24, lg_dim=20, sm_patch_size=4, sm_enc_depth=1,
                 sm_enc_heads=3, sm_enc_mlp_dim=16, sm_enc_dim_head=5, lg_patch_size=12, lg_enc_depth=1,
                 lg_enc_heads=1, lg_enc_mlp_dim=24, lg_enc_dim_head=20, cross_attn_depth=2, cross_attn_heads=5,
                 cross_attn_dim_head=4, depth=1, channels=1),
            # equal widths: no project_in / project_out; a branch transformer that is only its final LayerNorm;
            # two multi-scale layers
            dict(image_size=12, num_classes=3, sm_dim=16, lg_dim=16, sm_patch_size=2, sm_enc_depth=0,
                 sm_enc_heads=2, sm_enc_mlp_dim=8, sm_enc_dim_head=4, lg_patch_size=6, lg_enc_depth=1,
                 lg_enc_heads=3, lg_enc_mlp_dim=16, lg_enc_dim_head=6, cross_attn_depth=1, cross_attn_heads=1,
                 cross_attn_dim_head=16, depth=2, channels=2),
        ),
        notes='two patch sizes, a transformer per branch, cls tokens cross-attending to the other branch; '
              'int sizes; summed heads',
    ),
    Entry(
        name='pit.PiT',
        flax_class=PiT,
        not_recordable=HIERARCHICAL,
        paper='Rethinking Spatial Dimensions of Vision Transformers (Heo et al., 2021)',
        configs=(
            dict(image_size=12, patch_size=4, num_classes=10, dim=16, depth=(1, 1), heads=2, mlp_dim=32, dim_head=8),
            # patch 7, stride 3: torch's int() drops the last pixels (3 x 3 patches); an empty middle stage
            dict(image_size=14, patch_size=7, num_classes=7, dim=12, depth=(1, 0, 1), heads=(3, 1, 5), mlp_dim=20,
                 dim_head=5, channels=1, dropout=0.1, emb_dropout=0.1),
            # stage 0 has one head of width dim_head == dim: no attention output projection
            dict(image_size=15, patch_size=5, num_classes=3, dim=16, depth=(2, 1), heads=(1, 2), mlp_dim=24,
                 dim_head=16, channels=2),
        ),
        notes='stages of transformers (`depth` tuple, per-stage `heads`) with depthwise-conv pooling between them; '
              'overlapping patches (stride patch_size // 2); square int sizes; cls-token head',
    ),
    Entry(
        name='efficient.ViT',
        flax_class=efficient.ViT,
        recordable=True,
        paper='An Image is Worth 16x16 Words (Dosovitskiy et al., 2020), any (efficient) transformer plugged in',
        configs=(
            dict(image_size=16, patch_size=4, num_classes=10, dim=32,
                 transformer=vit.Transformer(dim=32, depth=2, heads=4, dim_head=8, mlp_dim=64)),
            dict(image_size=(16, 24), patch_size=8, num_classes=7, dim=24, channels=1, pool='mean',
                 transformer=vit.Transformer(dim=24, depth=1, heads=3, dim_head=5, mlp_dim=32)),
            dict(image_size=12, patch_size=4, num_classes=3, dim=16, channels=2,
                 transformer=vit.Transformer(dim=16, depth=1, heads=1, dim_head=16, mlp_dim=16)),
        ),
        notes='external `transformer` module (any Flax module; vit.Transformer has a torch twin; '
              'efficient.LinearTransformer is our own linear attention); int patch_size; pool cls/mean',
    ),
    Entry(
        name='distill.DistillableViT',
        flax_class=distill.DistillableViT,
        recordable=True,
        paper='Training data-efficient image transformers & distillation through attention (Touvron et al., 2020)',
        configs=(
            dict(image_size=16, patch_size=4, num_classes=10, dim=32, depth=2, heads=4, mlp_dim=64, dim_head=8),
            dict(image_size=(24, 16), patch_size=(8, 4), num_classes=7, dim=24, depth=1, heads=3, mlp_dim=32,
                 dim_head=5, channels=1, pool='mean'),
            dict(image_size=16, patch_size=8, num_classes=3, dim=16, depth=1, heads=1, mlp_dim=16, dim_head=16,
                 channels=2, emb_dropout=0.1),
        ),
        notes='vit.ViT with an optional distillation token (`distill_token=`); `to_vit()`; '
              'DistillableT2TViT / DistillableEfficientViT (forward broken in vit-pytorch) tested in test_distill.py',
    ),
    Entry(
        name='distill.DistillableT2TViT',
        flax_class=distill.DistillableT2TViT,
        recordable=True,
        paper='Training data-efficient image transformers & distillation through attention (Touvron et al., 2020)',
        configs=(
            dict(image_size=16, num_classes=5, dim=16, depth=1, heads=2, mlp_dim=16, dim_head=8,
                 t2t_layers=((3, 2), (3, 2))),
            dict(image_size=12, num_classes=3, dim=24, depth=2, heads=3, mlp_dim=16, dim_head=5, channels=1,
                 pool='mean', t2t_layers=((4, 4),)),
        ),
        torch_name='t2t.T2TViT',
        notes="t2t.T2TViT with an optional distillation token; vit-pytorch's own DistillableT2TViT fails in every "
              'forward (a 2-D `repeat` of its 3-D cls token), so parity is with T2TViT (same state dict) and the '
              'token path is tested in test_distill.py',
    ),
    Entry(
        name='distill.DistillableEfficientViT',
        flax_class=distill.DistillableEfficientViT,
        recordable=True,
        paper='Training data-efficient image transformers & distillation through attention (Touvron et al., 2020)',
        configs=(
            dict(image_size=16, patch_size=4, num_classes=10, dim=32,
                 transformer=vit.Transformer(dim=32, depth=1, heads=4, dim_head=8, mlp_dim=64)),
            dict(image_size=(16, 24), patch_size=8, num_classes=7, dim=24, channels=1, pool='mean',
                 transformer=vit.Transformer(dim=24, depth=2, heads=3, dim_head=5, mlp_dim=32)),
        ),
        torch_name='efficient.ViT',
        notes="efficient.ViT with an optional distillation token; vit-pytorch's own DistillableEfficientViT fails in "
              'every forward, so parity is with efficient.ViT (same state dict) and the token path is tested in '
              'test_distill.py',
    ),
    Entry(
        name='distill.DistillWrapper',
        flax_class=distill.DistillWrapper,
        not_recordable=OBJECTIVE,
        paper='Training data-efficient image transformers & distillation through attention (Touvron et al., 2020)',
        configs=(
            dict(teacher=ViT(image_size=16, patch_size=4, num_classes=5, dim=16, depth=1, heads=2, mlp_dim=16,
                             dim_head=8),
                 student=distill.DistillableViT(image_size=16, patch_size=4, num_classes=5, dim=16, depth=1, heads=2,
                                                mlp_dim=32, dim_head=8),
                 temperature=2.0, alpha=0.3),
            dict(teacher=ViT(image_size=(8, 12), patch_size=4, num_classes=4, dim=24, depth=1, heads=3, mlp_dim=16,
                             dim_head=4, channels=1, pool='mean'),
                 student=distill.DistillableViT(image_size=(8, 12), patch_size=(4, 2), num_classes=4, dim=16, depth=2,
                                                heads=2, mlp_dim=16, dim_head=8, channels=1, pool='mean'),
                 hard=True, mlp_layernorm=True),
        ),
        inputs=ImagesAndLabels(),
        notes='DeiT loss from (images, labels): cross entropy + soft (KL, temperature) or hard distillation; '
              'teacher a Flax module (no gradient) or any callable',
    ),
    Entry(
        name='cvt.CvT',
        flax_class=CvT,
        not_recordable=HIERARCHICAL,
        paper='CvT: Introducing Convolutions to Vision Transformers (Wu et al., 2021)',
        # single-key attention (its query projection then gets no gradient) is tested in tests/test_cvt.py
        configs=(
            dict(num_classes=10, s1_emb_dim=16, s1_heads=1, s2_emb_dim=24, s2_heads=2, s2_depth=1, s3_emb_dim=32,
                 s3_heads=1, s3_depth=1, s3_kv_proj_stride=1),
            dict(num_classes=7, channels=1, dropout=0.1,
                 s1_emb_dim=8, s1_emb_kernel=4, s1_emb_stride=2, s1_proj_kernel=5, s1_kv_proj_stride=3, s1_heads=2,
                 s1_mlp_mult=1,
                 s2_emb_dim=12, s2_emb_kernel=5, s2_emb_stride=3, s2_proj_kernel=1, s2_kv_proj_stride=1, s2_heads=1,
                 s2_depth=1, s2_mlp_mult=2,
                 s3_emb_dim=20, s3_emb_kernel=2, s3_emb_stride=1, s3_proj_kernel=3, s3_kv_proj_stride=2, s3_heads=3,
                 s3_depth=1, s3_mlp_mult=3),
            dict(num_classes=3, channels=2,
                 s1_emb_dim=12, s1_emb_kernel=3, s1_emb_stride=3, s1_heads=1, s1_depth=2, s1_mlp_mult=2,
                 s2_emb_dim=16, s2_heads=2, s2_depth=0,
                 s3_emb_dim=24, s3_emb_kernel=1, s3_emb_stride=1, s3_depth=0),
        ),
        inputs=SizedImages(fixed_size=(24, 20)),
        notes='three conv-embedded stages, depth-wise separable conv projections with BatchNorm, channel LayerNorm; '
              "any image size; `method='layers'` gives the latents",
    ),
    Entry(
        name='ats_vit.ViT',
        flax_class=ats_vit.ViT,
        not_recordable='adaptive token sampling drops tokens between layers, so the maps cannot be stacked',
        paper='Adaptive Token Sampling For Efficient Vision Transformers (Fayyaz et al., 2021)',
        configs=(
            dict(image_size=16, patch_size=4, num_classes=10, dim=32, depth=2, max_tokens_per_depth=(8, 4), heads=4,
                 mlp_dim=64, dim_head=8),
            # a budget above the patch count: no layer samples
            dict(image_size=(16, 8), patch_size=(4, 2), num_classes=3, dim=16, depth=1, max_tokens_per_depth=(20,),
                 heads=1, mlp_dim=32, dim_head=16, channels=2),
            # 9 patches; the second layer never samples (its budget equals the first's), the third only when the
            # batch kept more than 4 tokens (tests/test_ats_vit.py checks both branches)
            dict(image_size=(12, 6), patch_size=(4, 2), num_classes=5, dim=24, depth=3, max_tokens_per_depth=(6, 6, 4),
                 heads=3, mlp_dim=16, dim_head=5, channels=1, dropout=0.1, emb_dropout=0.1),
        ),
        inputs=TokenSampledImages(),
        notes="adaptive token sampling (Gumbel-max from the cls attention, rng stream 'token_sampling', even in "
              'eval mode); fixed token slots + padding mask instead of per-batch padding; '
              '`return_sampled_token_ids`',
    ),
    Entry(
        name='learnable_memory_vit.ViT',
        flax_class=learnable_memory_vit.ViT,
        recordable=True,
        paper='Fine-tuning Image Transformers using Learnable Memory (Sandler et al., 2022)',
        configs=(
            dict(image_size=16, patch_size=4, num_classes=10, dim=32, depth=2, heads=4, mlp_dim=64, dim_head=8),
            dict(image_size=(12, 20), patch_size=(4, 5), num_classes=7, dim=24, depth=1, heads=3, mlp_dim=32,
                 dim_head=12, channels=1, pool='mean'),
            dict(image_size=8, patch_size=2, num_classes=3, dim=16, depth=3, heads=1, mlp_dim=16, dim_head=16,
                 channels=2),
        ),
        notes='the backbone of learnable_memory_vit.Adapter; separate to_q / to_kv; always reads the cls token',
    ),
    Entry(
        name='learnable_memory_vit.Adapter',
        flax_class=learnable_memory_vit.Adapter,
        not_recordable="no `transformer` of its own: it runs the wrapped ViT's with memory tokens (record the "
                       'ViT itself)',
        paper='Fine-tuning Image Transformers using Learnable Memory (Sandler et al., 2022)',
        configs=(
            dict(vit=learnable_memory_vit.ViT(image_size=16, patch_size=4, num_classes=10, dim=32, depth=2, heads=4,
                                              mlp_dim=64, dim_head=8), num_memories_per_layer=3, num_classes=5),
            dict(vit=learnable_memory_vit.ViT(image_size=(12, 20), patch_size=(4, 5), num_classes=7, dim=24, depth=1,
                                              heads=3, mlp_dim=32, dim_head=12, channels=1, pool='mean')),
            dict(vit=learnable_memory_vit.ViT(image_size=8, patch_size=2, num_classes=3, dim=16, depth=3, heads=1,
                                              mlp_dim=16, dim_head=16, channels=2), num_memories_per_layer=1,
                 num_classes=4),
        ),
        notes='learnable memories per layer + memory cls token + head on a frozen backbone `vit` (stop_gradient); '
              "persistent `attn_mask` in the 'buffers' collection",
    ),
    Entry(
        name='levit.LeViT',
        flax_class=LeViT,
        not_recordable=HIERARCHICAL,
        paper="LeViT: a Vision Transformer in ConvNet's Clothing for Faster Inference (Graham et al., 2021)",
        # image_size=16: every attention sees one key; multi-token maps (where the key BatchNorm's bias gets no
        # gradient) are tested in tests/test_levit.py
        configs=(
            dict(image_size=16, num_classes=10, dim=(16, 24), depth=(1, 2), heads=2, mlp_mult=2, stages=2, dim_key=8,
                 dim_value=8),
            dict(image_size=16, num_classes=7, dim=(16, 24, 32), depth=1, heads=(3, 1, 2), mlp_mult=1,
                 dim_key=4, dim_value=6, num_distill_classes=5),
            dict(image_size=16, num_classes=0, dim=20, depth=1, heads=5, mlp_mult=3, stages=1, dim_key=4, dim_value=4,
                 dropout=0.1, num_distill_classes=0),
        ),
        notes='conv embedding; attention with BatchNorm and learned relative-position biases (`pos_indices` buffer); '
              'downsampling attention between stages; int image_size, 3 channels; optional distillation head',
    ),
    Entry(
        name='scalable_vit.ScalableViT',
        flax_class=scalable_vit.ScalableViT,
        not_recordable=HIERARCHICAL,
        paper='ScalableViT: Rethinking the Context-oriented Generalization of Vision Transformer (Yang et al., 2022)',
        # every attention sees at least two keys; a single key is tested in tests/test_scalable_vit.py
        configs=(
            dict(num_classes=10, dim=16, depth=(1, 1), heads=2, reduction_factor=2, window_size=(2, None),
                 iwsa_dim_key=8, iwsa_dim_value=8, ssa_dim_key=8, ssa_dim_value=8, ff_expansion_factor=2),
            dict(num_classes=7, dim=8, depth=(1, 0), heads=(3, 1), reduction_factor=(2, 1),
                 iwsa_dim_key=5, iwsa_dim_value=3, ssa_dim_key=4, ssa_dim_value=6, ff_expansion_factor=1,
                 channels=1, dropout=0.1),
            dict(num_classes=3, dim=12, depth=(2,), heads=3, reduction_factor=4, window_size=2, iwsa_dim_key=4,
                 iwsa_dim_value=4, ssa_dim_key=4, ssa_dim_value=4, ff_expansion_factor=1, channels=2),
        ),
        inputs=SizedImages(fixed_size=(32, 24)),
        notes='conv stem; stages of scalable self-attention (strided keys / values), PEG, interactive windowed '
              'attention with a local conv (`window_size=None`: whole map); any image size',
    ),
    Entry(
        name='sep_vit.SepViT',
        flax_class=sep_vit.SepViT,
        not_recordable=HIERARCHICAL,
        paper='SepViT: Separable Vision Transformer (Li et al., 2022)',
        # vit-pytorch's DSSA always uses 7 x 7 windows: 28 x 28 per stage gives one window in the last stage and
        # 2 x 2, 4 x 4 ... windows before it, so both the early return and the point-wise attention are compared
        configs=(
            dict(num_classes=10, dim=16, depth=(1, 1), heads=(1, 2)),
            dict(num_classes=5, dim=24, depth=(2,), heads=3, channels=1, ff_mult=2, dim_head=16, window_size=4),
            dict(num_classes=3, dim=8, depth=(1, 0, 1), heads=(2, 1, 1), ff_mult=1.5, dropout=0.1,
                 window_size=(7, 5, 3)),
        ),
        inputs=StagedImages(fixed_size=(28, 28)),
        notes='overlapping conv patch embedding + PEG per stage; depth-wise (windowed, with window tokens) then '
              'point-wise (among windows) attention; always 7 x 7 windows and dim_head 32 (`window_size` and '
              '`dim_head` are ignored, as in vit-pytorch); `depth` is a tuple',
    ),
    Entry(
        name='twins_svt.TwinsSVT',
        flax_class=twins_svt.TwinsSVT,
        not_recordable=HIERARCHICAL,
        paper='Twins: Revisiting the Design of Spatial Attention in Vision Transformers (Chu et al., 2021)',
        # every local window and every global attention sees at least two keys; one key is tested in
        # tests/test_twins_svt.py
        configs=(
            dict(num_classes=10, s1_emb_dim=16, s1_patch_size=2, s1_local_patch_size=2, s1_global_k=2, s1_depth=0,
                 s2_emb_dim=16, s2_patch_size=1, s2_local_patch_size=2, s2_global_k=2, s2_depth=0,
                 s3_emb_dim=24, s3_patch_size=1, s3_local_patch_size=2, s3_global_k=2, s3_depth=0,
                 s4_emb_dim=32, s4_patch_size=2, s4_global_k=1, s4_depth=0),
            # s1_global_k=3 on a 4 x 6 map: the key / value conv drops the last row; s4_local_patch_size is ignored
            dict(num_classes=7, dropout=0.1, peg_kernel_size=5,
                 s1_emb_dim=12, s1_patch_size=2, s1_local_patch_size=2, s1_global_k=3, s1_depth=0,
                 s2_emb_dim=16, s2_patch_size=1, s2_local_patch_size=2, s2_global_k=1, s2_depth=0,
                 s3_emb_dim=20, s3_patch_size=1, s3_local_patch_size=2, s3_global_k=2, s3_depth=0,
                 s4_emb_dim=24, s4_patch_size=2, s4_local_patch_size=5, s4_global_k=1, s4_depth=1),
            dict(num_classes=3, peg_kernel_size=1,
                 s1_emb_dim=16, s1_patch_size=1, s1_local_patch_size=4, s1_global_k=4, s1_depth=0,
                 s2_emb_dim=20, s2_patch_size=2, s2_local_patch_size=2, s2_global_k=2, s2_depth=0,
                 s3_emb_dim=16, s3_patch_size=1, s3_local_patch_size=2, s3_global_k=1, s3_depth=0,
                 s4_emb_dim=16, s4_patch_size=2, s4_global_k=1, s4_depth=0),
        ),
        inputs=SizedImages(fixed_size=(8, 12)),
        notes='locally-grouped + global sub-sampled attention (strided conv keys / values), PEG, four stages; '
              'heads=8, dim_head=64 fixed; 3 channels; any image size the stages divide',
    ),
    Entry(
        name='max_vit.MaxViT',
        flax_class=max_vit.MaxViT,
        not_recordable=HIERARCHICAL,
        paper='MaxViT: Multi-Axis Vision Transformer (Tu et al., 2022)',
        # (32, 64) -> stem 16 x 32 -> stages 8 x 16, 4 x 8; windows of one pixel (no gradient for the queries,
        # keys and position bias), three stages and other sizes are tested in tests/test_max_vit.py
        configs=(
            dict(num_classes=10, dim=16, depth=(1, 1), dim_head=8, window_size=2, dropout=0.0),
            dict(num_classes=7, dim=24, depth=(2,), dim_head=8, window_size=4, dim_conv_stem=12,
                 mbconv_expansion_rate=2, mbconv_shrinkage_rate=0.5, channels=1),
            dict(num_classes=3, dim=16, depth=(1,), dim_head=16, window_size=8, mbconv_expansion_rate=1.5,
                 channels=2),
        ),
        inputs=SizedImages(fixed_size=(32, 64)),
        notes='conv stem; MBConv (BatchNorm, depth-wise conv, squeeze-excitation) + block and grid window attention '
              'with relative position bias per block; any image size whose feature maps the window size divides',
    ),
    Entry(
        name='xcit.XCiT',
        flax_class=xcit.XCiT,
        not_recordable='cross-covariance attention attends over feature channels, not tokens, and no '
                       '`transformer`',
        paper='XCiT: Cross-Covariance Image Transformers (El-Nouby et al., 2021)',
        configs=(
            dict(image_size=16, patch_size=4, num_classes=10, dim=16, depth=2, cls_depth=1, heads=2, mlp_dim=32,
                 dim_head=8),
            dict(image_size=24, patch_size=8, num_classes=7, dim=24, depth=1, cls_depth=2, heads=3, mlp_dim=20,
                 dim_head=5, local_patch_kernel_size=5),
            dict(image_size=12, patch_size=2, num_classes=3, dim=20, depth=1, cls_depth=1, heads=1, mlp_dim=16,
                 dim_head=20, local_patch_kernel_size=1),
        ),
        notes='cross-covariance attention (learned temperature), local patch interaction (depthwise convs + '
              "BatchNorm), class attention, LayerScale; 3 channels, square sizes; layer drop in training only "
              "(rng stream 'layer_dropout')",
    ),
    Entry(
        name='mobile_vit.MobileViT',
        flax_class=mobile_vit.MobileViT,
        not_recordable=HIERARCHICAL,
        paper='MobileViT: Light-weight, General-purpose, and Mobile-friendly Vision Transformer (Mehta & Rastegari, 2021)',
        # the last MobileViT block sees a 1/32 map: every config keeps >= 2 tokens per patch position there
        configs=(
            dict(image_size=(64, 64), dims=(8, 12, 16), channels=(4, 4, 8, 8, 8, 8, 12, 12, 16, 16, 24),
                 num_classes=5, expansion=2, patch_size=(1, 1), depths=(1, 1, 1)),
            dict(image_size=(64, 128), dims=(12, 8, 20), channels=(8, 8, 6, 6, 8, 8, 10, 10, 12, 12, 16),
                 num_classes=3, expansion=1, depths=(1, 2, 1)),
            dict(image_size=(128, 32), dims=(16, 8, 12), channels=(4, 6, 6, 6, 8, 8, 8, 8, 12, 12, 20),
                 num_classes=7, expansion=1.5, patch_size=(2, 1), depths=(2, 1, 1)),
        ),
        inputs=RGBImages(),
        notes='MobileNetV2 blocks (BatchNorm, SiLU, depth-wise convs) + unfold / transformer / fold blocks; '
              '`channels` are stage widths, input is always RGB; 4 heads of 8 dims fixed',
    ),
    Entry(
        name='crossformer.CrossFormer',
        flax_class=crossformer.CrossFormer,
        not_recordable=HIERARCHICAL,
        paper='CrossFormer: A Versatile Vision Transformer Hinging on Cross-scale Attention (Wang et al., 2021)',
        # every window is 1 x 1; windowed attention (parity, gradients) is tested in tests/test_crossformer.py
        configs=(
            dict(dim=32, depth=(1, 0, 0, 0), global_window_size=1, local_window_size=1,
                 cross_embed_kernel_sizes=((4, 8), (1, 3), (2, 4), (1, 3)), cross_embed_strides=(4, 1, 2, 1),
                 num_classes=10),
            dict(dim=(48, 40, 16, 64), depth=(0, 1, 0, 0), global_window_size=1, local_window_size=1,
                 cross_embed_kernel_sizes=((4, 6, 8, 12), (2, 4), (3, 5), (1, 3)), cross_embed_strides=(4, 2, 1, 1),
                 num_classes=7, channels=1, attn_dropout=0.1, ff_dropout=0.1),
            dict(dim=32, depth=(0, 0, 1, 0), global_window_size=1, local_window_size=1,
                 cross_embed_kernel_sizes=((4, 8, 16, 32), (2, 4), (2, 4), (1, 3)), cross_embed_strides=(4, 2, 2, 1),
                 num_classes=0, channels=2),
        ),
        inputs=SizedImages(fixed_size=(32, 16)),
        notes='cross-scale conv embeddings, short / long distance windowed attention with a dynamic position bias '
              '(MLP), conv feed-forward, channel LayerNorm; dim_head fixed at 32; any image size the windows divide',
    ),
    Entry(
        name='regionvit.RegionViT',
        flax_class=regionvit.RegionViT,
        not_recordable=HIERARCHICAL,
        paper='RegionViT: Regional-to-Local Attention for Vision Transformers (Chen et al., 2021)',
        # 16 x 32 images: local maps 4 x 8 at stage 1, windows shrink in later stages; depths kept small (compile
        # time); two-layer stages and oversized windows are tested in tests/test_regionvit.py
        configs=(
            # windows of 1 x 2 (stage 3)
            dict(dim=16, depth=(0, 0, 1, 0), window_size=2, num_classes=10),
            # windows of 2 x 4 (stage 2)
            dict(dim=(16, 24, 32, 16), depth=(0, 1, 0, 0), window_size=4, tokenize_local_3_conv=True, use_peg=True,
                 num_classes=7),
            # windows of 4 x 4 in a table for window_size 8 (local_patch_size 2)
            dict(dim=(8, 16, 12, 24), depth=(1, 0, 0, 0), window_size=8, local_patch_size=2, use_peg=True,
                 attn_dropout=0.1, ff_dropout=0.1, num_classes=3),
        ),
        inputs=SizedImages(fixed_size=(16, 32)),
        notes='regional and local tokens, R2L attention with a local relative position bias; 4 stages sharing one '
              'downsampling conv per stage for both maps; `tokenize_local_3_conv`, `use_peg`; 4 heads of 32 fixed; '
              'any image size divisible by the region patch',
    ),
    Entry(
        name='nest.NesT',
        flax_class=nest.NesT,
        not_recordable=HIERARCHICAL,
        paper='Nested Hierarchical Transformer (Zhang et al., 2021)',
        configs=(
            dict(image_size=16, patch_size=4, num_classes=10, dim=16, heads=2, num_hierarchies=2, block_repeats=1),
            dict(image_size=16, patch_size=2, num_classes=7, dim=12, heads=3, num_hierarchies=3,
                 block_repeats=(1, 2, 1), mlp_mult=2, channels=1, dim_head=5),
            dict(image_size=8, patch_size=2, num_classes=3, dim=20, heads=3, num_hierarchies=1, block_repeats=2,
                 channels=2, dropout=0.1),
        ),
        notes='hierarchies of local transformers over blocks, block aggregation (conv, channel LayerNorm, max pool); '
              '`dim_head` ignored (dim // heads); int image_size',
    ),
    Entry(
        name='vit_3d.ViT',
        flax_class=vit_3d.ViT,
        recordable=True,
        paper='An Image is Worth 16x16 Words (Dosovitskiy et al., 2020), on video / volume patches',
        configs=(
            dict(image_size=16, image_patch_size=8, frames=4, frame_patch_size=2, num_classes=10, dim=32, depth=2,
                 heads=4, mlp_dim=64, dim_head=8),
            dict(image_size=(8, 12), image_patch_size=(4, 6), frames=3, frame_patch_size=1, num_classes=7, dim=24,
                 depth=1, heads=2, mlp_dim=32, dim_head=12, channels=1, pool='mean'),
            # a single head with dim_head == dim: no attention output projection
            dict(image_size=8, image_patch_size=4, frames=4, frame_patch_size=4, num_classes=3, dim=16, depth=2,
                 heads=1, mlp_dim=32, dim_head=16, channels=2, dropout=0.1, emb_dropout=0.1),
        ),
        inputs=Videos(),
        notes='tokens (f h w), patches (pf p1 p2 c); always a cls token (averaged in by pool="mean"); '
              'LayerNorm in the head, not the transformer; smaller inputs slice the position embedding',
    ),
    Entry(
        name='simple_vit_3d.SimpleViT',
        flax_class=simple_vit_3d.SimpleViT,
        recordable=True,
        paper='Better plain ViT baselines for ImageNet-1k (Beyer et al., 2022), on video / volume patches',
        configs=(
            dict(image_size=16, image_patch_size=8, frames=4, frame_patch_size=2, num_classes=10, dim=24, depth=2,
                 heads=4, mlp_dim=64, dim_head=8),
            # dim 32: dim // 6 = 5 frequencies per axis and 2 zero-padded features
            dict(image_size=(8, 12), image_patch_size=(4, 6), frames=3, frame_patch_size=3, num_classes=5, dim=32,
                 depth=1, heads=2, mlp_dim=32, dim_head=12, channels=1),
            dict(image_size=(4, 8), image_patch_size=(2, 4), frames=2, frame_patch_size=1, num_classes=3, dim=12,
                 depth=2, heads=1, mlp_dim=16, dim_head=12, channels=2),
        ),
        inputs=Videos(),
        notes='fixed 3D sin-cos position embedding from the input\'s own patch grid (any divisible size), '
              'mean pooling',
    ),
    Entry(
        name='cct_3d.CCT',
        flax_class=cct_3d.CCT,
        not_recordable='no `transformer` (its encoder is `classifier`), and vit-pytorch computes the softmax '
                       'inline (there is no `attend` to hook, so no reference to match)',
        paper='Escaping the Big Data Paradigm with Compact Transformers (Hassani et al., 2021)',
        # one token per config; multi-token configs (where `attention_pool.bias` gets no gradient) are tested in
        # tests/test_cct_3d.py
        configs=(
            dict(img_size=4, num_frames=2, embedding_dim=32, kernel_size=3, stride=2, padding=1, frame_stride=2,
                 num_layers=2, num_heads=4, mlp_ratio=2, num_classes=10),
            dict(img_size=(6, 10), num_frames=3, n_input_channels=1, frame_kernel_size=2, frame_padding=0,
                 frame_pooling_kernel_size=2, frame_pooling_stride=2, frame_pooling_padding=0, kernel_size=5,
                 stride=3, padding=2, pooling_kernel_size=4, pooling_stride=3, pooling_padding=1, embedding_dim=24,
                 num_layers=1, num_heads=3, mlp_ratio=1.5, num_classes=7, positional_embedding='learnable'),
            dict(img_size=5, num_frames=4, n_input_channels=2, n_conv_layers=0, frame_kernel_size=1, frame_stride=4,
                 kernel_size=4, stride=3, padding=0, pooling_kernel_size=1, pooling_stride=1, pooling_padding=0,
                 embedding_dim=20, num_layers=3, num_heads=5, mlp_ratio=1, num_classes=3,
                 positional_embedding='none', stochastic_depth_rate=0.3),
        ),
        inputs=Videos(),
        notes='3-D conv tokenizer (Conv3d, ReLU, MaxPool3d), sequence pooling; sine (a buffer) / learnable / no '
              "position embedding; stochastic depth in training only (rng stream 'drop_path'); fixed "
              'dropout 0 and attention dropout 0.1; presets cct_2 ... cct_16',
    ),
    Entry(
        name='vivit.ViT',
        flax_class=vivit.ViT,
        not_recordable='no single `transformer`: the factorised encoders (`spatial_transformer`, '
                       '`temporal_transformer`) attend over different token counts',
        paper='ViViT: A Video Vision Transformer (Arnab et al., 2021)',
        # both variants x both pools; every temporal attention sees >= 2 frame patches. Masks, fully masked videos
        # and the flash / explicit attention paths are tested in tests/test_vivit.py
        configs=(
            dict(image_size=8, image_patch_size=4, frames=4, frame_patch_size=2, num_classes=10, dim=16,
                 spatial_depth=1, temporal_depth=1, heads=2, mlp_dim=32, dim_head=8),
            dict(image_size=(8, 12), image_patch_size=(4, 6), frames=3, frame_patch_size=1, num_classes=7, dim=24,
                 spatial_depth=2, temporal_depth=2, heads=3, mlp_dim=16, dim_head=8, channels=1, pool='mean',
                 variant='factorized_self_attention'),
            # one head with dim_head == dim: no output projection; vit-pytorch's flash path drops attention
            # weights even in eval mode, so dropout is compared on the explicit path
            dict(image_size=(6, 4), image_patch_size=2, frames=4, frame_patch_size=1, num_classes=5, dim=12,
                 spatial_depth=1, temporal_depth=2, heads=1, mlp_dim=20, dim_head=12, channels=2, pool='mean',
                 dropout=0.1, emb_dropout=0.1, use_flash_attn=False),
            dict(image_size=8, image_patch_size=(2, 4), frames=6, frame_patch_size=3, num_classes=3, dim=20,
                 spatial_depth=1, temporal_depth=1, heads=4, mlp_dim=24, dim_head=5,
                 variant='factorized_self_attention'),
        ),
        inputs=Videos(),
        torch_name='vivit.ViViT',
        notes="factorised encoder (spatial then temporal transformer) or factorised self-attention; pool cls/mean; "
              "per-frame `mask`; vit-pytorch 1.26's class is ViViT, `ViT` is its README's (older) name",
    ),
    Entry(
        name='na_vit.NaViT',
        flax_class=na_vit.NaViT,
        not_recordable="vit-pytorch computes NaViT's attention with F.scaled_dot_product_attention, which never "
                       'forms the maps (no reference to match)',
        paper="Patch n' Pack: NaViT, a Vision Transformer for any Aspect Ratio and Resolution (Dehghani et al., 2023)",
        configs=(
            dict(image_size=32, patch_size=8, num_classes=10, dim=32, depth=2, heads=4, mlp_dim=64, dim_head=8),
            dict(image_size=(12, 20), patch_size=4, num_classes=7, dim=24, depth=1, heads=3, mlp_dim=32, dim_head=12,
                 channels=1, dropout=0.1, emb_dropout=0.1, token_dropout_prob=0.25),
            dict(image_size=(8, 16), patch_size=2, num_classes=3, dim=16, depth=1, heads=1, mlp_dim=16, dim_head=16,
                 channels=2),
        ),
        inputs=MixedResolutionImages(),
        notes='lists of mixed-resolution images packed into sequences (attention masked per image, attention '
              "pooling per image) or fixed-shape `PackedBatch`es from the grain packer; token dropout (rng stream "
              "'token_dropout'); q/k RMSNorm",
    ),
    Entry(
        name='na_vit_nested_tensor.NaViT',
        flax_class=na_vit_nested_tensor.NaViT,
        not_recordable="vit-pytorch computes NaViT's attention with F.scaled_dot_product_attention, which never "
                       'forms the maps (no reference to match)',
        paper="Patch n' Pack: NaViT, a Vision Transformer for any Aspect Ratio and Resolution (Dehghani et al., 2023)",
        configs=(
            dict(image_size=32, patch_size=8, num_classes=10, dim=32, depth=2, heads=4, mlp_dim=64, dim_head=8),
            dict(image_size=(12, 20), patch_size=4, num_classes=7, dim=24, depth=1, heads=3, mlp_dim=32, dim_head=12,
                 channels=1, dropout=0.1, emb_dropout=0.1, token_dropout_prob=0.25, qk_rmsnorm=False),
        ),
        inputs=MixedResolutionImages(grouped=False),
        torch_context=lambda: na_vit_nested_tensor.torch_keeps_gradients(),
        notes="vit-pytorch's nested-tensor NaViT (one image per jagged sequence; here packed and masked): q/k "
              'LayerNorm, no pooling residual; also takes `PackedBatch`es',
    ),
    Entry(
        name='mp3.MP3',
        flax_class=mp3.MP3,
        not_recordable=OBJECTIVE,
        paper='Position Prediction as an Effective Pretraining Strategy (Zhai et al., 2022)',
        configs=(
            dict(vit=mp3.ViT(num_classes=10, image_size=16, patch_size=4, dim=32, depth=2, heads=4, mlp_dim=64,
                             dim_head=8), masking_ratio=0.5),
            dict(vit=mp3.ViT(num_classes=3, image_size=(12, 16), patch_size=(4, 2), dim=16, depth=1, heads=1,
                             mlp_dim=24, dim_head=16, channels=2, dropout=0.1), masking_ratio=0.75),
        ),
        inputs=MaskedPositionImages(),
        notes="masked position prediction loss: tokens without position embedding attend to the unmasked ones "
              "(rng stream 'masking', even in eval mode) and predict their own index; `params['vit']` is a "
              "plain mp3.ViT's",
    ),
    Entry(
        name='mae.MAE',
        flax_class=mae.MAE,
        not_recordable=OBJECTIVE,
        paper='Masked Autoencoders Are Scalable Vision Learners (He et al., 2021)',
        configs=(
            dict(encoder=ViT(image_size=16, patch_size=4, num_classes=10, dim=32, depth=1, heads=2, mlp_dim=32,
                             dim_head=8), decoder_dim=16, decoder_heads=2, decoder_dim_head=8),
            # mean pool, no head, decoder_dim == dim (no enc_to_dec), non-square patches
            dict(encoder=ViT(image_size=(12, 8), patch_size=(4, 2), num_classes=0, dim=16, depth=2, heads=1, mlp_dim=24,
                             dim_head=16, channels=2, pool='mean'), decoder_dim=16, masking_ratio=0.5,
                 decoder_depth=2, decoder_heads=2, decoder_dim_head=4),
        ),
        inputs=MaskedImages(),
        torch_context=lambda: mae.torch_runs_on_2d_pos_embedding(),
        notes="masked autoencoder loss (rng stream 'masking', even in eval mode): the encoder's transformer sees the "
              "visible patches, a transformer decoder predicts the masked pixels; `params['encoder']` is a plain "
              "vit.ViT's; `MAE.reconstruct`; vit-pytorch's pool='cls' fails on its 2-D pos_embedding (fixed here)",
    ),
    Entry(
        name='simmim.SimMIM',
        flax_class=simmim.SimMIM,
        not_recordable=OBJECTIVE,
        paper='SimMIM: A Simple Framework for Masked Image Modeling (Xie et al., 2021)',
        configs=(
            dict(encoder=ViT(image_size=16, patch_size=4, num_classes=10, dim=32, depth=1, heads=2, mlp_dim=32,
                             dim_head=8)),
            dict(encoder=ViT(image_size=(12, 8), patch_size=(4, 2), num_classes=0, dim=16, depth=2, heads=1, mlp_dim=24,
                             dim_head=16, channels=2, pool='mean'), masking_ratio=0.75),
        ),
        inputs=MaskedImages(),
        torch_context=lambda: simmim.torch_runs_on_2d_pos_embedding(),
        notes="masked image modelling loss (rng stream 'masking', even in eval mode): mask tokens in place of the "
              "masked patches, a linear head predicts their pixels (L1 / num_masked); `params['encoder']` is a plain "
              "vit.ViT's; vit-pytorch fails on its 2-D pos_embedding (fixed here)",
    ),
    Entry(
        name='mpp.MPP',
        flax_class=mpp.MPP,
        not_recordable=OBJECTIVE,
        paper='An Image is Worth 16x16 Words (Dosovitskiy et al., 2020), masked patch prediction (appendix B.1.2)',
        configs=(
            dict(transformer=ViT(image_size=16, patch_size=4, num_classes=5, dim=16, depth=1, heads=2, mlp_dim=16,
                                 dim_head=8), patch_size=4, dim=16),
            # mean pool (no cls token), no head, one channel, un-normalised targets
            dict(transformer=ViT(image_size=(8, 12), patch_size=4, num_classes=0, dim=12, depth=2, heads=3,
                                 mlp_dim=24, dim_head=4, channels=1, pool='mean'),
                 patch_size=4, dim=12, channels=1, output_channel_bits=2, max_pixel_val=2.0, mask_prob=0.5,
                 replace_prob=0.3, random_patch_prob=0.4, mean=(0.5,), std=(0.25,)),
            # no random patches: every chosen patch becomes the mask token
            dict(transformer=ViT(image_size=12, patch_size=3, num_classes=3, dim=16, depth=1, heads=1, mlp_dim=16,
                                 dim_head=16, channels=2),
                 patch_size=3, dim=16, channels=2, output_channel_bits=1, mask_prob=0.25, replace_prob=1.0,
                 random_patch_prob=0.0, mean=(0.1, -0.2), std=(0.5, 2.0)),
        ),
        inputs=CorruptedPatchImages(),
        torch_context=lambda: mpp.torch_mpp_runs(),
        notes="masked patch prediction loss (rng stream 'masking', even in eval mode): chosen patches replaced by a "
              "mask token or a random patch, their mean colours predicted as quantised classes; "
              "`params['transformer']` is a plain vit.ViT's; vit-pytorch fails on the 2-D cls_token / "
              "pos_embedding and on pool='mean' (fixed here)",
    ),
    Entry(
        name='dino.Dino',
        flax_class=dino.Dino,
        not_recordable=OBJECTIVE,
        paper='Emerging Properties in Self-Supervised Vision Transformers (Caron et al., 2021)',
        # augmentation off on both sides (RandomApply(L2Norm(), p=0.) is the identity in vit-pytorch too); crops
        # shared through CroppedImages; num_classes_K < 64 keeps init's mock-forward `last_teacher_centers` out of
        # the init-distribution test (torch's come from its constructor's random images)
        configs=(
            dict(net=ViT(image_size=16, patch_size=8, num_classes=5, dim=16, depth=1, heads=2, mlp_dim=16, dim_head=8),
                 image_size=16, hidden_layer='to_latent', projection_hidden_size=16, projection_layers=2,
                 num_classes_K=32, augment_fn=dino.RandomApply(dino.L2Norm(), p=0.0),
                 augment_fn2=dino.RandomApply(dino.L2Norm(), p=0.0)),
            # mean pool, default hidden layer (-2: to_latent), 3-layer projector, other temperatures and scales
            dict(net=ViT(image_size=12, patch_size=4, num_classes=3, dim=12, depth=2, heads=3, mlp_dim=16, dim_head=4,
                         pool='mean'),
                 image_size=12, projection_hidden_size=8, projection_layers=3, num_classes_K=24, student_temp=0.5,
                 teacher_temp=0.07, local_upper_crop_scale=0.3, global_lower_crop_scale=0.6,
                 augment_fn=dino.RandomApply(dino.L2Norm(), p=0.0),
                 augment_fn2=dino.RandomApply(dino.L2Norm(), p=0.0)),
        ),
        inputs=CroppedImages(),
        notes="self-distillation loss (rng streams 'augment' and 'crop', even in eval mode): per-image JAX "
              "augmentations and random resized crops, student and EMA teacher (`update_moving_average`, "
              "`trainable_mask`); `params['student_encoder']['net']` is the plain encoder's; hidden layer by name "
              "or index (`to_latent`, a method such as CvT's `layers`, a submodule)",
    ),
    Entry(
        name='es_vit.EsViTTrainer',
        flax_class=es_vit.EsViTTrainer,
        not_recordable=OBJECTIVE,
        paper='Efficient Self-supervised Vision Transformers for Representation Learning (Li et al., 2021)',
        # as dino.Dino's: augmentation off on both sides, crops shared through CroppedImages, num_classes_K < 64;
        # torch's L2Norm normalises the region projector over its features (es_vit.torch_l2norm_over_features)
        configs=(
            dict(net=CvT(num_classes=3, s1_emb_dim=8, s1_emb_kernel=3, s1_emb_stride=2, s1_heads=1, s2_emb_dim=12,
                         s2_heads=2, s2_depth=1, s3_emb_dim=8, s3_heads=1, s3_depth=1, s3_emb_stride=2),
                 image_size=16, hidden_layer='layers', projection_hidden_size=12, projection_layers=2,
                 num_classes_K=32, augment_fn=dino.RandomApply(dino.L2Norm(), p=0.0),
                 augment_fn2=dino.RandomApply(dino.L2Norm(), p=0.0)),
            # default hidden layer (-2: CvT's layers), a 3 x 3 map, 3-layer projector, other temperatures and scales
            dict(net=CvT(num_classes=2, s1_emb_dim=6, s1_emb_kernel=3, s1_emb_stride=2, s1_heads=1, s2_emb_dim=8,
                         s2_heads=1, s2_depth=1, s2_kv_proj_stride=1, s3_emb_dim=10, s3_heads=2, s3_depth=1,
                         s3_emb_stride=1, s3_proj_kernel=1),
                 image_size=12, projection_hidden_size=8, projection_layers=3, num_classes_K=24, student_temp=0.5,
                 teacher_temp=0.07, local_upper_crop_scale=0.3, global_lower_crop_scale=0.6,
                 augment_fn=dino.RandomApply(dino.L2Norm(), p=0.0),
                 augment_fn2=dino.RandomApply(dino.L2Norm(), p=0.0)),
        ),
        inputs=EsViTImages(),
        torch_context=es_vit.torch_l2norm_over_features,
        notes="DINO's view loss plus a region loss on a hierarchical encoder's feature map (CvT: hidden_layer="
              "'layers'); rng streams 'augment' and 'crop' (dino.py's augmentations and crops), EMA teacher "
              "(`update_moving_average`, `trainable_mask`), `params['student_encoder']['net']` is the plain "
              "encoder's; vit-pytorch's L2Norm over the region tokens fixed to the feature axis",
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


def markdown_table() -> str:
    """The README's architecture table."""
    rows = [
        '| vit-flax | vit-pytorch | paper | parity tests | Recorder | notes |',
        '|---|---|---|---|---|---|',
    ]
    for entry in ENTRIES:
        recorder = 'yes' if entry.recordable else f'no: {entry.not_recordable}'
        rows.append(
            f'| `vit_flax.{entry.name}` | `{entry.torch_module}.{entry.torch_class_name}` | {entry.paper} | '
            f'torch->Flax, Flax->torch (strict), round trip, gradients; {len(entry.configs)} configs | {recorder} | '
            f'{entry.notes} |'
        )
    return '\n'.join(rows) + '\n'


README_MARKERS = ('<!-- registry-table:start -->\n', '<!-- registry-table:end -->')


def readme_with_table(readme: str) -> str:
    """`readme` with the text between the registry-table markers replaced by `markdown_table()`."""
    start, end = README_MARKERS
    head, rest = readme.split(start, 1)
    _, tail = rest.split(end, 1)
    return head + start + markdown_table() + end + tail


if __name__ == '__main__':
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(description='Print the architecture table, or write it into a README.')
    parser.add_argument('--write', type=Path, metavar='README', help='update the table in this file')
    args = parser.parse_args()
    if args.write:
        args.write.write_text(readme_with_table(args.write.read_text()))
    else:
        print(markdown_table(), end='')
