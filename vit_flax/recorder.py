"""Recorder: a model's attention maps beside its predictions, mirroring vit_pytorch/recorder.py.

    from vit_flax.recorder import Recorder

    variables = v.init(jax.random.key(0), img)
    preds, attns = Recorder(v).apply(variables, img)  # attns: (batch, layers, heads, n, n)

vit-pytorch's Recorder hooks the `attend` (an nn.Softmax) of every `vit.Attention` under the model's `transformer`
and stacks what they output on a new axis 1. Here the attention layers sow their post-softmax maps
(`layers.record_attention_map`, the Flax idiom of `nn.MultiHeadDotProductAttention(sow_weights=True)`) into the
'intermediates' collection, at the path of the torch module the hook sits on
(`intermediates/transformer/layers_0_0/attend`); the Recorder makes that collection mutable for one `apply` and
stacks the maps under `transformer` in layer order. The variables are the wrapped model's own: nothing is copied
and no parameter is added. Sowing costs nothing when the collection is not mutable (`init` never collects it).
A model built with `scan_layers=True` sows each map once for all its layers, stacked on a leading layer axis
(`intermediates/transformer/layers_scan/0/attend`, (depth, batch, heads, n, n)); the Recorder splits it, so the
result is the unscanned model's.

Like vit-pytorch's, the maps are taken after the softmax and before attention dropout, and are cut from the
gradient (torch's `.detach()`). Where vit-pytorch's Recorder can only see `vit.Attention` layers (so it records
nothing on, say, SimpleViT), this one records every registry architecture whose `transformer` is a stack of plain
softmax attention layers of one shape (`registry.Entry.recordable`); for the others it raises at construction,
saying why (`registry.Entry.not_recordable`). There is no state to `clear()`; `eject()` returns the model, as
vit-pytorch's does.
"""

from __future__ import annotations

import dataclasses
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_flax import registry
from vit_flax.layers import apply_collecting_intermediates
from vit_flax.scan import per_layer_path, scanned_axes

RECORDED_LAYER = 'transformer'  # vit-pytorch records the attention layers under `vit.transformer` only


def _natural_key(path: tuple[str, ...]):
    """'layers_10_0' after 'layers_2_0': the order of torch's module lists, which is the order the layers run."""
    return [[int(part) if part.isdigit() else part for part in re.split(r'(\d+)', name)] for name in path]


def attention_maps(intermediates, under: str = RECORDED_LAYER) -> list[tuple[tuple[str, ...], jax.Array]]:
    """(path, map) for every map sown under the submodule `under`, in layer order; a layer called twice gives
    two maps, in call order. A scanned stack's maps are split into its layers', named as the unscanned stack's
    (`transformer/layers_scan/0` gives `transformer/layers_{i}/0`)."""
    found = []

    def walk(tree, path):
        for name, value in tree.items():
            if name == 'attend' and isinstance(value, tuple):
                # a scanned stack sows each map once for all its layers, stacked on leading layer axes
                layer_axes = scanned_axes(path)
                found.extend((per_layer_path(path, layer), attn[layer])
                             for attn in value for layer in np.ndindex(*attn.shape[:layer_axes]))
            elif isinstance(value, dict) or hasattr(value, 'items'):
                walk(value, (*path, name))

    if under in intermediates:
        walk(intermediates[under], (under,))
    # a stable sort keeps the call order of repeated calls to one layer
    return sorted(found, key=lambda item: _natural_key(item[0]))


def check_recordable(model: nn.Module):
    """Raise ValueError naming the class and the reason when the registry says `model` cannot be recorded."""
    entry = registry.BY_CLASS.get(type(model))
    if entry is not None and not entry.recordable:
        raise ValueError(f'Recorder cannot record vit_flax.{entry.name}: {entry.not_recordable}')


@dataclasses.dataclass(frozen=True)
class Recorder:
    vit: nn.Module

    def __post_init__(self):
        if not isinstance(self.vit, nn.Module):
            raise TypeError(f'Recorder wraps a Flax module, got {type(self.vit).__name__}')
        check_recordable(self.vit)

    def init(self, *args, **kwargs):
        """The wrapped model's variables (the Recorder adds none)."""
        return self.vit.init(*args, **kwargs)

    def apply(self, variables, *args, mutable=False, **kwargs):
        """`(preds, attns)`: the model's output and its attention maps, (batch, layers, heads, n, m).

        Arguments are the model's own (`train=`, `rngs=` ...). With `mutable=[...]` (e.g. 'batch_stats') the result
        is `((preds, attns), updated_collections)`, as Flax's `apply` returns it.
        """
        preds, intermediates, state = apply_collecting_intermediates(
            self._explicit(), variables, *args, mutable=mutable, **kwargs)
        attns = self._stack(intermediates)
        return ((preds, attns), state) if mutable else (preds, attns)

    def eject(self) -> nn.Module:
        return self.vit

    def _explicit(self) -> nn.Module:
        """The model with its attention maps formed: a fused `attention_impl` (jax.nn.dot_product_attention) never
        forms them, so the Recorder runs the explicit softmax, the same function with the same variables."""
        if getattr(self.vit, 'attention_impl', 'explicit') == 'explicit':
            return self.vit
        return self.vit.clone(attention_impl='explicit')

    def _stack(self, intermediates) -> jax.Array:
        name = type(self.vit).__name__
        maps = attention_maps(intermediates)
        if not maps:
            raise ValueError(
                f'{name} recorded no attention maps under `{RECORDED_LAYER}`: the Recorder stacks the post-softmax '
                f'maps of the attention layers of a `{RECORDED_LAYER}` submodule, and this model has none that '
                f'offers them (vit_flax.layers.record_attention_map)'
            )
        shapes = [('/'.join(path), tuple(attn.shape)) for path, attn in maps]
        if len({shape for _, shape in shapes}) > 1:
            listed = ', '.join(f'{path} {shape}' for path, shape in shapes)
            raise ValueError(f'{name} has attention maps of different shapes, which cannot be stacked: {listed}')
        return jax.lax.stop_gradient(jnp.stack([attn for _, attn in maps], axis=1))
