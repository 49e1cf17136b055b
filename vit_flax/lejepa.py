"""LeJEPA (Balestriero & LeCun, 2025, "LeJEPA: Provable and Scalable Self-Supervised Learning Without the
Heuristics"), mirroring vit_pytorch/lejepa.py: the projections of two local crops are pulled towards those of the
two global crops of the other view (MSE), and SIGReg (sketched isotropic Gaussian regularisation) keeps the local
projections' distribution near an isotropic Gaussian instead of a teacher; an EMA target encoder (BYOL-like) can
replace SIGReg or join it.

    learner = LeJEPA(net=ViT(...), image_size=256, hidden_layer='to_latent', projection_hidden_size=256,
                     projection_layers=4, num_classes_K=65336, target_loss_weight=1.0, sigreg_loss_weight=1.0)
    variables = learner.init({'params': key}, images)
    loss = learner.apply(variables, images, train=True,
                         rngs={'augment': k1, 'crop': k2, 'sigreg': k3, 'dropout': k4})
    # with use_ema=True (or a moving_average_decay): the target is a copy of the encoder at init; optimiser step
    # with optax.masked(..., learner.trainable_mask(params)), then
    variables = learner.after_step(variables)                        # the EMA (nothing without one)
    encoder_params = variables['params']['encoder']['net']           # a plain ViT's params

Images are channels-last (B, H, W, C), floats in [0, 1] for the default augmentation. The loss is random in every
mode: the augmentation draws from the rng stream 'augment', the crops from 'crop', SIGReg's random directions from
'sigreg' (`LeJEPA.rng_streams`); dropout inside the encoder uses 'dropout' with `train=True`.
`LeJEPA.crop_boxes` and `LeJEPA.sigreg_draws` return what a call draws with the same rngs.

Which target (vit-pytorch's flag resolution, `resolve_target`): `use_ema` defaults to `not use_sigreg` when
`use_sigreg` is given, else to whether a `moving_average_decay` is given; `use_sigreg` then defaults to
`not use_ema`. So the default is SIGReg with the online encoder as its own (gradient-stopped) target; a decay
alone, `use_ema=True` or `use_sigreg=False` give the EMA target without SIGReg (decay 0.99 by default);
`use_ema=True, use_sigreg=True` gives both; `use_ema=False, use_sigreg=False` only the MSE against the online
encoder. The SIGReg term is added only when `sigreg_loss_weight > 0` (torch's `has_sigreg_loss`).
`sigreg_loss_kwargs` holds `sigreg_loss`'s keywords (num_slices, domain, num_knots; Flax stores it frozen).

Variables mirror vit-pytorch's state dict: `params/encoder/net` (the wrapped encoder, exactly a plain encoder's
params), `params/encoder/projector/net_{i}` (the MLP) and, with the EMA, `params/target_encoder/...` (the same tree,
in 'params' so the state dict transfers, but it gets no gradient and `trainable_mask(params)` keeps optimisers off
it). vit-pytorch also registers the wrapped network as `LeJEPA.net`, so its state dict repeats `encoder.net.*` as
`net.*` (`LeJEPA.torch_aliases`). The EMA is the pure function `update_moving_average(variables, decay)`, equal to
torch's `learner.update_moving_average()` (torch's `lerp`); `LeJEPA.after_step` applies it with the learner's decay,
and leaves the variables as they are without an EMA target (the trainer calls it after every step).

The pieces are dino.py's, imported from there (vit-pytorch's lejepa.py repeats dino.py's): `NetWrapper` with its
hidden layer (`-1`, `'to_latent'`, a method name, a torch dotted submodule name or an index into torch's children:
dino.py's docstring), the projector `MLP`, `L2Norm`, `RandomApply`, the per-image default augmentation
(`DefaultAugment`: vit-pytorch's BYOL DEFAULT_AUG) and `FlipAndBlur` (for images already normalised, as the trainer's),
the random resized crops and torch's antialiased resize.

Quirks of vit-pytorch kept so weights transfer and losses agree:
- The projector has `projection_layers - 1` Linear + GELU pairs (the last one too), then L2 normalisation and a
  Linear(projection_hidden_size, num_classes_K) (dino.MLP); the projections SIGReg and the MSE see are that last
  Linear's, not normalised.
- The encoder runs once on both local crops (concatenated, 2B images) and the target once on both global crops; the
  MSE (`F.mse_loss`, a mean over batch and features) pairs local view one with global view two and vice versa and
  is the sum of the two; SIGReg sees the 2B local projections together.
- The target runs in the learner's mode (its dropout is active with `train=True`), only its gradient is stopped.
- `image_size` is one int (torch's RandomResizedCrop((image_size, image_size))); vit-pytorch's constructor runs a
  3-channel mock forward, so its LeJEPA only works with 3-channel encoders.
- The EMA is torch's `old.lerp(new, 1 - decay)` (`lerp`), not `decay * old + (1 - decay) * new` as in dino.py.
- At init the EMA target is a copy of the encoder (torch deep-copies it at the constructor's mock forward).
- The projector's L2 normalisation before its last Linear bounds the projections' spread by that Linear's norm,
  small at init. On the trainer's digits at the default weights (1 and 1), the invariance term pulls the projections
  to one point faster than SIGReg spreads them, and the loss settles at SIGReg's value for collapsed projections,
  sqrt(2 pi) - 2 sqrt(pi) + sqrt(2 pi / 3) = 0.409 (tests/test_lejepa.py trains with target_loss_weight=0.05).

Where this differs from vit-pytorch 1.26.11:
- (the intended behaviour, as in dino.py) torchvision transforms applied to a batch tensor draw ONE crop box, flip,
  jitter... for the whole batch; here every image gets its own draw. The default augmentation is torch's:
  RandomApply(ColorJitter(0.8, 0.8, 0.8, 0.2), p=0.3), RandomGrayscale(p=0.2), RandomHorizontalFlip(),
  RandomApply(GaussianBlur((3, 3), (1.0, 2.0)), p=0.2), ImageNet Normalize. The parity tests pass identity
  augmentations on both sides, give torch the same per-image crops through a stand-in for torchvision
  (`parity/lejepa.py`) and make its `torch.randn` return SIGReg's draws of the Flax call.
- `use_ema` and `use_sigreg` must be True, False or None and the loss weights numbers (torch takes any truthy
  value); a ValueError names the keyword and value, as for bad `sigreg_loss_kwargs`.

SIGReg (`sigreg_loss`) is also the slots' regulariser of wwt.WWT, which imports it from here as vit-pytorch's wwt
does.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_flax import dino
from vit_flax.dino import (AUGMENT, CROP, MLP, CropViews, DefaultAugment, FlipAndBlur, L2Norm, NetWrapper,
                           RandomApply, resized_crop)
from vit_flax.layers import check_floating_input, check_keywords, default, exists, l2_normalize

# vit-pytorch's lejepa.py defines these pieces again; here they are dino.py's
__all__ = ['AUGMENT', 'CROP', 'SIGREG', 'EMA', 'MLP', 'DefaultAugment', 'FlipAndBlur', 'L2Norm', 'LeJEPA', 'NetWrapper',
           'RandomApply', 'lerp', 'reset_moving_average', 'resolve_target', 'sigreg_loss', 'sigreg_slice_draws',
           'trainable_mask', 'update_moving_average']

SIGREG = 'sigreg'  # SIGReg's random directions (torch.randn in vit-pytorch)

SIGREG_LOSS_KWARGS = ('num_slices', 'domain', 'num_knots')


def sigreg_slice_draws(key, num_slices: int, dim: int, dtype=jnp.float32):
    """The standard normal draws (num_slices, dim) that `sigreg_loss` normalises into its directions (vit-pytorch's
    `torch.randn((num_slices, dim))`)."""
    return jax.random.normal(key, (num_slices, dim), dtype)


def sigreg_loss(x, key, num_slices: int = 1024, domain: tuple[float, float] = (-5., 5.), num_knots: int = 17):
    """vit_pytorch.lejepa.sigreg_loss: how far the 1-D projections of the embeddings `x` (..., dim) on `num_slices`
    random unit directions are from N(0, 1), as the Gaussian-weighted squared distance of their empirical
    characteristic function from exp(-t^2 / 2), integrated with the trapezoid rule over `num_knots` points of
    `domain` and averaged over the directions.

    The directions are standard normal draws from `key` of shape (num_slices, dim), normalised (vit-pytorch draws
    them with torch.randn in every call). |ecf - f|^2 is computed as (mean cos - f)^2 + (mean sin)^2, the same
    number vit-pytorch gets from complex exponentials."""
    directions = l2_normalize(sigreg_slice_draws(key, num_slices, x.shape[-1], x.dtype), eps=1e-6)
    t = jnp.linspace(*domain, num_knots, dtype=x.dtype)
    gaussian = jnp.exp(-0.5 * jnp.square(t))
    projected = jnp.einsum('...d,md->...m', x, directions).reshape(-1, num_slices)
    phases = projected[..., None] * t
    error = jnp.square(jnp.cos(phases).mean(axis=0) - gaussian) + jnp.square(jnp.sin(phases).mean(axis=0))
    return jax.scipy.integrate.trapezoid(error * gaussian, t, axis=-1).mean()


# exponential moving average


def lerp(start, end, weight: float):
    """torch.lerp with a scalar weight, as torch computes it: start + weight * (end - start) for |weight| < 0.5,
    end - (end - start) * (1 - weight) otherwise."""
    if abs(weight) < 0.5:
        return start + weight * (end - start)
    return end - (end - start) * (1.0 - weight)


class EMA:
    """vit-pytorch's lejepa.EMA: `old.lerp(new, 1 - beta)`."""

    def __init__(self, beta):
        self.beta = beta

    def update_average(self, old, new):
        if not exists(old):
            return new
        return lerp(old, new, 1.0 - self.beta)


