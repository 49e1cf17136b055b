"""Weights both ways between vit-flax (Flax linen) and vit-pytorch (installed with the [torch] extra).

    from vit_flax import converters

    variables = converters.from_torch(model, torch_model.state_dict())
    state_dict = converters.to_torch(model, variables)       # loads into vit-pytorch with strict=True

    converters.save_torch('vit.safetensors', model, variables)   # + vit.json, the sidecar
    torch_model = converters.load_torch('vit.safetensors')       # a ready vit-pytorch model
    model, variables = converters.load_flax('vit.safetensors')   # and back into Flax

By job: `tree` maps a variable tree to a state dict and back (with the leaf rules of `rules` and the older layouts
of `legacy`); `files` reads and writes weights and their sidecars; `vit_pytorch` finds vit-pytorch's classes.
The command line (`vit-flax export`, `vit-flax import`) is the trainer's: vit_flax/__main__.py.
"""

from vit_flax.extras import require

require('torch', 'vit_flax.converters')

from .arrays import to_numpy, to_tensor
from .files import load_flax, load_state_dict, load_torch, save_state_dict, save_torch
from .tree import StateDictMismatchError, from_torch, to_torch
from .vit_pytorch import import_vit_pytorch, torch_keywords, torch_model, torch_twin_name

__all__ = [
    'StateDictMismatchError',
    'from_torch',
    'to_torch',
    'save_state_dict',
    'load_state_dict',
    'save_torch',
    'load_torch',
    'load_flax',
    'import_vit_pytorch',
    'torch_keywords',
    'torch_model',
    'torch_twin_name',
    'to_numpy',
    'to_tensor',
]
