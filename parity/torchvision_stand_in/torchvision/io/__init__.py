"""transformers imports `torchvision.io` at `transformers.ViTModel` time (its video and image decoders); every name
is a function that raises when called."""

from torchvision._unavailable import module_getattr, raising_function

__getattr__ = module_getattr(__name__, raising_function)
