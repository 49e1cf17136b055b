"""timm imports `FrozenBatchNorm2d` at `import timm` (its norm-layer tables and isinstance checks); building one
raises, and no ViT does."""

from torchvision._unavailable import unbuildable_class

FrozenBatchNorm2d = unbuildable_class(__name__, 'FrozenBatchNorm2d')
