"""timm's dataset factory imports torchvision's dataset classes at `import timm`; every name is a class that raises
when built."""

from torchvision._unavailable import module_getattr, unbuildable_class

__getattr__ = module_getattr(__name__, unbuildable_class)
