"""timm imports `torchvision.ops.misc.FrozenBatchNorm2d` at `import timm` (its norm-layer tables); no ViT uses it."""
