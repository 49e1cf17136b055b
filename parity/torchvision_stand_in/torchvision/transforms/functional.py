"""`InterpolationMode` as torchvision defines it (timm builds its interpolation tables from it at import);
every other name is a function that raises."""

from enum import Enum

from torchvision._unavailable import module_getattr, raising_function


class InterpolationMode(Enum):
    NEAREST = 'nearest'
    NEAREST_EXACT = 'nearest-exact'
    BILINEAR = 'bilinear'
    BICUBIC = 'bicubic'
    BOX = 'box'
    HAMMING = 'hamming'
    LANCZOS = 'lanczos'


__getattr__ = module_getattr(__name__, raising_function)
