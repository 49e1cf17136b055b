"""EsViT (Li et al., 2021, "Efficient Self-supervised Vision Transformers for Representation Learning"),
mirroring vit_pytorch/es_vit.py: DINO's self-distillation with a second, region-level loss on the feature map of
a hierarchical (multi-stage) encoder, e.g. cvt.CvT.

    learner = EsViTTrainer(net=CvT(...), image_size=256, hidden_layer='layers', projection_hidden_size=256,
                           projection_layers=4, num_classes_K=65336, student_temp=0.9, teacher_temp=0.04,
                           local_upper_crop_scale=0.4, global_lower_crop_scale=0.5,
                           moving_average_decay=0.9, center_moving_average_decay=0.9)
    variables = learner.init({'params': key}, images)                  # teacher = a copy of the student
    loss, updates = learner.apply(variables, images, train=True, mutable=['buffers', 'batch_stats'],
                                  rngs={'augment': k1, 'crop': k2, 'dropout': k3})
    # optimiser step on variables['params'] with optax.masked(..., learner.trainable_mask(params)), then
    variables = learner.after_step({**variables, **updates})          # the EMA with the learner's decays
    encoder_params = variables['params']['student_encoder']['net']     # a plain CvT's params

Everything but the losses and the wrapper's outputs is dino.py's, imported from there: the per-image JAX
augmentations (rng stream 'augment'), the random resized crops (stream 'crop', `EsViTTrainer.crop_boxes`),
`rng_streams = ('augment', 'crop')`, the projector MLP, the hidden-layer capture, the EMA (`update_moving_average`
and `EsViTTrainer.after_step` here move the four centre buffers), `trainable_mask`, `reset_moving_average` and the
torchvision stand-in for tests (`parity/dino.py: torch_transforms` covers vit_pytorch.es_vit too). Dropout inside the
encoder uses 'dropout' with `train=True`; a CvT's BatchNorm statistics (student's and teacher's, each its own as torch's
deep copy) update with `mutable=['batch_stats']` in training mode.

Variables mirror vit-pytorch's state dict: `params/student_encoder/net` (the wrapped encoder, exactly a plain
encoder's params; its BatchNorm statistics in `batch_stats/student_encoder/net`),
`params/student_encoder/view_projector/net_{i}` and `params/student_encoder/region_projector/net_{i}` (two MLPs
from the feature map's channels), `params/teacher_encoder/...` (the same tree: the EMA teacher, in 'params' so the
state dict transfers, with no gradient; `trainable_mask(params)` keeps optimisers off it), and the buffers
`buffers/teacher_view_centers`, `last_teacher_view_centers`, `teacher_region_centers`,
`last_teacher_region_centers` (each (1, num_classes_K)). As in Dino, torch's state dict repeats
`student_encoder.net.*` as `net.*` (`torch_aliases`). `__call__` with `mutable=['buffers']` returns the new
`last_teacher_*_centers`, as torch's forward sets them.

The losses (Algorithm 1 of the DINO paper, twice): the view loss is DINO's on the projections of the pooled
feature map (student on local crops against the centred, sharpened teacher on the global crops of the other view);
the region loss projects every position of the map (`b (h w) c`) and matches each student region with the
teacher region of the other view whose (unprojected) latent has the largest dot product with it, then takes the
same cross-entropy against that teacher region's distribution. The loss is the mean of the two.

`hidden_layer` is dino.py's (by name, method name, torch dotted submodule name, or an index into torch's
children), but it must yield a 4-D feature map (channels-last (B, h, w, c) here, torch's (b, c, h, w)): for cvt.CvT
`'layers'` (vit-pytorch's README, = `-2`, the default) or a stage's transformer (`'layers.0.2'`, `'layers.1.2'`,
`'layers.2.2'`); any encoder works whose named layer or method gives such a map. A token sequence (vit.ViT's
`'transformer'`) or a pooled vector (`'to_latent'`, `-1` on a classifier) is a ValueError at the first call (torch
fails in its rearrange). `return_embedding=True, return_projection=False` returns (global latent (B, c), the
feature map) with the map channels-last (B, h, w, c), where torch returns (b, c, h, w).

Quirks of vit-pytorch kept so weights transfer: those of dino.py (the projector's `projection_layers - 1` Linear +
GELU pairs, then L2 normalisation and the last Linear; `image_size` one int; the teacher runs in the learner's
mode; init's teacher is a copy of the student and init's `last_*_centers` come from the example input). torch's
constructor runs that mock forward in training mode, so a fresh torch learner's BatchNorm running statistics have
taken one step (student two, teacher four) on random images and count those batches; Flax's init keeps the
initial statistics (eval mode) and no counter (`parity/es_vit.py: torch_construction()` resets torch's counters for the
registry's round trips). The region
matching uses the raw dot product of the latents as vit-pytorch does (the paper's cosine similarity would normalise
them first); the log of the student's probabilities is `log_softmax` (torch's log(softmax + 1e-20) differs only
for probabilities below ~1e-13).

Where this differs from vit-pytorch 1.26.11 (the intended behaviour):
- vit-pytorch's `L2Norm` normalises over dim=1. That is the feature axis of the view projector's (b, d) input, but
  on the region projector's (b, h*w, d) input it is the token axis: every region's hidden vector is divided by a
  norm taken across the regions of its image, per feature, so one region's projection depends on all the others
  and the vectors entering the last Linear are not unit vectors. The projector (DINO's head, which EsViT applies
  per region) means each vector normalised over its features, which is what this port does (dino.l2norm, the last
  axis) for both projectors. The parity tests run torch with `parity/es_vit.py: torch_l2norm_over_features()`, which
  makes its L2Norm normalise over dim=-1 (identical on the view projector's 2-D input).
- As in dino.py, every image gets its own augmentation and crop draw (torchvision on a batch tensor draws once per
  batch).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_flax import dino
from vit_flax.dino import (AUGMENT, CROP, EMA, MLP, DefaultAugment, FlipAndBlur, L2Norm, RandomApply,  # noqa: F401
                           reset_moving_average, trainable_mask)
from vit_flax.layers import check_floating_input, default

CENTERS = (('teacher_view_centers', 'last_teacher_view_centers'),
           ('teacher_region_centers', 'last_teacher_region_centers'))

# loss functions # (algorithm 1 in the paper)

view_loss_fn = dino.loss_fn


def region_loss_fn(teacher_logits, student_logits, teacher_latent, student_latent, teacher_temp, student_temp,
                   centers, eps=1e-20):
    """Per student region (b, n, K), the cross-entropy against the teacher region (b, m, K) whose latent has the
    largest dot product with the student region's latent ((b, n, c) against (b, m, c))."""
    teacher_logits = jax.lax.stop_gradient(teacher_logits)
    student_log_probs = jax.nn.log_softmax(student_logits / student_temp, axis=-1)
    teacher_probs = jax.nn.softmax((teacher_logits - centers) / teacher_temp, axis=-1)

    sim_matrix = jnp.einsum('bid,bjd->bij', student_latent, teacher_latent)
    sim_indices = jnp.argmax(jax.lax.stop_gradient(sim_matrix), axis=-1)  # (b, n)
    max_sim_teacher_probs = jnp.take_along_axis(teacher_probs, sim_indices[..., None], axis=1)

    return -(max_sim_teacher_probs * student_log_probs).sum(axis=-1).mean()


