"""timm's ViT checkpoints, both ways: state-dict files and Hugging Face hub directories (issue 20).

    pretrained = read_timm('model.safetensors', arch='vit_base_patch16_224')   # or a .pth / .bin, or a hub directory
    write_timm('exported/', pretrained)                                         # config.json + model.safetensors

What the files hold: a timm `VisionTransformer` state dict (`patch_embed.proj.weight`, `blocks.N.attn.qkv.weight`,
...), in a `.safetensors`, a `.pth` / `.bin` (read with `torch.load(weights_only=True)`, so no pickled code runs; a
`{'model': ...}` or `{'state_dict': ...}` wrapper and DDP's `module.` prefix are unwrapped as timm's own loader does),
or a hub directory as timm's `push_to_hub` / `save_for_hf` write it: `config.json` (`architecture`, `model_args`,
`pretrained_cfg` with the preprocessing, `label_names`) beside `model.safetensors` or `pytorch_model.bin`.

The keywords come from three places, later ones winning: timm's architecture (converters/timm_architectures.json,
generated from timm 1.0.31 by `python -m parity.timm_architectures`, so timm is not needed to read), the config's
`model_args`, and the caller's hints. Whatever the weights' shapes say (widths, depth, patch size, channels, classes,
which tokens, norms and biases exist) is then read off the weights and must agree with the keywords; the number of
heads and the activation are not in the weights, so a bare state dict of no known architecture needs `num_heads=`.
An architecture this family cannot hold exactly (timm's Eva, relative-position, hybrid-CNN and distilled ViTs, QuickGELU,
SwiGLU or parallel blocks) is refused with timm's class or block named.

Writing: a hub directory that `timm.create_model('local-dir:' + path, pretrained=True)` loads as it is, every keyword
in `model_args`. timm has no keyword for the LayerNorm eps (an architecture's norm class sets it: 1e-6, CLIP's 1e-5),
so the architecture named is the model's own where its eps agrees, else one with that eps; an eps no architecture
has (HF's 1e-12) and a pre-logits layer (timm 1.0.31 dropped it) are refused. In Python `timm_constructor_kwargs`
gives the norm class for `VisionTransformer(**...)`.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from .arrays import contiguous, to_numpy
from .files import replaced_directory
from .pretrained_form import (PREPROCESSING_KEYS, Pretrained, UnsupportedCheckpointError, describe, mlp_ratio_for,
                              same_keyword)

TIMM_EPS = 1e-6  # timm's ViT LayerNorm eps: its default norm_layer is partial(LayerNorm, eps=1e-6)
WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin')
# keywords that change nothing of an eval-mode forward: dropout and init options
_IGNORED_MODEL_ARGS = frozenset({
    'drop_rate', 'pos_drop_rate', 'patch_drop_rate', 'proj_drop_rate', 'attn_drop_rate', 'drop_path_rate',
    'weight_init', 'fix_init', 'pretrained_strict',
})
# the keywords of pretrained_vit.VisionTransformer that describe the checkpoint (not the JAX-only ones)
KEYWORDS = ('img_size', 'patch_size', 'in_chans', 'num_classes', 'global_pool', 'embed_dim', 'depth', 'num_heads',
            'mlp_ratio', 'qkv_bias', 'qk_norm', 'init_values', 'class_token', 'no_embed_class', 'reg_tokens',
            'pre_norm', 'final_norm', 'fc_norm', 'representation_size', 'act_layer', 'norm_eps', 'dynamic_img_size')
# what timm's own loader accepts around a state dict
_WRAPPERS = ('state_dict', 'model', 'state_dict_ema', 'model_ema')


@functools.cache
def architectures() -> dict:
    """timm's ViT architectures: {'architectures': {name: keywords}, 'unsupported': {name: why}, 'timm_version'}."""
    return json.loads((Path(__file__).with_name('timm_architectures.json')).read_text())


def architecture_name(arch: str) -> str:
    """timm's architecture in a model name: 'timm/vit_base_patch16_224.augreg_in21k' -> 'vit_base_patch16_224'."""
    return arch.split('.', 1)[0].removeprefix('timm/')