TARGET, ONLINE = 'target_encoder', 'encoder'


def update_moving_average(variables, moving_average_decay: float = 0.99):
    """torch's `learner.update_moving_average()` as a pure function of the variables: target <- target.lerp(encoder,
    1 - decay), every parameter. Returns new variables (the others unchanged). Call it after the optimiser step."""
    params = dict(variables['params'])
    if TARGET not in params:
        raise ValueError("the variables hold no params['target_encoder']: there is no moving average to update "
                         '(use_ema resolves to False)')
    ema = EMA(moving_average_decay)
    params[TARGET] = jax.tree_util.tree_map(ema.update_average, params[TARGET], params[ONLINE])
    return {**variables, 'params': params}


def reset_moving_average(variables):
    """The EMA target set to a copy of the encoder (torch's `reset_moving_average()` followed by a forward)."""
    return dino.reset_moving_average(variables, target=TARGET, online=ONLINE)


def trainable_mask(params):
    """A pytree of bools like `params`: False for the EMA target, which only the EMA moves (all True without one).
    For optax.masked / optax.multi_transform."""
    return dino.trainable_mask(params, frozen=TARGET)


# which target: vit-pytorch's flag resolution


def resolve_target(use_ema: bool | None, use_sigreg: bool | None, moving_average_decay: float | None):
    """(use_ema, use_sigreg) as vit-pytorch's constructor resolves them."""
    use_ema = default(use_ema, not use_sigreg if exists(use_sigreg) else exists(moving_average_decay))
    use_sigreg = default(use_sigreg, not use_ema)
    return use_ema, use_sigreg


