"""Hugging Face transformers ViT directories both ways (issue 20): `config.json` (model_type 'vit', transformers'
ViTConfig), `model.safetensors` (or its shards, or `pytorch_model.bin`) and, where present, `preprocessor_config.json`.

    pretrained = read_hf_vit('vit-base-patch16-224')          # a Pretrained: timm's keys, torch's layouts
    write_hf_vit('exported', pretrained)                       # transformers' from_pretrained loads it

The weights on disk are transformers' checkpoint names (what `save_pretrained` writes in 4.x and 5.x alike; 5.x
renames them to `layers.N.attention.q_proj` ... in memory only): `embeddings.cls_token`, `.position_embeddings`,
`.patch_embeddings.projection`, `encoder.layer.N.attention.attention.query / key / value`,
`.attention.output.dense`, `.intermediate.dense`, `.output.dense`, `.layernorm_before`, `.layernorm_after`, then
`layernorm`, ViTModel's optional `pooler.dense`; ViTForImageClassification has the same under `vit.` plus
`classifier`. They map to timm's keys one for one, except query, key and value, whose rows are concatenated into
timm's `blocks.N.attn.qkv` (and split back on writing): bit-exact both ways.

Which class a directory holds decides the VisionTransformer keywords, and each is that class's forward exactly:

| transformers | its output | keywords |
|---|---|---|
| ViTForImageClassification | logits of the class token after `layernorm` | global_pool='token', num_classes |
| (num_labels=0: no classifier) | the class token after `layernorm` | global_pool='token', num_classes=0 |
| ViTModel with pooler | `pooler_output`: tanh(dense(that class token)) | representation_size, num_classes=0 |
| ViTModel without pooler | `last_hidden_state`: every token after `layernorm` | global_pool='', num_classes=0 |

HF's LayerNorm eps defaults to 1e-12 (timm's 1e-6): `norm_eps` carries config.layer_norm_eps through. The class
comes from `architectures` where the config names one, else from the keys (a `vit.` prefix is the classifier's).

Refused, with UnsupportedCheckpointError naming the file, the key or option and why, before anything is returned
or written: missing, unexpected and mis-shaped tensors (all named at once); `mask_token` (ViTForMaskedImageModeling
and `use_mask_token`: only masked-image pretraining uses it); a classifier's `vit.pooler` (HF builds none there and
would drop it); `hidden_act` other than GELU (erf: 'gelu', 'gelu_python'; tanh: 'gelu_pytorch_tanh',
'gelu_python_tanh', 'gelu_new', 'gelu_accurate', all 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3))) to round-off;
'gelu_fast' rounds sqrt(2/pi) to 0.7978845608, 'quick_gelu' and 'gelu_10' are other functions); sizes HF floors
but timm refuses (image not a multiple of the patch); a `head_dim` that is not hidden_size / heads. On writing,
every VisionTransformer option HF's ViT has no place for: no class token, registers, 'avg' / 'map' pooling,
LayerScale, qk_norm, no_embed_class, pre_norm, fc_norm, final_norm=False, a head on every token, a head after the
pre-logits (ViTForImageClassification has no pooler).

Preprocessing maps to timm's pretrained_cfg names: image_mean / image_std -> mean / std, resample (PIL's integer)
-> interpolation, size {height, width} -> crop_mode 'squash' (HF resizes without keeping the aspect ratio), size
{shortest_edge} with a square center crop -> crop_mode 'center', crop_pct = crop / resize (timm resizes to
floor(size / crop_pct), which gives the same resize back). Label names come from `id2label` (HF's placeholder
'LABEL_i' names are no names). On writing, a preprocessor_config.json is written when mean, std, interpolation,
crop_pct and crop_mode are all known, none when none is; some of them, or a crop HF cannot do (timm's 'border', a
'center' crop of a non-square input), is refused rather than completed with HF's defaults. Round trips are exact:
`read_hf_vit(write_hf_vit(d, p))` gives `p` back (crop_pct as crop / resize, which is `p`'s when that divides
evenly, and the same resize either way). The file written is a ViTImageProcessor's; a center crop is written as
`do_center_crop` / `crop_size`, which transformers 5's image processors apply (4.x's ViTImageProcessor ignored them).

SigLIP's image tower is read too (`read_hf_siglip`, not written): transformers' SiglipVisionModel, or the image tower
of a SiglipModel, as a VisionTransformer with no class token and, where the checkpoint has SigLIP's pooling head,
global_pool='map' (timm's `attn_pool`: the head's `probe` is the latent, its `in_proj` rows split into `q` and `kv`):
the tokens are transformers' `last_hidden_state`, the pooled output its `pooler_output`. It also reads what
vit-pytorch's `SigLIPVAT.load_siglip` reads without a config: the tower under a pi0 / PaliGemma expert's or a
SiglipModel's prefix (the rest of the file left unread), sizes from the shapes and `num_heads` from a hint
(converters/siglip.py takes it on to vat_siglip.SigLIP).

Only numpy (and ml_dtypes' bfloat16), safetensors and json here: torch is imported only to read a
`pytorch_model.bin`, and transformers never.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save_file

from vit_flax.pretrained_vit import VisionTransformer
from vit_flax.registry import FLAX_ONLY_FIELDS

from .arrays import contiguous, to_numpy
from .files import replaced_directory
from .pretrained_form import Pretrained, UnsupportedCheckpointError, describe, mlp_ratio_for, same_keyword

CLASSIFIER, MODEL = 'ViTForImageClassification', 'ViTModel'

# transformers' ViTConfig defaults, which it applies to keys a config.json leaves out
HF_DEFAULTS = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                   hidden_act='gelu', layer_norm_eps=1e-12, image_size=224, patch_size=16, num_channels=3,
                   qkv_bias=True, encoder_stride=16, pooler_output_size=None, pooler_act='tanh')

# transformers' ACT2FN names that are timm's two GELUs up to round-off (see the module docstring)
HF_ACTIVATIONS = {'gelu': 'gelu', 'gelu_python': 'gelu', 'gelu_pytorch_tanh': 'gelu_tanh',
                  'gelu_python_tanh': 'gelu_tanh', 'gelu_new': 'gelu_tanh', 'gelu_accurate': 'gelu_tanh'}
# the names written: torch's own kernels, as timm's nn.GELU
ACT_NAMES = {'gelu': 'gelu', 'gelu_tanh': 'gelu_pytorch_tanh'}

# JAX-only VisionTransformer keywords: they change neither the function nor the state dict
JAX_ONLY = tuple(sorted(FLAX_ONLY_FIELDS - {'parent', 'name'}))
# VisionTransformer's defaults (timm's), for keywords a Pretrained leaves out
TIMM_DEFAULTS = {field.name: field.default for field in dataclasses.fields(VisionTransformer)
                 if field.name not in FLAX_ONLY_FIELDS}
# the options HF's ViT holds only at one value (timm's default), with why
FIXED_OPTIONS = {
    'class_token': (True, 'HF ViT always has a class token'),
    'reg_tokens': (0, 'HF ViT has no register tokens'),
    'no_embed_class': (False, "HF ViT's position embedding has a row for the class token"),
    'pre_norm': (False, 'HF ViT has no LayerNorm before the blocks'),
    'final_norm': (True, "HF ViT always applies its final 'layernorm'"),
    'qk_norm': (False, 'HF ViT has no query / key LayerNorm'),
    'dynamic_img_size': (False, "HF ViT resamples its position embedding only when a call asks "
                                "(interpolate_pos_encoding), by its own rule, not timm's"),
}

# PIL's resampling filters (transformers' `resample`) under timm's interpolation names
PIL_FILTERS = {0: 'nearest', 1: 'lanczos', 2: 'bilinear', 3: 'bicubic', 4: 'box', 5: 'hamming'}
# the dtypes weights may have (numpy has no bfloat16; ml_dtypes' is what safetensors.numpy reads it as)
FLOATS = tuple(np.dtype(t) for t in (np.float16, np.float32, np.float64, ml_dtypes.bfloat16))
IMAGE_PREPROCESSING = ('mean', 'std', 'interpolation', 'crop_pct', 'crop_mode')
RESCALE = 1 / 255  # timm's ToTensor scaling, which HF spells as do_rescale with this factor


def _refuse(where, why: str):
    raise UnsupportedCheckpointError(f'{where}: {why}')


def _json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        _refuse(path, f'not readable JSON ({error})')
    if not isinstance(value, dict):
        _refuse(path, f'a JSON object expected, got {type(value).__name__}')
    return value


def is_hf_vit_dir(directory) -> bool:
    """Whether `directory` holds a transformers ViT: a config.json whose model_type is 'vit'."""
    path = Path(directory) / 'config.json'
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(config, dict) and config.get('model_type') == 'vit'


# config.json


def _integer(where, key, value, minimum=1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _refuse(where, f'{key}={value!r} must be an integer >= {minimum}')
    return value


def _pair(where, key, value) -> tuple[int, int]:
    items = value if isinstance(value, (list, tuple)) else [value, value]
    if len(items) != 2:
        _refuse(where, f'{key}={value!r} must be an integer or [height, width]')
    return tuple(_integer(where, key, v) for v in items)


def _hf_pair(value):
    """transformers' spelling of a size: an int when square, as it was given, else [height, width]."""
    return value if isinstance(value, int) else list(value)