def architecture_keywords(arch: str) -> dict[str, Any]:
    """The keywords of a timm architecture ('vit_base_patch16_224', a '.tag' suffix allowed)."""
    name = architecture_name(arch)
    table = architectures()
    if name in table['unsupported']:
        raise UnsupportedCheckpointError(f'timm architecture {name}: {table["unsupported"][name]}, which '
                                         'pretrained_vit.VisionTransformer cannot hold exactly')
    if name not in table['architectures']:
        raise UnsupportedCheckpointError(f'unknown timm architecture {name!r} (timm {table["timm_version"]} ViTs: '
                                         f'vit_*, deit_*, deit3_*; see converters/timm_architectures.json)')
    keywords = dict(table['architectures'][name])
    return {key: tuple(value) if isinstance(value, list) else value for key, value in keywords.items()}


# reading


def _load_weights_file(path: Path) -> dict[str, np.ndarray]:
    try:
        if path.suffix == '.safetensors':
            return load_file(str(path))
        if path.suffix in ('.pth', '.pt', '.bin'):
            import torch

            state_dict = torch.load(path, map_location='cpu', weights_only=True)
        else:
            raise ValueError(f'unknown weights format {path.suffix!r}: use .safetensors, .pth, .pt or .bin')
    except (SafetensorError, OSError, RuntimeError, EOFError, ValueError, KeyError) as error:
        raise ValueError(f'could not read weights from {path}: {error}') from error
    for _ in range(2):  # {'model': {...}} and {'state_dict': {'module.x': ...}} as timm's clean_state_dict takes
        if isinstance(state_dict, Mapping):
            wrappers = [key for key in _WRAPPERS if isinstance(state_dict.get(key), Mapping)]
            if wrappers and not any(key.endswith('.weight') for key in state_dict):
                state_dict = state_dict[wrappers[0]]
    if not isinstance(state_dict, Mapping):
        raise ValueError(f'{path} holds a {type(state_dict).__name__}, not a state dict')
    arrays = {}
    for key, value in state_dict.items():
        if not hasattr(value, 'shape'):
            raise ValueError(f'{path}: {key} holds a {type(value).__name__}, not a tensor')
        arrays[key.removeprefix('module.')] = to_numpy(value)
    return arrays


def _read_config(directory: Path) -> dict:
    path = directory / 'config.json'
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f'could not read {path}: {error}') from error
    if not isinstance(config, dict) or not isinstance(config.get('architecture'), str):
        raise ValueError(f"{path} is not a timm hub config: it names no 'architecture'")
    for field in ('model_args', 'pretrained_cfg'):
        if not isinstance(config.get(field, {}), dict):
            raise ValueError(f'{path}: {field} must be a JSON object, got {config[field]!r}')
    return config


def is_timm_dir(directory: Path) -> bool:
    """A hub directory timm wrote: config.json naming an `architecture`."""
    try:
        return isinstance(json.loads((Path(directory) / 'config.json').read_text()).get('architecture'), str)
    except (OSError, ValueError, AttributeError):
        return False


def is_timm_state_dict(keys) -> bool:
    return 'patch_embed.proj.weight' in keys or any(key.startswith('blocks.0.attn.qkv.') for key in keys)


def _preprocessing(config: dict) -> dict[str, Any]:
    cfg = config.get('pretrained_cfg', {})
    found = {key: cfg[key] for key in PREPROCESSING_KEYS if cfg.get(key) is not None}
    if config.get('label_names'):
        found['label_names'] = config['label_names']
    return {key: tuple(value) if isinstance(value, list) else value for key, value in found.items()}