def _check_sigreg_loss_kwargs(kwargs):
    if not isinstance(kwargs, Mapping) or set(kwargs) - set(SIGREG_LOSS_KWARGS):
        raise ValueError(f'sigreg_loss_kwargs must be a dict of {", ".join(SIGREG_LOSS_KWARGS)}, got '
                         f'sigreg_loss_kwargs={kwargs!r}')
    for name in ('num_slices', 'num_knots'):
        value = kwargs.get(name, 1)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f'sigreg_loss_kwargs[{name!r}] must be a positive integer, got {value!r}')
    domain = kwargs.get('domain', (-5, 5))
    if (not isinstance(domain, (tuple, list)) or len(domain) != 2
            or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in domain)):
        raise ValueError(f"sigreg_loss_kwargs['domain'] must be two numbers (low, high), got {domain!r}")


def _check_config(module):
    dino._check_config(module)  # image_size, crop scales, augmentations, projector, hidden layer
    for name in ('use_ema', 'use_sigreg'):
        if getattr(module, name) is not None and not isinstance(getattr(module, name), bool):
            raise ValueError(f'{name} must be True, False or None, got {name}={getattr(module, name)!r}')
    for name in ('target_loss_weight', 'sigreg_loss_weight'):
        value = getattr(module, name)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f'{name} must be a number, got {name}={value!r}')
    _check_sigreg_loss_kwargs(module.sigreg_loss_kwargs)


class _InitCopiesEncoder:
    """`init` returns the EMA target as a copy of the encoder, as torch's deep copy makes it."""

    def init(self, rngs, *args, **kwargs):
        variables = super().init(rngs, *args, **kwargs)
        return reset_moving_average(variables) if TARGET in variables.get('params', {}) else variables


def _default_sigreg_loss_kwargs():
    return dict(num_slices=1024, domain=(-5, 5), num_knots=17)


