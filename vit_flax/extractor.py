"""Extractor: a layer's embeddings beside the model's predictions, mirroring vit_pytorch/extractor.py.

    from vit_flax.extractor import Extractor

    logits, embeddings = Extractor(v).apply(variables, img)  # embeddings: the output of v's `transformer`
    logits, (sm_tokens, lg_tokens) = Extractor(cross_vit, layer_name='multi_scale_encoder').apply(variables, img)

vit-pytorch registers a forward hook on `getattr(vit, layer_name)`; here `nn.intercept_methods` sees every module
call of one `apply`, and the call of the submodule at `layer_name` hands its output (or, with
`layer_save_input=True`, its inputs) out through the 'intermediates' collection (`sow`), so the Extractor works
under `jax.jit`. The variables are the wrapped model's own: nothing is copied and no parameter is added.

As in vit-pytorch:
- a layer that returns a tuple gives a tuple (CrossViT's `multi_scale_encoder`: small- then large-scale tokens);
- `layer_save_input=True` gives the tuple of the layer's positional inputs, as a torch forward hook sees them:
  `(x,)` for a transformer called as `transformer(x)`. Flax's `train` flag is not among them (torch has none);
- a layer called more than once gives what its last call saw;
- one difference: torch's hook reads a layer's inputs after its forward ran, so a layer that updates its input in
  place shows the updated tensor (CCT's classifier adds its position embedding with `+=`); here the input as given;
- `detach=True` (the default) cuts the embeddings from the gradient (torch's `.clone().detach()`);
- `return_embeddings_only`, in the constructor or the call, returns the embeddings alone;
- `eject()` returns the model.
`layer_name` is any name vit-pytorch's would be (`layer_call` has the rule, shared with dino.Dino's hidden layer):
a submodule ('transformer', 'multi_scale_encoder'), a nested one in torch's dotted form ('transformer.layers.1.0',
a path vit-pytorch's getattr cannot follow) or Flax's ('transformer/layers_1_0'), a method that stands for a torch
submodule (cvt.CvT's 'layers'), or 'to_latent', torch's nn.Identity before the head (the pooled features).
Features come out in vit-flax's layout (channels-last feature maps). vit-pytorch's `layer=` (a module object) and
`device=` have no JAX meaning and are not taken.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax

from vit_flax.layers import ATTENTION_MAPS, apply_collecting_intermediates
from vit_flax.scan import SCANNED_SUFFIX

CAPTURED = 'extractor'  # the sow name of the captured embeddings, in the capturing module's scope
HEAD_NAMES = ('mlp_head', 'mlp_head_0', 'linear_head')  # the heads whose input is torch's `to_latent`


def flax_path(layer_name: str) -> tuple[str, ...]:
    """'transformer.layers.0.1' -> ('transformer', 'layers_0_1'): integer segments join the preceding name, the
    naming rule of converters/rules.py. A '/'-separated Flax path is taken as it is."""
    if '/' in layer_name:
        return tuple(layer_name.split('/'))
    path = []
    for part in layer_name.split('.'):
        if part.isdigit() and path:
            path[-1] = f'{path[-1]}_{part}'
        else:
            path.append(part)
    return tuple(path)


class NotThisLayer:
    """What `layer_call` returns for a call that is not the layer's."""


NOT_THIS_LAYER = NotThisLayer()


def layer_call(layer_name: str, relative_path: tuple[str, ...], method_name: str, args: tuple, output,
               save_input: bool = False):
    """What a torch forward hook on vit-pytorch's `layer_name` would see of one Flax module call (the call of the
    module at `relative_path` below the model, method `method_name`): the output, or with `save_input` the tuple of
    positional inputs (Flax's `train` flag left out). NOT_THIS_LAYER for the calls of other layers."""
    inputs = tuple(arg for arg in args if not isinstance(arg, bool))
    if layer_name == 'to_latent':
        # torch's nn.Identity between pooling and head has no Flax twin: its input and output are the head's input
        if len(relative_path) == 1 and relative_path[0] in HEAD_NAMES and method_name == '__call__':
            return inputs[:1] if save_input else args[0]
    elif not relative_path and method_name == layer_name:
        return inputs if save_input else output  # a method standing for a torch submodule (cvt.CvT.layers)
    elif method_name == '__call__' and relative_path == flax_path(layer_name):
        return inputs if save_input else output
    return NOT_THIS_LAYER


