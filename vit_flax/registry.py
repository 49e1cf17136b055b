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
from vit_flax.deepvit import DeepViT
from vit_flax.layers import pair
from vit_flax.parallel_vit import ViT as ParallelViT
from vit_flax.simple_vit import SimpleViT
from vit_flax.t2t import T2TViT
from vit_flax.vit import ViT
from vit_flax import vit_for_small_dataset
from vit_flax import vit_with_patch_merger

# example inputs


@dataclasses.dataclass(frozen=True)
class Images:
    """Images (batch, height, width, channels) at the model's own `image_size` and `channels`.

    vit-pytorch takes (batch, channels, height, width).
    """

    def example(self, model: nn.Module, batch: int = 1, rng: np.random.Generator | None = None) -> tuple:
        height, width = pair(model.image_size)
        shape = (batch, height, width, model.channels)
        if rng is None:
            return (np.zeros(shape, np.float32),)
        return (rng.standard_normal(shape, dtype=np.float32),)

    def to_torch_layout(self, args: tuple) -> tuple:
        (images,) = args
        return (np.ascontiguousarray(np.moveaxis(images, -1, 1)),)


@dataclasses.dataclass(frozen=True)
class PatchGridImages(Images):
    """Images for a module with a `patch_size` but no `image_size` (a standalone patch tokenizer such as
    vit_for_small_dataset.SPT): a `grid` of (rows, columns) patches, with the model's own `channels`."""

    grid: tuple[int, int] = (2, 3)

    def example(self, model: nn.Module, batch: int = 1, rng: np.random.Generator | None = None) -> tuple:
        patch_height, patch_width = pair(model.patch_size)
        shape = (batch, self.grid[0] * patch_height, self.grid[1] * patch_width, model.channels)
        if rng is None:
            return (np.zeros(shape, np.float32),)
        return (rng.standard_normal(shape, dtype=np.float32),)


@dataclasses.dataclass(frozen=True)
class Tokens:
    """Token sequences (batch, n, dim) at the model's own `dim`, for modules that take tokens, not images
    (vit_with_patch_merger.PatchMerger). vit-pytorch takes the same layout."""

    n: int = 6

    def example(self, model: nn.Module, batch: int = 1, rng: np.random.Generator | None = None) -> tuple:
        shape = (batch, self.n, model.dim)
        if rng is None:
            return (np.zeros(shape, np.float32),)
        return (rng.standard_normal(shape, dtype=np.float32),)

    def to_torch_layout(self, args: tuple) -> tuple:
        return tuple(args)


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str  # '<file>.<Class>', the same for vit-flax and vit-pytorch
    flax_class: type[nn.Module]
    paper: str
    configs: tuple[dict[str, Any], ...]  # the first is the tiny default; the rest are the tested variants
    inputs: Any = Images()
    tolerance: float = 2e-5  # relative to max(1, max|y|); widen only with float64 evidence (see DESIGN.md)
    notes: str = ''
    # vit-pytorch's keywords for a config where they are not the same values: a module argument such as
    # efficient.ViT's `transformer` is a Flax module in the config and needs its torch twin
    torch_config: Callable[[dict[str, Any]], dict[str, Any]] | None = None

    def torch_kwargs(self, config: dict[str, Any]) -> dict[str, Any]:
        return self.torch_config(config) if self.torch_config else config

    @property
    def module(self) -> str:
        return self.name.rsplit('.', 1)[0]

    @property
    def class_name(self) -> str:
        return self.name.rsplit('.', 1)[1]

    @property
    def torch_module(self) -> str:
        return f'vit_pytorch.{self.module}'

    def build(self, config_index: int = 0, **overrides) -> nn.Module:
        return self.flax_class(**{**self.configs[config_index], **overrides})


ENTRIES: tuple[Entry, ...] = (
    Entry(
        name='vit.ViT',
        flax_class=ViT,
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
        paper='DeepViT: Towards Deeper Vision Transformer (Zhou et al., 2021)',
        configs=(
            dict(image_size=16, patch_size=4, num_classes=10, dim=32, depth=2, heads=4, mlp_dim=64, dim_head=8),
            dict(image_size=24, patch_size=8, num_classes=7, dim=24, depth=1, heads=3, mlp_dim=32, dim_head=12,
                 channels=1, pool='mean'),
            # heads=1 is tested in tests/test_deepvit.py: its reattn_weights gradient is zero, torch's is round-off
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
        paper='Escaping the Big Data Paradigm with Compact Transformers (Hassani et al., 2021)',
        # Each config tokenizes to ONE token: with two or more, the true gradient of `attention_pool.bias` (a
        # shift of every softmax logit) is zero and both sides hold only round-off, which the per-tensor
        # gradient tolerance cannot compare. Multi-token configs are tested in tests/test_cct.py.
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


# JAX-only fields of a Flax module that have no vit-pytorch keyword
FLAX_ONLY_FIELDS = frozenset({'parent', 'name'})


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
        '| vit-flax | vit-pytorch | paper | parity tests | notes |',
        '|---|---|---|---|---|',
    ]
    for entry in ENTRIES:
        rows.append(
            f'| `vit_flax.{entry.name}` | `{entry.torch_module}.{entry.class_name}` | {entry.paper} | '
            f'torch->Flax, Flax->torch (strict), round trip, gradients; {len(entry.configs)} configs | {entry.notes} |'
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
