"""big_vision and vision_transformer `.npz` checkpoints, both ways (issue 20): the AugReg / original ViT files of
google-research/vision_transformer and the native ViTs of google-research/big_vision (SigLIP's image tower included),
read into and written from the common `Pretrained` form (timm's keys, torch's layouts).

The format is a flat `np.savez` archive of a Flax parameter tree, '/' joining the path. Two spellings of one model:

| timm state-dict key | 'augreg' (vision_transformer) | 'big_vision' |
|---|---|---|
| `patch_embed.proj` (Conv, OIHW) | `embedding/kernel` (HWIO), `bias` | same |
| `cls_token` (1, 1, dim) | `cls` | same |
| `pos_embed` (1, rows, dim) | `Transformer/posembed_input/pos_embedding` | `pos_embedding` |
| `blocks.{i}.norm1` | `E/LayerNorm_0/scale`, `bias` | same |
| `blocks.{i}.attn.qkv` (3 * dim, dim) | `E/MultiHeadDotProductAttention_1/{query,key,value}` | `E/...Attention_0/...` |
| `blocks.{i}.attn.proj` | `E/MultiHeadDotProductAttention_1/out` | `E/...Attention_0/out` |
| `blocks.{i}.norm2` | `E/LayerNorm_2` | `E/LayerNorm_1` |
| `blocks.{i}.mlp.fc1`, `fc2` | `E/MlpBlock_3/Dense_0`, `Dense_1` | `E/MlpBlock_0/...` |
| `norm` | `Transformer/encoder_norm` | same |
| `attn_pool.latent` (MAP head) | `MAPHead_0/probe` | same |
| `attn_pool.q`, `kv`, `proj` | `MAPHead_0/MultiHeadDotProductAttention_0/{query}`, `{key,value}`, `out` | same |
| `attn_pool.norm`, `mlp` | `MAPHead_0/LayerNorm_0`, `MAPHead_0/MlpBlock_0` | same |
| `pre_logits.fc` (`representation_size`) | `pre_logits/kernel`, `bias` | same |
| `head` | `head/kernel`, `bias` | same |

E is `Transformer/encoderblock_{i}`. Dense kernels are (in, out); query / key / value kernels (dim, heads,
head_dim) with biases (heads, head_dim), concatenated into timm's qkv (kv for the MAP head); out kernels (heads,
head_dim, dim).

The tree may sit under a prefix: '' and 'opt/target/' (old flax optimizer files) for AugReg, 'params/' and
'params/img/' (a two-tower SigLIP / LiT file, whose text tower and temperature are left out) for big_vision, the
four timm's `_load_weights` looks under. big_vision may also scan its blocks: `Transformer/encoderblock/...`, every
leaf with a leading layer axis. timm's `_load_weights` (timm/models/vision_transformer.py) is the reference for
what each name and axis means; every file `write_npz` makes reads back through it into a timm model equal to the one
written, bit for bit.

Reading infers timm's keywords from the shapes: embed_dim, in_chans and patch_size from the embedding kernel,
depth from the blocks, num_heads from the query kernel's heads axis, mlp_ratio from the MLP's hidden size (the
shortest decimal that gives it back, as timm writes So400m's 3.7362), class_token from `cls`, num_classes from the
head (0 without one), representation_size from `pre_logits`, global_pool 'map' from a MAP head, else 'token' with a
class token and 'avg' without one (big_vision's default pool_type 'gap', which averages the final-normed tokens:
timm's fc_norm=False). The position embedding's rows decide `no_embed_class`: with a class token, a grid of rows
means big_vision's "add, then prepend the token", a grid and one row the original ViT's row for the class token
(whichever the spelling: timm copies the table as it is).
img_size is that grid times the patch: a square unless an `img_size` hint says otherwise, as the file stores the
grid flat. What the file cannot tell comes from hints, checked against it: `global_pool` ('token', 'avg' or ''
where the file has no MAP head), `img_size`, `act_layer`, and `no_embed_class` where there is no class token (then
it changes nothing). A hint on something the file does tell must agree with it; a contradiction is refused.

Fixed by the format, so neither hinted nor written otherwise: LayerNorm eps 1e-6 (flax's default, every model of
both codebases), biases on query / key / value and the patch embedding, a final encoder norm before pooling (no
fc_norm), no pre-norm, no LayerScale, no q / k norm, no register tokens. GELU: both codebases call flax's
`nn.gelu`, whose default is the tanh approximation, while timm reads these checkpoints with exact GELU (its
pretrained configurations); the reader follows timm ('gelu') and `act_layer='gelu_tanh'` gives the JAX forward.
The file records neither, so both are written.

Refused with UnsupportedCheckpointError (path, key, shape and why): keys the model cannot hold (a hybrid ResNet
stem's `conv_root`, sincos position embeddings, which are computed, not stored), mis-shaped keys, arrays that are not
floating point (bfloat16 saved as raw bytes), contradicting hints. A file np.load cannot read is a ValueError naming
it. Nothing is returned or written half converted. Preprocessing: these ViTs take [-1, 1] inputs (mean = std = 0.5,
big_vision's value_range(-1, 1)) of the position grid's size, resized bilinearly (tf.image.resize's default, which
both codebases' input pipelines use; timm's configurations say bicubic). A crop ratio belongs to an evaluation, not
to the checkpoint, so none is given.

Writing refuses, naming the option, what the format or timm's npz loader cannot hold: the fixed options above,
in_chans other than 1 or 3 (timm's `adapt_input_conv` raises), a 1x1 patch on one channel (timm's `_n2p` flattens
that kernel), scanned or 'params/' prefixed AugReg names (timm takes both for big_vision names). A
representation_size is written (`pre_logits`, which the JAX models read) although timm's loader skips it.

Keywords are resolved and checked by `VisionTransformer` itself (its defaults, `uses_fc_norm`, `grid_size`); the
arrays are numpy throughout, neither torch nor timm is imported here.
"""

