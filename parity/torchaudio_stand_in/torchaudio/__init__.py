"""Not torchaudio: a stand-in so that `import vit_pytorch.vaat` works where no torchaudio matches the installed torch.

vit-pytorch's vaat.py imports `torchaudio.transforms.Spectrogram`, which this package provides as torchaudio
computes it (on torch.stft, see torchaudio.functional.spectrogram here); every other name of the package raises
when called or built, saying that this is a stand-in."""

from torchaudio import functional, transforms
from torchaudio._unavailable import module_getattr, raising_function

__version__ = '0+stand.in.1'
STAND_IN = True
__all__ = ['functional', 'transforms']

__getattr__ = module_getattr(__name__, raising_function)
