"""Not torchvision: a stand-in so that `import vit_pytorch` and `import timm` work where no torchvision matches the
installed torch.

vit-pytorch imports `torchvision.transforms` (as T) for DINO's, EsViT's and JEPA's default augmentations; building
those transforms works, running one raises. The parity tests replace `T` in vit_pytorch.dino and vit_pytorch.es_vit
with crops that replay Flax's draws (parity/dino.py). timm imports transforms (it subclasses `ToTensor`),
`transforms.functional.InterpolationMode`, dataset classes and `ops.misc.FrozenBatchNorm2d` at `import timm`; its ViTs use none of
them."""

from torchvision import transforms

__version__ = '0+stand.in.2'
STAND_IN = True
__all__ = ['transforms']