def read_timm(source: str | os.PathLike, *, arch: str | None = None, **hints) -> Pretrained:
    """A timm state-dict file or hub directory as a `Pretrained`. `arch` names timm's architecture where the file does
    not (a bare state dict); `hints` are VisionTransformer keywords the file cannot say (num_heads, act_layer, ...)."""
    path = Path(source)
    config: dict = {}
    if path.is_dir():
        config = _read_config(path)
        weights = next((path / name for name in WEIGHT_FILES if (path / name).is_file()), None)
        if weights is None:
            raise FileNotFoundError(f'{path} has no weights file ({" or ".join(WEIGHT_FILES)})')
    elif path.is_file():
        weights = path
    else:
        raise FileNotFoundError(f'no weights file or directory at {path}')
    state_dict = _load_weights_file(weights)
    arch = arch or config.get('architecture')
    keywords = architecture_keywords(arch) if arch else {}
    # an architecture's classes and size are its defaults, which a checkpoint may have changed (a new head, another
    # resolution); the weights say which
    keywords.pop('num_classes', None)
    default_img_size = keywords.pop('img_size', None)
    model_args = {key: tuple(value) if isinstance(value, list) else value
                  for key, value in config.get('model_args', {}).items() if key not in _IGNORED_MODEL_ARGS}
    unknown = sorted(set(model_args) - set(KEYWORDS))
    if unknown:
        raise UnsupportedCheckpointError(f'{path}: config model_args {unknown[0]}={model_args[unknown[0]]!r} is an '
                                         'option pretrained_vit.VisionTransformer does not have')
    keywords.update(model_args)
    if 'num_classes' in config and 'num_classes' not in model_args:
        keywords['num_classes'] = config['num_classes']
    # what the file says is not overridden by a hint: a hint that differs is refused (one the architecture's table
    # gives is a default the hint replaces, as for a state dict of another width)
    contradicted = [key for key, value in hints.items() if key in keywords and key in {*model_args, 'num_classes'}
                    and not same_keyword(key, keywords[key], value)]
    if contradicted:
        key = contradicted[0]
        raise UnsupportedCheckpointError(f'{path}: its config says {key}={keywords[key]!r}, not {hints[key]!r}')
    kwargs = keywords_from_state_dict(state_dict, {**keywords, **hints}, f'{weights}', default_img_size)
    return Pretrained(kwargs=kwargs, state_dict=state_dict, preprocessing=_preprocessing(config),
                      source=f'{weights} (timm)', arch=architecture_name(arch) if arch else None)


def _refuse(where: str, key: str, array, why: str):
    raise UnsupportedCheckpointError(f'{where}: {key} ({describe(array)}) {why}')


