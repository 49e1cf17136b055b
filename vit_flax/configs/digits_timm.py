"""The digits run with a timm-layout ViT (`pretrained_vit.VisionTransformer`, timm's keyword names), trained from
scratch: what `vit-flax export` writes as a timm hub directory, and what vit_flax/configs/finetune.py fine-tunes
from (make finetune-demo).

    python -m vit_flax.train --config=vit_flax/configs/digits_timm.py --workdir=/tmp/digits_timm
    python -m vit_flax export --workdir=/tmp/digits_timm --out=/tmp/digits_timm_hub    # a timm hub directory

`img_size` and `in_chans` must be the data's (config.image_size, the dataset's channels), as `image_size` and
`channels` are for vit.ViT.
"""

import ml_collections

from vit_flax.configs import digits


def get_config() -> ml_collections.ConfigDict:
    config = digits.get_config()
    config.model_name = 'pretrained_vit.VisionTransformer'
    # 4x4 patches, as digits.py's: 2x2 ones learn several times slower here
    config.model = ml_collections.ConfigDict(dict(
        img_size=8, patch_size=4, in_chans=1, num_classes=10, embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0,
    ))
    return config
