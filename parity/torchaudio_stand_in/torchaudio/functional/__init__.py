"""torchaudio.functional.spectrogram, as torchaudio writes it (torchaudio/functional/functional.py); the module's
other functions raise when called."""

import warnings
from typing import Optional, Union

import torch
from torch import Tensor

from torchaudio._unavailable import module_getattr, raising_function

__all__ = ['spectrogram']


def spectrogram(
    waveform: Tensor,
    pad: int,
    window: Tensor,
    n_fft: int,
    hop_length: int,
    win_length: int,
    power: Optional[float],
    normalized: Union[bool, str],
    center: bool = True,
    pad_mode: str = 'reflect',
    onesided: bool = True,
    return_complex: Optional[bool] = None,
) -> Tensor:
    """A spectrogram (..., freq, time) of waveforms (..., time): constant padding by `pad` on both sides, torch.stft of
    the flattened leading dimensions, the magnitude raised to `power` (the complex spectrum for None), normalised by
    the window's L2 energy (`normalized` True or 'window') or by sqrt(n_fft) in torch.stft ('frame_length')."""
    if return_complex is not None:
        warnings.warn(
            '`return_complex` argument is now deprecated and is not effective.'
            '`torchaudio.functional.spectrogram(power=None)` always returns a tensor with '
            'complex dtype. Please remove the argument in the function call.'
        )

    if pad > 0:
        waveform = torch.nn.functional.pad(waveform, (pad, pad), 'constant')

    frame_length_norm, window_norm = _get_spec_norms(normalized)

    # pack batch
    shape = waveform.size()
    waveform = waveform.reshape(-1, shape[-1])

    spec_f = torch.stft(
        input=waveform,
        n_fft=n_fft,
        hop_length=hop_length,
        win_length=win_length,
        window=window,
        center=center,
        pad_mode=pad_mode,
        normalized=frame_length_norm,
        onesided=onesided,
        return_complex=True,
    )

    # unpack batch
    spec_f = spec_f.reshape(shape[:-1] + spec_f.shape[-2:])

    if window_norm:
        spec_f /= window.pow(2.0).sum().sqrt()
    if power is not None:
        if power == 1.0:
            return spec_f.abs()
        return spec_f.abs().pow(power)
    return spec_f


def _get_spec_norms(normalized: Union[str, bool]):
    frame_length_norm, window_norm = False, False
    if isinstance(normalized, str):
        if normalized not in ['frame_length', 'window']:
            raise ValueError('Invalid normalized parameter: {}'.format(normalized))
        if normalized == 'frame_length':
            frame_length_norm = True
        elif normalized == 'window':
            window_norm = True
    elif isinstance(normalized, bool):
        if normalized:
            window_norm = True
    else:
        raise TypeError('Input type not supported')
    return frame_length_norm, window_norm


__getattr__ = module_getattr(__name__, raising_function)
