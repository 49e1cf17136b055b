"""Importing vit-pytorch where torchvision cannot load.

`vit_pytorch/__init__.py` imports `dino`, which imports `torchvision.transforms` for its augmentations, so
every `import vit_pytorch.<anything>` needs torchvision. Where torchvision is missing, or was built against
another torch (there is no CPU build of torchvision beside the CPU torch wheel on our machines), a minimal
stand-in module takes its place: importing works, and using a transform raises an error that says why.
Only vit-pytorch's Dino / EsViT augmentations touch it; every architecture and converter works without it.
"""

from __future__ import annotations

import sys
import types
import warnings


class _MissingTransforms(types.ModuleType):
    def __init__(self, reason: str):
        super().__init__('torchvision.transforms')
        self.reason = reason

    def __getattr__(self, name: str):
        if name.startswith('__'):
            raise AttributeError(name)

        def unavailable(*args, **kwargs):
            raise RuntimeError(
                f'torchvision.transforms.{name} is not available ({self.reason}); '
                'vit-pytorch needs it only for the Dino / EsViT augmentations'
            )

        return unavailable


def ensure_torchvision() -> bool:
    """Make `import torchvision` work. Returns True if the real torchvision is in use."""
    existing = sys.modules.get('torchvision')
    if existing is not None and getattr(existing, '__vit_flax_stand_in__', False):
        return False
    try:
        import torchvision  # noqa: F401

        return True
    except Exception as error:  # ImportError, or a RuntimeError/OSError from a build for another torch
        for name in [name for name in sys.modules if name == 'torchvision' or name.startswith('torchvision.')]:
            del sys.modules[name]
        reason = f'torchvision could not be imported: {type(error).__name__}: {error}'.strip()
        stand_in = types.ModuleType('torchvision')
        stand_in.__vit_flax_stand_in__ = True
        stand_in.transforms = _MissingTransforms(reason)
        sys.modules['torchvision'] = stand_in
        sys.modules['torchvision.transforms'] = stand_in.transforms
        warnings.warn(f'{reason}; using a stand-in so vit_pytorch imports (Dino augmentations unavailable)',
                      stacklevel=2)
        return False
