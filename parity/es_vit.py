"""Parity with vit_pytorch.es_vit: the test configurations and random-configuration sweep of `es_vit.EsViTTrainer`."""

import contextlib

import numpy as np
import torch
import torch.nn.functional as F

from parity.dino import IDENTITY_AUGMENTS, draws, learner_images, random_cvt, random_learner_keywords, torch_transforms
from parity.spec import Spec
from vit_flax.converters import import_vit_pytorch
from vit_flax.cvt import CvT


@contextlib.contextmanager
def torch_l2norm_over_features():
    """While open, vit_pytorch.es_vit's L2Norm normalises over the last (feature) axis instead of dim=1 (the token
    axis of the region projector's (b, h*w, d) input; the same axis on the view projector's (b, d)): the smallest
    patch that makes vit-pytorch compute the intended EsViT projector."""
    module = import_vit_pytorch('vit_pytorch.es_vit')
    saved = module.L2Norm.forward

    def forward(self, x, eps=1e-6):
        return F.normalize(x, dim=-1, eps=eps)

    module.L2Norm.forward = forward
    try:
        yield
    finally:
        module.L2Norm.forward = saved


@contextlib.contextmanager
def torch_construction():
    """vit-pytorch's EsViTTrainer built as the registry's tests build it: under the torchvision stand-in
    (`parity.dino.torch_transforms`), with every BatchNorm's `num_batches_tracked` set back to 0 after its constructor.
    That constructor runs a training-mode mock forward, which counts 2 (student) and 4 (teacher) batches in a
    CvT's BatchNorms; Flax keeps no such counter (the converters write torch's initial 0; it matters only for
    momentum=None, which CvT does not use), so a fresh torch learner would not round-trip bit-exactly."""
    trainer = import_vit_pytorch('vit_pytorch.es_vit').EsViTTrainer
    saved = trainer.__init__

    def __init__(self, *args, **kwargs):
        saved(self, *args, **kwargs)
        for module in self.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.num_batches_tracked is not None:
                module.num_batches_tracked.zero_()

    trainer.__init__ = __init__
    try:
        with torch_transforms():
            yield
    finally:
        trainer.__init__ = saved


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random EsViTTrainer (crop size and scales, temperatures, projector depth and width, K) on a random CvT
    hooked at a feature map: the last (`'layers'`, -2) or a stage's transformer (`'layers.{i}.2'`), with one-layer
    projectors when their width is the map's channels. Images of any size."""
    stage = int(rng.integers(1, 4))
    hidden_layer = f'layers.{stage - 1}.2' if stage < 3 or rng.random() < 0.3 else ('layers', -2)[int(rng.integers(2))]
    net = random_cvt(rng, deep_stages=(stage,))
    projection_layers = int(rng.integers(1, 4))
    channels = getattr(net, f's{stage}_emb_dim')
    projection_hidden_size = channels if projection_layers == 1 else int(rng.integers(4, 17))
    image_size = int(rng.integers(8, 17))
    config = dict(net=net, image_size=image_size, hidden_layer=hidden_layer, projection_layers=projection_layers,
                  projection_hidden_size=projection_hidden_size, **random_learner_keywords(rng))
    return config, (learner_images(rng, image_size),)


SPECS = {
    'EsViTTrainer': Spec(
        # as dino.Dino's: augmentation off on both sides, crops shared through CroppedImages, num_classes_K < 64;
        # torch's L2Norm normalises the region projector over its features (es_vit.torch_l2norm_over_features)
        configs=(
            dict(net=CvT(num_classes=3, s1_emb_dim=8, s1_emb_kernel=3, s1_emb_stride=2, s1_heads=1, s2_emb_dim=12,
                         s2_heads=2, s2_depth=1, s3_emb_dim=8, s3_heads=1, s3_depth=1, s3_emb_stride=2),
                 image_size=16, hidden_layer='layers', projection_hidden_size=12, projection_layers=2,
                 num_classes_K=32, **IDENTITY_AUGMENTS),
            # default hidden layer (-2: CvT's layers), a 3 x 3 map, 3-layer projector, other temperatures and scales
            dict(net=CvT(num_classes=2, s1_emb_dim=6, s1_emb_kernel=3, s1_emb_stride=2, s1_heads=1, s2_emb_dim=8,
                         s2_heads=1, s2_depth=1, s2_kv_proj_stride=1, s3_emb_dim=10, s3_heads=2, s3_depth=1,
                         s3_emb_stride=1, s3_proj_kernel=1),
                 image_size=12, projection_hidden_size=8, projection_layers=3, num_classes_K=24, student_temp=0.5,
                 teacher_temp=0.07, local_upper_crop_scale=0.3, global_lower_crop_scale=0.6, **IDENTITY_AUGMENTS),
        ),
        draws=draws,
        random_configuration=random_configuration,
        sweep_draws=2,
        torch_construction=torch_construction,
        torch_context=torch_l2norm_over_features,
        notes="DINO's view loss plus a region loss on a hierarchical encoder's feature map (CvT: hidden_layer="
              "'layers'); rng streams 'augment' and 'crop' (dino.py's augmentations and crops), EMA teacher "
              "(`update_moving_average`, `trainable_mask`), `params['student_encoder']['net']` is the plain "
              "encoder's; vit-pytorch's L2Norm over the region tokens fixed to the feature axis",
    ),
}