from __future__ import annotations

import dataclasses
import math
import re
import zipfile
import zlib
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from vit_flax.layers import pair
from vit_flax.pretrained_vit import VisionTransformer
from vit_flax.registry import FLAX_ONLY_FIELDS

from .files import replaced_whole
from .pretrained_form import Pretrained, UnsupportedCheckpointError, describe, mlp_ratio_for

LAYOUTS = ('augreg', 'big_vision')
PREFIXES = ('', 'opt/target/', 'params/', 'params/img/')  # timm's _load_weights looks under these, in this order
DEFAULT_PREFIX = {'augreg': '', 'big_vision': 'params/'}
NORM_EPS = 1e-6
# the names that differ between the two spellings; timm's mha_sub, ln1_sub, b_sub
NAMES = {
    'augreg': dict(pos_embed='Transformer/posembed_input/pos_embedding', attention='MultiHeadDotProductAttention_1',
                   norm2='LayerNorm_2', mlp='MlpBlock_3'),
    'big_vision': dict(pos_embed='pos_embedding', attention='MultiHeadDotProductAttention_0', norm2='LayerNorm_1',
                       mlp='MlpBlock_0'),
}
BLOCK = 'Transformer/encoderblock_{}/'
SCANNED = 'Transformer/encoderblock/'
# timm keywords a hint may name: the model's, less the JAX-only ones (those are no property of a checkpoint)
HINTS = tuple(field.name for field in dataclasses.fields(VisionTransformer) if field.name not in FLAX_ONLY_FIELDS)
# keys of a ResNet + ViT hybrid's stem (timm's HybridEmbed), which VisionTransformer has no place for
HYBRID = re.compile(r'^(conv_root|gn_root|block\d+/unit\d+)/')

# How an npz array becomes (its piece of) the torch array: the axes to transpose it to (None: as it is), then a
# reshape to the torch shape, which `_torch_shape` gives from the npz shape s.
_AXES = {
    'same': None,
    'dense': (1, 0),  # kernel (in, out) -> weight (out, in)
    'conv': (3, 2, 0, 1),  # HWIO -> OIHW
    'heads_in': (1, 2, 0),  # query kernel (dim, heads, head_dim) -> (heads * head_dim, dim)
    'heads_out': (2, 0, 1),  # out kernel (heads, head_dim, dim) -> (dim, heads * head_dim)
    'heads_bias': None,  # (heads, head_dim) -> (heads * head_dim,)
}


