"""Parity with vit_pytorch.distill: the test configurations of `distill.DistillableViT`, `distill.DistillableT2TViT`, `distill.DistillableEfficientViT`, `distill.DistillWrapper`."""

from parity.spec import Spec
from vit_flax import distill
from vit_flax import vit
from vit_flax.vit import ViT

SPECS = {
    'DistillableViT': Spec(
        configs=(
            dict(image_size=16, patch_size=4, num_classes=10, dim=32, depth=2, heads=4, mlp_dim=64, dim_head=8),
            dict(image_size=(24, 16), patch_size=(8, 4), num_classes=7, dim=24, depth=1, heads=3, mlp_dim=32,
                 dim_head=5, channels=1, pool='mean'),
            dict(image_size=16, patch_size=8, num_classes=3, dim=16, depth=1, heads=1, mlp_dim=16, dim_head=16,
                 channels=2, emb_dropout=0.1),
        ),
        notes='vit.ViT with an optional distillation token (`distill_token=`); `to_vit()`; '
              'DistillableT2TViT / DistillableEfficientViT (forward broken in vit-pytorch) tested in test_distill.py',
    ),
    'DistillableT2TViT': Spec(
        configs=(
            dict(image_size=16, num_classes=5, dim=16, depth=1, heads=2, mlp_dim=16, dim_head=8,
                 t2t_layers=((3, 2), (3, 2))),
            dict(image_size=12, num_classes=3, dim=24, depth=2, heads=3, mlp_dim=16, dim_head=5, channels=1,
                 pool='mean', t2t_layers=((4, 4),)),
        ),
        notes="t2t.T2TViT with an optional distillation token; vit-pytorch's own DistillableT2TViT fails in every "
              'forward (a 2-D `repeat` of its 3-D cls token), so parity is with T2TViT (same state dict) and the '
              'token path is tested in test_distill.py',
    ),
    'DistillableEfficientViT': Spec(
        configs=(
            dict(image_size=16, patch_size=4, num_classes=10, dim=32,
                 transformer=vit.Transformer(dim=32, depth=1, heads=4, dim_head=8, mlp_dim=64)),
            dict(image_size=(16, 24), patch_size=8, num_classes=7, dim=24, channels=1, pool='mean',
                 transformer=vit.Transformer(dim=24, depth=2, heads=3, dim_head=5, mlp_dim=32)),
        ),
        notes="efficient.ViT with an optional distillation token; vit-pytorch's own DistillableEfficientViT fails in "
              'every forward, so parity is with efficient.ViT (same state dict) and the token path is tested in '
              'test_distill.py',
    ),
    'DistillWrapper': Spec(
        configs=(
            dict(teacher=ViT(image_size=16, patch_size=4, num_classes=5, dim=16, depth=1, heads=2, mlp_dim=16,
                             dim_head=8),
                 student=distill.DistillableViT(image_size=16, patch_size=4, num_classes=5, dim=16, depth=1, heads=2,
                                                mlp_dim=32, dim_head=8),
                 temperature=2.0, alpha=0.3),
            dict(teacher=ViT(image_size=(8, 12), patch_size=4, num_classes=4, dim=24, depth=1, heads=3, mlp_dim=16,
                             dim_head=4, channels=1, pool='mean'),
                 student=distill.DistillableViT(image_size=(8, 12), patch_size=(4, 2), num_classes=4, dim=16, depth=2,
                                                heads=2, mlp_dim=16, dim_head=8, channels=1, pool='mean'),
                 hard=True, mlp_layernorm=True),
        ),
        notes='DeiT loss from (images, labels): cross entropy + soft (KL, temperature) or hard distillation; '
              'teacher a Flax module (no gradient) or any callable',
    ),
}