def keywords_from_state_dict(state_dict: Mapping[str, np.ndarray], known: Mapping[str, Any], where: str,
                             default_img_size=None) -> dict:
    """VisionTransformer keywords for a timm-keyed state dict: what its shapes say, checked against `known` (an
    architecture's keywords, model_args, hints), plus what only `known` can say (heads, activation, pooling). The
    image size is `known`'s, else `default_img_size` where the position embedding fits it, else its square grid."""
    keys = set(state_dict)
    if 'patch_embed.proj.weight' not in keys:
        hybrid = next((key for key in sorted(keys) if key.startswith('patch_embed.backbone.')), None)
        if hybrid:
            _refuse(where, hybrid, state_dict[hybrid], 'belongs to a hybrid CNN stem, which this family does not hold')
        raise UnsupportedCheckpointError(f'{where}: no patch_embed.proj.weight, so not a timm ViT state dict '
                                         f'(keys: {", ".join(sorted(keys)[:6])}, ...)')
    for key in ('dist_token', 'head_dist.weight'):
        if key in keys:
            _refuse(where, key, state_dict[key], "is a distilled DeiT's distillation token / head, which this family "
                                                 'does not hold')
    proj = state_dict['patch_embed.proj.weight']
    if proj.ndim != 4:
        _refuse(where, 'patch_embed.proj.weight', proj, 'must be a (dim, channels, height, width) conv kernel')
    embed_dim, in_chans, patch = proj.shape[0], proj.shape[1], tuple(proj.shape[2:])
    blocks = sorted({int(m.group(1)) for key in keys if (m := re.match(r'blocks\.(\d+)\.', key))})
    if blocks != list(range(len(blocks))):
        raise UnsupportedCheckpointError(f'{where}: blocks {blocks} are not numbered 0 ... depth - 1')
    found: dict[str, Any] = dict(
        embed_dim=embed_dim, in_chans=in_chans, patch_size=patch, depth=len(blocks),
        class_token='cls_token' in keys, reg_tokens=state_dict['reg_token'].shape[1] if 'reg_token' in keys else 0,
        qkv_bias='blocks.0.attn.qkv.bias' in keys, qk_norm='blocks.0.attn.q_norm.weight' in keys,
        pre_norm='norm_pre.weight' in keys, fc_norm='fc_norm.weight' in keys,
        final_norm='norm.weight' in keys or 'fc_norm.weight' in keys,
        num_classes=state_dict['head.weight'].shape[0] if 'head.weight' in keys else 0,
        representation_size=state_dict['pre_logits.fc.weight'].shape[0] if 'pre_logits.fc.weight' in keys else None,
    )
    if 'blocks.0.mlp.fc1.weight' in keys:
        hidden = state_dict['blocks.0.mlp.fc1.weight'].shape[0]
        # a known ratio that gives this width is kept (timm's 48 / 11 for giant), else the shortest that does
        ratio = known.get('mlp_ratio')
        found['mlp_ratio'] = ratio if ratio and int(embed_dim * ratio) == hidden else mlp_ratio_for(embed_dim, hidden)
    if found['pre_norm'] == ('patch_embed.proj.bias' in keys):
        # timm ties them: a pre-norm ViT (CLIP) has no patch bias, any other has one
        key = 'patch_embed.proj.bias' if found['pre_norm'] else 'norm_pre.weight'
        raise UnsupportedCheckpointError(f'{where}: {"a" if found["pre_norm"] else "no"} norm_pre with '
                                         f'{"a" if found["pre_norm"] else "no"} patch embedding bias ({key}): timm '
                                         'builds the patch bias exactly when there is no pre-norm')
    # LayerScale's init value is not in the weights (gamma is): any nonzero value builds it
    found['init_values'] = (known.get('init_values') or 1e-5) if 'blocks.0.ls1.gamma' in keys else None
    if any(key.startswith('attn_pool.') for key in keys):
        found['global_pool'] = 'map'

    kwargs = dict(known)
    for key, value in found.items():
        if known.get(key) is not None and not same_keyword(key, known[key], value):
            raise UnsupportedCheckpointError(f'{where}: the weights say {key}={value!r} but the architecture, config '
                                             f'or hints say {key}={known[key]!r}')
        kwargs[key] = value
    # timm's default pooling for what the weights hold: an fc_norm goes with mean pooling
    kwargs.setdefault('global_pool', 'avg' if found['fc_norm'] or not found['class_token'] else 'token')
    if 'num_heads' not in kwargs:
        raise UnsupportedCheckpointError(f'{where}: the number of heads is not in the weights and no timm '
                                         'architecture names it: pass arch= (e.g. vit_base_patch16_224) or num_heads=')

    # the grid: from img_size where known, else the position embedding's rows (a square grid)
    if 'pos_embed' not in keys:
        raise UnsupportedCheckpointError(f'{where}: no pos_embed: this family has a learned position embedding')
    pos_embed = state_dict['pos_embed']
    if pos_embed.ndim != 3:
        _refuse(where, 'pos_embed', pos_embed, 'must be a (1, tokens, dim) learned position embedding')
    prefix = int(kwargs['class_token']) + kwargs['reg_tokens']
    rows = pos_embed.shape[1]
    if 'img_size' not in kwargs and default_img_size is not None \
            and rows in (_grid(default_img_size, patch), _grid(default_img_size, patch) + prefix):
        kwargs['img_size'] = default_img_size
    if 'img_size' in kwargs:
        grid = _grid(kwargs['img_size'], patch)
        if rows not in (grid, grid + prefix) or prefix == 0 and rows != grid:
            _refuse(where, 'pos_embed', pos_embed, f'has {rows} rows: a {kwargs["img_size"]} image in {patch} patches '
                                                   f'is {grid} patches (+ {prefix} class / register rows)')
    else:
        side = next((s for s in (math.isqrt(rows - prefix), math.isqrt(rows)) if s * s in (rows - prefix, rows)),
                    None)
        if side is None:
            _refuse(where, 'pos_embed', pos_embed, 'has no square grid of rows: pass img_size=')
        kwargs['img_size'] = (side * patch[0], side * patch[1])
        grid = side * side
    kwargs['no_embed_class'] = bool(prefix) and rows == grid
    kwargs.setdefault('act_layer', 'gelu')
    kwargs.setdefault('norm_eps', TIMM_EPS)
    kwargs['img_size'] = tuple(int(s) for s in np.broadcast_to(kwargs['img_size'], 2))
    return {key: kwargs[key] for key in KEYWORDS if key in kwargs}


