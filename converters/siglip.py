"""Pretrained SigLIP image towers into vit-flax's `vat_siglip.SigLIP` (vit-pytorch's layout) and into a
`vat_siglip.SigLIPVAT`'s tower, as vit-pytorch's `SigLIPVAT.load_siglip` does, through the pretrained-checkpoint
readers every ViT checkpoint goes through.

    from vit_flax.converters import siglip

    model, variables = siglip.load_siglip('google/siglip-so400m-patch14-224')     # hub name, directory or file
    variables = siglip.load_siglip_into(vat, variables, 'checkpoints/siglip')      # a SigLIPVAT's `vit` replaced

Every source is read into the common `Pretrained` form (timm's keys, converters/pretrained_form.py) by the existing
readers, and one map takes that form to vit-pytorch's SigLIP state dict, which the strict converter puts on the
model:
- transformers' SigLIP (`hf_vit.read_hf_siglip`): a SiglipVisionModel or SiglipModel directory, or (vit-pytorch's
  `load_siglip` folder, a pi0 / PaliGemma checkpoint) a `.safetensors` file or directory whose keys sit under
  'paligemma_with_expert.paligemma.model.vision_tower.vision_model.', 'vision_model.' or nothing;
- whatever `vit_flax.pretrained.read` takes: timm hub directories and state dicts (`vit_*_siglip_*`), big_vision
  `.npz` files (SigLIP's image tower, 'params/img/'), hub names;
- a `Pretrained` already read (and adapted) by `vit_flax.pretrained`.

The map (timm key -> vit-pytorch SigLIP key): `patch_embed.proj.weight` (dim, 3, p, p) -> `to_patch_embed.1.weight`
(dim, p * p * 3), rearranged 'd c h w -> d (h w c)' as vit-pytorch's loader does; `pos_embed` (1, n, dim) ->
`pos_embed` (n, dim); `blocks.i.norm1` -> `layers.i.0.norm`; `blocks.i.attn.qkv` rows: the first third ->
`layers.i.0.to_q`, the rest (keys then values) -> `layers.i.0.to_kv`; `attn.proj` -> `layers.i.0.to_out.0`;
`norm2` -> `layers.i.1.0`; `mlp.fc1` / `fc2` -> `layers.i.1.1` / `.3`; `norm` -> `norm`. The MAP head
(`attn_pool.*`, Hugging Face's `head`) is left out, as vit-pytorch's loader leaves it: the tower returns every
token after the final norm (SiglipVisionModel's `last_hidden_state`), and its hiddens are the inputs of its layers
(transformers' `hidden_states[:-1]`).

What the tower cannot hold is refused with UnsupportedCheckpointError naming the keyword or key, its value or shape
and why, before anything is built: a class token or registers, a classifier or pre-logits head (`adapted(...,
num_classes=0)` removes a classifier), an fc_norm after pooling (the tokens are then not normed), pre-norm, LayerScale,
q / k norms, no query / key / value biases, non-square images or patches, other than 3 channels, and an exact GELU
(vit-pytorch's SigLIP computes the tanh form, which SigLIP was trained with; timm's tables say 'gelu' for some
SigLIP architectures and big_vision's reader defaults to it: read those with `act_layer='gelu_tanh'`). Missing,
unexpected, mis-shaped and non-floating tensors are named all at once. `load_siglip_into` also refuses a checkpoint
whose tower differs from the SigLIPVAT's `siglip_*` keywords, naming each, and returns new variables, the caller's
untouched.

Not shared with the other formats: writing. vit-pytorch's layout is written by `converters.to_torch` /
`save_torch` like every model's; a SigLIP tower is not exported back to Hugging Face, timm or big_vision here.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from vit_flax import pretrained as pretrained_checkpoints
from vit_flax.pretrained_vit import VisionTransformer
from vit_flax.registry import FLAX_ONLY_FIELDS
from vit_flax.vat_siglip import SigLIP, SigLIPVAT, tower_keywords

from . import hf_vit
from .pretrained_form import Pretrained, UnsupportedCheckpointError, describe
from .tree import from_torch

# VisionTransformer's defaults (timm's), for keywords a Pretrained leaves out
_TIMM_DEFAULTS = {field.name: field.default for field in dataclasses.fields(VisionTransformer)
                  if field.name not in FLAX_ONLY_FIELDS}
# the options the tower holds only at one value, with why
_FIXED = {
    'class_token': (False, "vit-pytorch's SigLIP has no class token"),
    'reg_tokens': (0, "vit-pytorch's SigLIP has no register tokens"),
    'pre_norm': (False, "vit-pytorch's SigLIP has no LayerNorm before its layers"),
    'final_norm': (True, "vit-pytorch's SigLIP always applies its final norm"),
    'qk_norm': (False, "vit-pytorch's SigLIP has no query / key norms"),
    'qkv_bias': (True, "vit-pytorch's SigLIP has query, key and value biases"),
    'in_chans': (3, "vit-pytorch's SigLIP patch embedding takes 3 channels"),
    'num_classes': (0, "vit-pytorch's SigLIP has no classifier: adapt the checkpoint with num_classes=0"),
    'representation_size': (None, "vit-pytorch's SigLIP has no pre-logits layer"),
    'act_layer': ('gelu_tanh', "vit-pytorch's SigLIP computes the tanh GELU (SigLIP's own): read a checkpoint whose "
                               "reader says 'gelu' with act_layer='gelu_tanh' if that is what it was trained with"),
}
_FLOATS = hf_vit.FLOATS
# the keys of the pooling head vit-pytorch's tower has no place for (SigLIP's MAP head), dropped as its loader does
_POOL_HEAD = 'attn_pool.'


def _refuse(where: str, why: str):
    raise UnsupportedCheckpointError(f'{where}: {why}')


def siglip_keywords(pretrained: Pretrained) -> dict[str, Any]:
    """The `vat_siglip.SigLIP` keywords that hold `pretrained` exactly (refused where none do)."""
    options = {**_TIMM_DEFAULTS, **pretrained.kwargs}
    where = pretrained.source or 'Pretrained'
    for key, (value, why) in _FIXED.items():
        if options[key] != value:
            _refuse(where, f'{key}={options[key]!r}: {why}')
    if options['init_values']:
        _refuse(where, f"init_values={options['init_values']!r}: vit-pytorch's SigLIP has no LayerScale")
    pool, fc_norm = options['global_pool'], options['fc_norm']
    if (pool == 'avg' if fc_norm is None else fc_norm):
        _refuse(where, f'global_pool={pool!r} with fc_norm={fc_norm!r} norms after pooling: the tower\'s tokens '
                       'would not be normed')
    image, patch = (tuple(np.broadcast_to(options[key], 2).tolist()) for key in ('img_size', 'patch_size'))
    for key, value in (('img_size', image), ('patch_size', patch)):
        if value[0] != value[1]:
            _refuse(where, f'{key}={value}: vit-pytorch\'s SigLIP takes square images and patches')
    dim, heads = options['embed_dim'], options['num_heads']
    if dim % heads:
        _refuse(where, f'embed_dim={dim} is not divisible by num_heads={heads}')
    return dict(image_size=image[0], patch_size=patch[0], dim=dim, depth=options['depth'], heads=heads,
                mlp_dim=int(dim * options['mlp_ratio']), norm_eps=options['norm_eps'])


def _timm_shapes(keywords: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """timm's keys and shapes of the tower's weights (the pooling head aside)."""
    dim, hidden, patch = keywords['dim'], keywords['mlp_dim'], keywords['patch_size']
    rows = (keywords['image_size'] // patch) ** 2
    shapes = {'patch_embed.proj.weight': (dim, 3, patch, patch), 'patch_embed.proj.bias': (dim,),
              'pos_embed': (1, rows, dim), 'norm.weight': (dim,), 'norm.bias': (dim,)}
    block = {'norm1.weight': (dim,), 'norm1.bias': (dim,), 'attn.qkv.weight': (3 * dim, dim),
             'attn.qkv.bias': (3 * dim,), 'attn.proj.weight': (dim, dim), 'attn.proj.bias': (dim,),
             'norm2.weight': (dim,), 'norm2.bias': (dim,), 'mlp.fc1.weight': (hidden, dim), 'mlp.fc1.bias': (hidden,),
             'mlp.fc2.weight': (dim, hidden), 'mlp.fc2.bias': (dim,)}
    for i in range(keywords['depth']):
        shapes.update({f'blocks.{i}.{key}': shape for key, shape in block.items()})
    return shapes


def siglip_state_dict(pretrained: Pretrained) -> dict[str, np.ndarray]:
    """vit-pytorch's SigLIP state dict (numpy, the checkpoint's dtypes) for `pretrained`; its MAP head is left out."""
    keywords = siglip_keywords(pretrained)
    where = pretrained.source or 'Pretrained'
    expected = _timm_shapes(keywords)
    found = {key: value for key, value in pretrained.state_dict.items()
             if not (key.startswith(_POOL_HEAD) and pretrained.kwargs.get('global_pool') == 'map')}
    problems = [f'missing {key!r} (expected shape {shape})' for key, shape in expected.items() if key not in found]
    problems += [f'unexpected {key!r} ({describe(value)})' for key, value in found.items() if key not in expected]
    problems += [f'{key!r} is {describe(value)}, expected shape {expected[key]}' for key, value in found.items()
                 if key in expected and tuple(np.shape(value)) != expected[key]]
    problems += [f'{key!r} is {describe(value)}, not floating point' for key, value in found.items()
                 if key in expected and np.asarray(value).dtype not in _FLOATS]
    if problems:
        _refuse(where, '; '.join(problems))

    dim = keywords['dim']
    array = {key: np.asarray(value) for key, value in found.items()}
    patch = array['patch_embed.proj.weight']
    state_dict = {'to_patch_embed.1.weight': np.ascontiguousarray(patch.transpose(0, 2, 3, 1).reshape(dim, -1)),
                  'to_patch_embed.1.bias': array['patch_embed.proj.bias'],
                  'pos_embed': array['pos_embed'][0],
                  'norm.weight': array['norm.weight'], 'norm.bias': array['norm.bias']}
    for i in range(keywords['depth']):
        block, layer = f'blocks.{i}.', f'layers.{i}.'
        for leaf in ('weight', 'bias'):
            qkv = array[f'{block}attn.qkv.{leaf}']
            state_dict[f'{layer}0.to_q.{leaf}'] = np.ascontiguousarray(qkv[:dim])
            state_dict[f'{layer}0.to_kv.{leaf}'] = np.ascontiguousarray(qkv[dim:])
            for timm_name, torch_name in (('norm1', '0.norm'), ('attn.proj', '0.to_out.0'), ('norm2', '1.0'),
                                          ('mlp.fc1', '1.1'), ('mlp.fc2', '1.3')):
                state_dict[f'{layer}{torch_name}.{leaf}'] = array[f'{block}{timm_name}.{leaf}']
    return state_dict


def read(source: str | os.PathLike | Pretrained, **hints) -> Pretrained:
    """`source` as a Pretrained (see the module docstring for what is read); `hints` as the readers take them
    (`num_heads=` for a transformers file without config.json, `act_layer=` ...)."""
    if isinstance(source, Pretrained):
        if hints:
            raise TypeError(f'hints {sorted(hints)} for a Pretrained already read')
        return source
    path = Path(source)
    if path.exists() and not hf_vit.is_hf_siglip_dir(path) and hf_vit.is_hf_siglip_weights(path):
        return hf_vit.read_hf_siglip(path, **hints)
    return pretrained_checkpoints.read(source, **hints)


def _tower_variables(keywords: dict, state_dict: dict) -> tuple[SigLIP, dict]:
    model = SigLIP(**keywords)
    side = keywords['image_size'] // keywords['patch_size'] * keywords['patch_size']
    example = (np.zeros((1, side, side, 3), np.float32),)
    return model, from_torch(model, state_dict, example_inputs=example)


def load_siglip(source: str | os.PathLike | Pretrained, **hints) -> tuple[SigLIP, dict]:
    """(vat_siglip.SigLIP, its variables) for a pretrained SigLIP image tower; see the module docstring."""
    pretrained = read(source, **hints)
    return _tower_variables(siglip_keywords(pretrained), siglip_state_dict(pretrained))


def load_siglip_into(model: SigLIPVAT, variables: Mapping, source: str | os.PathLike | Pretrained,
                     **hints) -> dict:
    """`variables` of a vat_siglip.SigLIPVAT with its tower (`params/vit`) replaced by a pretrained SigLIP's, in the
    dtypes the model's variables have: vit-pytorch's `SigLIPVAT.load_siglip`. The checkpoint's tower must be the
    model's (`siglip_*` keywords; an image_size is the same where it gives the same patch grid); a transformers file
    without config.json takes the model's heads and eps. Returns new variables; `variables` is not modified."""
    if not isinstance(model, SigLIPVAT):
        raise TypeError(f'{type(model).__name__} is not a vat_siglip.SigLIPVAT: use load_siglip for the tower alone')
    tower = SigLIP(**tower_keywords(model))
    path = None if isinstance(source, Pretrained) else Path(source)
    if path is not None and path.exists() and not hf_vit.is_hf_siglip_dir(path) and hf_vit.is_hf_siglip_weights(path):
        hints = {'num_heads': tower.heads, 'norm_eps': tower.norm_eps, **hints}
    pretrained = read(source, **hints)
    keywords = siglip_keywords(pretrained)
    mismatched = [f'siglip_{key}={getattr(tower, key)!r} but the checkpoint has {key}={value!r}'
                  for key, value in keywords.items()
                  if not (value == getattr(tower, key) or key == 'image_size'
                          and value // tower.patch_size == tower.image_size // tower.patch_size)]
    if mismatched:
        _refuse(pretrained.source, f'not the SigLIPVAT\'s tower: {"; ".join(mismatched)}')
    _, loaded = _tower_variables(keywords, siglip_state_dict(pretrained))

    flat = traverse_util.flatten_dict(dict(variables))
    current = {path[2:]: value for path, value in flat.items() if path[:2] == ('params', 'vit')}
    new = traverse_util.flatten_dict(dict(loaded['params']))
    differing = sorted(set(current) ^ set(new)) or [key for key in new if np.shape(current[key]) != np.shape(new[key])]
    if differing:
        key = differing[0]
        raise ValueError(f"variables['params']['vit'] are not this SigLIPVAT's tower: {'/'.join(key)} is "
                         f"{np.shape(current[key]) if key in current else 'missing'}, the tower's "
                         f"{np.shape(new[key]) if key in new else 'absent'} (pass the variables model.init gave)")
    replaced = dict(flat)
    for key, value in new.items():
        # in the dtype of the variable it replaces, as vit-pytorch's `copy_` keeps the model's
        replaced[('params', 'vit', *key)] = jnp.asarray(np.asarray(value).astype(np.asarray(current[key]).dtype))
    return traverse_util.unflatten_dict(replaced)
