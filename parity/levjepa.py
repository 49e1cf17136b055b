"""Parity with vit_pytorch.levjepa: the test configurations and random-configuration sweeps of
`levjepa.VideoTransformer` and `levjepa.LeVJEPA`, the attention path vit-pytorch runs on for the comparison, and a
stand-in for the torchvision transforms that replays the Flax call's per-video draws.

Attention (`dense_attention`): vit-pytorch wraps its block-causal mask function in torch.compile, whose wrapper
torch 2.13's create_block_mask refuses, and flex_attention has no backward on CPUs. The comparison takes the mask
function as written (torch.compile made the identity), evaluates it over every (query, key) pair and runs the
softmax with the masked logits filled with the most negative float: the same mask, the same numbers
(tests/test_levjepa.py checks flex_attention's own forward against it).

Augmentations (`torch_transforms`, `replay`): vit-pytorch builds torchvision transforms, which the torchvision of
this environment can build but not run; and torchvision draws once per batch where vit-flax draws per video (see
vit_flax/levjepa.py). Under `torch_transforms` vit_pytorch.levjepa builds stand-ins that apply the draws a Flax call
made (`LeVJEPA.draws`), video by video, with torchvision's tensor arithmetic written out below (its
`_functional_tensor` code: `_blend`'s clamp to [0, 1], the hue shift in float32, the reflect-padded 9 x 9 blur) and
torch's own antialiased bicubic `F.interpolate` for the crops; RandomApply applies its function to the videos the
Flax call chose. `replay` also hands vit-pytorch the SIGReg directions (torch.randn) and, in training, the token
noise (torch.rand) that the Flax call drew.
"""

from __future__ import annotations

import contextlib
import types
from unittest import mock

import jax
import numpy as np
import torch
import torch.nn.functional as F

from parity.spec import Spec
from vit_flax import levjepa
from vit_flax.converters import import_vit_pytorch

# attention


def dense_block_mask(mask_fn, batch, heads, seq_len, device=None):
    """vit-pytorch's block mask function evaluated over every (query, key) pair: (batch, n, n) booleans."""
    b = torch.arange(batch, device=device)[:, None, None]
    q = torch.arange(seq_len, device=device)[None, :, None]
    k = torch.arange(seq_len, device=device)[None, None, :]
    return torch.broadcast_to(mask_fn(b, 0, q, k), (batch, seq_len, seq_len))


def dense_flex_attention(q, k, v, block_mask=None, scale=None):
    """flex_attention's numbers with a dense (batch, n, n) mask (or none), as levjepa_nd's dense fallback computes."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if block_mask is not None:
        scores = scores.masked_fill(~block_mask[:, None], -torch.finfo(scores.dtype).max)
    return torch.matmul(scores.softmax(dim=-1), v)


def uncompiled():
    """torch.compile as the identity: vit-pytorch's mask function as it is written."""
    return mock.patch.object(torch, 'compile', lambda fn=None, *args, **kwargs: fn)


@contextlib.contextmanager
def dense_attention():
    levjepa_torch = import_vit_pytorch('vit_pytorch.levjepa')
    with uncompiled(), mock.patch.object(levjepa_torch, 'create_block_mask_for', dense_block_mask), \
            mock.patch.object(levjepa_torch, 'flex_attention', dense_flex_attention):
        yield


# torchvision's tensor arithmetic (torchvision/transforms/_functional_tensor.py), for frames (n, c, h, w)


def _blend(img1, img2, ratio):
    ratio = float(ratio)
    return (ratio * img1 + (1.0 - ratio) * img2).clamp(0, 1.0).to(img1.dtype)


def rgb_to_grayscale(img, num_output_channels=1):
    if img.shape[-3] == 3:
        r, g, b = img.unbind(dim=-3)
        l_img = (0.2989 * r + 0.587 * g + 0.114 * b).to(img.dtype).unsqueeze(dim=-3)
    else:
        l_img = img.clone()
    return l_img.expand(img.shape) if num_output_channels == 3 else l_img


