"""VAAT, a vision-audio-action transformer, and AST, the audio spectrogram transformer it listens with ("AST: Audio
Spectrogram Transformer", Gong et al., 2021), mirroring vit_pytorch/vaat.py.

vit-pytorch's vaat.py is vat.py (vit_flax/vat.py) with an audio tower: its FiLM, FeedForward, Transformer and ViT are
vat.py's, imported from there. Its Attention computes what vat.py's does (the output gates scale each head's output
before the heads merge, in both) but takes its keywords in another order, (dim, heads, dim_head, dropout,
dim_context, cross_attend), so it is a class of its own here too, running vat.py's `gated_attention`.

`Spectrogram` is torchaudio.transforms.Spectrogram, which vit-pytorch's AST builds, computed in JAX
(`spectrogram`): the waveform padded by `pad` zeros on both sides, then (with `center`) by n_fft // 2 samples in
`pad_mode`; frames of n_fft samples every `hop_length` samples, multiplied by the window (zero-padded to n_fft,
centred), Fourier transformed (one-sided: n_fft // 2 + 1 bins), optionally normalised, and the magnitude raised to
`power` (the complex spectrum for None). Its window is the persistent buffer `window`, as torchaudio registers it
(`buffers/spec/window` here, torch's `spec.window`), the periodic Hann window at init; the forward uses the stored
window, so a state dict carrying another window computes with it on both sides. torchaudio's `window_fn` and
`wkwargs` (which only choose the initial window) and its deprecated, unused `return_complex` are not keywords here.

`AST` patchifies a spectrogram (batch, freq, time) into patch_size patches (cropping what does not fill a patch),
adds the fixed 2-D sin-cos position embedding, prepends register tokens, runs the gated-attention transformer and a
final LayerNorm, and mean-pools the patch tokens into `mlp_head` (none where `num_classes` is None). It takes
waveforms (batch, samples), or with `accept_spec` spectrograms (batch, time, freq).

`VAAT` is VAT with a second cross attention per layer, over the AST's representation trajectory of the audio at
`ast_layer_indices`: layer i is FiLM (`layers_{i}_0`), image cross attention (`layers_{i}_2`), audio cross attention
(`layers_{i}_3`), self attention (`layers_{i}_1`), feed-forward (`layers_{i}_4`), in that order. It takes
`VAAT(video_or_image, audio_or_spec, extra=None, tasks=None, advantages=None, actions=None, ...)`: the video as VAT
does, and waveforms (batch, [views,] samples) or spectrograms (batch, [views,] time, freq) (vit-pytorch's comment
says (b v? f t), but its AST reads them as (time, freq)). vit-pytorch's inputs after the audio are keywords only;
here they may also come positionally, in the same order (the registry passes them so).

Quirks of vit-pytorch kept so weights transfer and outputs match (and VAT's, vit_flax/vat.py):
- AST normalises twice: the transformer's final LayerNorm, then `final_norm`; `return_hiddens` gives the twice
  normed tokens (registers included) and the stacked layer inputs, without pooling or head.
- AST crops the spectrogram to whole patches; a spectrogram smaller than one patch leaves no patch token (the
  pooled output is then NaN, as in vit-pytorch, while VAAT attends over the register tokens alone).
- `accept_spec_time_first` is stored and ignored: a spectrogram input is always (batch, time, freq).
- `spec_win_length=24` is AST's default whatever `spec_n_fft`, and `spec_power` defaults to 2 (the power spectrum).
- The AST's `mlp_head` is unused by VAAT (created at init: it is in the state dict).

Fixed here where vit-pytorch's forward fails (the parity spec patches vit-pytorch the same way for the comparison):
- VAAT's audio view embedding: vit-pytorch reshapes it to (views, 1, 1, d) as for the images, whose trajectory has a
  frame axis the audio's lacks, so against (layers, batch, views, tokens, d) its views line up with the batch: the
  forward fails unless the batch is 1 or `num_audio_views` (where it adds view j's embedding to batch row j, or
  grows the batch). Here each audio view gets its own embedding, (views, 1, d).
- One view without a view axis (batch, height, width, channels), refused by vit-pytorch (see vat.py).
- A configuration that cannot run in vit-pytorch fails at construction, naming the value: a depth-0 VAAT, a
  depth-0 ViT or AST under VAAT, an AST dim the sin-cos embedding cannot take (not a multiple of 4, or below 8,
  where torch divides by zero), a spectrogram power of None (complex patches, which LayerNorm refuses), a window
  longer than n_fft, a pad mode torch.stft does not have. A waveform too short for torch.stft (or for a reflect pad)
  is refused at the call.

RNG streams: 'dropout' only (attention, feed-forward and embedding dropout, in training).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange

from vit_flax.layers import (
    NON_NEGATIVE_INTEGER, POSITIVE_INTEGER, LayerNorm, Linear, check_floating_input, check_keywords,
    check_sincos_dim, pair, posemb_sincos_2d, residual_boundary, small_randn,
)
from vit_flax.vat import (
    FeedForward, FiLM, Transformer, ViT, action_tokens_and_task, add_view_embedding, as_module,
    check_layer_indices, gated_attention, maybe_film, predict_actions,
    stack_hiddens, trajectory, video_to_images,
)

__all__ = ['FiLM', 'FeedForward', 'Attention', 'Transformer', 'ViT', 'Spectrogram', 'spectrogram', 'AST', 'VAAT']

# torch.stft's center padding is F.pad's, whose modes are these (numpy's names for them)
PAD_MODES = {'reflect': 'reflect', 'constant': 'constant', 'replicate': 'edge', 'circular': 'wrap'}


def hann_window(win_length: int) -> np.ndarray:
    """torch.hann_window(win_length) (periodic), float32 as torch computes it: 0.5 - 0.5 cos(n * (2 pi / win_length))
    with the angle a float32 product, the cosine rounded once (torch's vectorised cosine may differ in the last bit),
    and a single 1 for a window of one."""
    if win_length == 1:
        return np.ones((1,), np.float32)
    angles = np.arange(win_length, dtype=np.float32) * np.float32(2 * np.pi / win_length)
    cosines = np.cos(angles.astype(np.float64)).astype(np.float32)
    return (np.float32(0.5) + np.float32(-0.5) * cosines).astype(np.float32)


def spectrogram_norms(normalized: bool | str) -> tuple[bool, bool]:
    """torchaudio's `normalized`: (by sqrt(n_fft) in the STFT, by the window's L2 energy after it). True means
    'window'."""
    if isinstance(normalized, str):
        if normalized not in ('frame_length', 'window'):
            raise ValueError(f"Invalid normalized parameter: {normalized!r} (use 'frame_length', 'window' or a bool)")
        return normalized == 'frame_length', normalized == 'window'
    if isinstance(normalized, (bool, np.bool_)):
        return False, bool(normalized)
    raise TypeError(f'normalized must be a bool or a str, got {normalized!r}')


def check_spectrogram_config(owner: str, n_fft, win_length, hop_length, pad, power, normalized, pad_mode,
                             prefix: str = ''):
    """What torchaudio's Spectrogram and torch.stft need of their keywords (resolved: win_length and hop_length are
    numbers here), with the values in the message; `prefix` is the keywords' ('spec_' for AST's)."""
    for name, value, rule in (('n_fft', n_fft, POSITIVE_INTEGER), ('win_length', win_length, POSITIVE_INTEGER),
                              ('hop_length', hop_length, POSITIVE_INTEGER), ('pad', pad, NON_NEGATIVE_INTEGER)):
        if not rule.accepts(value):
            raise ValueError(f'{owner}: {prefix}{name}={value!r} must be {rule.description}')
    if win_length > n_fft:
        raise ValueError(f'{owner}: the window must fit the FFT (torch.stft: 0 < win_length <= n_fft), got '
                         f'{prefix}win_length={win_length}, {prefix}n_fft={n_fft}')
    if power is not None and not (isinstance(power, (int, float)) and not isinstance(power, bool) and power > 0):
        raise ValueError(f'{owner}: {prefix}power={power!r} must be a positive number (or None for the complex '
                         'spectrum)')
    spectrogram_norms(normalized)
    if pad_mode not in PAD_MODES:
        raise ValueError(f'{owner}: {prefix}pad_mode={pad_mode!r} must be one of {", ".join(PAD_MODES)} (torch.stft)')


def spectrogram(waveform, pad: int, window, n_fft: int, hop_length: int, win_length: int, power: float | None,
                normalized: bool | str, center: bool = True, pad_mode: str = 'reflect', onesided: bool = True):
    """torchaudio.functional.spectrogram in JAX: waveforms (..., time) -> (..., freq, frames), freq = n_fft // 2 + 1
    (n_fft without `onesided`). The magnitude raised to `power`, or the complex spectrum for None."""
    check_spectrogram_config('spectrogram', n_fft, win_length, hop_length, pad, power, normalized, pad_mode)
    frame_length_norm, window_norm = spectrogram_norms(normalized)
    if window.shape != (win_length,):
        raise ValueError(f'spectrogram: the window has shape {window.shape}, win_length={win_length}')

    if pad > 0:
        waveform = jnp.pad(waveform, ((0, 0),) * (waveform.ndim - 1) + ((pad, pad),))
    shape = waveform.shape
    # the FFT in float32 at least (XLA has no bfloat16 FFT); a real result in the waveform's dtype
    x = waveform.reshape(-1, shape[-1]).astype(jnp.promote_types(waveform.dtype, jnp.float32))
    length = shape[-1]

    if center:
        side = n_fft // 2
        # F.pad's reflection needs a side shorter than the signal, its circular padding one no longer
        if pad_mode == 'reflect' and side >= length or pad_mode == 'circular' and side > length:
            raise ValueError(f'spectrogram: a {pad_mode} pad of n_fft // 2 = {side} samples needs a longer signal '
                             f'than {length} samples (after pad={pad})')
        x = jnp.pad(x, ((0, 0), (side, side)), mode=PAD_MODES[pad_mode])
    if x.shape[-1] < n_fft:
        raise ValueError(f'spectrogram: {x.shape[-1]} samples (after padding) are fewer than n_fft={n_fft}')

    num_frames = 1 + (x.shape[-1] - n_fft) // hop_length
    starts = np.arange(num_frames)[:, None] * hop_length
    frames = x[:, starts + np.arange(n_fft)[None, :]]  # (batch, frames, n_fft)

    left = (n_fft - win_length) // 2
    padded_window = jnp.pad(window.astype(x.dtype), (left, n_fft - win_length - left))
    frames = frames * padded_window
    spec = jnp.fft.rfft(frames, axis=-1) if onesided else jnp.fft.fft(frames, axis=-1)
    if frame_length_norm:
        spec = spec * (n_fft**-0.5)
    spec = jnp.swapaxes(spec, -1, -2).reshape(*shape[:-1], spec.shape[-1], num_frames)

    if window_norm:
        spec = spec / jnp.sqrt(jnp.sum(window.astype(x.dtype) ** 2))
    if power is None:
        return spec
    magnitude = jnp.abs(spec)
    if power != 1:
        magnitude = (jax.lax.integer_pow(magnitude, int(power)) if float(power).is_integer() else magnitude**power)
    return magnitude.astype(waveform.dtype)


class Spectrogram(nn.Module):
    """torchaudio.transforms.Spectrogram: `win_length` defaults to `n_fft`, `hop_length` to `win_length // 2`; the
    window is the 'buffers' variable `window`."""

    n_fft: int = 400
    win_length: int | None = None
    hop_length: int | None = None
    pad: int = 0
    power: float | None = 2.0
    normalized: bool | str = False
    center: bool = True
    pad_mode: str = 'reflect'
    onesided: bool = True

    @property
    def resolved_win_length(self) -> int:
        return self.n_fft if self.win_length is None else self.win_length

    @property
    def resolved_hop_length(self) -> int:
        return self.resolved_win_length // 2 if self.hop_length is None else self.hop_length

    def __post_init__(self):
        check_spectrogram_config(type(self).__name__, self.n_fft, self.resolved_win_length, self.resolved_hop_length,
                                 self.pad, self.power, self.normalized, self.pad_mode)
        super().__post_init__()

    def setup(self):
        self.window = self.variable('buffers', 'window', lambda: jnp.asarray(hann_window(self.resolved_win_length)))

    def __call__(self, waveform):
        return spectrogram(waveform, self.pad, self.window.value, self.n_fft, self.resolved_hop_length,
                           self.resolved_win_length, self.power, self.normalized, self.center, self.pad_mode,
                           self.onesided)

    def frames(self, samples: int) -> int:
        """How many frames the spectrogram of `samples` samples has."""
        length = samples + 2 * self.pad + (2 * (self.n_fft // 2) if self.center else 0)
        return 1 + (length - self.n_fft) // self.resolved_hop_length

    def samples_for(self, frames: int) -> int:
        """The fewest samples whose spectrogram has at least `frames` frames and that the padding takes."""
        samples = max(1, self.n_fft + (frames - 1) * self.resolved_hop_length - 2 * self.pad
                      - (2 * (self.n_fft // 2) if self.center else 0))
        if self.center and self.pad_mode == 'reflect':  # F.pad reflects less than the signal's length
            samples = max(samples, self.n_fft // 2 + 1 - 2 * self.pad)
        elif self.center and self.pad_mode == 'circular':  # and wraps at most all of it
            samples = max(samples, self.n_fft // 2 - 2 * self.pad)
        return samples


class Attention(nn.Module):
    """vat.Attention, with vit-pytorch's vaat.py keyword order."""

    dim: int
    heads: int = 8
    dim_head: int = 64
    dropout: float = 0.0
    dim_context: int | None = None
    cross_attend: bool = False

    @nn.compact
    def __call__(self, x, context=None, train: bool = False):
        return gated_attention(self, x, context, train)