def _grid(img_size, patch) -> int:
    return int(math.prod(int(side) // p for side, p in zip(np.broadcast_to(img_size, 2), patch)))


# writing


def timm_model_args(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """JSON keywords for `timm.create_model` that build the model `kwargs` describe, but for the LayerNorm eps (an
    architecture's norm class sets it: `architecture_for`); refuses what timm's keywords cannot say."""
    if kwargs.get('representation_size'):
        raise UnsupportedCheckpointError(f'representation_size={kwargs["representation_size"]}: timm 1.0.31 '
                                         'VisionTransformer has no pre-logits layer; export to npz or hf instead')
    args = {key: value for key, value in kwargs.items() if key not in ('representation_size', 'norm_eps')}
    return {key: list(value) if isinstance(value, tuple) else value for key, value in args.items()}


def timm_constructor_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Keywords for timm's `VisionTransformer(...)` in Python: the norm class carries an eps other than 1e-6."""
    import torch

    args = timm_model_args(kwargs)
    eps = kwargs.get('norm_eps', TIMM_EPS)
    if eps != TIMM_EPS:
        args['norm_layer'] = functools.partial(torch.nn.LayerNorm, eps=eps)
    return args


def architecture_for(kwargs: Mapping[str, Any], arch: str | None = None) -> str:
    """A timm architecture that builds these keywords from a config.json: `arch` where its LayerNorm eps is theirs,
    else the first with that eps (every other keyword is in model_args). timm has no keyword for the eps."""
    eps = kwargs.get('norm_eps', TIMM_EPS)
    if arch is not None and architecture_keywords(arch)['norm_eps'] == eps:
        return architecture_name(arch)
    table = architectures()['architectures']
    for name in ('vit_base_patch16_224', *table):
        if table[name]['norm_eps'] == eps:
            return name
    raise UnsupportedCheckpointError(f'norm_eps={eps}: no timm ViT architecture builds its LayerNorms with this eps '
                                     f'(timm has {sorted({k["norm_eps"] for k in table.values()})}), and no keyword '
                                     'sets it')


def write_timm(directory: str | os.PathLike, pretrained: Pretrained, *, overwrite: bool = False) -> Path:
    """A hub directory (config.json + model.safetensors) that timm loads with
    `timm.create_model('local-dir:' + directory, pretrained=True)`. Written beside and renamed into place: an
    existing directory is replaced whole with `overwrite`, refused without it."""
    directory = Path(directory)
    model_args = timm_model_args(pretrained.kwargs)
    arch = architecture_for(pretrained.kwargs, pretrained.arch)
    preprocessing = dict(pretrained.preprocessing)
    label_names = preprocessing.pop('label_names', None)
    num_classes = model_args['num_classes']
    pretrained_cfg = {
        'input_size': [model_args['in_chans'], *model_args['img_size']], 'fixed_input_size': True,
        'interpolation': 'bicubic', 'crop_pct': 0.9, 'crop_mode': 'center',
        'mean': [0.5] * model_args['in_chans'], 'std': [0.5] * model_args['in_chans'],
        **{key: list(value) if isinstance(value, tuple) else value for key, value in preprocessing.items()},
        'num_classes': num_classes, 'first_conv': 'patch_embed.proj', 'classifier': 'head', 'custom_load': False,
    }
    config = {'architecture': arch, 'num_classes': num_classes, 'num_features': model_args['embed_dim'],
              'global_pool': model_args['global_pool'], 'model_args': model_args, 'pretrained_cfg': pretrained_cfg}
    if label_names is not None and (num_classes == len(label_names)):
        config['label_names'] = list(label_names)
    text = json.dumps(config, indent=2) + '\n'
    with replaced_directory(directory, overwrite) as staging:
        save_file({key: contiguous(to_numpy(value)) for key, value in pretrained.state_dict.items()},
                  str(staging / 'model.safetensors'), metadata={'format': 'pt'})
        (staging / 'config.json').write_text(text)
    return directory
