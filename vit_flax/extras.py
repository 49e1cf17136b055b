"""The optional parts of vit-flax and the extra that installs each.

`pip install vit-flax` gives the models (jax, flax, einops, numpy); `[torch]` the converters and file formats
(vit_flax.converters); `[train]` the trainer, its data pipelines, checkpoints and metrics. A part imported without
its extra stops at once with one line naming the extra, instead of failing later on some third-party import.
"""

from __future__ import annotations

import importlib.util

# the import names each extra adds to the base install (ml_dtypes, scipy and absl come with jax and flax)
EXTRAS = {
    'torch': ('torch', 'vit_pytorch', 'safetensors'),
    'train': ('optax', 'orbax', 'chex', 'grain', 'ml_collections', 'tqdm', 'tensorboard', 'sklearn', 'PIL'),
}


def require(extra: str, part: str) -> None:
    """Raise ImportError (one line) if a module of `extra` is not installed; `part` says what needs it.

    Looks the modules up without importing them, so checking costs nothing where they are installed."""
    missing = [name for name in EXTRAS[extra] if not _installed(name)]
    if missing:
        raise ImportError(f"{part} needs vit-flax's [{extra}] extra (missing {', '.join(missing)}): "
                          f"pip install 'vit-flax[{extra}]'")


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # a finder that refuses the name, or a broken install
        return False
