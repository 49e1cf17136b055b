"""vit-flax: the vit-pytorch zoo of Vision Transformers in JAX / Flax linen, with weights both ways.

The same top-level names as vit_pytorch; every architecture lives in the file of the same name
(`from vit_flax.vit import ViT` as `from vit_pytorch.vit import ViT`).
"""

from vit_flax.vit import ViT
from vit_flax.simple_vit import SimpleViT

from vit_flax.mae import MAE
from vit_flax.dino import Dino

from vit_flax.looped_vit import LoopedViT

__all__ = ['ViT', 'SimpleViT', 'MAE', 'Dino', 'LoopedViT']
__version__ = '0.1.0'
