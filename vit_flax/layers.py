"""Shared building blocks. Every numerical convention that decides parity with vit-pytorch lives here once.

Parameter names follow Flax (`kernel`, `scale`, `bias`, `embedding`); the converters map them to torch's
(`weight`, `bias`) with the leaf rules in `converters/rules.py`. Initialisers follow torch's defaults so
that training from scratch behaves like vit-pytorch.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import numbers
import re
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange

# helpers, as in vit-pytorch


def exists(val):
    return val is not None


def default(val, d):
    return val if exists(val) else d


def pair(t):
    return t if isinstance(t, tuple) else (t, t)


# what every registered model checks first: its inputs' dtype (at the top of `__call__`) and its numeric keywords
# (in `__post_init__`, so a bad value fails at construction, before any JAX computation)


def check_floating_input(module: nn.Module, argument: str, value, what: str = 'images'):
    """Refuse an input that is not floating point (ints, uint8 pixels, bools), naming the model, the argument and the
    dtype. Computing on integers would go wrong silently (LayerNorm casts its result back to the input's dtype);
    vit-pytorch's layers refuse integer inputs too. A list or tuple (NaViT's lists of images) is checked item by
    item. float16, bfloat16, float32 and float64 pass unchanged."""
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            check_floating_input(module, f'{argument}[{index}]', item, what)
        return
    dtype = value.dtype if hasattr(value, 'dtype') else np.result_type(value)
    if not jnp.issubdtype(dtype, jnp.floating):
        example = ' (e.g. pixels / 255, normalised)' if what in ('images', 'videos') else ''
        raise TypeError(
            f"{type(module).__name__}: {argument} has dtype {dtype}; pass floating-point {what}{example}: vit-pytorch's "
            'layers (Linear, Conv2d, LayerNorm) refuse integer inputs too'
        )



def check_integer_input(module: nn.Module, argument: str, value):
    """Refuse ids (task ids, advantage bins) that are not integers, as torch's indexing and nn.Embedding do, naming
    the model, the argument and the dtype."""
    dtype = value.dtype if hasattr(value, 'dtype') else np.result_type(value)
    if not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f'{type(module).__name__}: {argument} has dtype {dtype}; pass integer ids')

def _integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class KeywordRule:
    """What the values of a numeric keyword must be: `description` for the message, `accepts` for one value."""

    description: str
    accepts: Callable[[object], bool]


POSITIVE_INTEGER = KeywordRule('a positive integer', lambda v: _integer(v) and v >= 1)
NON_NEGATIVE_INTEGER = KeywordRule('a non-negative integer', lambda v: _integer(v) and v >= 0)
POSITIVE_NUMBER = KeywordRule('a positive number', lambda v: _real(v) and v > 0)
NON_NEGATIVE_NUMBER = KeywordRule('a non-negative number', lambda v: _real(v) and v >= 0)
DROPOUT_PROBABILITY = KeywordRule('a probability in [0, 1)', lambda v: _real(v) and 0 <= v < 1)
PROBABILITY = KeywordRule('a probability in [0, 1]', lambda v: _real(v) and 0 <= v <= 1)
OPEN_FRACTION = KeywordRule('a fraction in (0, 1)', lambda v: _real(v) and 0 < v < 1)

# one rule per keyword name, for every registered model: at most what vit-pytorch accepts (the parity configurations
# and random-configuration sweeps include depth, num_classes, mlp_dim and padding 0). A model checks what is
# particular to it itself: divisibility, tuple lengths, odd kernels, a keyword that matters only with layers
# (XCiT's local_patch_kernel_size) ...
KEYWORD_RULES: dict[str, KeywordRule] = {
    **dict.fromkeys((
        'image_size', 'img_size', 'image_patch_size', 'patch_size', 'frames', 'num_frames', 'channels',
        'n_input_channels', 'dim', 'dims', 'emb_dim', 'embedding_dim', 'heads', 'num_heads', 'dim_head', 'dim_key',
        'dim_value', 'dim_conv_stem', 'mlp_mult', 'ff_expansion_factor', 'kernel_size', 'emb_kernel', 'proj_kernel',
        'peg_kernel_size', 'pooling_kernel_size', 'stride', 'emb_stride', 'kv_proj_stride',
        'pooling_stride', 'cross_embed_kernel_sizes', 'cross_embed_strides', 'window_size', 'local_window_size',
        'global_window_size', 'local_patch_size', 'global_k', 'reduction_factor', 'stages', 'num_hierarchies',
        'max_tokens_per_depth', 't2t_layers', 'projection_hidden_size', 'projection_layers', 'num_classes_K',
        'output_channel_bits', 'in_chans', 'embed_dim', 'representation_size',
        'freq_patch_size', 'num_jumbo_cls', 'jumbo_cls_k', 'ndim', 'input_shape',
    ), POSITIVE_INTEGER),
    **dict.fromkeys((
        'depth', 'depths', 'cls_depth', 'spatial_depth', 'temporal_depth', 'num_layers', 'n_conv_layers',
        'block_repeats', 'num_classes', 'num_distill_classes', 'num_memories_per_layer', 'num_parallel_branches',
        'num_tokens_out', 'patch_merge_num_tokens', 'padding', 'pooling_padding', 'mlp_dim', 'reg_tokens',
        'specialize_qkv_depth',
    ), NON_NEGATIVE_INTEGER),
    **dict.fromkeys(('temperature', 'student_temp', 'teacher_temp', 'max_pixel_val', 'expansion', 'ff_mult',
                     'mbconv_expansion_rate', 'norm_eps', 'jumbo_ff_mult'), POSITIVE_NUMBER),
    **dict.fromkeys(('mlp_ratio', 'mbconv_shrinkage_rate', 'init_values'), NON_NEGATIVE_NUMBER),
    'patch_dropout': DROPOUT_PROBABILITY,  # vit-pytorch's PatchDropout asserts 0 <= prob < 1
    'num_register_tokens': NON_NEGATIVE_INTEGER,  # simple_vit_with_register_tokens
    'num_registers': NON_NEGATIVE_INTEGER,  # vit_5
    **dict.fromkeys(('highres_patch_size', 'patch_conv_kernel_size'), POSITIVE_INTEGER),  # look_vit
    **dict.fromkeys(('mlp_factor', 'highres_mlp_factor'), POSITIVE_NUMBER),  # look_vit
    'seq_len': POSITIVE_INTEGER,  # vit_1d, simple_vit_1d
    'max_frames': POSITIVE_INTEGER,  # na_vit_nested_tensor_3d
    'num_residual_streams': POSITIVE_INTEGER,  # simple_vit_with_hyper_connections
    'ffn_heads': POSITIVE_INTEGER,  # attn_residual_with_dca_simple_vit
    'dim_mask': POSITIVE_INTEGER,  # simple_vit_with_sparse_gating
    'max_dist': POSITIVE_INTEGER,  # simple_vit_with_relative_proj_pos_bias
    'num_slots': POSITIVE_INTEGER,  # wwt
    'num_register_slots': NON_NEGATIVE_INTEGER,  # wwt
    # vat, vaat, vat_siglip (None where optional: no tasks, no extra token, one view)
    **dict.fromkeys(('dim_action', 'num_tasks', 'dim_extra_token', 'action_chunk_len', 'time_seq_len'),
                    POSITIVE_INTEGER),
    # 0 and 1 view(s) add no view embedding, as in vit-pytorch
    **dict.fromkeys(('num_views', 'num_image_views', 'num_audio_views', 'num_advantage_bins'), NON_NEGATIVE_INTEGER),
    'num_distance_basis': NON_NEGATIVE_INTEGER,  # simple_vit_with_relative_proj_pos_bias
    **dict.fromkeys(('dropout', 'emb_dropout', 'attn_dropout', 'ff_dropout', 'layer_dropout', 'dropout_rate',
                     'attention_dropout', 'stochastic_depth_rate', 'token_dropout_prob'), DROPOUT_PROBABILITY),
    **dict.fromkeys(('mask_prob', 'replace_prob', 'random_patch_prob', 'alpha', 'moving_average_decay',
                     'center_moving_average_decay'), PROBABILITY),
    'masking_ratio': OPEN_FRACTION,
}

# a stage's or a branch's keyword takes its base name's rule: s2_heads, sm_enc_heads, cross_attn_heads and
# decoder_heads are heads; frame_stride is stride; iwsa_dim_key is dim_key; siglip_dim is dim; self_attn_heads is heads
_KEYWORD_PREFIX = re.compile(r'^(s[1-4]|sm_enc|lg_enc|sm|lg|cross_attn|decoder|frame|iwsa|ssa|siglip|self_attn)_')


def keyword_rule(name: str) -> KeywordRule | None:
    """The rule of a keyword, by its name (None: the keyword has none)."""
    return KEYWORD_RULES.get(name) or KEYWORD_RULES.get(_KEYWORD_PREFIX.sub('', name))


def _entries(value):
    """The values a keyword holds: itself, or each entry of (nested) tuples and lists."""
    if isinstance(value, (list, tuple)):
        for item in value:
            yield from _entries(item)
    else:
        yield value


def check_keywords(module: nn.Module):
    """Check a model's numeric keywords by name (KEYWORD_RULES) at construction: a ValueError names the class, the
    keyword and its value, e.g. "ViT: heads=0 must be a positive integer". Tuples and lists are checked entry by
    entry; None (a default) and callables (NaViT's token_dropout_prob) are not numbers to check."""
    for field in dataclasses.fields(module):
        rule = keyword_rule(field.name)
        if rule is None:
            continue
        value = getattr(module, field.name)
        for entry in _entries(value):
            if entry is None or callable(entry) or rule.accepts(entry):
                continue
            if isinstance(value, (list, tuple)):
                raise ValueError(f'{type(module).__name__}: {field.name}={value!r} holds {entry!r}; each entry must be '
                                 f'{rule.description}')
            raise ValueError(f'{type(module).__name__}: {field.name}={value!r} must be {rule.description}')


# initialisers


def takes_train(module: nn.Module) -> bool:
    """Whether a user-supplied module's `__call__` takes a `train=` keyword (or `**kwargs`)."""
    parameters = inspect.signature(module.__call__).parameters.values()
    return any(p.name == 'train' or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def call_plugged_in(module: nn.Module, x, train: bool):
    """Call a user-supplied module (vit-pytorch's `transformer=` arguments) with `train=` when it takes one.

    A plain callable such as a Dense stack need not know about training; one with dropout does.
    """
    return module(x, train=train) if takes_train(module) else module(x)


def group_by_key_prefix_and_remove_prefix(prefix: str, d: dict) -> tuple[dict, dict]:
    """vit-pytorch's helper for per-stage keywords (cvt, twins_svt): ({'emb_dim': ..} from {'s1_emb_dim': ..}
    for the keys that start with `prefix`, the other keys)."""
    with_prefix = {key[len(prefix):]: value for key, value in d.items() if key.startswith(prefix)}
    return with_prefix, {key: value for key, value in d.items() if not key.startswith(prefix)}


def check_square_image_config(model: str, image_size, patch_size):
    """The checks of models that take one int for the image and patch sides (CaiT, XCiT; their signs are
    check_keywords')."""
    for name, value in (('image_size', image_size), ('patch_size', patch_size)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f'{model} takes a single int {name} (square images and patches), got {name}={value!r}')
    if image_size % patch_size:
        raise ValueError(
            f'Image dimensions must be divisible by the patch size: image_size={image_size}, patch_size={patch_size}'
        )


def torch_uniform(fan_in: int):
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): torch's default for Linear and Conv weights and biases.

    (kaiming_uniform with a=sqrt(5) reduces to this bound.)
    """
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


randn = nn.initializers.normal(stddev=1.0)  # torch.randn, used by nn.Parameter(torch.randn(...))
small_randn = nn.initializers.normal(stddev=1e-2)  # torch.randn(...) * 1e-2: register tokens, task, time embeddings


def trunc_normal(std: float, a: float = -2.0, b: float = 2.0):
    """torch.nn.init.trunc_normal_: N(0, std) truncated at the absolute bounds [a, b] (not in units of std)."""

    def init(key, shape, dtype=jnp.float32):
        return (jax.random.truncated_normal(key, a / std, b / std, shape, jnp.float32) * std).astype(dtype)

    return init


def torch_linspace(start: float, end: float, steps: int) -> np.ndarray:
    """torch.linspace in float32, bit for bit as torch's CPU kernel computes it (for a table or buffer that must equal
    torch's, such as rvt's rotary scales): `start + step * i` for the first half, `end - step * (steps - 1 - i)` for
    the second, each a fused multiply-add (one rounding)."""
    start, end = np.float32(start), np.float32(end)
    if steps == 1:
        return np.array([start], np.float32)
    step = np.float32((end - start) / np.float32(max(steps - 1, 1)))
    i = np.arange(steps)
    # float32 products are exact in float64, so one float64 add rounded to float32 is the fused multiply-add
    first = (np.float64(start) + np.float64(step) * i).astype(np.float32)
    second = (np.float64(end) - np.float64(step) * (steps - 1 - i)).astype(np.float32)
    return np.where(i < steps // 2, first, second).astype(np.float32)


def kaiming_normal(key, shape, dtype=jnp.float32):
    """torch.nn.init.kaiming_normal_ defaults (fan in, ReLU gain sqrt(2)) for a (..., in, out) kernel."""
    fan_in = math.prod(shape[:-1])
    return jax.random.normal(key, shape, dtype) * math.sqrt(2.0 / fan_in)

# numerics

def gelu(x):
    """torch's nn.GELU(): the exact form x / 2 * (1 + erf(x / sqrt(2))), as torch's CPU kernel writes it. (Flax's
    default is the tanh approximation; jax.nn.gelu(approximate=False) goes through erfc, which XLA's CPU code
    evaluates about 2.5x slower than erf, forward, and 1.5x backward.)"""
    return 0.5 * x * (1 + jax.lax.erf(x * 0.7071067811865476))


def gelu_tanh(x):
    """torch's nn.GELU(approximate='tanh'): x / 2 * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 x^3))), which is
    jax.nn.gelu's default formula."""
    return jax.nn.gelu(x, approximate=True)


