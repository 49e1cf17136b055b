"""Parity with vit_pytorch.dino: the test configurations and random-configuration sweep of `dino.Dino`."""

import types

import jax
import numpy as np
import torch
import torch.nn.functional as F

from parity.spec import Spec
from vit_flax import dino
from vit_flax.converters import import_vit_pytorch
from vit_flax.cvt import CvT
from vit_flax.vit import ViT


_planned_boxes: list = []  # per RandomResizedCrop call, (B, 4) boxes; consumed in call order


class torch_transforms:
    """A context manager putting a minimal torchvision.transforms in vit_pytorch.dino (and es_vit) while it is
    open: RandomResizedCrop crops each image to the next planned box (`boxes`, e.g. `Dino.crop_boxes`'s, in torch's
    call order; the whole image when none is planned, as in the constructor's mock forward) and resizes it with
    torch's antialiased bilinear F.interpolate, as torchvision does on tensors. The colour transforms can be
    built (vit-pytorch builds its DEFAULT_AUG even when given augment_fn) but not run. Re-entrant in sequence."""
    def __init__(self, boxes=None, modules=('vit_pytorch.dino', 'vit_pytorch.es_vit')):
        self.boxes = None if boxes is None else [np.asarray(b) for b in boxes]
        self.modules = modules

    def __enter__(self):
        self._saved = []
        for name in self.modules:
            module = import_vit_pytorch(name)
            self._saved.append((module, module.T))
            module.T = _torch_stand_in()
        if self.boxes is not None:
            _planned_boxes[:] = list(self.boxes)
        return self

    def __exit__(self, *exc):
        for module, saved in self._saved:
            module.T = saved
        if self.boxes is not None:
            _planned_boxes.clear()
        return False


def _torch_stand_in():
    class RandomResizedCrop(torch.nn.Module):
        def __init__(self, size, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0)):
            super().__init__()
            self.size, self.scale, self.ratio = size, scale, ratio

        def forward(self, img):
            height, width = img.shape[-2:]
            boxes = _planned_boxes.pop(0) if _planned_boxes else np.tile([0, 0, height, width], (img.shape[0], 1))
            crops = [F.interpolate(image[None, :, top:top + h, left:left + w], size=self.size, mode='bilinear',
                                   align_corners=False, antialias=True)
                     for image, (top, left, h, w) in zip(img, boxes.tolist())]
            return torch.cat(crops)

    class _NotRun(torch.nn.Module):
        def __init__(self, *args, **kwargs):
            super().__init__()

        def forward(self, x):
            raise NotImplementedError(f'{type(self).__name__} is not part of the torchvision stand-in; pass '
                                      'augment_fn / augment_fn2 to vit-pytorch')

    names = ('ColorJitter', 'RandomGrayscale', 'RandomHorizontalFlip', 'GaussianBlur', 'Normalize')
    return types.SimpleNamespace(RandomResizedCrop=RandomResizedCrop,
                                 **{name: type(name, (_NotRun,), {}) for name in names})


def draws(model, inputs: tuple, seed: int = 0):
    """Dino and EsViT crop (and augment) in every call: the Flax rngs for a call on `inputs`, and a context under
    which vit-pytorch's crops (the torchvision stand-in, `torch_transforms`) cut the very boxes of the Flax call.
    Parity needs identity augmentations on both sides (the configurations' `RandomApply(L2Norm(), p=0.)`)."""
    streams = model.rng_streams
    rngs = dict(zip(streams, jax.random.split(jax.random.key(seed), len(streams))))
    boxes = model.apply({}, *inputs, rngs=rngs, method=type(model).crop_boxes)
    return rngs, torch_transforms(np.asarray(boxes))


# augmentation off on both sides: RandomApply(L2Norm(), p=0.) is the identity in vit-pytorch too
IDENTITY_AUGMENTS = dict(augment_fn=dino.RandomApply(dino.L2Norm(), p=0.0),
                         augment_fn2=dino.RandomApply(dino.L2Norm(), p=0.0))


def random_cvt(rng: np.random.Generator, deep_stages=()) -> CvT:
    """A random small CvT on 3 channels (vit-pytorch's learners build with a 3-channel mock forward): every stage
    keyword, strides of at most 2, one layer or none per stage (one in each of `deep_stages`, 1 to 3)."""
    config = dict(num_classes=int(rng.integers(1, 5)))
    for stage in (1, 2, 3):
        prefix = f's{stage}'
        config.update({
            f'{prefix}_emb_dim': int(rng.integers(4, 13)),
            f'{prefix}_emb_kernel': int(rng.integers(1, 5)),
            f'{prefix}_emb_stride': int(rng.integers(1, 3)),
            f'{prefix}_proj_kernel': int(rng.choice([1, 3])),
            f'{prefix}_kv_proj_stride': int(rng.integers(1, 3)),
            f'{prefix}_heads': int(rng.integers(1, 3)),
            f'{prefix}_depth': 1 if stage in deep_stages else int(rng.random() < 0.4),
            f'{prefix}_mlp_mult': int(rng.integers(1, 3)),
        })
    return CvT(**config)