def _check_channels(img):
    if img.shape[-3] not in (1, 3):
        raise TypeError(f'Input image tensor permitted channel values are [1, 3], but found {img.shape[-3]}')


def adjust_brightness(img, factor):
    _check_channels(img)
    return _blend(img, torch.zeros_like(img), factor)


def adjust_contrast(img, factor):
    _check_channels(img)
    source = rgb_to_grayscale(img) if img.shape[-3] == 3 else img
    return _blend(img, torch.mean(source, dim=(-3, -2, -1), keepdim=True), factor)


def adjust_saturation(img, factor):
    _check_channels(img)
    return img if img.shape[-3] == 1 else _blend(img, rgb_to_grayscale(img), factor)


def _rgb2hsv(img):
    r, g, b = img.unbind(dim=-3)
    maxc, minc = torch.max(img, dim=-3).values, torch.min(img, dim=-3).values
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_divisor = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / cr_divisor, (maxc - g) / cr_divisor, (maxc - b) / cr_divisor
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod(((hr + hg + hb) / 6.0 + 1.0), 1.0)
    return torch.stack((h, s, maxc), dim=-3)


def _hsv2rgb(img):
    h, s, v = img.unbind(dim=-3)
    i = torch.floor(h * 6.0)
    f = (h * 6.0) - i
    i = i.to(dtype=torch.int32)
    p = torch.clamp((v * (1.0 - s)), 0.0, 1.0)
    q = torch.clamp((v * (1.0 - s * f)), 0.0, 1.0)
    t = torch.clamp((v * (1.0 - s * (1.0 - f))), 0.0, 1.0)
    i = i % 6
    mask = i.unsqueeze(dim=-3) == torch.arange(6, device=i.device).view(-1, 1, 1)
    a1 = torch.stack((v, q, p, p, t, v), dim=-3)
    a2 = torch.stack((t, v, v, q, p, p), dim=-3)
    a3 = torch.stack((p, p, t, v, v, q), dim=-3)
    a4 = torch.stack((a1, a2, a3), dim=-4)
    return torch.einsum('...ijk, ...xijk -> ...xjk', mask.to(dtype=img.dtype), a4)


def adjust_hue(img, factor):
    _check_channels(img)
    if img.shape[-3] == 1:
        return img
    orig_dtype = img.dtype
    h, s, v = _rgb2hsv(img.to(torch.float32)).unbind(dim=-3)  # torchvision's convert_image_dtype(img, float32)
    h = (h + factor) % 1.0
    return _hsv2rgb(torch.stack((h, s, v), dim=-3)).to(orig_dtype)


def gaussian_blur(img, kernel_size, sigma):
    x = torch.linspace(-(kernel_size - 1) * 0.5, (kernel_size - 1) * 0.5, steps=kernel_size, dtype=img.dtype)
    pdf = torch.exp(-0.5 * (x / sigma).pow(2))
    kernel1d = pdf / pdf.sum()
    kernel = torch.mm(kernel1d[:, None], kernel1d[None, :]).expand(img.shape[-3], 1, kernel_size, kernel_size)
    pad = kernel_size // 2
    return F.conv2d(F.pad(img, [pad, pad, pad, pad], mode='reflect'), kernel, groups=img.shape[-3])


def resize(frames, size):
    """torchvision's resize of float frames (n, c, h, w): torch's antialiased bicubic F.interpolate. torch 2.13's CPU
    kernel computes wrong values for an output width of 1 where the height changes (every row becomes the first),
    while an output height of 1 comes out right: such frames are resized transposed (the filter is separable)."""
    if size[1] == 1 and size[0] != frames.shape[-2]:
        return resize(frames.transpose(-1, -2), size[::-1]).transpose(-1, -2)
    return F.interpolate(frames, size=tuple(size), mode='bicubic', align_corners=False, antialias=True)


# the torchvision stand-in: each transform applies the next planned per-video draws of its kind to its frames


_plan: dict[str, list] = {}


def _next(kind):
    queue = _plan.get(kind)
    if not queue:
        raise AssertionError(f'vit-pytorch asked for a {kind!r} draw the Flax call did not make (levjepa.replay)')
    return queue.pop(0)