class LayerNorm(nn.Module):
    """torch.nn.LayerNorm over the last axis: eps 1e-5 and a two-pass variance, parameters `scale` and `bias`.

    Flax's fast variance (E[x^2] - E[x]^2) loses digits on inputs with a large mean, such as raw-pixel patches, so
    the variance is the mean of the squared deviations, as torch computes it. Written out rather than
    `nn.LayerNorm(use_fast_variance=False)`, which computes the same numbers: XLA's CPU code for Flax's version
    (its float32 promotion, masked means and clipping) makes a ViT-S/16 AdamW step (batch 8, 2 CPU cores) about a
    third slower and its compile nearly twice as long (5.0 s against 3.8 s, compile 13 s against 7 s, on
    2026-11-22; benchmarks/README.md). Statistics are float32 at least; the result has the input's dtype.
    """

    epsilon: float = 1e-5
    use_bias: bool = True
    use_scale: bool = True

    @nn.compact
    def __call__(self, x):
        features = x.shape[-1]
        y = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        centered = y - jnp.mean(y, axis=-1, keepdims=True)
        variance = jnp.mean(centered * centered, axis=-1, keepdims=True)
        y = centered * jax.lax.rsqrt(variance + self.epsilon)
        if self.use_scale:
            y = y * self.param('scale', nn.initializers.ones, (features,))
        if self.use_bias:
            y = y + self.param('bias', nn.initializers.zeros, (features,))
        return y.astype(x.dtype)