class LeJEPA(CropViews, _InitCopiesEncoder, nn.Module):
    net: nn.Module
    image_size: int
    hidden_layer: int | str = -2
    projection_hidden_size: int = 256
    num_classes_K: int = 65336
    projection_layers: int = 4
    local_upper_crop_scale: float = 0.4
    global_lower_crop_scale: float = 0.5
    use_ema: bool | None = None
    moving_average_decay: float | None = None
    use_sigreg: bool | None = None
    target_loss_weight: float = 1.0
    sigreg_loss_weight: float = 1.0
    sigreg_loss_kwargs: dict[str, Any] = dataclasses.field(default_factory=_default_sigreg_loss_kwargs)
    augment_fn: Callable | None = None
    augment_fn2: Callable | None = None

    # what the trainer reads off an objective (vit_flax.training.objectives.Objective, FreezesParameters,
    # UpdatesAfterStep): the encoder's network, augmentations, crops and SIGReg's directions from their streams,
    # the EMA target where there is one
    encoder_keyword = 'net'
    encoder_path = (ONLINE, 'net')
    rng_streams = (AUGMENT, CROP, SIGREG)
    takes_labels = False

    @property
    def target(self) -> tuple[bool, bool]:
        """(use_ema, use_sigreg) resolved as vit-pytorch resolves them (`resolve_target`)."""
        return resolve_target(self.use_ema, self.use_sigreg, self.moving_average_decay)

    @property
    def has_sigreg_loss(self) -> bool:
        return self.target[1] and self.sigreg_loss_weight > 0.0

    @property
    def ema_decay(self) -> float:
        """The EMA target's decay: moving_average_decay, 0.99 when not given."""
        return default(self.moving_average_decay, 0.99)

    @nn.nowrap
    def trainable_mask(self, params):
        """False for the EMA target, which only the EMA moves (the module-level `trainable_mask`)."""
        return trainable_mask(params)

    @nn.nowrap
    def update_moving_average(self, variables):
        """torch's `learner.update_moving_average()` with this learner's decay; a ValueError without an EMA
        target, as torch asserts."""
        if not self.target[0]:
            raise ValueError('you do not need to update moving average, since use_ema is set to False')
        return update_moving_average(variables, self.ema_decay)

    @nn.nowrap
    def after_step(self, variables):
        """The EMA of the target after an optimiser step; the variables unchanged without an EMA target."""
        return self.update_moving_average(variables) if self.target[0] else variables

    def torch_aliases(self) -> dict[str, str]:
        """vit-pytorch registers the wrapped network twice (`LeJEPA.net` and `encoder.net`): its state dict repeats
        `encoder.net.*` as `net.*` (the converters write and check the copy)."""
        return {'net.': 'encoder.net.'}

    def __post_init__(self):
        check_keywords(self)
        _check_config(self)
        super().__post_init__()

    def sigreg_draws(self, dtype=jnp.float32):
        """The standard normal draws (num_slices, num_classes_K) behind SIGReg's directions in a call with the same
        rngs (what vit-pytorch's torch.randn gives): `learner.apply({}, rngs=rngs, method=LeJEPA.sigreg_draws)`."""
        num_slices = self.sigreg_loss_kwargs.get('num_slices', 1024)
        return sigreg_slice_draws(self.make_rng(SIGREG), num_slices, self.num_classes_K, dtype)

    @nn.compact
    def __call__(self, x, return_embedding: bool = False, return_projection: bool = True, train: bool = False):
        check_floating_input(self, 'x', x)
        if x.ndim != 4:
            raise ValueError(f'expected images of shape (batch, height, width, channels), got shape {x.shape}')
        use_ema, _ = self.target
        encoder = self._encoder(ONLINE)

        if return_embedding:
            return encoder(x, return_projection=return_projection, train=train)

        image_one = self._augment(self.augment_fn, 'augment1', x)
        image_two = self._augment(self.augment_fn2, 'augment2', x)

        boxes = self.crop_boxes(x)
        crop = lambda images, b: resized_crop(images, b, self.image_size)  # noqa: E731
        local_images = jnp.concatenate((crop(image_one, boxes[0]), crop(image_two, boxes[1])))
        global_images = jnp.concatenate((crop(image_one, boxes[2]), crop(image_two, boxes[3])))

        proj_locals, _ = encoder(local_images, train=train)
        proj_local_one, proj_local_two = jnp.split(proj_locals, 2)

        target_encoder = self._encoder(TARGET) if use_ema else encoder
        proj_globals, _ = target_encoder(global_images, train=train)
        proj_global_one, proj_global_two = jnp.split(jax.lax.stop_gradient(proj_globals), 2)

        # invariance loss
        mse_loss = (jnp.mean(jnp.square(proj_local_one - proj_global_two))
                    + jnp.mean(jnp.square(proj_local_two - proj_global_one)))
        loss = mse_loss * self.target_loss_weight

        if not self.has_sigreg_loss:
            return loss

        sreg_loss = sigreg_loss(proj_locals, self.make_rng(SIGREG), **self.sigreg_loss_kwargs)
        return loss + sreg_loss * self.sigreg_loss_weight
