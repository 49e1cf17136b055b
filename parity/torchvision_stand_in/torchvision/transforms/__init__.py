"""Every transform name is a class: building one works (vit-pytorch builds DINO's augmentations at construction,
timm subclasses `transforms.ToTensor`), calling one raises, saying that this is a stand-in."""

from torchvision._unavailable import module_getattr, transform_class
from torchvision.transforms import functional  # before __getattr__ could answer `from ... import functional`
# transformers imports it from here, as torchvision exports it in both places
from torchvision.transforms.functional import InterpolationMode

__getattr__ = module_getattr(__name__, transform_class)