def _vit_kwargs(path: Path, config: dict) -> tuple[dict, str | None, dict]:
    """The VisionTransformer keywords a config.json fixes (num_classes, global_pool and representation_size wait for
    the class), the class `architectures` names, and the values the weights' shapes depend on."""
    if config.get('model_type') != 'vit':
        _refuse(path, f"model_type={config.get('model_type')!r} is not transformers' ViT ('vit')")
    value = {key: config.get(key, default) for key, default in HF_DEFAULTS.items()}
    hidden = _integer(path, 'hidden_size', value['hidden_size'])
    heads = _integer(path, 'num_attention_heads', value['num_attention_heads'])
    if hidden % heads:
        _refuse(path, f'hidden_size={hidden} is not divisible by num_attention_heads={heads}')
    if config.get('head_dim', hidden // heads) != hidden // heads:
        # ViTAttention takes head_dim from the config where set: heads * head_dim other than hidden_size
        _refuse(path, f"head_dim={config['head_dim']!r} is not hidden_size / num_attention_heads = {hidden // heads}")
    depth = _integer(path, 'num_hidden_layers', value['num_hidden_layers'])
    intermediate = _integer(path, 'intermediate_size', value['intermediate_size'])
    mlp_ratio = mlp_ratio_for(hidden, intermediate)  # VisionTransformer's Mlp width is int(embed_dim * mlp_ratio)
    act = value['hidden_act']
    if not isinstance(act, str) or act not in HF_ACTIVATIONS:
        _refuse(path, f'hidden_act={act!r} is none of the GELUs VisionTransformer has ({sorted(HF_ACTIVATIONS)})')
    eps = value['layer_norm_eps']
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (math.isfinite(eps) and eps > 0):
        _refuse(path, f'layer_norm_eps={eps!r} must be a positive number')
    image, patch = value['image_size'], value['patch_size']
    image_pair, patch_pair = _pair(path, 'image_size', image), _pair(path, 'patch_size', patch)
    if any(i % p for i, p in zip(image_pair, patch_pair)):
        # HF's patch Conv drops the remainder; timm's PatchEmbed refuses it, and so does VisionTransformer
        _refuse(path, f'image_size={image!r} is not a multiple of patch_size={patch!r}')
    channels = _integer(path, 'num_channels', value['num_channels'])
    if not isinstance(value['qkv_bias'], bool):
        _refuse(path, f"qkv_bias={value['qkv_bias']!r} must be true or false")
    _integer(path, 'encoder_stride', value['encoder_stride'])  # ViTForMaskedImageModeling's decoder only
    pooler_size = value['pooler_output_size'] or hidden  # ViTConfig: None or 0 means hidden_size
    _integer(path, 'pooler_output_size', pooler_size)
    if not isinstance(value['pooler_act'], str):
        _refuse(path, f"pooler_act={value['pooler_act']!r} must be an activation name")

    architectures = config.get('architectures')
    if architectures is not None and (not isinstance(architectures, list) or len(architectures) != 1
                                      or not isinstance(architectures[0], str)):
        _refuse(path, f'architectures={architectures!r} must name one class')
    architecture = architectures[0] if architectures else None
    if architecture == 'ViTForMaskedImageModeling':
        _refuse(path, 'ViTForMaskedImageModeling (SimMIM pretraining: mask token and pixel decoder) is not a '
                      'VisionTransformer; its encoder alone would drop weights')
    if architecture not in (None, CLASSIFIER, MODEL):
        _refuse(path, f'architectures=[{architecture!r}]: only {MODEL} and {CLASSIFIER} are read')

    kwargs = dict(img_size=tuple(image) if isinstance(image, list) else image,
                  patch_size=tuple(patch) if isinstance(patch, list) else patch, in_chans=channels,
                  embed_dim=hidden, depth=depth, num_heads=heads, mlp_ratio=mlp_ratio, qkv_bias=value['qkv_bias'],
                  class_token=True, act_layer=HF_ACTIVATIONS[act], norm_eps=eps)
    shapes = dict(pooler_size=pooler_size, pooler_act=value['pooler_act'])
    return kwargs, architecture, shapes


def _label_names(path: Path, config: dict) -> list[str] | None:
    """id2label's names in class order (None where the config has none)."""
    id2label = config.get('id2label')
    if id2label is None:
        return None
    expected = [str(i) for i in range(len(id2label))] if isinstance(id2label, dict) else None
    if expected is None or set(id2label) != set(expected):
        _refuse(path, f'id2label must map "0" ... "n-1" to names, got {id2label!r:.200}')
    names = [id2label[key] for key in expected]
    if not all(isinstance(name, str) for name in names):
        _refuse(path, 'id2label names must be strings')
    return names


def _num_labels(path: Path, config: dict, names: list[str] | None) -> int:
    # transformers' rule: id2label's length, else num_labels, else 2
    if names is not None:
        return len(names)
    return _integer(path, 'num_labels', config.get('num_labels', 2), minimum=0)


# the one key table, both ways


def _timm_shapes(kwargs: dict) -> dict[str, tuple[int, ...]]:
    """timm's state-dict keys and shapes of a VisionTransformer HF's ViT can hold (checked before)."""
    dim, depth = kwargs['embed_dim'], kwargs['depth']
    (h, w), (ph, pw) = (_pair('VisionTransformer', key, kwargs[key]) for key in ('img_size', 'patch_size'))
    hidden = int(dim * kwargs['mlp_ratio'])
    shapes = {'cls_token': (1, 1, dim), 'pos_embed': (1, (h // ph) * (w // pw) + 1, dim),
              'patch_embed.proj.weight': (dim, kwargs['in_chans'], ph, pw), 'patch_embed.proj.bias': (dim,)}
    for i in range(depth):
        block = {'norm1.weight': (dim,), 'norm1.bias': (dim,), 'attn.qkv.weight': (3 * dim, dim),
                 'attn.proj.weight': (dim, dim), 'attn.proj.bias': (dim,), 'norm2.weight': (dim,),
                 'norm2.bias': (dim,), 'mlp.fc1.weight': (hidden, dim), 'mlp.fc1.bias': (hidden,),
                 'mlp.fc2.weight': (dim, hidden), 'mlp.fc2.bias': (dim,)}
        if kwargs['qkv_bias']:
            block['attn.qkv.bias'] = (3 * dim,)
        shapes.update({f'blocks.{i}.{key}': shape for key, shape in block.items()})
    shapes.update({'norm.weight': (dim,), 'norm.bias': (dim,)})
    if kwargs['representation_size']:
        size = kwargs['representation_size']
        shapes.update({'pre_logits.fc.weight': (size, dim), 'pre_logits.fc.bias': (size,)})
    if kwargs['num_classes']:
        shapes.update({'head.weight': (kwargs['num_classes'], dim), 'head.bias': (kwargs['num_classes'],)})
    return shapes


BLOCK_NAMES = {'norm1': 'layernorm_before', 'attn.proj': 'attention.output.dense', 'norm2': 'layernorm_after',
               'mlp.fc1': 'intermediate.dense', 'mlp.fc2': 'output.dense'}
TOP_NAMES = {'cls_token': 'embeddings.cls_token', 'pos_embed': 'embeddings.position_embeddings',
             'patch_embed.proj': 'embeddings.patch_embeddings.projection', 'norm': 'layernorm',
             'pre_logits.fc': 'pooler.dense'}
QKV = ('query', 'key', 'value')


def _hf_names(timm_key: str, prefix: str) -> list[str]:
    """HF's key(s) for a timm key: qkv's three (query, key, value rows in order), one for every other. `prefix`
    is 'vit.' in ViTForImageClassification, whose `classifier` sits outside it."""
    if timm_key.startswith('head.'):
        return ['classifier.' + timm_key.split('.')[-1]]
    if timm_key.startswith('blocks.'):
        _, i, rest = timm_key.split('.', 2)
        module, leaf = rest.rsplit('.', 1)
        layer = f'{prefix}encoder.layer.{i}.'
        if module == 'attn.qkv':
            return [f'{layer}attention.attention.{name}.{leaf}' for name in QKV]
        return [f'{layer}{BLOCK_NAMES[module]}.{leaf}']
    if timm_key in TOP_NAMES:  # the parameters: cls_token, pos_embed
        return [prefix + TOP_NAMES[timm_key]]
    module, leaf = timm_key.rsplit('.', 1)
    return [f'{prefix}{TOP_NAMES[module]}.{leaf}']


def _hf_shapes(timm_shapes: dict, prefix: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """HF key -> (timm key, HF shape): query, key and value have a third of qkv's rows each."""
    table = {}
    for timm_key, shape in timm_shapes.items():
        names = _hf_names(timm_key, prefix)
        part = (shape[0] // len(names), *shape[1:])
        table.update({name: (timm_key, part) for name in names})
    return table


def _check_keys(where, found: dict, expected: dict, explain=lambda key: '') -> None:
    """Every missing, unexpected and mis-shaped key named at once (`expected`: key -> shape)."""
    problems = [f'missing {key!r} (expected shape {shape})' for key, shape in expected.items() if key not in found]
    problems += [f'unexpected {key!r} ({describe(found[key])}){explain(key)}' for key in found if key not in expected]
    problems += [f'{key!r} is {describe(found[key])}, expected shape {expected[key]}'
                 for key in found if key in expected and tuple(np.shape(found[key])) != tuple(expected[key])]
    problems += [f'{key!r} is {describe(found[key])}, not floating point' for key in found
                 if key in expected and np.asarray(found[key]).dtype not in FLOATS]
    if problems:
        _refuse(where, '; '.join(problems))


# reading


def _load_weights(directory: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """The directory's tensors as numpy, from model.safetensors, its shards, or pytorch_model.bin (HF's order)."""
    single, index, pickle = (directory / name for name in
                             ('model.safetensors', 'model.safetensors.index.json', 'pytorch_model.bin'))
    if single.is_file():
        return single, _safetensors(single)
    if index.is_file():
        weight_map = _json(index).get('weight_map')
        if not isinstance(weight_map, dict):
            _refuse(index, 'no weight_map')
        tensors = {}
        for shard in sorted(set(weight_map.values())):
            loaded = _safetensors(directory / shard)
            tensors.update({key: value for key, value in loaded.items() if weight_map.get(key) == shard})
            strays = sorted(key for key in loaded if weight_map.get(key) != shard)
            if strays:
                _refuse(directory / shard, f'holds {strays} which {index.name} does not place there')
        return index, tensors
    if pickle.is_file():
        return pickle, _torch_state_dict(pickle)
    _refuse(directory, 'no model.safetensors, model.safetensors.index.json or pytorch_model.bin')


def _torch_state_dict(pickle: Path) -> dict[str, np.ndarray]:
    import torch  # only for this legacy format: safetensors needs no torch

    try:
        state = torch.load(pickle, map_location='cpu', weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many types for a broken or hostile pickle
        _refuse(pickle, f'not a readable torch state dict ({type(error).__name__}: {error})')
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        _refuse(pickle, 'not a state dict of tensors')
    return {key: to_numpy(value) for key, value in state.items()}


def _safetensors(path: Path) -> dict[str, np.ndarray]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, TypeError) as error:
        _refuse(path, f'not a readable safetensors file ({type(error).__name__}: {error})')


def _read_preprocessing(path: Path, kwargs: dict) -> dict[str, Any]:
    """timm's pretrained_cfg entries for a preprocessor_config.json (see the module docstring for the mapping)."""
    config = _json(path)
    channels = kwargs['in_chans']
    height, width = _pair(path, 'image_size', kwargs['img_size'])
    if config.get('do_resize', True) is not True:
        _refuse(path, 'do_resize is not true: timm always resizes to its input size')
    factor = config.get('rescale_factor', RESCALE)
    if config.get('do_rescale', True) is not True or not (isinstance(factor, float)
                                                          and math.isclose(factor, RESCALE, rel_tol=1e-12)):
        _refuse(path, f"do_rescale={config.get('do_rescale')!r}, rescale_factor={config.get('rescale_factor')!r}: "
                      'timm scales pixels by 1/255 and nothing else')
    if config.get('do_normalize', True) is True:
        mean, std = config.get('image_mean'), config.get('image_std')
    elif config['do_normalize'] is False:
        mean, std = 0.0, 1.0
    else:
        _refuse(path, f"do_normalize={config['do_normalize']!r} must be true or false")
    stats = {}
    for key, value in (('image_mean', mean), ('image_std', std)):
        values = value if isinstance(value, list) else [value] * channels
        if len(values) != channels or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                              for v in values):
            _refuse(path, f'{key}={value!r} must be {channels} numbers (num_channels)')
        stats[key] = tuple(float(v) for v in values)
    resample = config.get('resample')
    if not isinstance(resample, int) or isinstance(resample, bool) or resample not in PIL_FILTERS:
        _refuse(path, f'resample={resample!r} is none of PIL\'s filters {PIL_FILTERS}')

    size = config.get('size')
    crop = config.get('crop_size') if config.get('do_center_crop') else None
    if crop is not None and not (isinstance(crop, dict) and set(crop) == {'height', 'width'}):
        _refuse(path, f'crop_size={crop!r} must be {{"height", "width"}}')
    final = (crop['height'], crop['width']) if crop else None
    if isinstance(size, int) and not isinstance(size, bool):
        size = {'height': size, 'width': size}  # ViTFeatureExtractor's square size
    if isinstance(size, dict) and set(size) == {'height', 'width'}:
        # HF resizes to exactly (height, width): timm's 'squash' to floor(input / crop_pct), then its center crop
        resized = (_integer(path, 'size', size['height']), _integer(path, 'size', size['width']))
        final = final or resized
        crop_mode = 'squash'
    elif isinstance(size, dict) and set(size) == {'shortest_edge'} and final and final[0] == final[1]:
        # the shortest edge to s, then a square center crop: timm's 'center' mode for a square input
        resized = (_integer(path, 'size', size['shortest_edge']),) * 2
        crop_mode = 'center'
    else:
        _refuse(path, f'size={size!r} with crop_size={crop!r}: timm resizes to (height, width), or the shortest '
                      'edge before a square center crop')
    if final != (height, width):
        _refuse(path, f'the processor gives {final[0]}x{final[1]} images, the model takes {height}x{width}')
    crop_pct = height / resized[0]
    # timm resizes to floor(input / crop_pct): that must give HF's resize back, on both axes
    if (math.floor(height / crop_pct), math.floor(width / crop_pct)) != resized:
        _refuse(path, f'size={size!r} with crop_size={crop!r} is no single crop_pct timm can apply')
    return {'input_size': (channels, height, width), 'interpolation': PIL_FILTERS[resample], 'crop_pct': crop_pct,
            'crop_mode': crop_mode, 'mean': stats['image_mean'], 'std': stats['image_std']}


def read_hf_vit(directory) -> Pretrained:
    """A transformers ViTModel / ViTForImageClassification directory as a Pretrained (timm's keys and layouts)."""
    directory = Path(directory)
    config_path = directory / 'config.json'
    if not config_path.is_file():
        _refuse(directory, 'no config.json')
    config = _json(config_path)
    kwargs, architecture, sizes = _vit_kwargs(config_path, config)
    weights_path, tensors = _load_weights(directory)
    if architecture is None:
        architecture = CLASSIFIER if any(key.startswith('vit.') for key in tensors) else MODEL

    names = _label_names(config_path, config)
    prefix = 'vit.' if architecture == CLASSIFIER else ''
    if architecture == CLASSIFIER:
        num_classes = _num_labels(config_path, config, names)
        kwargs.update(num_classes=num_classes, global_pool='token', representation_size=None)
    elif 'pooler.dense.weight' in tensors or 'pooler.dense.bias' in tensors:
        if sizes['pooler_act'] != 'tanh':
            _refuse(config_path, f"pooler_act={sizes['pooler_act']!r}: VisionTransformer's pre-logits are tanh")
        kwargs.update(num_classes=0, global_pool='token', representation_size=sizes['pooler_size'])
    else:
        kwargs.update(num_classes=0, global_pool='', representation_size=None)

    table = _hf_shapes(_timm_shapes(kwargs), prefix)

    def explain(key):
        if key.endswith('embeddings.mask_token'):
            return ': the masked-image-modeling token (use_mask_token), which VisionTransformer has no use for'
        if key.startswith('vit.pooler.'):
            return f': {CLASSIFIER} builds no pooler (transformers would drop it)'
        return ''

    _check_keys(weights_path, tensors, {key: shape for key, (_, shape) in table.items()}, explain)
    state_dict = {}
    for timm_key in dict.fromkeys(timm_key for timm_key, _ in table.values()):
        parts = [tensors[name] for name in _hf_names(timm_key, prefix)]
        if len({part.dtype for part in parts}) > 1:
            _refuse(weights_path, f'query / key / value of {timm_key!r} differ in dtype: '
                                  f'{[str(part.dtype) for part in parts]}')
        state_dict[timm_key] = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)

    preprocessing = {}
    processor = directory / 'preprocessor_config.json'
    if processor.is_file():
        preprocessing.update(_read_preprocessing(processor, kwargs))
    if kwargs['num_classes'] and names and names != [f'LABEL_{i}' for i in range(len(names))]:
        preprocessing['label_names'] = tuple(names)
    return Pretrained(kwargs=kwargs, state_dict=state_dict, preprocessing=preprocessing,
                      source=f'{directory} (transformers {architecture})')


# writing


def _hf_architecture(kwargs: dict) -> str:
    """The transformers class that holds a VisionTransformer exactly, or UnsupportedCheckpointError naming the
    option it has no place for."""
    unknown = sorted(set(kwargs) - set(TIMM_DEFAULTS) - set(JAX_ONLY))
    if unknown:
        _refuse('write_hf_vit', f'unknown VisionTransformer keywords {unknown}')
    options = {**TIMM_DEFAULTS, **kwargs}
    where = 'write_hf_vit'
    dim, heads = _integer(where, 'embed_dim', options['embed_dim']), _integer(where, 'num_heads', options['num_heads'])
    if dim % heads:
        _refuse(where, f'embed_dim={dim} is not divisible by num_heads={heads}')
    for key in ('depth', 'in_chans'):
        _integer(where, key, options[key])
    _integer(where, 'num_classes', options['num_classes'], minimum=0)
    sizes = zip(_pair(where, 'img_size', options['img_size']), _pair(where, 'patch_size', options['patch_size']))
    if any(i % p for i, p in sizes):
        _refuse(where, f"img_size={options['img_size']!r} is not a multiple of patch_size={options['patch_size']!r}")
    for option, (value, why) in FIXED_OPTIONS.items():
        if options[option] != value:
            _refuse('write_hf_vit', f'{option}={options[option]!r}: {why}')
    if options['init_values']:
        _refuse('write_hf_vit', f"init_values={options['init_values']!r}: HF ViT has no LayerScale")
    if options['fc_norm']:
        _refuse('write_hf_vit', 'fc_norm=True: HF ViT normalises every token before pooling, never after')
    if options['act_layer'] not in ACT_NAMES:
        _refuse('write_hf_vit', f"act_layer={options['act_layer']!r}: HF ViT's GELUs are {sorted(ACT_NAMES)}")
    pool, classes, representation = options['global_pool'], options['num_classes'], options['representation_size']
    if pool not in ('token', ''):
        _refuse('write_hf_vit', f'global_pool={pool!r}: HF ViT pools the class token (or returns every token)')
    if pool == '':
        if classes or representation:
            _refuse('write_hf_vit', "global_pool='' with num_classes or representation_size: HF ViT has no head on "
                                    'every token')
        return MODEL
    if representation:
        if classes:
            _refuse('write_hf_vit', f'representation_size={representation} with num_classes={classes}: '
                                    f'{CLASSIFIER} has no pooler before its classifier')
        return MODEL
    return CLASSIFIER  # num_classes=0 too: a classifier of no labels returns the pooled class token


def _dtype_name(state_dict: dict) -> str:
    names = {str(np.asarray(value).dtype) for value in state_dict.values()}
    return names.pop() if len(names) == 1 else 'float32'


def _hf_config(kwargs: dict, architecture: str, labels: list[str] | None, dtype: str) -> dict:
    heads = kwargs['num_heads']
    config = {
        'architectures': [architecture],
        'model_type': 'vit',
        'hidden_size': kwargs['embed_dim'],
        'num_hidden_layers': kwargs['depth'],
        'num_attention_heads': heads,
        'intermediate_size': int(kwargs['embed_dim'] * kwargs['mlp_ratio']),
        'hidden_act': ACT_NAMES[kwargs['act_layer']],
        'hidden_dropout_prob': 0.0,
        'attention_probs_dropout_prob': 0.0,
        'layer_norm_eps': kwargs['norm_eps'],
        'image_size': _hf_pair(kwargs['img_size']),
        'patch_size': _hf_pair(kwargs['patch_size']),
        'num_channels': kwargs['in_chans'],
        'qkv_bias': kwargs['qkv_bias'],
        'pooler_output_size': kwargs['representation_size'] or kwargs['embed_dim'],
        'pooler_act': 'tanh',
        'dtype': dtype,
    }
    # encoder_stride (ViTForMaskedImageModeling's decoder) is left to transformers' default: nothing here reads it
    if architecture == CLASSIFIER:
        # always written: transformers' default of two labels would expect a classifier of two rows
        names = labels or [f'LABEL_{i}' for i in range(kwargs['num_classes'])]
        config['id2label'] = {str(i): name for i, name in enumerate(names)}
        config['label2id'] = {name: i for i, name in enumerate(names)}
    return config


def _hf_preprocessor(preprocessing: dict, kwargs: dict) -> dict | None:
    """preprocessor_config.json for timm's pretrained_cfg entries, None when none is known (module docstring)."""
    known = [key for key in IMAGE_PREPROCESSING if key in preprocessing]
    if not known:
        return None
    if len(known) < len(IMAGE_PREPROCESSING):
        _refuse('write_hf_vit', f'preprocessing has {known} but not {sorted(set(IMAGE_PREPROCESSING) - set(known))}: '
                                "transformers' defaults would stand in for the rest (drop them all to write none)")
    height, width = _pair('write_hf_vit', 'img_size', kwargs['img_size'])
    input_size = tuple(preprocessing.get('input_size', (kwargs['in_chans'], height, width)))
    if input_size != (kwargs['in_chans'], height, width):
        _refuse('write_hf_vit', f"preprocessing input_size={input_size} is not the model's "
                                f"{(kwargs['in_chans'], height, width)}")
    filters = {name: number for number, name in PIL_FILTERS.items()}
    interpolation, crop_pct, mode = (preprocessing[key] for key in ('interpolation', 'crop_pct', 'crop_mode'))
    if interpolation not in filters:
        _refuse('write_hf_vit', f'preprocessing interpolation={interpolation!r} is none of PIL\'s {sorted(filters)}')
    if isinstance(crop_pct, bool) or not isinstance(crop_pct, (int, float)) or not 0 < crop_pct <= 1:
        _refuse('write_hf_vit', f'preprocessing crop_pct={crop_pct!r} must be in (0, 1]')
    resized = (math.floor(height / crop_pct), math.floor(width / crop_pct))  # timm's scale_size
    if mode == 'squash':
        size = {'height': resized[0], 'width': resized[1]}
    elif mode == 'center' and height == width:
        size = {'shortest_edge': resized[0]}
    else:
        _refuse('write_hf_vit', f'preprocessing crop_mode={mode!r} for a {height}x{width} input: transformers '
                                "resizes to (height, width) ('squash') or the shortest edge before a square crop")
    processor = {'image_processor_type': 'ViTImageProcessor', 'do_resize': True, 'size': size,
                 'resample': filters[interpolation], 'do_center_crop': size != {'height': height, 'width': width},
                 'do_rescale': True, 'rescale_factor': RESCALE, 'do_normalize': True}
    if processor['do_center_crop']:
        processor['crop_size'] = {'height': height, 'width': width}
    for key, value in (('image_mean', preprocessing['mean']), ('image_std', preprocessing['std'])):
        if len(value) != kwargs['in_chans']:
            _refuse('write_hf_vit', f"preprocessing {key}={value!r} is not {kwargs['in_chans']} values (in_chans)")
        processor[key] = [float(v) for v in value]
    return processor


def write_hf_vit(directory, pretrained: Pretrained, *, overwrite: bool = False) -> Path:
    """Write `pretrained` as a transformers ViT directory (config.json, model.safetensors, preprocessor_config.json
    where the preprocessing is known): ViTForImageClassification where it has a head (or none and no pre-logits),
    ViTModel where it returns every token (global_pool='') or the pre-logits (its pooler; load it with
    `ViTModel.from_pretrained(d)`, and without a pooler with `add_pooling_layer=False`).

    Everything is checked before anything is written; the files go to a temporary directory beside `directory`,
    renamed into place at the end, so a reader sees the old directory or the new one. An existing `directory` is
    refused unless `overwrite`, which replaces it whole. Returns the directory."""
    directory = Path(directory)
    architecture = _hf_architecture(pretrained.kwargs)
    kwargs = {**TIMM_DEFAULTS, **pretrained.kwargs}
    _check_keys('write_hf_vit state_dict', pretrained.state_dict, _timm_shapes(kwargs))
    labels = pretrained.preprocessing.get('label_names')
    if labels is not None and (len(labels) != kwargs['num_classes'] or architecture != CLASSIFIER):
        _refuse('write_hf_vit', f"{len(labels)} label_names for num_classes={kwargs['num_classes']}")
    processor = _hf_preprocessor(pretrained.preprocessing, kwargs)

    prefix = 'vit.' if architecture == CLASSIFIER else ''
    tensors = {}
    for timm_key, value in pretrained.state_dict.items():
        names = _hf_names(timm_key, prefix)
        # qkv's rows are query, key, value in order; copies, so each file tensor owns its bytes
        for name, part in zip(names, np.split(np.asarray(value), len(names), axis=0)):
            tensors[name] = contiguous(part.copy())
    config = _hf_config(kwargs, architecture, list(labels) if labels else None, _dtype_name(tensors))

    with replaced_directory(directory, overwrite) as temporary:
        # the metadata transformers' loader checks for (save_pretrained writes the same)
        save_file(tensors, str(temporary / 'model.safetensors'), metadata={'format': 'pt'})
        (temporary / 'config.json').write_text(json.dumps(config, indent=2, sort_keys=True) + '\n')
        if processor is not None:
            (temporary / 'preprocessor_config.json').write_text(json.dumps(processor, indent=2, sort_keys=True) + '\n')
    return directory


# SigLIP vision towers (read only)

# SiglipVisionConfig's defaults (transformers 4.x and 5.x), for keys a config leaves out
SIGLIP_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       num_channels=3, image_size=224, patch_size=16, hidden_act='gelu_pytorch_tanh',
                       layer_norm_eps=1e-6, vision_use_head=True)
# the SigLIP vision tower's config: its own directory's, or a two-tower SiglipModel's `vision_config`
SIGLIP_MODEL_TYPES = ('siglip_vision_model', 'siglip')
# where a checkpoint keeps the tower, as vit-pytorch's SigLIPVAT.load_siglip looks: a pi0 / PaliGemma expert's
# (openpi, lerobot), a two-tower SiglipModel's (and transformers 4's SiglipVisionModel's); else at the top (what
# transformers 5's SiglipVisionModel.save_pretrained writes)
SIGLIP_PREFIXES = ('paligemma_with_expert.paligemma.model.vision_tower.vision_model.', 'vision_model.')
SIGLIP_BLOCK_NAMES = {'norm1': 'layer_norm1', 'attn.proj': 'self_attn.out_proj', 'norm2': 'layer_norm2',
                      'mlp.fc1': 'mlp.fc1', 'mlp.fc2': 'mlp.fc2'}
SIGLIP_POOL_NAMES = {'attn_pool.proj': 'head.attention.out_proj', 'attn_pool.norm': 'head.layernorm',
                     'attn_pool.mlp.fc1': 'head.mlp.fc1', 'attn_pool.mlp.fc2': 'head.mlp.fc2'}
# what the weights cannot say, for a file without a SigLIP config (num_heads has no default: it must be given)
SIGLIP_HINTS = ('num_heads', 'norm_eps', 'act_layer')


def _siglip_config(path: Path) -> dict | None:
    """The vision tower's config keys (with SiglipVisionConfig's defaults) from a config.json of a SigLIP vision
    model or two-tower SiglipModel; None for any other config.json."""
    config = _json(path)
    if config.get('model_type') not in SIGLIP_MODEL_TYPES:
        return None
    if config['model_type'] == 'siglip':
        config = config.get('vision_config') or {}
        if not isinstance(config, dict):
            _refuse(path, f'vision_config={config!r} must be a JSON object')
    return {key: config.get(key, default) for key, default in SIGLIP_DEFAULTS.items()}


def is_hf_siglip_dir(directory) -> bool:
    """Whether `directory` holds a transformers SigLIP vision tower: a config.json of model_type
    'siglip_vision_model' (SiglipVisionModel) or 'siglip' (SiglipModel, whose image tower is read)."""
    path = Path(directory) / 'config.json'
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(config, dict) and config.get('model_type') in SIGLIP_MODEL_TYPES


def _siglip_prefix(keys) -> str:
    """vit-pytorch's rule: the pi0 / PaliGemma prefix where any key has it, else 'vision_model.' where any key
    starts so, else none."""
    for prefix in SIGLIP_PREFIXES:
        if any(key.startswith(prefix.rstrip('.')) for key in keys):
            return prefix
    return ''


def _siglip_tensors(weights: Path) -> tuple[str, dict[str, np.ndarray]]:
    """(prefix, the tensors under it with the prefix removed) of a .safetensors file, a sharded index or a
    pytorch_model.bin. Only the tower's tensors are read from safetensors files (a pi0 checkpoint's language model
    and action expert, a SiglipModel's text tower stay on disk); keys outside the prefix are another model's and are
    left alone, every key under it must be the tower's."""
    if weights.suffix in ('.bin', '.pt', '.pth'):
        tensors = _torch_state_dict(weights)
        prefix = _siglip_prefix(tensors)
        return prefix, {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}
    if weights.name.endswith('.index.json'):
        weight_map = _json(weights).get('weight_map')
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            _refuse(weights, 'no weight_map of key -> shard file')
        placed = weight_map
    else:
        placed = None
    prefix = _siglip_prefix(_safetensors_keys(weights) if placed is None else placed)
    shards = {weights.name: None} if placed is None else {}
    if placed is not None:
        for key, shard in placed.items():
            if key.startswith(prefix):
                shards.setdefault(shard, []).append(key)
    tensors = {}
    for shard, wanted in shards.items():
        path = weights.parent / shard
        if path.parent != weights.parent or not path.is_file():
            _refuse(weights, f'shard {shard!r} is not a file beside it')
        try:
            with safe_open(str(path), framework='np') as file:
                keys = [key for key in file.keys() if key.startswith(prefix)]
                if wanted is not None and set(keys) != set(wanted):
                    _refuse(path, f'holds {sorted(set(keys) ^ set(wanted))[:5]} other than {weights.name} places '
                                  'there')
                tensors.update({key[len(prefix):]: file.get_tensor(key) for key in keys})
        except (SafetensorError, OSError, ValueError, TypeError) as error:
            _refuse(path, f'not a readable safetensors file ({type(error).__name__}: {error})')
    return prefix, tensors


def _safetensors_keys(path: Path) -> list[str]:
    try:
        with safe_open(str(path), framework='np') as file:
            return list(file.keys())
    except (SafetensorError, OSError, ValueError, TypeError) as error:
        _refuse(path, f'not a readable safetensors file ({type(error).__name__}: {error})')


def is_hf_siglip_weights(path) -> bool:
    """Whether `path` is a .safetensors file (or a directory holding model.safetensors) with transformers' SigLIP
    tower at the top or under vit-pytorch's prefixes: what vit-pytorch's load_siglip reads, config.json or not."""
    path = Path(path)
    weights = path / 'model.safetensors' if path.is_dir() else path
    if weights.suffix != '.safetensors' or not weights.is_file():
        return False
    try:
        with safe_open(str(weights), framework='np') as file:
            keys = list(file.keys())
    except (SafetensorError, OSError, ValueError, TypeError):
        return False
    return f'{_siglip_prefix(keys)}embeddings.patch_embedding.weight' in keys


def _siglip_weights_file(directory: Path) -> Path:
    for name in ('model.safetensors', 'model.safetensors.index.json', 'pytorch_model.bin'):
        if (directory / name).is_file():
            return directory / name
    _refuse(directory, 'no model.safetensors, model.safetensors.index.json or pytorch_model.bin')


def _siglip_hf_shapes(kwargs: dict, head: bool) -> dict[str, tuple[int, ...]]:
    """HF's key -> shape of a SigLIP vision tower (under its prefix), for the keywords `kwargs`."""
    dim, hidden, patch = kwargs['embed_dim'], int(kwargs['embed_dim'] * kwargs['mlp_ratio']), kwargs['patch_size']
    rows = (kwargs['img_size'][0] // patch[0]) * (kwargs['img_size'][1] // patch[1])
    shapes = {'embeddings.patch_embedding.weight': (dim, kwargs['in_chans'], *patch),
              'embeddings.patch_embedding.bias': (dim,), 'embeddings.position_embedding.weight': (rows, dim),
              'post_layernorm.weight': (dim,), 'post_layernorm.bias': (dim,)}
    # (out, in) of each Linear, (dim,) of each LayerNorm
    per_layer = {'layer_norm1': (dim,), 'layer_norm2': (dim,), 'self_attn.q_proj': (dim, dim),
                 'self_attn.k_proj': (dim, dim), 'self_attn.v_proj': (dim, dim), 'self_attn.out_proj': (dim, dim),
                 'mlp.fc1': (hidden, dim), 'mlp.fc2': (dim, hidden)}
    for i in range(kwargs['depth']):
        for module, weight in per_layer.items():
            shapes[f'encoder.layers.{i}.{module}.weight'] = weight
            shapes[f'encoder.layers.{i}.{module}.bias'] = weight[:1]
    if head:
        shapes.update({'head.probe': (1, 1, dim), 'head.attention.in_proj_weight': (3 * dim, dim),
                       'head.attention.in_proj_bias': (3 * dim,), 'head.attention.out_proj.weight': (dim, dim),
                       'head.attention.out_proj.bias': (dim,), 'head.layernorm.weight': (dim,),
                       'head.layernorm.bias': (dim,), 'head.mlp.fc1.weight': (hidden, dim),
                       'head.mlp.fc1.bias': (hidden,), 'head.mlp.fc2.weight': (dim, hidden),
                       'head.mlp.fc2.bias': (dim,)})
    return shapes


def _siglip_kwargs_from_config(path: Path, config: dict) -> tuple[dict, bool]:
    hidden = _integer(path, 'hidden_size', config['hidden_size'])
    heads = _integer(path, 'num_attention_heads', config['num_attention_heads'])
    if hidden % heads:
        _refuse(path, f'hidden_size={hidden} is not divisible by num_attention_heads={heads}')
    act = config['hidden_act']
    if not isinstance(act, str) or act not in HF_ACTIVATIONS:
        _refuse(path, f'hidden_act={act!r} is none of the GELUs VisionTransformer has ({sorted(HF_ACTIVATIONS)})')
    eps = config['layer_norm_eps']
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (math.isfinite(eps) and eps > 0):
        _refuse(path, f'layer_norm_eps={eps!r} must be a positive number')
    if not isinstance(config['vision_use_head'], bool):
        _refuse(path, f"vision_use_head={config['vision_use_head']!r} must be true or false")
    image, patch = (_integer(path, key, config[key]) for key in ('image_size', 'patch_size'))
    if image < patch:
        _refuse(path, f'image_size={image} is smaller than patch_size={patch}')
    intermediate = _integer(path, 'intermediate_size', config['intermediate_size'])
    # transformers' Conv drops what is left of an image after whole patches (so400m-patch14-384 covers 378 pixels)
    kwargs = dict(img_size=(image // patch * patch,) * 2, patch_size=(patch, patch),
                  in_chans=_integer(path, 'num_channels', config['num_channels']), embed_dim=hidden,
                  depth=_integer(path, 'num_hidden_layers', config['num_hidden_layers']), num_heads=heads,
                  mlp_ratio=mlp_ratio_for(hidden, intermediate), act_layer=HF_ACTIVATIONS[act], norm_eps=eps)
    return kwargs, config['vision_use_head']


def _siglip_kwargs_from_shapes(where, tensors: dict, hints: dict) -> tuple[dict, bool]:
    """The keywords of a tower with no config: sizes from the shapes, num_heads (required), norm_eps and act_layer
    (SiglipVisionConfig's 1e-6 and tanh GELU by default) from `hints`."""
    unknown = sorted(set(hints) - set(SIGLIP_HINTS))
    if unknown:
        _refuse(where, f'hints {unknown}: a SigLIP file without config.json takes only {list(SIGLIP_HINTS)}; the '
                       'rest is read off its weights')
    if 'num_heads' not in hints:
        _refuse(where, 'no SigLIP config.json: pass num_heads= (the weights do not say it)')
    patch_weight = tensors.get('embeddings.patch_embedding.weight')
    table = tensors.get('embeddings.position_embedding.weight')
    fc1 = tensors.get('encoder.layers.0.mlp.fc1.weight')
    for key, value, ndim in (('embeddings.patch_embedding.weight', patch_weight, 4),
                             ('embeddings.position_embedding.weight', table, 2),
                             ('encoder.layers.0.mlp.fc1.weight', fc1, 2)):
        if value is None or np.ndim(value) != ndim:
            _refuse(where, f'{key!r} is ' + ('missing' if value is None else describe(value)) +
                           f': a SigLIP vision tower has a {ndim}-dimensional one')
    dim, channels, patch_height, patch_width = patch_weight.shape
    grid = math.isqrt(table.shape[0])
    if patch_height != patch_width or grid * grid != table.shape[0] or not grid:
        _refuse(where, f'patch embedding {describe(patch_weight)} and position table {describe(table)}: SigLIP has '
                       'square patches on a square grid')
    depth = len({key.split('.')[2] for key in tensors if key.startswith('encoder.layers.')})
    heads = hints['num_heads']
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1 or dim % heads:
        _refuse(where, f'num_heads={heads!r} must be a positive integer dividing the width {dim}')
    act = hints.get('act_layer', 'gelu_tanh')
    if act not in ACT_NAMES:
        _refuse(where, f'act_layer={act!r} must be one of {sorted(ACT_NAMES)}')
    eps = hints.get('norm_eps', SIGLIP_DEFAULTS['layer_norm_eps'])
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (math.isfinite(eps) and eps > 0):
        _refuse(where, f'norm_eps={eps!r} must be a positive number')
    kwargs = dict(img_size=(grid * patch_height,) * 2, patch_size=(patch_height, patch_width), in_chans=channels,
                  embed_dim=dim, depth=depth, num_heads=heads, mlp_ratio=mlp_ratio_for(dim, fc1.shape[0]),
                  act_layer=act, norm_eps=eps)
    return kwargs, any(key.startswith('head.') for key in tensors)


def read_hf_siglip(source, **hints) -> Pretrained:
    """A transformers SigLIP vision tower as a Pretrained: VisionTransformer keywords (no class token, its MAP head as
    global_pool='map' where the checkpoint has one, else global_pool='', no classifier) and timm's keys.

    `source`: a directory with a SigLIP config.json (SiglipVisionModel, or SiglipModel whose image tower is read) and
    its weights; or, without such a config, a `.safetensors` file, an index of shards, a `pytorch_model.bin` or a
    directory holding one (vit-pytorch's `load_siglip` folder, a pi0 checkpoint), whose sizes are read off the
    weights and whose `num_heads` (and `norm_eps`, `act_layer` where not SiglipVisionConfig's 1e-6 and tanh GELU)
    the hints give. The tower sits under vit-pytorch's prefixes (`SIGLIP_PREFIXES`) or at the top; keys outside
    the prefix are other models' and are not read, every key under it must be the tower's (all offenders named at
    once). Hints on a directory with a config must agree with it.

    The map: `embeddings.patch_embedding` -> `patch_embed.proj`, `embeddings.position_embedding.weight` (rows, dim)
    -> `pos_embed` (1, rows, dim), `encoder.layers.N.self_attn.{q,k,v}_proj` -> `blocks.N.attn.qkv` (rows
    concatenated), `out_proj` -> `attn.proj`, `layer_norm1` / `layer_norm2` -> `norm1` / `norm2`, `mlp.fc1` / `fc2`
    -> `mlp.fc1` / `fc2`, `post_layernorm` -> `norm`; the head's `probe` -> `attn_pool.latent`, its
    `attention.in_proj_weight` / `bias` rows split into `attn_pool.q` (the first third) and `attn_pool.kv`,
    `attention.out_proj` -> `attn_pool.proj`, `layernorm` -> `attn_pool.norm`, `mlp` -> `attn_pool.mlp`. The
    VisionTransformer's tokens are SiglipVisionModel's `last_hidden_state`, its MAP output the `pooler_output`.
    An `image_size` that is no multiple of the patch is read as the whole patches it covers (transformers' Conv drops
    the rest: so400m-patch14-384 is a 378-pixel model); the preprocessing keeps the processor's size."""
    path = Path(source)
    config = None
    if path.is_dir():
        config_path = path / 'config.json'
        config = _siglip_config(config_path) if config_path.is_file() else None
        weights = _siglip_weights_file(path)
    elif path.is_file():
        weights = path
    else:
        _refuse(path, 'no SigLIP checkpoint file or directory here')
    prefix, tensors = _siglip_tensors(weights)
    where = f'{weights}' + (f' (under {prefix!r})' if prefix else '')
    if config is not None:
        kwargs, head = _siglip_kwargs_from_config(path / 'config.json', config)
        for key, value in hints.items():
            if key not in kwargs or not same_keyword(key, kwargs[key], value):
                _refuse(path / 'config.json', f'holds {key}={kwargs.get(key)!r}, not {value!r}')
    else:
        kwargs, head = _siglip_kwargs_from_shapes(where, tensors, hints)
    kwargs.update(num_classes=0, global_pool='map' if head else '', class_token=False, qkv_bias=True)

    def explain(key):
        if key.startswith('head.') and not head:
            return ': a pooling head, but the config says vision_use_head=false'
        return ''

    _check_keys(where, tensors, _siglip_hf_shapes(kwargs, head), explain)
    dim = kwargs['embed_dim']
    state_dict = {'patch_embed.proj.weight': tensors['embeddings.patch_embedding.weight'],
                  'patch_embed.proj.bias': tensors['embeddings.patch_embedding.bias'],
                  'pos_embed': tensors['embeddings.position_embedding.weight'][None],
                  'norm.weight': tensors['post_layernorm.weight'], 'norm.bias': tensors['post_layernorm.bias']}
    for i in range(kwargs['depth']):
        layer = f'encoder.layers.{i}.'
        for leaf in ('weight', 'bias'):
            parts = [tensors[f'{layer}self_attn.{name}_proj.{leaf}'] for name in 'qkv']
            if len({part.dtype for part in parts}) > 1:
                _refuse(where, f'q / k / v projections of layer {i} differ in dtype: '
                               f'{[str(part.dtype) for part in parts]}')
            state_dict[f'blocks.{i}.attn.qkv.{leaf}'] = np.concatenate(parts, axis=0)
            for timm_name, hf_name in SIGLIP_BLOCK_NAMES.items():
                state_dict[f'blocks.{i}.{timm_name}.{leaf}'] = tensors[f'{layer}{hf_name}.{leaf}']
    if head:
        state_dict['attn_pool.latent'] = tensors['head.probe']
        for leaf, hf_leaf in (('weight', 'in_proj_weight'), ('bias', 'in_proj_bias')):
            in_proj = tensors[f'head.attention.{hf_leaf}']
            # copies: each array owns its bytes, as the file's own tensors do
            state_dict[f'attn_pool.q.{leaf}'] = in_proj[:dim].copy()
            state_dict[f'attn_pool.kv.{leaf}'] = in_proj[dim:].copy()
            for timm_name, hf_name in SIGLIP_POOL_NAMES.items():
                state_dict[f'{timm_name}.{leaf}'] = tensors[f'{hf_name}.{leaf}']

    preprocessing = {}
    processor = path / 'preprocessor_config.json' if path.is_dir() else None
    if config is not None and processor is not None and processor.is_file():
        size = config['image_size']
        preprocessing.update(_read_preprocessing(processor, {**kwargs, 'img_size': (size, size)}))
    return Pretrained(kwargs=kwargs, state_dict=state_dict, preprocessing=preprocessing,
                      source=f'{where} (transformers SigLIP vision tower)')
