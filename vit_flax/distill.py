"""Distillation through a token (DeiT, Touvron et al., 2020), mirroring vit_pytorch/distill.py.

`DistillableViT`, `DistillableT2TViT` and `DistillableEfficientViT` are vit.ViT, t2t.T2TViT and efficient.ViT
with the same keywords, the same parameter tree (their weights load into the plain classes and back) and a
forward pass that optionally appends a distillation token:

    logits = model.apply(variables, img)                                   # as the plain class
    logits, distill_tokens = model.apply(variables, img, distill_token=t)  # t: (n, dim), usually (1, dim)

The distillation tokens are appended after the position embedding (they get none), go through the transformer
with the others, and the last one comes back as `distill_tokens` (batch, dim); the rest are pooled as usual.
`to_vit()` returns the plain module with the same keywords; the distillable model's variables work with it
unchanged.

`DistillWrapper(teacher=..., student=..., temperature, alpha, hard, mlp_layernorm)` returns the DeiT loss
`(1 - alpha) * CE(student_logits, labels) + alpha * distill_loss` from `(img, labels)`; `distill_loss` is
T^2 * KL(softmax(teacher / T) || softmax(distill / T)) (batch mean), or with `hard=True` the cross entropy
against the teacher's argmax. The `teacher` is a Flax module (its variables live under `params/teacher`, like
torch's `teacher.*` state-dict keys, and get no gradient) or any callable images -> logits. It runs with the
wrapper's `train` flag, as torch's teacher runs in the wrapper's mode (only its gradient is stopped). The
student's variables live under `student`, the wrapper's own under `distillation_token` and `distill_mlp_{0,1}`.

Quirks of vit-pytorch kept so weights transfer:
- DistillableViT: the embedding dropout (`emb_dropout`) comes after the distillation token is appended, so it
  drops the token's entries too; DistillableEfficientViT has no dropout.
- `DistillWrapper(mlp_layernorm=False)` has no `distill_mlp.0` (torch's Identity), only `distill_mlp.1`.
- The cross entropies ignore labels equal to -100 (torch's `ignore_index`): the mean runs over the others.

vit-pytorch 1.26.11 bugs, fixed here (each noted where it differs):
- `DistillableT2TViT` and `DistillableEfficientViT` cannot run a forward pass in vit-pytorch:
  `DistillMixin.forward` does `repeat(self.cls_token, 'n d -> b n d')` and `self.pos_embedding[:(n + 1)]`,
  written for vit.ViT's 2-D parameters, while T2TViT and efficient.ViT keep (1, 1, dim) and (1, n + 1, dim)
  ones, so einops raises ("expected 2 dims"), with or without a distillation token. Here they work on their
  own parameter shapes: without a distillation token they equal the plain classes (and vit-pytorch's plain
  T2TViT / efficient.ViT on the same state dict); so the torch `DistillWrapper` can only distil into a
  DistillableViT.
- DistillableViT with `pool='mean'` on an input smaller than `image_size`: torch adds
  `pos_embedding[:(n + 1)]` to n tokens and fails; here the first n rows are added, as vit.ViT does.
- DistillableViT with `num_classes=0`: torch builds it (vit.ViT's `mlp_head` is None) but its forward calls
  None; here the call raises a ValueError naming num_classes (`to_vit()` still gives the token-returning ViT).
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from einops import repeat

from vit_flax import efficient, t2t, vit
from vit_flax.layers import (
    LayerNorm,
    Linear,
    add_position_embedding,
    call_plugged_in,
    check_floating_input,
    check_keywords,
    default,
    exists,
    randn,
)

# classes


class DistillMixin:
    """The shared forward pass of vit-pytorch's DistillMixin, from the plain class's pieces
    (`_to_patch_embedding(img, train)`, `_cls_and_pos_embedding()`, `_attend(x, train)`, `_mlp_head(x)`), which
    create the submodules with torch's names. DistillableEfficientViT's `_attend` has no embedding dropout."""

    def _distill_forward(self, img, distill_token, train):
        distilling = exists(distill_token)
        x = self._to_patch_embedding(img, train)
        b = x.shape[0]

        cls_token, pos_embedding = self._cls_and_pos_embedding()
        cls_tokens = repeat(cls_token.reshape(-1, self.dim), 'n d -> b n d', b=b)
        x = jnp.concatenate((cls_tokens.astype(x.dtype), x), axis=1)
        x = add_position_embedding(x, pos_embedding, img.shape[1:3], self.image_size)

        if distilling:
            distill_token = jnp.asarray(distill_token)
            if distill_token.ndim != 2 or distill_token.shape[-1] != self.dim:
                raise ValueError(
                    f'distill_token must be (n, dim={self.dim}), got shape {distill_token.shape}'
                )
            distill_tokens = repeat(distill_token, 'n d -> b n d', b=b)
            x = jnp.concatenate((x, distill_tokens.astype(x.dtype)), axis=1)

        x = self._attend(x, train)

        if distilling:
            x, distill_tokens = x[:, :-1], x[:, -1]

        x = x.mean(axis=1) if self.pool == 'mean' else x[:, 0]
        out = self._mlp_head(x)

        if distilling:
            return out, distill_tokens
        return out

    def to_vit(self) -> nn.Module:
        """The plain module with the same keywords; this model's variables work with it unchanged."""
        fields = {f: getattr(self, f) for f in self._plain_class.__dataclass_fields__ if f not in ('parent', 'name')}
        return self._plain_class(**fields)