class AST(nn.Module):
    dim: int
    depth: int
    mlp_dim: int
    num_classes: int | None = None
    patch_size: int | tuple[int, int] = 16
    dim_head: int = 64
    heads: int = 8
    dropout: float = 0.0
    accept_spec: bool = False
    accept_spec_time_first: bool = True
    spec_n_fft: int = 128
    spec_power: float | None = 2
    spec_win_length: int | None = 24
    spec_hop_length: int | None = None
    spec_pad: int = 0
    spec_center: bool = True
    spec_pad_mode: str = 'reflect'
    num_register_tokens: int = 4

    def __post_init__(self):
        check_keywords(self)
        check_sincos_dim(self.dim)
        if self.spec_power is None:
            raise ValueError(f'{type(self).__name__}: spec_power=None gives a complex spectrogram, whose patches '
                             "LayerNorm cannot take; use a positive power")
        win_length = self.spec_n_fft if self.spec_win_length is None else self.spec_win_length
        hop_length = win_length // 2 if self.spec_hop_length is None else self.spec_hop_length
        check_spectrogram_config(type(self).__name__, self.spec_n_fft, win_length, hop_length, self.spec_pad,
                                 self.spec_power, False, self.spec_pad_mode, prefix='spec_')
        super().__post_init__()

    def spectrogram_keywords(self) -> dict:
        """The keywords of its `spec`, torchaudio's Spectrogram, as vit-pytorch's AST builds it."""
        return dict(n_fft=self.spec_n_fft, win_length=self.spec_win_length, hop_length=self.spec_hop_length,
                    pad=self.spec_pad, power=self.spec_power, center=self.spec_center, pad_mode=self.spec_pad_mode)

    @nn.compact
    def __call__(self, raw_audio_or_spec, return_hiddens: bool = False, train: bool = False):
        """Logits (batch, num_classes), or the pooled tokens (batch, dim) without `num_classes`; with
        `return_hiddens`, the normed tokens (batch, registers + patches, dim) and the stacked inputs of the
        transformer's layers (depth, batch, registers + patches, dim)."""
        cls = type(self).__name__
        check_floating_input(self, 'raw_audio_or_spec', raw_audio_or_spec, 'audio')
        x = raw_audio_or_spec
        if self.accept_spec and x.ndim != 3 or not self.accept_spec and x.ndim != 2:
            expected = ('spectrograms (batch, time, freq)' if self.accept_spec else 'waveforms (batch, samples)')
            raise ValueError(f'{cls} with accept_spec={self.accept_spec} takes {expected}, got shape {x.shape}')

        spec_module = Spectrogram(**self.spectrogram_keywords(), name='spec')
        if self.accept_spec:
            spec = jnp.swapaxes(x, 1, 2)  # 'b t f -> b f t'
            if self.is_initializing():
                spec_module.window  # the window buffer is in vit-pytorch's state dict whether it is used or not
        else:
            spec = spec_module(x)

        # crop to whole patches
        height, width = spec.shape[-2:]
        patch_height, patch_width = pair(self.patch_size)
        spec = spec[..., : height // patch_height * patch_height, : width // patch_width * patch_width]

        tokens = rearrange(spec, 'b (h p1) (w p2) -> b h w (p1 p2)', p1=patch_height, p2=patch_width)
        tokens = LayerNorm(name='to_patch_tokens_1')(tokens)
        tokens = Linear(self.dim, name='to_patch_tokens_2')(tokens)
        tokens = LayerNorm(name='to_patch_tokens_3')(tokens)

        _, num_patch_height, num_patch_width, _ = tokens.shape
        pos_emb = posemb_sincos_2d(num_patch_height, num_patch_width, self.dim)  # (h w) order, as vaat.py's
        tokens = tokens + jnp.asarray(pos_emb.reshape(num_patch_height, num_patch_width, self.dim), tokens.dtype)
        tokens = rearrange(tokens, 'b h w d -> b (h w) d')

        register_tokens = self.param('register_tokens', small_randn, (self.num_register_tokens, self.dim))
        registers = jnp.broadcast_to(register_tokens.astype(tokens.dtype), (tokens.shape[0], *register_tokens.shape))
        tokens = jnp.concatenate((registers, tokens), axis=1)

        attended, hiddens = Transformer(self.dim, self.depth, self.heads, self.dim_head, self.mlp_dim, self.dropout,
                                        name='transformer')(tokens, return_hiddens=True, train=train)
        normed = LayerNorm(name='final_norm')(attended)

        head = None if self.num_classes is None else Linear(self.num_classes, name='mlp_head')
        if return_hiddens:
            if head is not None and self.is_initializing():
                head(normed[:, 0])  # vit-pytorch's AST owns its head whether it is used or not
            return normed, stack_hiddens(self, hiddens)

        pooled = normed[:, self.num_register_tokens:].mean(axis=1)
        return pooled if head is None else head(pooled)

    def waveform_length(self, patch_columns: int) -> int:
        """The fewest samples whose spectrogram fills `patch_columns` patches along time."""
        spec = Spectrogram(**self.spectrogram_keywords(), parent=None)
        return spec.samples_for(patch_columns * pair(self.patch_size)[1])


def audio_to_batch(model: nn.Module, audio_or_spec, accept_spec: bool):
    """Waveforms (b, [v,] samples) or spectrograms (b, [v,] time, freq) as (b * v, ...), and v (1 without a view
    axis), as vit-pytorch packs them."""
    x = audio_or_spec
    if x.ndim == (3 if accept_spec else 2):
        x = x[:, None]
    if x.ndim != (4 if accept_spec else 3):
        expected = ('spectrograms (batch, [views,] time, freq)' if accept_spec else 'waveforms (batch, [views,] samples)')
        raise ValueError(f'{type(model).__name__} with an AST of accept_spec={accept_spec} takes {expected}, got shape '
                         f'{audio_or_spec.shape}')
    return x.reshape(-1, *x.shape[2:]), x.shape[1]


class VAAT(nn.Module):
    vit: ViT | dict
    ast: AST | dict
    dim: int
    depth: int
    heads: int
    dim_head: int
    dim_action: int
    mlp_dim: int
    num_image_views: int | None = None
    num_audio_views: int | None = None
    num_tasks: int | None = None
    dim_extra_token: int | None = None
    num_register_tokens: int = 4
    action_chunk_len: int = 7
    time_seq_len: int = 1
    dropout: float = 0.0
    add_self_attn: bool = True
    self_attn_heads: int = 4
    self_attn_dim_head: int = 32
    ast_layer_indices: tuple[int, ...] | None = None
    vit_layer_indices: tuple[int, ...] | None = None
    num_advantage_bins: int = 0

    def __post_init__(self):
        vit, ast = as_module(self, 'vit', ViT), as_module(self, 'ast', AST)
        check_keywords(self)
        check_layer_indices(self, vit, self.vit_layer_indices, 'vit_layer_indices', 'vit')
        check_layer_indices(self, ast, self.ast_layer_indices, 'ast_layer_indices', 'ast')
        super().__post_init__()

    @property
    def image_size(self):
        return self.vit.image_size

    @property
    def channels(self) -> int:
        return self.vit.channels

    @nn.compact
    def __call__(self, video_or_image, audio_or_spec, extra=None, tasks=None, advantages=None, actions=None, *,
                 return_hiddens: bool = False, freeze_vit: bool = False, freeze_ast: bool = False,
                 train: bool = False):
        check_floating_input(self, 'video_or_image', video_or_image, 'videos')
        check_floating_input(self, 'audio_or_spec', audio_or_spec, 'audio')
        vit_indices = check_layer_indices(self, self.vit, self.vit_layer_indices, 'vit_layer_indices', 'vit')
        ast_indices = check_layer_indices(self, self.ast, self.ast_layer_indices, 'ast_layer_indices', 'ast')
        images, (batch, views, frames) = video_to_images(self, video_or_image, self.time_seq_len, self.vit.channels)
        audio, audio_views = audio_to_batch(self, audio_or_spec, self.ast.accept_spec)
        if audio.shape[0] != batch * audio_views:
            raise ValueError(f'{type(self).__name__}: a batch of {batch} videos and audio of shape '
                             f'{audio_or_spec.shape}')

        # the ViT's representation trajectory, (layers, b, v, t, n, d)
        embed, hiddens = self.vit(images, return_hiddens=True, train=train)
        hiddens = trajectory(embed, hiddens, vit_indices, freeze_vit)
        hiddens = hiddens.reshape(len(vit_indices), batch, views, frames, *hiddens.shape[-2:])
        if self.time_seq_len > 1:
            time_pos_emb = self.param('time_pos_emb', small_randn, (self.time_seq_len, self.vit.dim))
            hiddens = hiddens + time_pos_emb[:, None].astype(hiddens.dtype)
        hiddens = add_view_embedding(self, hiddens, self.num_image_views, 'image_view_emb', views_axis=2)

        # the AST's, (layers, b, v, n, d); each audio view its own embedding (see the module docstring)
        audio_embed, audio_hiddens = self.ast(audio, return_hiddens=True, train=train)
        audio_hiddens = trajectory(audio_embed, audio_hiddens, ast_indices, freeze_ast)
        audio_hiddens = audio_hiddens.reshape(len(ast_indices), batch, audio_views, *audio_hiddens.shape[-2:])
        audio_hiddens = add_view_embedding(self, audio_hiddens, self.num_audio_views, 'audio_view_emb', views_axis=2)

        image_context = rearrange(hiddens, 'l b v t n d -> l b (v t n) d')
        audio_context = rearrange(audio_hiddens, 'l b v n d -> l b (v n) d')

        tokens, first_action, task_rows = action_tokens_and_task(self, batch, image_context.dtype, extra, tasks,
                                                                 advantages)

        token_hiddens = [tokens]
        for i in range(self.depth):
            tokens = maybe_film(self, i, tokens, task_rows)
            tokens = Attention(self.dim, heads=self.heads, dim_head=self.dim_head, dropout=self.dropout,
                               dim_context=self.vit.dim, cross_attend=True, name=f'layers_{i}_2')(
                tokens, image_context[i], train=train) + tokens
            tokens = Attention(self.dim, heads=self.heads, dim_head=self.dim_head, dropout=self.dropout,
                               dim_context=self.ast.dim, cross_attend=True, name=f'layers_{i}_3')(
                tokens, audio_context[i], train=train) + tokens
            if self.add_self_attn:
                tokens = Attention(self.dim, heads=self.self_attn_heads, dim_head=self.self_attn_dim_head,
                                   dropout=self.dropout, name=f'layers_{i}_1')(tokens, train=train) + tokens
            tokens = FeedForward(self.dim, self.mlp_dim, self.dropout, name=f'layers_{i}_4')(tokens, train) + tokens
            tokens = residual_boundary(tokens)
            token_hiddens.append(tokens)

        return predict_actions(self, tokens, first_action, token_hiddens, actions, return_hiddens)
