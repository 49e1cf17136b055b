"""State dicts from older vit-pytorch releases, translated to the 1.26 layout in one place.

Each migration takes (model, state dict of numpy arrays) and returns a new dict (the input is not modified),
warning with a `LegacyLayoutWarning` that says what it did. Layouts that cannot be translated exactly raise
`LegacyLayoutError` saying why, rather than loading weights that would compute something else.
"""

from __future__ import annotations

import re
import warnings
from typing import Callable

import numpy as np

from vit_flax import registry
from vit_flax.layers import pair


class LegacyLayoutWarning(UserWarning):
    pass


class LegacyLayoutError(ValueError):
    pass


_PRENORM_KEY = re.compile(r'transformer\.layers\.\d+\.[01]\.fn\.')


def _rename_prenorm_blocks(sd: dict) -> dict:
    """vit-pytorch 1.0 - 1.2: `PreNorm(dim, fn)` wrappers, and the last LayerNorm inside `mlp_head`.

    The wrapper's norm is the block's first norm in later releases; `mlp_head.0` (LayerNorm) becomes
    `transformer.norm`, which is the same function for cls pooling (it normalises each token alone).
    """
    renames = [
        (r'^(transformer\.layers\.\d+)\.0\.fn\.', r'\1.0.'),  # attention: norm stays, fn.* moves up
        (r'^(transformer\.layers\.\d+)\.1\.norm\.', r'\1.1.net.0.'),
        (r'^(transformer\.layers\.\d+)\.1\.fn\.net\.0\.', r'\1.1.net.1.'),
        (r'^(transformer\.layers\.\d+)\.1\.fn\.net\.3\.', r'\1.1.net.4.'),
        (r'^mlp_head\.0\.', 'transformer.norm.'),
        (r'^mlp_head\.1\.', 'mlp_head.'),
    ]
    out = {}
    for key, value in sd.items():
        for pattern, replacement in renames:
            new_key, n = re.subn(pattern, replacement, key)
            if n:
                key = new_key
                break
        out[key] = value
    return out


def vit(model, sd: dict) -> dict:
    """ViT: PreNorm-era blocks (< 1.3), and (1, N, dim) position embeddings / (1, 1, dim) cls tokens (< 1.18)."""
    notes = []
    if 'to_patch_embedding.1.weight' in sd and np.ndim(sd['to_patch_embedding.1.weight']) == 2:
        raise LegacyLayoutError(
            'this ViT state dict is from vit-pytorch < 1.0, whose patch embedding has no LayerNorms '
            f'(to_patch_embedding.1 is a Linear of shape {np.shape(sd["to_patch_embedding.1.weight"])}); '
            'it computes a different function and cannot be converted exactly'
        )

    if any(_PRENORM_KEY.match(key) for key in sd):
        if model.pool != 'cls':
            raise LegacyLayoutError(
                "this ViT state dict is from vit-pytorch < 1.3, whose last LayerNorm follows the pooling; with "
                f"pool={model.pool!r} it cannot be moved before pooling, so it cannot be converted exactly"
            )
        sd = _rename_prenorm_blocks(sd)
        notes.append('PreNorm blocks of vit-pytorch < 1.3 renamed; mlp_head.0 (LayerNorm) became transformer.norm')

    pos, cls = sd.get('pos_embedding'), sd.get('cls_token')
    if pos is not None and np.ndim(pos) == 3 and cls is not None and np.ndim(cls) == 3:
        (image_height, image_width), (patch_height, patch_width) = pair(model.image_size), pair(model.patch_size)
        num_patches = (image_height // patch_height) * (image_width // patch_width)
        if model.pool == 'mean' and cls.shape[1] == 1:
            # before 1.16 every ViT had a cls token, and pool='mean' averaged it with the patch tokens
            raise LegacyLayoutError(
                f'this ViT state dict is from vit-pytorch < 1.16: cls_token {cls.shape} and pos_embedding '
                f'{pos.shape} with pool="mean" averaged the cls token into the pooled output, which 1.26 does '
                f'not; it cannot be converted exactly (a cls-pooled model of the same shapes can: pool="cls")'
            )
        sd = {**sd, 'pos_embedding': pos[0], 'cls_token': cls[0]}
        notes.append(
            f'pos_embedding {pos.shape} -> {pos[0].shape} and cls_token {cls.shape} -> {cls[0].shape} '
            f'(layout of vit-pytorch < 1.18; {num_patches} patches)'
        )

    for note in notes:
        warnings.warn(f'legacy vit-pytorch layout migrated: {note}', LegacyLayoutWarning, stacklevel=3)
    return sd


MIGRATIONS: dict[str, Callable[[object, dict], dict]] = {
    'vit.ViT': vit,
}


def migrate(model, sd: dict) -> dict:
    """Apply the migration registered for `model`'s architecture, if any."""
    entry = registry.BY_CLASS.get(type(model))
    migration = MIGRATIONS.get(entry.name) if entry else None
    return migration(model, sd) if migration else sd
