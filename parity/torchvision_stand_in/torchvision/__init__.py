"""Not torchvision: a stand-in so that `import vit_pytorch` works where no torchvision matches the installed torch.

vit-pytorch imports `torchvision.transforms` (as T) for DINO's, EsViT's and JEPA's default augmentations; building
those transforms works, running one raises. The parity tests replace `T` in vit_pytorch.dino and vit_pytorch.es_vit
with crops that replay Flax's draws (parity/dino.py)."""

from torchvision import transforms

__version__ = '0+stand.in'
STAND_IN = True
__all__ = ['transforms']
