"""torchaudio.transforms.Spectrogram, as torchaudio writes it (torchaudio/transforms/_transforms.py); the module's
other transforms raise when built."""

import warnings
from typing import Callable, Optional, Union

import torch
from torch import Tensor

from torchaudio import functional as F
from torchaudio._unavailable import module_getattr, unbuildable_class

__all__ = ['Spectrogram']


class Spectrogram(torch.nn.Module):
    """A spectrogram of waveforms (..., time), (..., n_fft // 2 + 1, frames), by torchaudio.functional.spectrogram.
    `win_length` defaults to `n_fft` and `hop_length` to `win_length // 2`; the window, `window_fn(win_length)`
    (the periodic Hann window by default), is the persistent buffer `window`, so it is in the state dict."""

    __constants__ = ['n_fft', 'win_length', 'hop_length', 'pad', 'power', 'normalized']

    def __init__(
        self,
        n_fft: int = 400,
        win_length: Optional[int] = None,
        hop_length: Optional[int] = None,
        pad: int = 0,
        window_fn: Callable[..., Tensor] = torch.hann_window,
        power: Optional[float] = 2.0,
        normalized: Union[bool, str] = False,
        wkwargs: Optional[dict] = None,
        center: bool = True,
        pad_mode: str = 'reflect',
        onesided: bool = True,
        return_complex: Optional[bool] = None,
    ) -> None:
        super().__init__()
        self.n_fft = n_fft
        # number of FFT bins. the returned STFT result will have n_fft // 2 + 1
        # number of frequencies due to onesided=True in torch.stft
        self.win_length = win_length if win_length is not None else n_fft
        self.hop_length = hop_length if hop_length is not None else self.win_length // 2
        window = window_fn(self.win_length) if wkwargs is None else window_fn(self.win_length, **wkwargs)
        self.register_buffer('window', window)
        self.pad = pad
        self.power = power
        self.normalized = normalized
        self.center = center
        self.pad_mode = pad_mode
        self.onesided = onesided
        if return_complex is not None:
            warnings.warn(
                '`return_complex` argument is now deprecated and is not effective.'
                '`torchaudio.transforms.Spectrogram(power=None)` always returns a tensor with '
                'complex dtype. Please remove the argument in the function call.'
            )

    def forward(self, waveform: Tensor) -> Tensor:
        return F.spectrogram(
            waveform,
            self.pad,
            self.window,
            self.n_fft,
            self.hop_length,
            self.win_length,
            self.power,
            self.normalized,
            self.center,
            self.pad_mode,
            self.onesided,
        )


__getattr__ = module_getattr(__name__, unbuildable_class)