def _per_video(img, draws, fn):
    """fn(frames of one video, that video's draw) for each video of img ((videos * frames, c, h, w))."""
    frames = img.shape[0] // len(draws)
    return torch.cat([fn(img[i * frames:(i + 1) * frames], draw) for i, draw in enumerate(draws)])


class _Transform(torch.nn.Module):
    kind = ''

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.args, self.kwargs = args, kwargs


class RandomResizedCrop(_Transform):
    kind = 'crop'

    def forward(self, img):
        size, mode = self.args[0], self.kwargs['interpolation']
        assert mode == 'bicubic' and self.kwargs['antialias'], self.kwargs

        def crop(frames, box):
            top, left, height, width = (int(b) for b in box)
            return resize(frames[..., top:top + height, left:left + width], size)

        return _per_video(img, _next(self.kind), crop)


class RandomHorizontalFlip(_Transform):
    kind = 'flip'

    def forward(self, img):
        p = self.kwargs['p']
        return _per_video(img, _next(self.kind), lambda frames, u: frames.flip(-1) if u < p else frames)


class ColorJitter(_Transform):
    kind = 'jitter'

    def forward(self, img):
        # ColorJitter(0.4, 0.4, 0.2, 0.1): the factor ranges vit-flax draws from (levjepa.COLOR_JITTER_RANGES)
        assert self.args == (0.4, 0.4, 0.2, 0.1), self.args
        adjustments = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)

        def jitter(frames, draw):
            order, factors = draw
            for step in order:
                frames = adjustments[int(step)](frames, float(factors[int(step)]))
            return frames

        return _per_video(img, _next(self.kind), jitter)


class RandomGrayscale(_Transform):
    kind = 'grayscale'

    def forward(self, img):
        p = self.kwargs['p']
        return _per_video(img, _next(self.kind),
                          lambda frames, u: rgb_to_grayscale(frames, frames.shape[-3]) if u < p else frames)


class GaussianBlur(_Transform):
    kind = 'blur'

    def forward(self, img):
        assert self.args == (9, (0.1, 2.0)), self.args
        return _per_video(img, _next(self.kind), lambda frames, sigma: gaussian_blur(frames, 9, float(sigma)))


class Normalize(_Transform):
    def forward(self, img):  # torchvision's F.normalize: subtracts and divides a clone in place
        mean, std = (torch.as_tensor(t, dtype=img.dtype).view(-1, 1, 1) for t in self.args)
        return img.clone().sub_(mean).div_(std)