def random_learner_keywords(rng: np.random.Generator) -> dict:
    """What Dino and EsViTTrainer share, drawn at random: classes, temperatures and crop scales."""
    return dict(num_classes_K=int(rng.integers(4, 41)), student_temp=float(rng.uniform(0.1, 1.0)),
                teacher_temp=float(rng.uniform(0.02, 0.2)), local_upper_crop_scale=float(rng.uniform(0.1, 0.6)),
                global_lower_crop_scale=float(rng.uniform(0.3, 0.9)), **IDENTITY_AUGMENTS)


def learner_images(rng: np.random.Generator, image_size: int) -> np.ndarray:
    """2 or 3 random RGB images of any size from half to twice the crops' (the learner crops and resizes them)."""
    height, width = (int(side) for side in rng.integers(image_size // 2 + 1, 2 * image_size + 1, size=2))
    return rng.standard_normal((int(rng.integers(2, 4)), height, width, 3), dtype=np.float32)


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random Dino (crop size and scales, temperatures, projector depth and width, K) on a random ViT whose
    image_size is the crop size, hooked at the pooled token, the transformer, one of its blocks or the logits, by
    name or index; or on a random CvT hooked at its feature map. Images of any size."""
    if rng.random() < 0.25:
        image_size, net = int(rng.integers(8, 17)), random_cvt(rng)
        hidden_layer = ('layers', -2)[int(rng.integers(2))]
        embedding = None  # a flattened feature map, whose size is the CvT's arithmetic: no one-layer projector
    else:
        image_size = int(rng.choice([2, 4])) * int(rng.integers(2, 5))
        grid = int(rng.choice([g for g in (1, 2, 4) if image_size % g == 0]))
        depth, pool = int(rng.integers(1, 3)), str(rng.choice(['cls', 'mean']))
        net = ViT(image_size=image_size, patch_size=image_size // grid, num_classes=int(rng.integers(1, 5)),
                  dim=int(rng.integers(8, 17)), depth=depth, heads=int(rng.integers(1, 4)),
                  mlp_dim=int(rng.integers(8, 17)), dim_head=int(rng.integers(4, 9)), pool=pool)
        tokens = grid * grid + (pool == 'cls')
        block = f'transformer.layers.{int(rng.integers(depth))}.{int(rng.integers(2))}'
        hidden_layer, embedding = [('to_latent', net.dim), (-2, net.dim), ('transformer', tokens * net.dim),
                                   (-3, tokens * net.dim), (block, tokens * net.dim),
                                   (-1, net.num_classes)][int(rng.integers(6))]
    projection_layers = int(rng.integers(1 if embedding else 2, 4))
    projection_hidden_size = embedding if projection_layers == 1 else int(rng.integers(4, 17))
    config = dict(net=net, image_size=image_size, hidden_layer=hidden_layer, projection_layers=projection_layers,
                  projection_hidden_size=projection_hidden_size, **random_learner_keywords(rng))
    return config, (learner_images(rng, image_size),)


SPECS = {
    'Dino': Spec(
        draws=draws,
        torch_construction=torch_transforms,
        # augmentation off on both sides (RandomApply(L2Norm(), p=0.) is the identity in vit-pytorch too); crops
        # shared through CroppedImages; num_classes_K < 64 keeps init's mock-forward `last_teacher_centers` out of
        # the init-distribution test (torch's come from its constructor's random images)
        configs=(
            dict(net=ViT(image_size=16, patch_size=8, num_classes=5, dim=16, depth=1, heads=2, mlp_dim=16, dim_head=8),
                 image_size=16, hidden_layer='to_latent', projection_hidden_size=16, projection_layers=2,
                 num_classes_K=32, **IDENTITY_AUGMENTS),
            # mean pool, default hidden layer (-2: to_latent), 3-layer projector, other temperatures and scales
            dict(net=ViT(image_size=12, patch_size=4, num_classes=3, dim=12, depth=2, heads=3, mlp_dim=16, dim_head=4,
                         pool='mean'),
                 image_size=12, projection_hidden_size=8, projection_layers=3, num_classes_K=24, student_temp=0.5,
                 teacher_temp=0.07, local_upper_crop_scale=0.3, global_lower_crop_scale=0.6, **IDENTITY_AUGMENTS),
        ),
        random_configuration=random_configuration,
        sweep_draws=3,
        notes="self-distillation loss (rng streams 'augment' and 'crop', even in eval mode): per-image JAX "
              "augmentations and random resized crops, student and EMA teacher (`update_moving_average`, "
              "`trainable_mask`); `params['student_encoder']['net']` is the plain encoder's; hidden layer by name "
              "or index (`to_latent`, a method such as CvT's `layers`, a submodule)",
    ),
}