def _torch_shape(kind: str, s: tuple[int, ...]) -> tuple[int, ...]:
    if kind == 'dense':
        return s[1], s[0]
    if kind == 'conv':
        return s[3], s[2], s[0], s[1]
    if kind == 'heads_in':
        return s[1] * s[2], s[0]
    if kind == 'heads_out':
        return s[2], s[0] * s[1]
    if kind == 'heads_bias':
        return (s[0] * s[1],)
    return s


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One timm key and the npz keys it is made of (several: concatenated along timm's first axis, as qkv is)."""

    timm_key: str
    npz_keys: tuple[str, ...]
    npz_shape: tuple[int, ...]  # of each npz key
    kind: str

    @property
    def torch_shape(self) -> tuple[int, ...]:
        first, *rest = _torch_shape(self.kind, self.npz_shape)
        return (first * len(self.npz_keys), *rest)

    def to_torch(self, arrays: list[np.ndarray]) -> np.ndarray:
        axes = _AXES[self.kind]
        pieces = [(a if axes is None else a.transpose(axes)).reshape(_torch_shape(self.kind, a.shape))
                  for a in arrays]
        return np.ascontiguousarray(np.concatenate(pieces) if len(pieces) > 1 else pieces[0])

    def from_torch(self, array: np.ndarray) -> list[np.ndarray]:
        axes = _AXES[self.kind]
        pieces = np.split(array, len(self.npz_keys)) if len(self.npz_keys) > 1 else [array]
        if axes is None:
            return [np.ascontiguousarray(piece.reshape(self.npz_shape)) for piece in pieces]
        transposed = tuple(self.npz_shape[axis] for axis in axes)
        return [np.ascontiguousarray(piece.reshape(transposed).transpose(np.argsort(axes))) for piece in pieces]


def _norm(timm: str, npz: str, dim: int) -> list[_Entry]:
    return [_Entry(f'{timm}.weight', (f'{npz}/scale',), (dim,), 'same'),
            _Entry(f'{timm}.bias', (f'{npz}/bias',), (dim,), 'same')]


def _dense(timm: str, npz: str, fan_in: int, fan_out: int) -> list[_Entry]:
    return [_Entry(f'{timm}.weight', (f'{npz}/kernel',), (fan_in, fan_out), 'dense'),
            _Entry(f'{timm}.bias', (f'{npz}/bias',), (fan_out,), 'same')]


def _heads_in(timm: str, npz: str, parts: tuple[str, ...], dim: int, heads: int) -> list[_Entry]:
    return [_Entry(f'{timm}.weight', tuple(f'{npz}/{part}/kernel' for part in parts), (dim, heads, dim // heads),
                   'heads_in'),
            _Entry(f'{timm}.bias', tuple(f'{npz}/{part}/bias' for part in parts), (heads, dim // heads),
                   'heads_bias')]


def _heads_out(timm: str, npz: str, dim: int, heads: int) -> list[_Entry]:
    return [_Entry(f'{timm}.weight', (f'{npz}/out/kernel',), (heads, dim // heads, dim), 'heads_out'),
            _Entry(f'{timm}.bias', (f'{npz}/out/bias',), (dim,), 'same')]


def _layout(model: VisionTransformer, names: str) -> list[_Entry]:
    """Every timm key of `model` with its npz keys (unrolled blocks, no prefix) in the `names` spelling."""
    name = NAMES[names]
    dim, heads, hidden = model.embed_dim, model.num_heads, int(model.embed_dim * model.mlp_ratio)
    patch_h, patch_w = pair(model.patch_size)
    entries = [_Entry('patch_embed.proj.weight', ('embedding/kernel',), (patch_h, patch_w, model.in_chans, dim),
                      'conv'),
               _Entry('patch_embed.proj.bias', ('embedding/bias',), (dim,), 'same')]
    if model.class_token:
        entries.append(_Entry('cls_token', ('cls',), (1, 1, dim), 'same'))
    rows = math.prod(model.grid_size) + (0 if model.no_embed_class else model.num_prefix_tokens)
    entries.append(_Entry('pos_embed', (name['pos_embed'],), (1, rows, dim), 'same'))
    for i in range(model.depth):
        timm, npz = f'blocks.{i}.', BLOCK.format(i)
        attention = npz + name['attention']
        entries += [*_norm(timm + 'norm1', npz + 'LayerNorm_0', dim),
                    *_heads_in(timm + 'attn.qkv', attention, ('query', 'key', 'value'), dim, heads),
                    *_heads_out(timm + 'attn.proj', attention, dim, heads),
                    *_norm(timm + 'norm2', npz + name['norm2'], dim),
                    *_dense(timm + 'mlp.fc1', f'{npz}{name["mlp"]}/Dense_0', dim, hidden),
                    *_dense(timm + 'mlp.fc2', f'{npz}{name["mlp"]}/Dense_1', hidden, dim)]
    entries += _norm('norm', 'Transformer/encoder_norm', dim)
    if model.global_pool == 'map':
        attention = 'MAPHead_0/MultiHeadDotProductAttention_0'
        entries += [_Entry('attn_pool.latent', ('MAPHead_0/probe',), (1, 1, dim), 'same'),
                    *_heads_in('attn_pool.q', attention, ('query',), dim, heads),
                    *_heads_in('attn_pool.kv', attention, ('key', 'value'), dim, heads),
                    *_heads_out('attn_pool.proj', attention, dim, heads),
                    *_norm('attn_pool.norm', 'MAPHead_0/LayerNorm_0', dim),
                    *_dense('attn_pool.mlp.fc1', 'MAPHead_0/MlpBlock_0/Dense_0', dim, hidden),
                    *_dense('attn_pool.mlp.fc2', 'MAPHead_0/MlpBlock_0/Dense_1', hidden, dim)]
    features = dim
    if model.representation_size:
        entries += _dense('pre_logits.fc', 'pre_logits', dim, model.representation_size)
        features = model.representation_size
    if model.num_classes > 0:
        entries += _dense('head', 'head', features, model.num_classes)
    return entries


def _unsupported_options(model: VisionTransformer) -> list[str]:
    """The keywords of `model` that no file of this format holds, each with why."""
    problems = []
    if model.init_values:
        problems.append(f'init_values={model.init_values} (LayerScale): the blocks have no ls1 / ls2 gamma')
    if model.qk_norm:
        problems.append('qk_norm=True: the attention has no query / key LayerNorm')
    if model.reg_tokens:
        problems.append(f'reg_tokens={model.reg_tokens}: there is no register token')
    if model.pre_norm:
        problems.append('pre_norm=True: there is no LayerNorm before the blocks, and the patch embedding has a bias')
    if not model.qkv_bias:
        problems.append("qkv_bias=False: flax's attention has query / key / value biases")
    if not model.final_norm:
        problems.append('final_norm=False: Transformer/encoder_norm is always there')
    if model.final_norm and model.uses_fc_norm:
        problems.append(f'fc_norm={model.fc_norm} with global_pool={model.global_pool!r}: the encoder norm comes '
                        'before pooling, a norm after it has no name in the format')
    if model.norm_eps != NORM_EPS:
        problems.append(f"norm_eps={model.norm_eps}: every LayerNorm of the format is flax's, eps {NORM_EPS}")
    return problems


def is_big_vision_npz(keys: Iterable[str]) -> bool:
    """Whether archive keys are a big_vision / vision_transformer ViT's (under one of PREFIXES): its patch
    embedding and its encoder norm. A layout, not a promise that `read_npz` can hold it (a hybrid is one too)."""
    keys = set(keys)
    return any(f'{prefix}embedding/kernel' in keys and f'{prefix}Transformer/encoder_norm/scale' in keys
               for prefix in PREFIXES)


def _load(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz, read now: a truncated member fails here, not halfway through a conversion."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f'{path}: not a readable .npz archive ({error})') from error
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise ValueError(f'{path}: a single .npy array, not a keyed .npz archive of a parameter tree')
    try:
        with loaded:
            return {key: loaded[key] for key in loaded.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise ValueError(f'{path}: a damaged or truncated .npz archive ({error})') from error


def _anchor(arrays: dict[str, np.ndarray], key: str, ndim: int, where: str) -> tuple[int, ...]:
    """The shape of a key the keywords are inferred from, which must be there with `ndim` axes."""
    if key not in arrays:
        raise UnsupportedCheckpointError(f'{where}: no {key!r}, which every ViT of the format has')
    if arrays[key].ndim != ndim:
        raise UnsupportedCheckpointError(f'{where}: {key} has {describe(arrays[key])}, expected {ndim} axes')
    return arrays[key].shape


def _unscanned(arrays: dict[str, np.ndarray], where: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Scanned blocks (`Transformer/encoderblock/...`, a leading layer axis) as encoderblock_{i}, and for each new key
    the file's key it came from (for messages). The depth is LayerNorm_0's layer axis."""
    depth = _anchor(arrays, SCANNED + 'LayerNorm_0/scale', 2, where)[0]
    unrolled, origin = {}, {}
    for key, array in arrays.items():
        if not key.startswith(SCANNED):
            unrolled[key] = array
            continue
        if array.ndim == 0 or array.shape[0] != depth:
            raise UnsupportedCheckpointError(f'{where}: {key} has {describe(array)}; a scanned leaf needs a leading '
                                             f'layer axis of depth {depth}')
        for i in range(depth):
            unrolled[BLOCK.format(i) + key[len(SCANNED):]] = array[i]
            origin[BLOCK.format(i) + key[len(SCANNED):]] = f'{key}[{i}]'
    return unrolled, origin


def _grid_and_no_embed_class(rows: int, patch: tuple[int, int], class_token: bool, hints: dict,
                             where: str) -> dict[str, Any]:
    """img_size and no_embed_class from the position embedding's rows (a square grid unless img_size is hinted)."""
    if 'img_size' in hints:
        if not class_token:
            return {}
        # with a class token, the hinted grid says whether its row is there; a mismatch shows in the shape check
        grid = math.prod(size // p for size, p in zip(pair(hints['img_size']), patch))
        return {'no_embed_class': rows == grid}
    candidates = [(True, rows), (False, rows - 1)] if class_token else [(hints.get('no_embed_class', False), rows)]
    if 'no_embed_class' in hints:
        candidates = [(flag, cells) for flag, cells in candidates if flag == hints['no_embed_class']]
    for no_embed_class, cells in candidates:
        side = math.isqrt(max(cells, 0))
        if cells > 0 and side * side == cells:
            height, width = side * patch[0], side * patch[1]
            return {'img_size': height if height == width else (height, width), 'no_embed_class': no_embed_class}
    class_row = ' (with or without a class row)' if class_token else ''
    raise UnsupportedCheckpointError(f'{where}: a position embedding of {rows} rows is no square grid{class_row}; '
                                     'pass img_size=(height, width) for a non-square one')


def _inferred(arrays: dict[str, np.ndarray], names: str, hints: dict, where: str) -> dict[str, Any]:
    """timm keywords from the shapes (unrolled, prefix-free keys), hints filling what the file cannot tell."""
    name = NAMES[names]
    patch_h, patch_w, in_chans, dim = _anchor(arrays, 'embedding/kernel', 4, where)
    depth = 0
    while BLOCK.format(depth) + 'LayerNorm_0/scale' in arrays:
        depth += 1
    heads = _anchor(arrays, f'{BLOCK.format(0)}{name["attention"]}/query/kernel', 3, where)[1]
    hidden = _anchor(arrays, f'{BLOCK.format(0)}{name["mlp"]}/Dense_0/kernel', 2, where)[1]
    rows = _anchor(arrays, name['pos_embed'], 3, where)[1]
    class_token = 'cls' in arrays
    global_pool = 'map' if 'MAPHead_0/probe' in arrays else ('token' if class_token else 'avg')
    patch = (patch_h, patch_w)
    kwargs = dict(
        patch_size=patch_h if patch_h == patch_w else patch, in_chans=in_chans,
        num_classes=_anchor(arrays, 'head/kernel', 2, where)[1] if 'head/kernel' in arrays else 0,
        global_pool=global_pool, embed_dim=dim, depth=depth, num_heads=heads, mlp_ratio=mlp_ratio_for(dim, hidden),
        class_token=class_token, no_embed_class=False, fc_norm=False,
        representation_size=(_anchor(arrays, 'pre_logits/kernel', 2, where)[1] if 'pre_logits/kernel' in arrays
                             else None),
        act_layer='gelu', norm_eps=NORM_EPS)
    return {**kwargs, **_grid_and_no_embed_class(rows, patch, class_token, hints, where)}


def _why_unknown(key: str) -> str:
    if HYBRID.match(key):
        return 'a hybrid ResNet stem (R50+ViT), which VisionTransformer has no place for'
    if key.endswith('pos_embedding'):
        return 'a second position embedding in the other spelling'
    return 'no such parameter in the model the other keys describe'


def _mismatches(arrays: dict[str, np.ndarray], expected: dict[str, tuple[int, ...]],
                origin: dict[str, str], prefix: str) -> list[str]:
    """Every unknown, missing and mis-shaped key, named as the file names it."""
    def named(key):
        return prefix + origin.get(key, key)

    problems = [f'{named(key)} ({describe(array)}): {_why_unknown(key)}'
                for key, array in arrays.items() if key not in expected]
    problems += [f'{named(key)}: missing, expected shape {shape}' for key, shape in expected.items()
                 if key not in arrays]
    problems += [f'{named(key)} has {describe(arrays[key])}, expected shape {shape}' for key, shape in expected.items()
                 if key in arrays and arrays[key].shape != shape]
    problems += [f'{named(key)} has {describe(array)}: not floating point (bfloat16 saved as raw bytes?)'
                 for key, array in arrays.items() if key in expected and array.dtype.kind != 'f']
    return problems


def read_npz(path: str | Path, *, prefix: str | None = None, **hints) -> Pretrained:
    """A big_vision / vision_transformer ViT `.npz` as a `Pretrained` (see the module docstring for the layouts,
    the inference and what is refused). `prefix`: where the model's tree sits, found among PREFIXES by default;
    keys outside it (a two-tower file's text tower) are left out. `hints`: `VisionTransformer` keywords the file
    cannot tell (img_size of a non-square grid, global_pool 'avg' or '', act_layer) or that must agree with it."""
    path = Path(path)
    unknown_hints = sorted(set(hints) - set(HINTS))
    if unknown_hints:
        raise TypeError(f'read_npz: {unknown_hints} are not checkpoint keywords of VisionTransformer ({HINTS})')
    hints = {key: tuple(value) if isinstance(value, list) else value for key, value in hints.items()}
    everything = _load(path)
    if prefix is None:
        prefix = next((p for p in PREFIXES if f'{p}embedding/kernel' in everything), None)
        if prefix is None:
            raise UnsupportedCheckpointError(f'{path}: not a big_vision / vision_transformer ViT: no embedding/kernel '
                                             f'under any of the prefixes {PREFIXES}')
    arrays = {key[len(prefix):]: array for key, array in everything.items() if key.startswith(prefix)}
    left_out = len(everything) - len(arrays)

    where = f'{path}' + (f' (prefix {prefix!r})' if prefix else '')
    scanned = any(key.startswith(SCANNED) for key in arrays)
    arrays, origin = _unscanned(arrays, where) if scanned else (arrays, {})
    names = next((n for n in LAYOUTS if NAMES[n]['pos_embed'] in arrays), None)
    if names is None:
        raise UnsupportedCheckpointError(f'{where}: no position embedding ({NAMES["augreg"]["pos_embed"]} or '
                                         f'{NAMES["big_vision"]["pos_embed"]}): a fixed sincos2d one is computed, '
                                         'not stored, and VisionTransformer learns its own')

    kwargs = {**_inferred(arrays, names, hints, where), **hints}
    hinted = f' with hints {hints}' if hints else ''
    try:
        model = VisionTransformer(**kwargs)
    except ValueError as error:
        raise UnsupportedCheckpointError(f'{where}{hinted}: {error}') from error
    layout = _layout(model, names)
    expected = {key: entry.npz_shape for entry in layout for key in entry.npz_keys}
    # an option the format cannot hold (from a hint) first: the key mismatches would only be its symptoms
    problems = _unsupported_options(model) or _mismatches(arrays, expected, origin, prefix)
    if problems:
        raise UnsupportedCheckpointError(f'{where}{hinted} does not fit a VisionTransformer({kwargs}):\n  '
                                         + '\n  '.join(problems))

    state_dict = {entry.timm_key: entry.to_torch([arrays[key] for key in entry.npz_keys]) for entry in layout}
    height, width = pair(model.img_size)
    preprocessing = dict(input_size=(model.in_chans, height, width), interpolation='bilinear',
                         mean=(0.5,) * model.in_chans, std=(0.5,) * model.in_chans, num_classes=model.num_classes)
    source = (f'{path}: {names} npz{", scanned" if scanned else ""}' + (f', prefix {prefix!r}' if prefix else '')
              + (f', keys outside it left out: {left_out}' if left_out else ''))
    return Pretrained(kwargs=kwargs, state_dict=state_dict, preprocessing=preprocessing, source=source)


def _timm_loader_problems(model: VisionTransformer) -> list[str]:
    """What timm's `_load_weights` cannot read back though the format holds it."""
    problems = []
    if model.in_chans not in (1, 3):
        problems.append(f"in_chans={model.in_chans}: timm's adapt_input_conv takes 1 or 3 channels from an npz")
    if model.in_chans == 1 and pair(model.patch_size) == (1, 1):
        problems.append("patch_size=1 with in_chans=1: timm's _n2p flattens a (1, 1, 1, dim) kernel")
    return problems


def write_npz(path: str | Path, pretrained: Pretrained, layout: str = 'augreg', scanned: bool = False,
              prefix: str | None = None) -> Path:
    """Write `pretrained` as a `layout` ('augreg' or 'big_vision') `.npz` that timm's `_load_weights` and
    `read_npz` read back exactly. `scanned`: big_vision's stacked blocks. `prefix`: one of PREFIXES ('' for AugReg,
    'params/' for big_vision by default). Written to a temporary name beside `path`, then renamed over it: a
    refused or failed write leaves `path` as it was."""
    path = Path(path)
    if layout not in LAYOUTS:
        raise ValueError(f'write_npz: layout={layout!r} must be one of {LAYOUTS}')
    prefix = DEFAULT_PREFIX[layout] if prefix is None else prefix
    if prefix not in PREFIXES:
        raise ValueError(f'write_npz: prefix={prefix!r} must be one of {PREFIXES} (where timm looks)')
    model = VisionTransformer(**pretrained.kwargs)
    problems = _unsupported_options(model) + _timm_loader_problems(model)
    if layout == 'augreg' and scanned:
        problems.append("scanned=True: scanned blocks are big_vision's, timm reads them with big_vision names only")
    if layout == 'augreg' and prefix.startswith('params/'):
        problems.append(f"prefix={prefix!r}: timm reads a 'params/' tree with big_vision names only")
    _refuse_writing(path, pretrained, layout, problems)

    entries = _layout(model, layout)
    expected = {entry.timm_key: entry.torch_shape for entry in entries}
    state_dict = {key: np.asarray(value) for key, value in pretrained.state_dict.items()}
    problems = [f'{key} ({describe(value)}): not in the model the keywords describe'
                for key, value in state_dict.items() if key not in expected]
    problems += [f'{key}: missing, expected shape {shape}' for key, shape in expected.items() if key not in state_dict]
    problems += [f'{key} has {describe(state_dict[key])}, expected shape {shape}'
                 for key, shape in expected.items() if key in state_dict and state_dict[key].shape != shape]
    problems += [f'{key} has {describe(value)}: not floating point' for key, value in state_dict.items()
                 if key in expected and value.dtype.kind != 'f']
    _refuse_writing(path, pretrained, layout, problems)

    arrays = {}
    for entry in entries:
        arrays.update(zip(entry.npz_keys, entry.from_torch(state_dict[entry.timm_key])))
    if scanned:
        arrays = _scanned(arrays, model.depth)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replaced_whole(path) as temporary, open(temporary, 'wb') as file:
        np.savez(file, **{prefix + key: array for key, array in arrays.items()})
    return path


def _refuse_writing(path: Path, pretrained: Pretrained, layout: str, problems: list[str]):
    if problems:
        what = pretrained.source or 'this checkpoint'
        raise UnsupportedCheckpointError(f'{path}: cannot write {what} in the {layout} npz layout:\n  '
                                         + '\n  '.join(problems))


def _scanned(arrays: dict[str, np.ndarray], depth: int) -> dict[str, np.ndarray]:
    """encoderblock_{i} leaves stacked along a leading layer axis under `Transformer/encoderblock/`."""
    block0 = BLOCK.format(0)
    stacked = {key: array for key, array in arrays.items() if not key.startswith('Transformer/encoderblock_')}
    for key in arrays:
        if key.startswith(block0):
            rest = key[len(block0):]
            stacked[SCANNED + rest] = np.stack([arrays[BLOCK.format(i) + rest] for i in range(depth)])
    return stacked