# exponential moving average


def update_moving_average(variables, moving_average_decay: float = 0.9, center_moving_average_decay: float = 0.9):
    """torch's `learner.update_moving_average()` as a pure function of the variables: teacher <- decay * teacher +
    (1 - decay) * student (parameters only: BatchNorm statistics are each encoder's own, as in torch), and the view
    and region centres <- the EMA of their `last_...` buffers. Call it after the optimiser step, with the buffers
    `__call__` returned."""
    return dino.update_moving_average(variables, moving_average_decay, center_moving_average_decay, centers=CENTERS)


# a wrapper class for the base neural network: the hidden feature map, pooled and per region, and both projections


class NetWrapper(dino.NetWrapper):
    """(view projection (B, K), region projections (B, h*w, K), region latents (B, h*w, c)), or with
    `return_projection=False` (global latent (B, c), feature map (B, h, w, c))."""

    def get_embedding(self, x, train: bool = False):
        hidden = self.get_hidden(x, train)
        if hidden.ndim != 4:
            raise ValueError(
                f'EsViT needs a feature map (batch, height, width, channels) from its hidden layer, but '
                f'hidden_layer={self.layer!r} of {type(self.net).__name__} gives shape {hidden.shape}; name a layer '
                f"of a hierarchical encoder that outputs one (cvt.CvT: 'layers')"
            )
        return hidden

    @nn.compact
    def __call__(self, x, return_projection: bool = True, train: bool = False):
        region_latents = self.get_embedding(x, train)
        global_latent = region_latents.mean(axis=(1, 2))

        if not return_projection:
            return global_latent, region_latents

        dim = region_latents.shape[-1]
        view_projector = MLP(dim, self.output_dim, self.projection_num_layers, self.projection_hidden_size,
                             name='view_projector')
        region_projector = MLP(dim, self.output_dim, self.projection_num_layers, self.projection_hidden_size,
                               name='region_projector')

        region_latents = region_latents.reshape(region_latents.shape[0], -1, dim)  # torch's b (h w) c
        return view_projector(global_latent), region_projector(region_latents), region_latents


