"""Parity with vit_pytorch.distill: the test configurations and random-configuration sweeps of
`distill.DistillableViT`, `distill.DistillableT2TViT`, `distill.DistillableEfficientViT`, `distill.DistillWrapper`.

vit-pytorch's DistillableT2TViT and DistillableEfficientViT fail in every forward: their twins are the plain
t2t.T2TViT and efficient.ViT (the registry's `torch_name`), so their sweeps are those classes' own."""

import numpy as np

from parity import efficient as efficient_parity
from parity import t2t as t2t_parity
from parity.spec import Spec
from vit_flax import distill
from vit_flax import vit
from vit_flax.vit import ViT


def random_distillable_vit_keywords(rng: np.random.Generator) -> dict:
    """Random DistillableViT keywords (rectangular patches and grids, channels, heads, both pools, at least one
    class: vit-pytorch's forward needs its head)."""
    patch = (int(rng.choice([2, 4])), int(rng.choice([2, 4])))
    return dict(
        image_size=(patch[0] * int(rng.integers(1, 4)), patch[1] * int(rng.integers(1, 4))), patch_size=patch,
        num_classes=int(rng.integers(1, 5)), dim=int(rng.choice([8, 12, 16])), depth=int(rng.integers(1, 3)),
        heads=int(rng.integers(1, 4)), mlp_dim=int(rng.integers(4, 20)), dim_head=int(rng.choice([4, 8])),
        channels=int(rng.integers(1, 4)), pool=str(rng.choice(['cls', 'mean'])),
    )


def random_distillable_vit(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random DistillableViT and images of its image_size (without a distillation token: the registry's input;
    tests/test_distill.py runs the token path on the same configurations)."""
    config = random_distillable_vit_keywords(rng)
    return config, (rng.standard_normal((2, *config['image_size'], config['channels']), dtype=np.float32),)


def random_distill_wrapper(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random DistillWrapper (soft or hard, with or without the LayerNorm, temperature, alpha) from a random ViT
    teacher to a random DistillableViT student of the same images and classes, and (images, labels); labels after
    the first may be -100 (ignored: one counted label keeps the cross entropy's mean defined)."""
    student = random_distillable_vit_keywords(rng)
    teacher = ViT(image_size=student['image_size'], patch_size=student['patch_size'],
                  num_classes=student['num_classes'], dim=int(rng.choice([8, 16])), depth=1,
                  heads=int(rng.integers(1, 3)), mlp_dim=16, dim_head=int(rng.choice([4, 8])),
                  channels=student['channels'], pool=str(rng.choice(['cls', 'mean'])))
    config = dict(teacher=teacher, student=distill.DistillableViT(**student),
                  temperature=float(rng.choice([0.5, 1.0, 3.0])), alpha=float(rng.uniform(0.0, 1.0)),
                  hard=bool(rng.integers(2)), mlp_layernorm=bool(rng.integers(2)))
    batch = 3
    images = rng.standard_normal((batch, *student['image_size'], student['channels']), dtype=np.float32)
    labels = rng.integers(0, student['num_classes'], batch).astype(np.int32)
    labels[1:][rng.random(batch - 1) < 0.3] = -100
    return config, (images, labels)


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
        random_configuration=random_distillable_vit,
        sweep_draws=4,
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
        random_configuration=t2t_parity.random_configuration,
        sweep_draws=4,
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
        random_configuration=efficient_parity.random_configuration,
        sweep_draws=4,
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
        random_configuration=random_distill_wrapper,
        sweep_draws=4,
    ),
}
