"""Parity with timm: `pretrained_vit.VisionTransformer` against `timm.models.vision_transformer.VisionTransformer`,
the layout of the published ViT checkpoints (issue 20). The configurations cover the options those checkpoints
use; the sweep draws them together."""

import numpy as np

from parity.spec import Spec

BASE = dict(img_size=32, patch_size=8, in_chans=3, num_classes=10, embed_dim=32, depth=2, num_heads=4)


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random timm ViT: any patch and grid, heads and head width, every token, pooling and norm option timm
    combines (a class token is drawn whenever the pooling is 'token')."""
    patch = (int(rng.integers(1, 6)), int(rng.integers(1, 6)))
    grid = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
    heads = int(rng.integers(1, 4))
    global_pool = str(rng.choice(['token', 'avg', 'map', '']))
    config = dict(
        img_size=(patch[0] * grid[0], patch[1] * grid[1]), patch_size=patch, in_chans=int(rng.integers(1, 4)),
        num_classes=int(rng.integers(0, 5)), global_pool=global_pool, embed_dim=heads * int(rng.integers(1, 9)),
        depth=int(rng.integers(1, 3)), num_heads=heads, mlp_ratio=float(rng.choice([1.0, 2.0, 2.5, 4.0])),
        qkv_bias=bool(rng.random() < 0.7), qk_norm=bool(rng.random() < 0.3),
        init_values=float(rng.choice([0.1, 1e-5])) if rng.random() < 0.3 else None,
        class_token=global_pool == 'token' or bool(rng.random() < 0.5), no_embed_class=bool(rng.random() < 0.3),
        reg_tokens=int(rng.choice([0, 0, 1, 4])), pre_norm=bool(rng.random() < 0.2),
        final_norm=bool(rng.random() < 0.8), fc_norm=[None, True, False][int(rng.integers(0, 3))],
        act_layer=str(rng.choice(['gelu', 'gelu_tanh'])), dynamic_img_size=bool(rng.random() < 0.3),
    )
    size = config['img_size']
    if config['dynamic_img_size']:  # any whole number of patches: the position embedding is resampled to it
        size = tuple(p * int(rng.integers(1, 6)) for p in patch)
    shape = (2, *size, config['in_chans'])
    return config, (rng.standard_normal(shape, dtype=np.float32),)


SPECS = {
    'VisionTransformer': Spec(
        configs=(
            # one checkpoint family's options per configuration: the first is DeiT III-like with registers
            dict(BASE, reg_tokens=2, no_embed_class=True, init_values=1e-5, qk_norm=True),
            dict(BASE),  # the original ViT, DeiT, AugReg
            dict(BASE, class_token=False, global_pool='avg'),  # mean pooling with fc_norm (MAE fine-tunes)
            dict(BASE, reg_tokens=4),
            dict(BASE, reg_tokens=2, no_embed_class=True, global_pool='avg', fc_norm=False),
            dict(BASE, qkv_bias=False, act_layer='gelu_tanh'),
            dict(BASE, class_token=False, global_pool='map', pre_norm=True),  # SigLIP's MAP head
            dict(BASE, global_pool='', num_classes=0),  # every token
            dict(BASE, img_size=(32, 24), fc_norm=True, mlp_ratio=2.0),
            dict(BASE, no_embed_class=True, final_norm=False),
            dict(BASE, reg_tokens=1, dynamic_img_size=True),
        ),
        notes="timm's layout, keyword for keyword: class / register tokens, position embedding with or without "
              "the prefix rows, `qkv_bias`, qk-norm, LayerScale, pooling token / avg + fc_norm / MAP head / none, "
              'pre-norm, `dynamic_img_size`, pre-logits (`representation_size`, not in timm 1.0.31: checked against '
              'Hugging Face); '
              'the oracle is timm, not vit-pytorch',
        random_configuration=random_configuration,
    ),
}