# main class


class EsViTTrainer(dino.Dino):
    """vit-pytorch's EsViTTrainer: the keywords, defaults and checks of dino.Dino (`hidden_layer=-2` is CvT's
    `layers`)."""

    @nn.nowrap
    def after_step(self, variables):
        """The EMA of the teacher and the view and region centres after an optimiser step, with this learner's
        decays."""
        return update_moving_average(variables, self.moving_average_decay, self.center_moving_average_decay)

    def _encoder(self, name):
        return NetWrapper(self.net.clone(), self.num_classes_K, self.projection_hidden_size, self.projection_layers,
                          layer=self.hidden_layer, name=name)

    @nn.compact
    def __call__(self, x, return_embedding: bool = False, return_projection: bool = True, student_temp=None,
                 teacher_temp=None, train: bool = False):
        check_floating_input(self, 'x', x)
        if x.ndim != 4:
            raise ValueError(f'expected images of shape (batch, height, width, channels), got shape {x.shape}')
        student_encoder = self._encoder('student_encoder')
        teacher_encoder = self._encoder('teacher_encoder')
        buffers = {name: self.variable('buffers', name, jnp.zeros, (1, self.num_classes_K))
                   for pair in CENTERS for name in pair}

        if return_embedding:
            return student_encoder(x, return_projection=return_projection, train=train)

        image_one = self._augment(self.augment_fn, 'augment1', x)
        image_two = self._augment(self.augment_fn2, 'augment2', x)

        boxes = self.crop_boxes(x)
        crop = lambda images, b: dino.resized_crop(images, b, self.image_size)
        local_image_one, local_image_two = crop(image_one, boxes[0]), crop(image_two, boxes[1])
        global_image_one, global_image_two = crop(image_one, boxes[2]), crop(image_two, boxes[3])

        student_view_proj_one, student_region_proj_one, student_latent_one = student_encoder(local_image_one,
                                                                                             train=train)
        student_view_proj_two, student_region_proj_two, student_latent_two = student_encoder(local_image_two,
                                                                                             train=train)

        teacher_one = jax.lax.stop_gradient(teacher_encoder(global_image_one, train=train))
        teacher_two = jax.lax.stop_gradient(teacher_encoder(global_image_two, train=train))
        teacher_view_proj_one, teacher_region_proj_one, teacher_latent_one = teacher_one
        teacher_view_proj_two, teacher_region_proj_two, teacher_latent_two = teacher_two

        temps = dict(student_temp=default(student_temp, self.student_temp),
                     teacher_temp=default(teacher_temp, self.teacher_temp))
        view_centers = buffers['teacher_view_centers'].value
        region_centers = buffers['teacher_region_centers'].value

        # the centres torch's forward sets
        if self.is_mutable_collection('buffers'):
            view_avg = jnp.concatenate((teacher_view_proj_one, teacher_view_proj_two)).mean(axis=0)
            region_avg = jnp.concatenate((teacher_region_proj_one, teacher_region_proj_two)).mean(axis=(0, 1))
            for name, avg in (('last_teacher_view_centers', view_avg), ('last_teacher_region_centers', region_avg)):
                buffers[name].value = avg[None].astype(buffers[name].value.dtype)

        # view-level loss
        view_loss = (view_loss_fn(teacher_view_proj_one, student_view_proj_two, centers=view_centers, **temps)
                     + view_loss_fn(teacher_view_proj_two, student_view_proj_one, centers=view_centers, **temps)) / 2

        # region-level loss
        region_loss = (region_loss_fn(teacher_region_proj_one, student_region_proj_two, teacher_latent_one,
                                      student_latent_two, centers=region_centers, **temps)
                       + region_loss_fn(teacher_region_proj_two, student_region_proj_one, teacher_latent_two,
                                        student_latent_one, centers=region_centers, **temps)) / 2

        return (view_loss + region_loss) / 2