def l2_normalize(x, axis: int = -1, eps: float = 1e-12):
    """torch.nn.functional.normalize: `x / max(|x|, eps)` along `axis`."""
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
    return x / jnp.maximum(norm, eps)


class RMSNorm(nn.Module):
    """vit-pytorch's RMSNorms: `normalize(x) * sqrt(dim) * gamma`, the learned scale `param_name` of shape
    (heads, 1, dim) for a per-head q/k norm, (dim,) without heads, filled with `gamma_init` (ones in na_vit and
    vit_5; 1 / sqrt(dim) in simple_vit_with_qk_norm, whose product starts at 1)."""

    dim: int
    heads: int | None = None
    gamma_init: float = 1.0
    param_name: str = 'gamma'

    @nn.compact
    def __call__(self, x):
        shape = (self.dim,) if self.heads is None else (self.heads, 1, self.dim)
        gamma = self.param(self.param_name, nn.initializers.constant(self.gamma_init), shape)
        return l2_normalize(x) * (self.dim**0.5) * gamma.astype(x.dtype)


class TorchRMSNorm(nn.Module):
    """torch.nn.RMSNorm over the last axis: `x * rsqrt(mean(x^2) + eps) * weight` (attn_residual_with_dca_simple_vit,
    levjepa), the scale `scale` (torch's `weight`) starting at ones. Not vit-pytorch's own RMSNorms (`RMSNorm`
    above), which divide by max(|x|, 1e-12) outside the root. `epsilon` None is torch's default, the machine epsilon
    of the input's dtype. Statistics are float32 at least; the result has the input's dtype."""

    epsilon: float | None = None
    use_scale: bool = True

    @nn.compact
    def __call__(self, x):
        y = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        epsilon = jnp.finfo(x.dtype).eps if self.epsilon is None else self.epsilon
        y = y * jax.lax.rsqrt(jnp.mean(y * y, axis=-1, keepdims=True) + epsilon)
        if self.use_scale:
            y = y * self.param('scale', nn.initializers.ones, (x.shape[-1],))
        return y.astype(x.dtype)


def matmul(x, kernel):
    """`x @ kernel`: x (..., in), kernel (in, out); half-precision products as `einsum`'s."""
    return einsum('...i,io->...o', x, kernel)


def einsum(spec: str, a, b):
    """`jnp.einsum(spec, a, b)` of two operands.

    On CPU, half-precision (bfloat16, float16) products multiply in half precision and accumulate in float32, each
    rounded once to the input's dtype, forward and in both backward products (one per operand). XLA's CPU code runs
    those 2-3x faster than products with a half-precision result, which it computes through float32 copies of the
    operands (benchmarks/README.md, "bfloat16 on CPU"). Differentiating a float32-accumulating product would multiply
    the backward pass in float32, so they take a custom VJP, and forward-mode differentiation (jax.jvp) is not
    defined through them. That needs a spec whose output names every index that is not summed over, no index twice
    in one operand, `...` in the output if in an operand, and the same sizes under `...` where both operands have it;
    other specs, other dtypes and other platforms (whose half-precision kernels accumulate in float32 anyway) take
    `jnp.einsum`.
    """
    if a.dtype not in (jnp.bfloat16, jnp.float16) or b.dtype != a.dtype or not _plain_bilinear(spec, a, b):
        return jnp.einsum(spec, a, b)
    return jax.lax.platform_dependent(a, b, cpu=functools.partial(_float32_accumulated_einsum, spec),
                                      default=functools.partial(jnp.einsum, spec))


