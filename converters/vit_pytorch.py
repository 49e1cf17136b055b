"""vit-pytorch's side: its modules, and the vit-pytorch twin of a Flax module (same file, same class name)."""

from __future__ import annotations

import importlib
from typing import Any

import flax.linen as nn

from vit_flax import registry
from vit_flax.extractor import Extractor


def import_vit_pytorch(module: str):
    """Import a vit_pytorch module ('vit_pytorch.cait'), saying what to install when it cannot be imported.

    vit-pytorch imports torchvision in its package __init__ (for DINO's augmentations), so a torchvision built for
    another torch stops every vit_pytorch import."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f'{module} could not be imported ({error}): vit-pytorch needs torch and a torchvision built '
                          f"for it; pip install 'vit-flax[torch]'") from error


def torch_twin_name(module: nn.Module) -> tuple[str, str]:
    """vit-pytorch's (file, class) for a vit_flax module: the class of the same name in the file of the same name
    (vit_flax.vit.Transformer -> vit_pytorch.vit.Transformer). Raises ValueError naming the module if there is
    none (a module of your own, such as efficient.LinearTransformer)."""
    flax_module, name = type(module).__module__, type(module).__name__
    if not flax_module.startswith('vit_flax.'):
        raise ValueError(f'{flax_module}.{name} is not a vit_flax module, so it has no vit-pytorch twin')
    torch_module = 'vit_pytorch.' + flax_module.removeprefix('vit_flax.')
    try:
        has_twin = hasattr(import_vit_pytorch(torch_module), name)
    except ImportError:
        has_twin = False
    if not has_twin:
        raise ValueError(f'{flax_module}.{name} has no vit-pytorch twin ({torch_module}.{name})')
    return torch_module, name


def torch_keywords(kwargs: dict[str, Any]) -> dict[str, Any]:
    """vit-pytorch's constructor keywords for Flax ones: a module-valued keyword (a plugged-in `transformer`,
    Adapter's `vit`, DistillWrapper's `teacher` and `student`), or each module of a tuple or list of them (WWT's
    `task_heads`), becomes a new instance of its vit-pytorch twin with the same keywords, and an extractor.Extractor
    vit-pytorch's Extractor of its model's twin (AcceptVideoWrapper's `image_net`); its weights come from a state
    dict."""

    def twin(value):
        if isinstance(value, (tuple, list)) and any(isinstance(item, nn.Module) for item in value):
            return type(value)(twin(item) for item in value)  # wwt.WWT's task_heads
        if isinstance(value, Extractor):  # accept_video_wrapper's image_net: no Flax module, vit-pytorch's is one
            return import_vit_pytorch('vit_pytorch.extractor').Extractor(
                twin(value.vit), layer_name=value.layer_name, layer_save_input=value.layer_save_input,
                return_embeddings_only=value.return_embeddings_only, detach=value.detach)
        if not isinstance(value, nn.Module):
            return value
        torch_module, name = torch_twin_name(value)
        return getattr(import_vit_pytorch(torch_module), name)(**torch_keywords(registry.torch_kwargs(value)))

    return {key: twin(value) for key, value in kwargs.items()}


def torch_model(name: str, kwargs: dict[str, Any]):
    """A new vit-pytorch model: `name` is its '<file>.<Class>' ('cait.CaiT'), `kwargs` Flax-side keywords."""
    file, class_name = name.rsplit('.', 1)
    return getattr(import_vit_pytorch(f'vit_pytorch.{file}'), class_name)(**torch_keywords(kwargs))