class DistillableViT(DistillMixin, vit.ViT):
    _plain_class = vit.ViT

    @nn.compact
    def __call__(self, img, distill_token=None, train: bool = False):
        check_floating_input(self, 'img', img)
        if self.num_classes <= 0:
            raise ValueError(
                f'DistillableViT needs num_classes > 0, got num_classes={self.num_classes} (vit-pytorch builds it '
                f'without a head and fails in forward; to_vit() gives the token-returning ViT)'
            )
        return self._distill_forward(img, distill_token, train)


class DistillableT2TViT(DistillMixin, t2t.T2TViT):
    """T2TViT with a distillation token. vit-pytorch's DistillableT2TViT cannot run a forward pass (see above)."""

    _plain_class = t2t.T2TViT

    @nn.compact
    def __call__(self, img, distill_token=None, train: bool = False):
        check_floating_input(self, 'img', img)
        return self._distill_forward(img, distill_token, train)


class DistillableEfficientViT(DistillMixin, efficient.ViT):
    """efficient.ViT with a distillation token. vit-pytorch's version cannot run a forward pass (see above)."""

    _plain_class = efficient.ViT

    @nn.compact
    def __call__(self, img, distill_token=None, train: bool = False):
        check_floating_input(self, 'img', img)
        return self._distill_forward(img, distill_token, train)


DISTILLABLE = (DistillableViT, DistillableT2TViT, DistillableEfficientViT)

# knowledge distillation wrapper


def cross_entropy(logits, labels, ignore_index: int = -100):
    """F.cross_entropy(logits, labels): mean over the labels that are not `ignore_index`."""
    keep = labels != ignore_index
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(log_probs, jnp.where(keep, labels, 0)[:, None], axis=-1)[:, 0]
    return -jnp.sum(jnp.where(keep, picked, 0)) / jnp.sum(keep)


def kl_div_batchmean(log_input, target):
    """F.kl_div(log_input, target, reduction='batchmean'): sum(target * (log target - log_input)) / batch."""
    return jnp.sum(jax.scipy.special.xlogy(target, target) - target * log_input) / log_input.shape[0]


class DistillWrapper(nn.Module):
    teacher: nn.Module | Callable[[Any], Any]
    student: nn.Module
    temperature: float = 1.0
    alpha: float = 0.5
    hard: bool = False
    mlp_layernorm: bool = False

    # what the trainer reads off an objective (vit_flax.training.objectives.Objective)
    encoder_keyword = 'student'
    encoder_path = ('student',)
    rng_streams = ()
    takes_labels = True

    def __post_init__(self):
        check_keywords(self)
        if not isinstance(self.student, DISTILLABLE):
            raise ValueError(
                f'student must be a vision transformer (DistillableViT, DistillableT2TViT or DistillableEfficientViT), '
                f'got {type(self.student).__name__}'
            )
        if not callable(self.teacher):
            raise ValueError(f'teacher must be a Flax module or a callable images -> logits, got {self.teacher!r}')
        super().__post_init__()

    @nn.compact
    def __call__(self, img, labels, temperature=None, alpha=None, train: bool = False):
        check_floating_input(self, 'img', img)
        alpha = default(alpha, self.alpha)
        T = default(temperature, self.temperature)
        dim, num_classes = self.student.dim, self.student.num_classes

        if isinstance(self.teacher, nn.Module):
            teacher_logits = call_plugged_in(self.teacher, img, train)
        else:
            teacher_logits = self.teacher(img)
        teacher_logits = jax.lax.stop_gradient(teacher_logits)

        distillation_token = self.param('distillation_token', randn, (1, dim))
        student_logits, distill_tokens = self.student(img, distill_token=distillation_token, train=train)
        if self.mlp_layernorm:
            distill_tokens = LayerNorm(name='distill_mlp_0')(distill_tokens)
        distill_logits = Linear(num_classes, name='distill_mlp_1')(distill_tokens)

        loss = cross_entropy(student_logits, labels)

        if not self.hard:
            distill_loss = kl_div_batchmean(
                jax.nn.log_softmax(distill_logits / T, axis=-1),
                jax.nn.softmax(teacher_logits / T, axis=-1),
            )
            distill_loss *= T**2
        else:
            teacher_labels = teacher_logits.argmax(axis=-1)
            distill_loss = cross_entropy(distill_logits, teacher_labels)

        return loss * (1 - alpha) + distill_loss * alpha