def _plain_bilinear(spec: str, a, b) -> bool:
    """Whether the gradients of `spec` are the einsums of its operands' specs from the output's (see `einsum`)."""
    inputs, _, output = spec.replace(' ', '').partition('->')
    operands = inputs.split(',')
    if '->' not in spec or len(operands) != 2:
        return False
    letters = [operand.replace('...', '') for operand in (*operands, output)]
    if any(len(set(part)) != len(part) for part in letters):
        return False
    summed = set(letters[0]) ^ set(letters[1])  # an index in one operand only must reach the output
    if not summed <= set(letters[2]) or not set(letters[2]) <= set(letters[0]) | set(letters[1]):
        return False
    in_a, in_b, in_output = ('...' in part for part in (*operands, output))
    if in_output != (in_a or in_b):  # `...` is kept, not summed
        return False
    # under `...` in both operands, equal sizes: no broadcasting, whose gradient would need a sum
    return not (in_a and in_b) or a.shape[:a.ndim - len(letters[0])] == b.shape[:b.ndim - len(letters[1])]


def _accumulated(spec: str, a, b):
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32).astype(a.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _float32_accumulated_einsum(spec, a, b):
    return _accumulated(spec, a, b)


def _float32_accumulated_einsum_forward(spec, a, b):
    return _accumulated(spec, a, b), (a, b)


def _float32_accumulated_einsum_backward(spec, residuals, cotangent):
    a, b = residuals
    inputs, output = spec.replace(' ', '').split('->')
    spec_a, spec_b = inputs.split(',')
    cotangent = cotangent.astype(a.dtype)
    return (_accumulated(f'{output},{spec_b}->{spec_a}', cotangent, b),
            _accumulated(f'{spec_a},{output}->{spec_b}', a, cotangent))


_float32_accumulated_einsum.defvjp(_float32_accumulated_einsum_forward, _float32_accumulated_einsum_backward)


def add_bias(y, bias):
    """`y + bias` over y's last axis, bias cast to y's dtype.

    On CPU, a half-precision bias's gradient (the cotangent summed over every other axis) is a product with a vector
    of ones, accumulated in float32 as `einsum`'s: XLA's CPU code would otherwise sum the cotangent through a float32
    copy in a tree of reduce-windows, up to 9 ms per ViT-S/16 bias at batch 8, 13% of a bfloat16 training step
    (benchmarks/README.md, "bfloat16 on CPU"). That takes a custom VJP, so forward-mode differentiation is not defined
    through it, as through `einsum`. Other dtypes and platforms add as `y + bias` does.
    """
    bias = bias.astype(y.dtype)
    if y.dtype not in (jnp.bfloat16, jnp.float16):
        return y + bias
    return jax.lax.platform_dependent(y, bias, cpu=_bias_added, default=jnp.add)


@jax.custom_vjp
def _bias_added(y, bias):
    return y + bias


def _bias_added_forward(y, bias):
    return y + bias, None


def _bias_added_backward(_, cotangent):
    rows = cotangent.reshape(-1, cotangent.shape[-1])
    ones = jnp.ones(rows.shape[:1], rows.dtype)
    return cotangent, _accumulated('n,no->o', ones, rows)


_bias_added.defvjp(_bias_added_forward, _bias_added_backward)


class Linear(nn.Module):
    """torch.nn.Linear. `kernel` is torch's `weight` transposed, (in, out); the product is `matmul`'s.

    Torch's default init unless a module re-initialises its weights (`kernel_init`, `bias_init`).
    """

    features: int
    use_bias: bool = True
    kernel_init: Callable | None = None
    bias_init: Callable | None = None

    @nn.compact
    def __call__(self, x):
        fan_in = x.shape[-1]
        kernel = self.param('kernel', self.kernel_init or torch_uniform(fan_in), (fan_in, self.features))
        y = matmul(x, kernel.astype(x.dtype))
        if self.use_bias:
            y = add_bias(y, self.param('bias', self.bias_init or torch_uniform(fan_in), (self.features,)))
        return y


class SequentialFeedForward(nn.Module):
    """vit-pytorch's `FeedForward(dim, hidden_dim)` written as a function returning
    `nn.Sequential(LayerNorm, Linear, GELU, Linear)` (simple_vit_with_value_residual, simple_uvit, jumbo_vit): the
    layers are named by their Sequential indices `0`, `1`, `3`, so the tree maps to `<prefix>.0.weight` ... The
    output has the input's width. `epsilon` is the LayerNorm's, `activation` the GELU (vat_siglip's SigLIP
    feed-forward: eps 1e-6 and `nn.GELU(approximate='tanh')`, `gelu_tanh`)."""

    hidden_dim: int
    epsilon: float = 1e-5
    activation: Callable = gelu

    @nn.compact
    def __call__(self, x):
        dim = x.shape[-1]
        x = LayerNorm(self.epsilon, name='0')(x)
        x = self.activation(Linear(self.hidden_dim, name='1')(x))
        return Linear(dim, name='3')(x)


def _spatial_tuple(value, n: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n
    value = tuple(value)
    if len(value) != n:
        raise ValueError(f'{name}={value} has {len(value)} entries, but the input has {n} spatial dimensions')
    return value


class Conv(nn.Module):
    """torch.nn.Conv1d / Conv2d / Conv3d on channels-last input ((B, *spatial, C)).

    `kernel` is (*kernel_size, in // groups, out): torch's OI* weight with its axes moved. Padding is torch's:
    an int or tuple pads both sides of each spatial dimension, 'same' pads like torch (the odd pixel goes on
    the right), 'valid' pads nothing. Zero padding only, as vit-pytorch uses.

    A 1 x 1 convolution (stride 1, no padding) is a matmul over the channels and a depth-wise one (`groups` equal
    to the input channels, more than one) is `depthwise_conv`: XLA's CPU convolution is slower for both, 1.5-1.8x forward and
    backward for 1 x 1 on CvT-13's maps (`python -m benchmarks.ops`). The rest go to `lax.conv_general_dilated`.
    """

    features: int
    kernel_size: int | Sequence[int]
    stride: int | Sequence[int] = 1
    padding: int | Sequence[int] | str = 0
    dilation: int | Sequence[int] = 1
    groups: int = 1
    use_bias: bool = True
    kernel_init: Callable | None = None  # None: torch's default, as for Linear
    bias_init: Callable | None = None

    @nn.compact
    def __call__(self, x):
        n = x.ndim - 2
        if n not in (1, 2, 3):
            raise ValueError(f'Conv expects (batch, *spatial, channels) with 1 to 3 spatial dims, got shape {x.shape}')
        in_features = x.shape[-1]
        if self.groups < 1:
            raise ValueError(f'Conv groups={self.groups} must be a positive integer')
        if in_features % self.groups or self.features % self.groups:
            raise ValueError(
                f'Conv groups={self.groups} must divide in channels ({in_features}) and out channels ({self.features})'
            )
        kernel_size = _spatial_tuple(self.kernel_size, n, 'kernel_size')
        stride = _spatial_tuple(self.stride, n, 'stride')
        dilation = _spatial_tuple(self.dilation, n, 'dilation')
        if self.padding == 'valid':
            padding = [(0, 0)] * n
        elif self.padding == 'same':
            totals = [d * (k - 1) for d, k in zip(dilation, kernel_size)]
            padding = [(t // 2, t - t // 2) for t in totals]
        elif isinstance(self.padding, str):
            raise ValueError(f"Conv padding={self.padding!r}: use an int, a tuple, 'same' or 'valid' (torch's names)")
        else:
            padding = [(p, p) for p in _spatial_tuple(self.padding, n, 'padding')]

        fan_in = in_features // self.groups * math.prod(kernel_size)
        kernel_shape = (*kernel_size, in_features // self.groups, self.features)
        kernel = self.param('kernel', self.kernel_init or torch_uniform(fan_in), kernel_shape).astype(x.dtype)
        pointwise = self.groups == 1 and math.prod(kernel_size) == 1 and set(stride) == {1} and not any(
            lo or hi for lo, hi in padding)
        depthwise = 1 < self.groups == in_features and _conv_output_sizes(
            x.shape[1:-1], kernel_size, stride, padding, dilation) is not None
        if pointwise:
            y = matmul(x, kernel.reshape(in_features, self.features))
        elif depthwise:
            y = depthwise_conv(x, kernel, stride, padding, dilation)
        else:
            spatial = 'DHW'[-n:] if n > 1 else 'W'
            y = jax.lax.conv_general_dilated(
                x,
                kernel,
                window_strides=stride,
                padding=padding,
                rhs_dilation=dilation,
                dimension_numbers=(f'N{spatial}C', f'{spatial}IO', f'N{spatial}C'),
                feature_group_count=self.groups,
            )
        if self.use_bias:
            y = add_bias(y, self.param('bias', self.bias_init or torch_uniform(fan_in), (self.features,)))
        return y


def _conv_output_sizes(spatial_shape, kernel_size, stride, padding, dilation) -> tuple[int, ...] | None:
    """The output's spatial sizes of a convolution, or None where one would be empty."""
    sizes = tuple((size + lo + hi - d * (k - 1) - 1) // s + 1
                  for size, k, s, (lo, hi), d in zip(spatial_shape, kernel_size, stride, padding, dilation))
    return sizes if min(sizes) >= 1 else None


def depthwise_conv(x, kernel, stride, padding, dilation):
    """A convolution with one group per input channel, as a sum over the kernel's taps of strided slices of the
    padded input times the tap's weights: output channel o reads input channel o // multiplier, as torch's
    `groups=in_channels` does.

    XLA's CPU code runs `feature_group_count=channels` convolutions through a slow generic path: on CvT-13's maps
    (2 cores of an AMD EPYC) it takes 11-59x the time of these fused multiply-adds forward and 13-51x forward and
    backward (`python -m benchmarks.ops`). GPUs and TPUs run the same fused loop (not timed there); in float32 it
    never rounds through TF32. Half-precision inputs accumulate in float32.
    """
    multiplier = kernel.shape[-1] // x.shape[-1]
    if multiplier > 1:
        x = jnp.repeat(x, multiplier, axis=-1)
    n = x.ndim - 2
    kernel_size = kernel.shape[:n]
    out_sizes = _conv_output_sizes(x.shape[1:-1], kernel_size, stride, padding, dilation)
    accumulate = jnp.promote_types(x.dtype, jnp.float32)
    # widened before the taps are sliced, so that the backward pass also sums the taps' input gradients in float32
    padded = jnp.pad(x.astype(accumulate), ((0, 0), *padding, (0, 0)))
    y = None
    for tap in np.ndindex(*kernel_size):
        start = (0, *(t * d for t, d in zip(tap, dilation)), 0)
        limit = (x.shape[0], *(b + s * (o - 1) + 1 for b, s, o in zip(start[1:-1], stride, out_sizes)), x.shape[-1])
        window = jax.lax.slice(padded, start, limit, (1, *stride, 1))
        term = window * kernel[tap][0].astype(accumulate)
        y = term if y is None else y + term
    return y.astype(x.dtype)


class BatchNorm(nn.Module):
    """torch.nn.BatchNorm{1,2,3}d on channels-last input, with torch's semantics.

    `momentum` has torch's meaning (weight of the new batch). In training the batch is normalised with its
    biased variance while the running variance is updated with the unbiased one, as torch does (Flax's
    BatchNorm updates with the biased variance, so its running statistics drift from torch's). Running
    statistics live in the 'batch_stats' collection as `mean` and `var`.
    """

    momentum: float = 0.1
    epsilon: float = 1e-5
    scale_init: Callable = nn.initializers.ones  # LeViT starts some at zero

    @nn.compact
    def __call__(self, x, train: bool = False):
        features = x.shape[-1]
        scale = self.param('scale', self.scale_init, (features,))
        bias = self.param('bias', nn.initializers.zeros, (features,))
        running_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,), jnp.float32)
        running_var = self.variable('batch_stats', 'var', jnp.ones, (features,), jnp.float32)

        # normalised in float32 at least: in half precision the backward pass would sum its per-channel reductions
        # in it too, which XLA's CPU code runs through float32 copies several times slower. One widened copy, so
        # that the input's gradient is rounded to its dtype once
        wide = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        if train:
            axes = tuple(range(x.ndim - 1))
            x32 = wide.astype(jnp.float32)
            mean = x32.mean(axes)
            var = jnp.square(x32 - mean).mean(axes)
            if not self.is_initializing():
                count = x.size // features
                unbiased = var * (count / max(count - 1, 1))
                running_mean.value = (1 - self.momentum) * running_mean.value + self.momentum * mean
                running_var.value = (1 - self.momentum) * running_var.value + self.momentum * unbiased
        else:
            mean, var = running_mean.value, running_var.value

        y = (wide - mean.astype(wide.dtype)) * jax.lax.rsqrt(var + self.epsilon).astype(wide.dtype)
        return (y * scale.astype(wide.dtype) + bias.astype(wide.dtype)).astype(x.dtype)


class ChanLayerNorm(nn.Module):
    """vit-pytorch's LayerNorm "done in the channel dimension" (cvt, twins_svt, nest, crossformer, regionvit,
    scalable_vit, sep_vit: named LayerNorm or ChanLayerNorm there): raw parameters `g` and `b` of torch's shape
    (1, dim, 1, 1), biased variance, `(x - mean) / sqrt(var + eps) * g + b` over the last (channel) axis."""

    dim: int
    eps: float = 1e-5

    @nn.compact
    def __call__(self, x):
        g = self.param('g', nn.initializers.ones, (1, self.dim, 1, 1))
        b = self.param('b', nn.initializers.zeros, (1, self.dim, 1, 1))
        y = x.astype(jnp.promote_types(x.dtype, jnp.float32))  # as LayerNorm: statistics float32 at least
        var = jnp.var(y, axis=-1, keepdims=True)
        mean = jnp.mean(y, axis=-1, keepdims=True)
        g, b = g.reshape(self.dim).astype(y.dtype), b.reshape(self.dim).astype(y.dtype)
        return ((y - mean) / jnp.sqrt(var + self.eps) * g + b).astype(x.dtype)


class Embedding(nn.Module):
    """torch.nn.Embedding: `embedding` is torch's `weight`, initialised N(0, 1) like torch."""

    num_embeddings: int
    features: int

    @nn.compact
    def __call__(self, ids):
        table = self.param('embedding', randn, (self.num_embeddings, self.features))
        return jnp.take(table, ids, axis=0)


# torch's nn.ParameterList entry `<list>.<i>` (vit_5's layer scales, normalized_vit's residual lerp scales) is the
# Flax module `<list>_<i>` holding one leaf of this name, which converters/rules.py maps to no torch suffix; a scanned
# stack's entries are one (depth, ...) leaf of the module `<list>_scan`
PARAMETER_LIST_LEAF = 'parameter_list_entry'


class ParameterListEntry(nn.Module):
    """One entry of a torch nn.ParameterList (name the module `<list>_<i>`): its array, of `shape`, from
    `initializer`."""

    shape: tuple[int, ...]
    initializer: Callable

    @nn.compact
    def __call__(self):
        return self.param(PARAMETER_LIST_LEAF, self.initializer, self.shape)


def conv_output_size(image_size: int, kernel_size: int, stride: int, padding: int = 0) -> int:
    """vit-pytorch's helper (t2t, pit): float division then int(), which floors like nn.Unfold and Conv2d."""
    return int(((image_size - kernel_size + (2 * padding)) / stride) + 1)


def unfold(x, kernel_size: int, stride: int, padding: int):
    """torch's `nn.Unfold` followed by `Rearrange('b c n -> b n c')`, on channels-last images.

    (b, H, W, c) -> (b, oh * ow, c * k * k): windows in row-major order over the output grid, features in torch's
    order `(c kh kw)`. Built from strided slices, so it is exact in every dtype on every backend (an identity
    convolution such as `lax.conv_general_dilated_patches` goes through the matmul units, which round float32
    to TF32 / bf16 at default precision on GPU and TPU).
    """
    _, height, width, _ = x.shape
    x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    out_height = (height + 2 * padding - kernel_size) // stride + 1
    out_width = (width + 2 * padding - kernel_size) // stride + 1
    windows = [
        x[:, i : i + stride * (out_height - 1) + 1 : stride, j : j + stride * (out_width - 1) + 1 : stride]
        for i in range(kernel_size)
        for j in range(kernel_size)
    ]
    patches = jnp.stack(windows, axis=-1)  # (b, oh, ow, c, kh * kw)
    return rearrange(patches, 'b h w c k -> b (h w) (c k)')


def add_position_embedding(x, pos_embedding, input_size, image_size, what: str = 'tokens'):
    """x + the first n rows of a learned position embedding, (N, dim) or vit-pytorch's older (1, N, dim).

    vit-pytorch slices the table for inputs smaller than `image_size`: only the token count has to fit, whatever
    the input's height and width. A larger input is refused, naming the sizes.
    """
    n = x.shape[1]
    table = pos_embedding.reshape(-1, pos_embedding.shape[-1])
    if n > table.shape[0]:
        raise ValueError(
            f'input of size {tuple(input_size)} gives {n} {what}, more than the {table.shape[0]} position '
            f'embeddings of image_size={image_size}'
        )
    return x + table[:n].astype(x.dtype)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def softmax(x, axis: int = -1):
    """jax.nn.softmax, with its derivative written so that XLA's CPU code runs the backward pass's row sums as
    matrix products.

    The derivative is y * t - y (y . t) along `axis`, as jax.nn.softmax's. Written as a three-operand einsum, the
    transposed map contracts the cotangent with y as a batched matrix-vector product, where jax.nn.softmax's form
    becomes a reduction fused into the preceding matmul. On 2 cores of an AMD EPYC an attention's forward and
    backward then take 354 -> 208 ms on CvT-13's first stage (3,136 queries, 784 keys; torch 254 ms) and 42 -> 30 ms
    per ViT-B/16 layer (torch 32 ms); a ViT-S/16 layer's 6 heads gain nothing (`python -m benchmarks.ops`). A custom
    JVP, not a VJP, keeps forward-mode differentiation.
    """
    return jax.nn.softmax(x, axis=axis)


@softmax.defjvp
def _softmax_jvp(axis, primals, tangents):
    (x,), (t,) = primals, tangents
    y = softmax(x, axis)
    y_last, t_last = jnp.moveaxis(y, axis, -1), jnp.moveaxis(t, axis, -1)
    along_y = jnp.einsum('...i,...j,...j->...i', y_last, y_last, t_last)
    return y, y * t - jnp.moveaxis(along_y, -1, axis)


def attention_weights(q, k, scale: float, mask=None):
    """softmax(q k^T * scale) over the last axis, with q, k as (..., n, d). `mask` is True where allowed."""
    dots = einsum('...id,...jd->...ij', q, k) * scale
    if exists(mask):
        dots = jnp.where(mask, dots, jnp.finfo(dots.dtype).min)
    return softmax(dots, axis=-1)


@jax.custom_jvp
def residual_boundary(x):
    """The identity, marking the residual stream between two layers of an unrolled stack; its derivatives are the
    identity too. On CPU the backward pass computes the residual stream's gradient into a buffer of its own here.

    Why: without it, XLA's CPU fusion inlines the running sum of the residual gradient (the contribution of every
    later layer, with each LayerNorm's mean term) into each layer's backward fusions instead of computing it once,
    so the backward pass redoes O(depth^2) elementwise work: about 0.3 s of ViT-S/16's 2 s training step on 2 cores
    (benchmarks/README.md). `lax.optimization_barrier` cannot stop this, because XLA's CPU pipeline removes barriers
    before fusion; a conditional is a boundary that fusion does not cross. A scanned stack (scan_layers=True) needs no
    marks: each layer is a loop iteration. GPUs and TPUs get the plain identity.
    """
    return x


def _conditional_identity(predicate, t):
    # the branches must differ, or XLA merges them and drops the conditional; `t + 0` equals t (-0.0 becomes +0.0)
    return jax.lax.cond(predicate, lambda t: t, lambda t: t + 0, t)


@residual_boundary.defjvp
def _residual_boundary_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    # a predicate XLA cannot fold (False only for a NaN), taken from the primal so the tangent map stays linear and
    # the backward pass transposes the conditional onto the cotangent
    first = x.reshape(-1)[0]
    t = jax.lax.platform_dependent(first == first, t, cpu=_conditional_identity, default=lambda predicate, t: t)
    return x, t


# patch dropout (vit_with_patch_dropout, simple_vit_with_patch_dropout): vit-pytorch's PatchDropout keeps, in
# training only, a random subset of each row's patch tokens, drawn from this rng stream
PATCH_DROPOUT = 'patch_dropout'


def patches_kept(num_patches: int, prob: float) -> int:
    """How many of `num_patches` tokens PatchDropout keeps: `max(1, int(n * (1 - prob)))`, as vit-pytorch counts."""
    return max(1, int(num_patches * (1 - prob)))


def patch_dropout_noise(module: nn.Module, batch: int, num_patches: int):
    """The (batch, num_patches) standard normals whose `num_patches_kept` largest pick the tokens PatchDropout keeps
    (vit-pytorch: `torch.randn(b, n).topk(k).indices`), drawn from `module`'s 'patch_dropout' stream: a model's
    first draw from that stream, so a method drawing it first too replays a call's noise."""
    return jax.random.normal(module.make_rng(PATCH_DROPOUT), (batch, num_patches), jnp.float32)


def patch_dropout(module: nn.Module, x, prob: float, train: bool):
    """vit-pytorch's PatchDropout on tokens x (b, n, d): the identity in eval mode or for prob 0; in training the
    tokens of the `patches_kept(n, prob)` largest draws of `patch_dropout_noise`, in descending order of their draw
    (topk's order)."""
    if not train or prob == 0:
        return x
    batch, num_patches = x.shape[:2]
    noise = patch_dropout_noise(module, batch, num_patches)
    _, indices = jax.lax.top_k(noise, patches_kept(num_patches, prob))
    return jnp.take_along_axis(x, indices[..., None], axis=1)


# register tokens ("Vision Transformers Need Registers", Darcet et al., 2023): learned tokens the transformer attends
# with, packed after the patch tokens and dropped before pooling (simple_vit_with_register_tokens, simple_uvit,
# simple_vit_with_hyper_connections ...)


def append_register_tokens(module: nn.Module, x, num_register_tokens: int, name: str = 'register_tokens'):
    """x (b, n, d) followed by `module`'s parameter `name`, (num_register_tokens, d) drawn like torch.randn, repeated
    over the batch: vit-pytorch's `pack([x, repeat(register_tokens, 'n d -> b n d')], 'b * d')`."""
    tokens = module.param(name, randn, (num_register_tokens, x.shape[-1]))
    registers = jnp.broadcast_to(tokens.astype(x.dtype), (x.shape[0], *tokens.shape))
    return jnp.concatenate((x, registers), axis=1)


def drop_register_tokens(x, num_register_tokens: int):
    """The tokens before the `num_register_tokens` registers `append_register_tokens` packed after them (torch's
    `unpack`)."""
    return x[:, : x.shape[1] - num_register_tokens]


# The collection and name under which attention layers sow their post-softmax maps: the path of a map,
# `intermediates/transformer/layers_0_0/attend`, is the torch module vit-pytorch's Recorder hooks
# (`transformer.layers.0.0.attend`, an nn.Softmax). Sowing is a no-op unless the caller makes the collection
# mutable, as recorder.Recorder does.
ATTENTION_MAPS = 'intermediates'


def apply_collecting_intermediates(model: nn.Module, variables, *args, mutable=False, **kwargs):
    """`model.apply` with the 'intermediates' collection collected (recorder.Recorder, extractor.Extractor):
    (output, intermediates, the updated collections the caller asked for with `mutable`, as Flax's apply names them)."""
    asked = [mutable] if isinstance(mutable, str) else list(mutable or ())
    output, state = model.apply(variables, *args, mutable=True if mutable is True else [ATTENTION_MAPS, *asked],
                                **kwargs)
    state = dict(state)
    return output, state.pop(ATTENTION_MAPS, {}), state


def record_attention_map(module: nn.Module, attn):
    """Offer `module`'s attention map (batch, heads, n, m), after softmax and before dropout, to recorder.Recorder."""
    module.sow(ATTENTION_MAPS, 'attend', attn)


# The JAX-only `attention_impl` option of the models that take it: 'explicit' forms the attention maps (softmax of
# q k^T, vit-pytorch's computation, which recorder.Recorder records); 'xla', 'cudnn' and 'auto' (cuDNN where it
# applies, else XLA) call jax.nn.dot_product_attention, whose fused kernels never form the maps.
ATTENTION_IMPLEMENTATIONS = ('explicit', 'xla', 'cudnn', 'auto')


def check_attention_impl(attention_impl: str):
    if attention_impl not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(
            f'unknown attention_impl={attention_impl!r}: use one of {", ".join(ATTENTION_IMPLEMENTATIONS)}'
        )


def uses_fused_attention(attention_impl: str, dropout: float, train: bool) -> bool:
    """Whether to call jax.nn.dot_product_attention: not for 'explicit', and not where attention dropout acts
    (training with dropout > 0), which the fused kernels do not apply to the maps."""
    return attention_impl != 'explicit' and not (train and dropout > 0)


def fused_attention(q, k, v, scale: float, attention_impl: str, mask=None, bias=None):
    """softmax(q k^T * scale + bias) v by jax.nn.dot_product_attention, for q of shape (b, n, heads, d) and k, v of
    shape (b, m, heads, d), JAX's layout; the output has q's shape. `mask` (b or 1, heads or 1, n, m) is True where a
    query may see a key; `bias` (b or 1, heads or 1, n, m) is added to the logits (relative position biases, log-gates).

    A query row that may see no key (a padding token of a packed NaViT sequence, an empty image slot of its pool) is
    let see every key. Its output is never read, but the kernels disagree on such rows (a uniform average, zeros or
    NaN), and a NaN there would reach every real query through `0 * NaN` in the next layer's weighted sum."""
    if mask is not None:
        mask = mask | ~mask.any(axis=-1, keepdims=True)
        # cuDNN takes the mask as a bias of the full (b, heads, n, m) shape only
        mask = jnp.broadcast_to(mask, (q.shape[0], q.shape[2], q.shape[1], k.shape[1]))
    if bias is not None:  # cuDNN, as for the mask, takes the full shape
        bias = jnp.broadcast_to(bias, (q.shape[0], q.shape[2], q.shape[1], k.shape[1])).astype(q.dtype)
    implementation = None if attention_impl == 'auto' else attention_impl
    return jax.nn.dot_product_attention(q, k, v, bias=bias, scale=scale, mask=mask, implementation=implementation)


def multi_head_attention(module: nn.Module, q, k, v, heads: int, scale: float, attention_impl: str,
                         dropout: float = 0.0, train: bool = False, mask=None):
    """The core of vit.py's and simple_vit.py's attention, for q, k, v of shape (b, n, heads * d), returning the same
    shape: jax.nn.dot_product_attention where `attention_impl` asks for it and no attention dropout acts, else
    vit-pytorch's softmax(q k^T * scale) v, its map offered to the Recorder as `module`'s and then dropped out.
    `mask` (b or 1, heads or 1, n, m), True where a query may see a key, fills the other logits with the dtype's
    lowest value, as vit-pytorch's `masked_fill(~mask, -finfo.max)` (vit_detpool); see fused_attention for rows that
    may see no key."""
    if uses_fused_attention(attention_impl, dropout, train):
        q, k, v = (rearrange(t, 'b n (h d) -> b n h d', h=heads) for t in (q, k, v))
        return rearrange(fused_attention(q, k, v, scale, attention_impl, mask), 'b n h d -> b n (h d)')
    q, k, v = (rearrange(t, 'b n (h d) -> b h n d', h=heads) for t in (q, k, v))
    attn = attention_weights(q, k, scale=scale, mask=mask)
    record_attention_map(module, attn)
    attn = nn.Dropout(dropout, deterministic=not train)(attn)
    return rearrange(einsum('bhij,bhjd->bhid', attn, v), 'b h n d -> b n (h d)')


def check_sincos_dim(dim: int):
    if dim % 4:
        raise ValueError(f'feature dimension must be a multiple of 4 for the sin-cos embedding, got dim={dim}')
    if dim < 8:
        # torch divides by (dim // 4 - 1) = 0 here and fills the embedding with NaN
        raise ValueError(f'the sin-cos embedding needs dim >= 8, got dim={dim}')


def check_sincos_1d_dim(dim: int):
    if dim % 2:
        raise ValueError(f'feature dimension must be a multiple of 2 for the sin-cos embedding, got dim={dim}')
    if dim < 4:
        # torch divides by (dim // 2 - 1) = 0 here and fills the embedding with NaN
        raise ValueError(f'the 1D sin-cos embedding needs dim >= 4, got dim={dim}')


def posemb_sincos_1d(n: int, dim: int, temperature: int = 10000) -> np.ndarray:
    """The fixed 1D sin-cos position embedding of simple_vit_1d, (n, dim): dim // 2 frequencies, sines then cosines,
    computed in float32 as torch does."""
    check_sincos_1d_dim(dim)
    omega = np.arange(dim // 2, dtype=np.float32) / np.float32(dim // 2 - 1)
    omega = np.float32(1.0) / (np.float32(temperature) ** omega)
    positions = np.arange(n, dtype=np.float32)[:, None] * omega[None, :]
    return np.concatenate((np.sin(positions), np.cos(positions)), axis=1).astype(np.float32)


def posemb_sincos_2d(h: int, w: int, dim: int, temperature: int = 10000) -> np.ndarray:
    """The fixed 2D sin-cos position embedding of SimpleViT, (h * w, dim), computed in float32 as torch does."""
    check_sincos_dim(dim)
    y, x = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing='ij')
    omega = np.arange(dim // 4, dtype=np.float32) / np.float32(dim // 4 - 1)
    omega = np.float32(1.0) / (np.float32(temperature) ** omega)
    y = y.reshape(-1)[:, None] * omega[None, :]
    x = x.reshape(-1)[:, None] * omega[None, :]
    return np.concatenate((np.sin(x), np.cos(x), np.sin(y), np.cos(y)), axis=1).astype(np.float32)


def add_posemb_sincos_2d(x, input_size, image_size, patch_size, dim: int, temperature: int = 10000):
    """x (b, n, dim) + SimpleViT's fixed embedding of the `image_size // patch_size` grid, which vit-pytorch adds by
    broadcasting: only the token count has to fit (checked, naming the sizes), whatever the input's height and width."""
    (image_height, image_width), (patch_height, patch_width) = pair(image_size), pair(patch_size)
    pos_embedding = posemb_sincos_2d(image_height // patch_height, image_width // patch_width, dim, temperature)
    check_patch_count(x, pos_embedding.shape[0], input_size, image_size)
    return x + jnp.asarray(pos_embedding, dtype=x.dtype)


def check_patch_count(x, num_patches: int, input_size, image_size):
    """vit-pytorch adds a position embedding of `num_patches` rows to all the patches x (b, n, dim) by broadcasting:
    refuse another count, naming the sizes."""
    if x.shape[1] != num_patches:
        raise ValueError(
            f'input of size {tuple(input_size)} gives {x.shape[1]} patches, but the position embedding of '
            f'image_size={image_size} has {num_patches}'
        )


def check_sincos_3d_dim(dim: int):
    # torch divides by (dim // 6 - 1) = 0 for 6 <= dim < 12 and fills the embedding with NaN; below 6 it has no
    # frequencies at all and pads to an all-zero embedding, which computes, so it is allowed as vit-pytorch does
    if 6 <= dim < 12:
        raise ValueError(f'the 3D sin-cos embedding needs dim >= 12 (or dim < 6, an all-zero embedding), got dim={dim}')


def posemb_sincos_3d(f: int, h: int, w: int, dim: int, temperature: int = 10000) -> np.ndarray:
    """The fixed 3D sin-cos position embedding of simple_vit_3d, (f * h * w, dim) in token order (f h w), computed in
    float32 as torch does: dim // 6 frequencies per (sin, cos) of x, y, z, zero-padded to `dim`."""
    check_sincos_3d_dim(dim)
    z, y, x = np.meshgrid(
        np.arange(f, dtype=np.float32), np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing='ij'
    )
    fourier_dim = dim // 6
    omega = np.arange(fourier_dim, dtype=np.float32) / np.float32(fourier_dim - 1)
    omega = np.float32(1.0) / (np.float32(temperature) ** omega)
    z, y, x = (t.reshape(-1)[:, None] * omega[None, :] for t in (z, y, x))
    pe = np.concatenate((np.sin(x), np.cos(x), np.sin(y), np.cos(y), np.sin(z), np.cos(z)), axis=1)
    return np.pad(pe, ((0, 0), (0, dim - fourier_dim * 6))).astype(np.float32)