def _captured(tree) -> list:
    """Every sown capture in an 'intermediates' tree (one layer matches, so at most one)."""
    found = []
    for name, value in tree.items():
        if name == CAPTURED:
            found.append(value)
        elif hasattr(value, 'items'):
            found.extend(_captured(value))
    return found


@dataclasses.dataclass(frozen=True)
class Extractor:
    vit: nn.Module
    layer_name: str = 'transformer'
    layer_save_input: bool = False  # whether to take the input or the output of the layer
    return_embeddings_only: bool = False
    detach: bool = True

    def __post_init__(self):
        if not isinstance(self.vit, nn.Module):
            raise TypeError(f'Extractor wraps a Flax module, got {type(self.vit).__name__}')
        if not isinstance(self.layer_name, str) or not all(flax_path(self.layer_name)):
            raise ValueError(f"layer_name must name a layer, such as 'transformer', got {self.layer_name!r}")

    def init(self, *args, **kwargs):
        """The wrapped model's variables (the Extractor adds none)."""
        return self.vit.init(*args, **kwargs)

    def apply(self, variables, *args, return_embeddings_only: bool = False, mutable=False, **kwargs):
        """`(logits, embeddings)`, or the embeddings alone with `return_embeddings_only`.

        Arguments are the model's own (`train=`, `rngs=` ...). With `mutable=[...]` (e.g. 'batch_stats') the result
        is `(result, updated_collections)`, as Flax's `apply` returns it.
        """
        called = set()  # the model's direct submodules and methods, to name them when the layer is not found
        scanned = set()  # the parents of scanned stacks (scan_layers=True), whose layers have no names of their own

        def capture(next_fun, call_args, call_kwargs, context):
            output = next_fun(*call_args, **call_kwargs)
            if context.module.scope is None:  # a method called on a module being built, outside apply
                return output
            path = tuple(context.module.scope.path)
            called.add(path[0] if path else context.method_name)
            scanned.update('/'.join(path[:i]) for i, name in enumerate(path) if name.endswith(SCANNED_SUFFIX))
            seen = layer_call(self.layer_name, path, context.method_name, call_args, output, self.layer_save_input)
            if seen is not NOT_THIS_LAYER:  # keep the last call's, as torch's hook overwrites its latents
                context.module.sow(ATTENTION_MAPS, CAPTURED, seen, init_fn=lambda: (), reduce_fn=lambda _, y: (y,))
            return output

        with nn.intercept_methods(capture):
            logits, intermediates, state = apply_collecting_intermediates(
                self.vit, variables, *args, mutable=mutable, **kwargs)
        captured = _captured(intermediates)
        if not captured:
            in_a_scan = ''.join(
                f'; {parent!r} runs its layers as one nn.scan (scan_layers=True), so they cannot be taken one by one: '
                f'take {parent!r}, or build the model with scan_layers=False' for parent in sorted(scanned))
            raise ValueError(
                f'layer {self.layer_name!r} whose embeddings to take was not found in {type(self.vit).__name__}; '
                f'its layers: {", ".join(sorted(called - {"__call__"}))}{in_a_scan}'
            )
        ((embeddings,),) = captured
        if self.detach:
            embeddings = jax.tree_util.tree_map(jax.lax.stop_gradient, embeddings)

        result = embeddings if (return_embeddings_only or self.return_embeddings_only) else (logits, embeddings)
        return (result, state) if mutable else result

    def eject(self) -> nn.Module:
        return self.vit