def _random_apply_forward(self, x):
    """vit-pytorch's RandomApply with the Flax call's per-video choice (its draws of kind '<fn kind>_apply')."""
    draws = _next(f'{self.fn.kind}_apply')
    applied = self.fn(x)
    chosen = torch.as_tensor(np.repeat(np.asarray(draws) < self.p, x.shape[0] // len(draws)))
    return torch.where(chosen[:, None, None, None], applied, x)


def _stand_in():
    return types.SimpleNamespace(
        RandomResizedCrop=RandomResizedCrop, RandomHorizontalFlip=RandomHorizontalFlip, ColorJitter=ColorJitter,
        RandomGrayscale=RandomGrayscale, GaussianBlur=GaussianBlur, Normalize=Normalize,
        InterpolationMode=types.SimpleNamespace(BICUBIC='bicubic'))


@contextlib.contextmanager
def torch_transforms():
    """vit_pytorch.levjepa's torchvision (`T`) and RandomApply replaced by the replaying stand-ins, for building
    vit-pytorch's LeVJEPA (its transforms are made in its constructor) and running it."""
    levjepa_torch = import_vit_pytorch('vit_pytorch.levjepa')
    with mock.patch.object(levjepa_torch, 'T', _stand_in()), \
            mock.patch.object(levjepa_torch.RandomApply, 'forward', _random_apply_forward):
        yield


def _augment_plan(augment, draws):
    """The planned draws, by kind, of one Flax augmentation's call (PhotometricAugment's; none for others)."""
    if not isinstance(augment, levjepa.PhotometricAugment):
        return {}
    plan = {}
    if augment.hflip:
        plan['flip'] = [draws['flip']]
    if augment.color_jitter_prob > 0:
        plan['jitter_apply'] = [draws['jitter']]
        plan['jitter'] = [list(zip(draws['order'], draws['factors']))]
    if augment.grayscale_prob > 0:
        plan['grayscale'] = [draws['grayscale']]
    if augment.gaussian_blur_prob > 0:
        plan['blur_apply'] = [draws['blur']]
        plan['blur'] = [draws['sigma']]
    return plan


def torch_rand_returning(name: str, values, dtype_default=True):
    """A context under which torch.<name> (randn, rand) returns `values` (numpy) when asked for their shape (in the
    dtype torch asks for, its default by default), and draws as usual otherwise."""
    values = np.asarray(values, np.float32)
    original = getattr(torch, name)

    def draw(*size, device=None, dtype=None, **kwargs):
        shape = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else tuple(size)
        if shape != values.shape:
            return original(*size, device=device, dtype=dtype, **kwargs)
        return torch.from_numpy(values.copy()).to(device=device, dtype=dtype or torch.get_default_dtype())

    return mock.patch.object(torch, name, draw)


@contextlib.contextmanager
def replay(model, draws: dict):
    """A context under which vit-pytorch's LeVJEPA (built under `torch_transforms`) draws what the Flax call on the
    same video drew (`LeVJEPA.draws`): the per-video crops and augmentations, the SIGReg directions and, where drawn,
    the token noise. Every planned draw must be used."""
    draws = jax.tree_util.tree_map(np.asarray, draws)
    global_augment = levjepa.NormalizeVideo() if model.global_augment_fn is None else model.global_augment_fn
    local_augment = levjepa.PhotometricAugment() if model.local_augment_fn is None else model.local_augment_fn
    plan = {'crop': [draws['global_crop'], draws['local_crop']]}
    for augment, key in ((global_augment, 'global_augment'), (local_augment, 'local_augment')):
        for kind, queue in _augment_plan(augment, draws.get(key)).items():
            plan.setdefault(kind, []).extend(queue)
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch_rand_returning('randn', draws['sigreg']))
        if 'token_noise' in draws:
            stack.enter_context(torch_rand_returning('rand', draws['token_noise']))
        _plan.clear()
        _plan.update(plan)
        try:
            yield
            left = {kind: len(queue) for kind, queue in _plan.items() if queue}
            assert not left, f'vit-pytorch left planned draws unused: {left}'
        finally:
            _plan.clear()


def draws(model, inputs: tuple, seed: int = 0, train: bool = False):
    """LeVJEPA draws in every call: the Flax rngs for a call on `inputs` (in mode `train`), and a context under which
    vit-pytorch draws the very same numbers (`replay`)."""
    streams = model.rng_streams
    rngs = dict(zip(streams, jax.random.split(jax.random.key(seed), len(streams))))
    # jitted: eagerly, each of the draws' operations would compile on its own
    planned = jax.jit(lambda rngs, *inputs: model.apply({}, *inputs, train=train, rngs=rngs,
                                                        method=type(model).draws))(rngs, *inputs)
    return rngs, replay(model, planned)


@contextlib.contextmanager
def torch_context():
    """vit-pytorch's LeVJEPA runs on the dense attention path with the replaying torchvision stand-in."""
    with dense_attention(), torch_transforms():
        yield


# configurations


def random_encoder(rng: np.random.Generator, channels: int | None = None) -> levjepa.VideoTransformer:
    """A random small VideoTransformer: 1 to 3 frames, patches of 1 to 3 pixels a side on a grid of 1 to 3, rotary
    on none, one or two frequencies per axis (dim_head 2 to 14), either masking, any rotary frequency."""
    patch = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    grid = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    sizes = dict(image_size=(patch[0] * grid[0], patch[1] * grid[1]), patch_size=patch)
    if rng.random() < 0.3:  # plain ints: square frames and patches
        sizes = dict(image_size=patch[0] * grid[0], patch_size=patch[0])
    return levjepa.VideoTransformer(
        **sizes, frames=int(rng.integers(1, 4)), dim=int(rng.integers(2, 25)), depth=int(rng.integers(1, 3)),
        heads=int(rng.integers(1, 4)), mlp_dim=int(rng.integers(1, 33)), dim_head=int(rng.integers(2, 15)),
        channels=channels or int(rng.integers(1, 4)),
        rotary_max_freq=float(rng.uniform(2.0, 20.0)), block_causal=bool(rng.random() < 0.7))


def random_video_transformer(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random VideoTransformer on 2 videos of any frame count and any sides that are multiples of its patch."""
    encoder = random_encoder(rng)
    config = {key: getattr(encoder, key) for key in levjepa.VideoTransformer.__dataclass_fields__
              if key not in ('parent', 'name')}
    patch_h, patch_w = (encoder.patch_size,) * 2 if isinstance(encoder.patch_size, int) else encoder.patch_size
    shape = (2, int(rng.integers(1, 4)), patch_h * int(rng.integers(1, 4)), patch_w * int(rng.integers(1, 4)),
             encoder.channels)
    return config, (rng.standard_normal(shape, dtype=np.float32),)


def random_learner(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random LeVJEPA on a random encoder of 1 or 3 channels: crop size, scales and ratios, 1 to 3 local views,
    projector (BatchNorm or RMSNorm, weight standardisation or not), loss weights, SIGReg's projections and knots,
    the default augmentations (3 channels) or ones of random probabilities (blur where the crops allow), on 2 or 3
    videos of any frame count and size."""
    channels = int(rng.choice([1, 3]))
    encoder = random_encoder(rng, channels)
    patch_h, patch_w = (encoder.patch_size,) * 2 if isinstance(encoder.patch_size, int) else encoder.patch_size
    size = (patch_h * int(rng.integers(1, 4)), patch_w * int(rng.integers(1, 4)))
    low = float(rng.uniform(0.05, 0.5))
    config = dict(
        encoder=encoder, image_size=size, local_size=size, num_local_views=int(rng.integers(1, 4)),
        num_classes_K=int(rng.integers(2, 17)), projection_hidden=int(rng.integers(2, 17)),
        local_crop_scale=(low, float(rng.uniform(low, 1.0))), global_crop_scale=(float(rng.uniform(0.5, 1.0)), 1.0),
        crop_ratio_range=(float(rng.uniform(0.5, 1.0)), float(rng.uniform(1.0, 2.0))),
        drop_ratio=float(rng.uniform(0.0, 1.0)), use_batch_norm=bool(rng.random() < 0.5),
        use_weight_standardization=bool(rng.random() < 0.5), invariance_loss_weight=float(rng.uniform(0.1, 2.0)),
        sigreg_loss_weight=float(rng.uniform(0.01, 1.0)),
        sigreg_loss_kwargs=dict(num_proj=int(rng.integers(1, 65)), knots=int(rng.integers(2, 20))))
    if channels == 1 or rng.random() < 0.5:
        mean = tuple(float(m) for m in rng.uniform(0.2, 0.6, channels if rng.random() < 0.5 else 1))
        std = tuple(float(s) for s in rng.uniform(0.2, 0.6, len(mean)))
        config.update(global_augment_fn=levjepa.NormalizeVideo(mean, std), local_augment_fn=levjepa.PhotometricAugment(
            color_jitter_prob=float(rng.choice([0.0, 0.5, 1.0])), grayscale_prob=float(rng.choice([0.0, 0.5, 1.0])),
            gaussian_blur_prob=float(rng.choice([0.0, 0.5, 1.0])) if min(size) > 4 else 0.0,
            hflip=bool(rng.random() < 0.7), mean=mean, std=std))
    shape = (int(rng.integers(2, 4)), int(rng.integers(1, 4)), int(rng.integers(2, 13)), int(rng.integers(2, 13)),
             channels)
    return config, (rng.uniform(0.0, 1.0, shape).astype(np.float32),)


ENCODER = levjepa.VideoTransformer(image_size=8, patch_size=4, frames=2, dim=16, depth=1, heads=2, mlp_dim=16,
                                   dim_head=12)
SMALL_SIGREG = dict(num_proj=16, knots=5)

SPECS = {
    'VideoTransformer': Spec(
        configs=(
            # 2 frames of 2 x 2 patches, one rotary frequency per axis (dim_head 12: 6 of 12 features rotated)
            dict(image_size=8, patch_size=4, frames=2, dim=16, depth=1, heads=2, mlp_dim=16, dim_head=12),
            # rectangular frames and patches, 1 channel, two frequencies and 2 unrotated features, dropout (eval)
            dict(image_size=(6, 8), patch_size=(3, 2), frames=3, dim=12, depth=2, heads=3, mlp_dim=20, dim_head=14,
                 channels=1, dropout=0.1, emb_dropout=0.1, rotary_max_freq=6.0),
            # bidirectional attention, no rotary frequency (dim_head < 6)
            dict(image_size=4, patch_size=2, frames=2, dim=8, depth=2, heads=2, mlp_dim=8, dim_head=4, channels=2,
                 block_causal=False),
        ),
        notes='channels-last videos; per-frame (c p1 p2) patches, factorised (frame, row, column) rotary with a '
              'persistent `scales` buffer, block-causal attention (bidirectional within a frame, causal across, the '
              'class token sees all and no patch sees it) as a dense mask of vit-pytorch\'s flex_attention mask '
              'function, training-only uniform token dropping (\'token_dropping\' stream); the reference takes '
              'the same mask densely (torch.compile\'s wrapper breaks create_block_mask, no CPU flex backward)',
        torch_context=dense_attention,
        random_configuration=random_video_transformer,
        sweep_draws=8,
    ),
    'LeVJEPA': Spec(
        configs=(
            dict(encoder=ENCODER, image_size=8, local_size=8, num_local_views=2, num_classes_K=8, projection_hidden=8,
                 sigreg_loss_kwargs=SMALL_SIGREG),
            # RMSNorm projector with weight standardisation, one local view, other crops and loss weights, blur on
            dict(encoder=ENCODER, image_size=(8, 12), local_size=(8, 12), num_local_views=1, num_classes_K=6,
                 projection_hidden=12, use_batch_norm=False, use_weight_standardization=True,
                 local_crop_scale=(0.3, 0.6), global_crop_scale=(0.5, 0.9), crop_ratio_range=(0.5, 2.0),
                 invariance_loss_weight=0.5, sigreg_loss_weight=0.3, sigreg_loss_kwargs=dict(num_proj=32, knots=9),
                 local_augment_fn=levjepa.PhotometricAugment(color_jitter_prob=1.0, grayscale_prob=0.5,
                                                             gaussian_blur_prob=0.5)),
            # one channel: jitter without saturation and hue, normalisation by one mean; SIGReg's defaults
            dict(encoder=levjepa.VideoTransformer(image_size=4, patch_size=2, frames=2, dim=12, depth=1, heads=2,
                                                  mlp_dim=12, dim_head=6, channels=1),
                 image_size=4, local_size=4, num_local_views=3, num_classes_K=4, projection_hidden=6,
                 global_augment_fn=levjepa.NormalizeVideo(mean=(0.5,), std=(0.2,)),
                 local_augment_fn=levjepa.PhotometricAugment(color_jitter_prob=1.0, grayscale_prob=1.0,
                                                             mean=(0.5,), std=(0.2,))),
        ),
        notes='the loss in every mode (rng streams \'crop\', \'augment\', \'sigreg\'; \'token_dropping\' in '
              'training): per-video bicubic random resized crops and photometric augmentation (flip, colour jitter, '
              'grayscale, blur; vit-pytorch draws once per batch), invariance + levjepa\'s SIGReg, BatchNorm or '
              'RMSNorm projector, optional weight standardisation; `params[\'encoder\']` is the plain '
              'VideoTransformer\'s; vit-pytorch\'s torchvision replaced by a stand-in replaying the draws',
        draws=draws,
        torch_context=torch_context,
        torch_construction=torch_transforms,
        random_configuration=random_learner,
        sweep_draws=6,
    ),
}
