"""DINO (Caron et al., 2021, "Emerging Properties in Self-Supervised Vision Transformers"), mirroring
vit_pytorch/dino.py.

    learner = Dino(net=ViT(...), image_size=256, hidden_layer='to_latent', projection_hidden_size=256,
                   projection_layers=4, num_classes_K=65336, student_temp=0.9, teacher_temp=0.04,
                   local_upper_crop_scale=0.4, global_lower_crop_scale=0.5,
                   moving_average_decay=0.9, center_moving_average_decay=0.9)
    variables = learner.init({'params': key}, images)                  # teacher = a copy of the student
    loss, updates = learner.apply(variables, images, train=True, mutable=['buffers'],
                                  rngs={'augment': k1, 'crop': k2, 'dropout': k3})
    # optimiser step on variables['params'] with optax.masked(..., learner.trainable_mask(params)), then
    variables = learner.after_step({**variables, **updates})          # the EMA with the learner's decays
    encoder_params = variables['params']['student_encoder']['net']     # a plain ViT's params

Images are channels-last (B, H, W, C), float in [0, 1] for the default augmentation (as torchvision's float
tensors). The loss is random in every mode: the augmentation draws from the rng stream 'augment', the crops
from 'crop' (`Dino.rng_streams`); dropout inside the encoder uses 'dropout' with `train=True`. `Dino.crop_boxes`
returns the boxes a call draws with the same rngs.

Variables mirror vit-pytorch's state dict: `params/student_encoder/net` (the wrapped encoder, exactly a plain
encoder's params), `params/student_encoder/projector/net_{i}` (the MLP), `params/teacher_encoder/...` (the same
tree: the EMA teacher, in 'params' so the state dict transfers, but it gets no gradient and
`trainable_mask(params)` keeps optimisers off it), and the buffers `buffers/teacher_centers`,
`buffers/last_teacher_centers`. vit-pytorch also registers the wrapped network as `Dino.net`, so its state dict
repeats `student_encoder.net.*` as `net.*`: the converters write that copy on export and check it on import
(`Dino.torch_aliases`). The EMA is the pure function `update_moving_average(variables, ...)`, equal to
torch's `learner.update_moving_average()` (`Dino.after_step` applies it with the learner's decays); `__call__`
with `mutable=['buffers']` returns the new `last_teacher_centers`, as torch's forward sets it (without `mutable`
the buffers are left as they are).

`hidden_layer` (torch hooks a layer of `net` and projects its output, flattened; the names follow
extractor.layer_call, the Extractor's rule):
- `-1`: the output of `net` itself.
- `'to_latent'` (vit-pytorch's nn.Identity before the head): the input of the encoder's head submodule
  (`mlp_head`, `mlp_head_0` or `linear_head`), i.e. the pooled token of vit.ViT and its kin.
- the name of a method of `net` that is one of torch's submodules, e.g. cvt.CvT's `'layers'` (the feature map).
- a torch-style dotted submodule name (`'transformer'`, `'transformer.layers.0.1'`): that Flax submodule's output
  (the naming rule of converters/rules.py: `transformer/layers_0_1`); the last call's output, as torch's hook.
- an int other than -1: an index into torch's `net.children()`, known for vit.ViT (-2 = 'to_latent',
  -3 = 'transformer') and cvt.CvT (-2 = 'layers'); other encoders take names. Anything else is a ValueError.
Hidden outputs are flattened as torch does; a 4-D (channels-last) feature map is flattened in torch's
(c h w) order so projector weights transfer.

Quirks of vit-pytorch kept so weights transfer:
- The projector MLP has `projection_layers - 1` Linear + GELU pairs (the last one too: torch's `is_last` is never
  true), then L2Norm and a Linear(projection_hidden_size, num_classes_K): `net.{2i}` are the Linears, the final
  one is `net.{2 * (projection_layers - 1) + 1}`. `projection_layers=1` needs the embedding size to equal
  `projection_hidden_size` (torch fails otherwise; here a ValueError).
- The teacher runs in the learner's mode (its dropout is active with `train=True`), only its gradient is stopped.
- `image_size` is one int (torch's RandomResizedCrop((image_size, image_size))); vit-pytorch's constructor runs a
  3-channel mock forward, so its Dino only works with 3-channel encoders.
- At init the teacher is a copy of the student (torch deep-copies it at the constructor's mock forward); init's
  `last_teacher_centers` come from the init call on the example input, as torch's from its mock forward.

Where this differs from vit-pytorch 1.26.11 (the intended behaviour, as the DINO paper and torchvision mean it):
- torchvision transforms applied to a batch tensor draw ONE crop box, one flip, one jitter... for the whole batch;
  here every image gets its own draw (per-image augmentation, what DINO's per-image pipeline does).
  The probabilities are torch's default augment's: ColorJitter(0.8, 0.8, 0.8, 0.2) with p=0.3, grayscale p=0.2,
  horizontal flip p=0.5, GaussianBlur((3, 3), sigma in (1, 2)) with p=0.2, then ImageNet Normalize.
  The parity tests pass identity augmentations on both sides and give torch the same per-image crops through a
  stand-in for torchvision (`parity/dino.py: torch_transforms`), whose resize is torch's own antialiased bilinear
  `F.interpolate`, the one torchvision's RandomResizedCrop uses on tensors.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from einops import rearrange
from flax import traverse_util

from vit_flax.extractor import NOT_THIS_LAYER, layer_call
from vit_flax.layers import Linear, call_plugged_in, check_floating_input, check_keywords, default, gelu

AUGMENT = 'augment'  # colour jitter, grayscale, flip, blur
CROP = 'crop'  # random resized crops

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# loss function # (algorithm 1 in the paper)


def loss_fn(teacher_logits, student_logits, teacher_temp, student_temp, centers, eps=1e-20):
    teacher_logits = jax.lax.stop_gradient(teacher_logits)
    student_log_probs = jax.nn.log_softmax(student_logits / student_temp, axis=-1)
    teacher_probs = jax.nn.softmax((teacher_logits - centers) / teacher_temp, axis=-1)
    return -(teacher_probs * student_log_probs).sum(axis=-1).mean()


# augmentation utils: per image, channels-last (B, H, W, C), floats in [0, 1]


def _uniform_per_image(key, batch, low=0.0, high=1.0):
    return jax.random.uniform(key, (batch,), jnp.float32, low, high)


def _per_image(flags, images):
    return flags.reshape((-1,) + (1,) * (images.ndim - 1))


def rgb_to_grayscale(images):
    """torchvision's luma (0.2989, 0.587, 0.114), keeping the channel axis (size 1)."""
    r, g, b = images[..., 0], images[..., 1], images[..., 2]
    return (0.2989 * r + 0.587 * g + 0.114 * b)[..., None].astype(images.dtype)


def _blend(image1, image2, ratio):
    return jnp.clip(ratio * image1 + (1.0 - ratio) * image2, 0.0, 1.0)


def adjust_brightness(images, factor):
    return _blend(images, jnp.zeros_like(images), _per_image(factor, images))


def adjust_contrast(images, factor):
    mean = jnp.mean(rgb_to_grayscale(images), axis=(-3, -2, -1), keepdims=True)
    return _blend(images, mean, _per_image(factor, images))


def adjust_saturation(images, factor):
    return _blend(images, rgb_to_grayscale(images), _per_image(factor, images))


def _rgb_to_hsv(images):
    r, g, b = images[..., 0], images[..., 1], images[..., 2]
    maxc, minc = images.max(axis=-1), images.min(axis=-1)
    eqc = maxc == minc
    cr = maxc - minc
    ones = jnp.ones_like(maxc)
    s = cr / jnp.where(eqc, ones, maxc)
    cr_divisor = jnp.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / cr_divisor, (maxc - g) / cr_divisor, (maxc - b) / cr_divisor
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = jnp.mod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return h, s, maxc


def _hsv_to_rgb(h, s, v):
    i = jnp.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.astype(jnp.int32) % 6
    p = jnp.clip(v * (1.0 - s), 0.0, 1.0)
    q = jnp.clip(v * (1.0 - s * f), 0.0, 1.0)
    t = jnp.clip(v * (1.0 - s * (1.0 - f)), 0.0, 1.0)
    pick = lambda *options: jnp.select([i == k for k in range(6)], options)
    return jnp.stack((pick(v, q, p, p, t, v), pick(t, v, v, q, p, p), pick(p, p, t, v, v, q)), axis=-1)


def adjust_hue(images, hue_factor):
    h, s, v = _rgb_to_hsv(images)
    h = jnp.mod(h + hue_factor.reshape((-1,) + (1,) * (h.ndim - 1)), 1.0)
    return _hsv_to_rgb(h, s, v).astype(images.dtype)


def color_jitter(key, images, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2):
    """torchvision's ColorJitter per image: factors uniform in [max(0, 1 - v), 1 + v] (hue in [-hue, hue]),
    the four adjustments in a random order."""
    batch = images.shape[0]
    keys = jax.random.split(key, 5)
    factors = [_uniform_per_image(k, batch, max(0.0, 1.0 - v), 1.0 + v)
               for k, v in zip(keys[:3], (brightness, contrast, saturation))]
    hue_factor = _uniform_per_image(keys[3], batch, -hue, hue)
    order = jax.vmap(lambda k: jax.random.permutation(k, 4))(jax.random.split(keys[4], batch))  # (B, 4)
    adjustments = (
        lambda x: adjust_brightness(x, factors[0]),
        lambda x: adjust_contrast(x, factors[1]),
        lambda x: adjust_saturation(x, factors[2]),
        lambda x: adjust_hue(x, hue_factor),
    )
    for step in range(4):
        candidates = jnp.stack([adjust(images) for adjust in adjustments])  # (4, B, H, W, C)
        images = jnp.take_along_axis(candidates, order[None, :, step, None, None, None], axis=0)[0]
    return images


def gaussian_blur(images, sigma, kernel_size: int = 3):
    """torchvision's GaussianBlur (reflect padding, separable kernel) with a per-image sigma (B,)."""
    half = (kernel_size - 1) * 0.5
    x = jnp.linspace(-half, half, kernel_size)
    kernel = jnp.exp(-0.5 * jnp.square(x[None] / sigma[:, None]))
    kernel = kernel / kernel.sum(axis=-1, keepdims=True)  # (B, k)
    pad = kernel_size // 2
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode='reflect')
    height, width = images.shape[1:3]
    rows = sum(kernel[:, i, None, None, None] * padded[:, i:i + height] for i in range(kernel_size))
    return sum(kernel[:, i, None, None, None] * rows[:, :, i:i + width] for i in range(kernel_size))


def default_augment(key, images, color_jitter_p=0.3, grayscale_p=0.2, flip_p=0.5, blur_p=0.2,
                    blur_sigma=(1.0, 2.0), mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """vit-pytorch's DEFAULT_AUG, per image: RandomApply(ColorJitter(0.8, 0.8, 0.8, 0.2), p=0.3),
    RandomGrayscale(p=0.2), RandomHorizontalFlip(), RandomApply(GaussianBlur((3, 3), (1.0, 2.0)), p=0.2),
    Normalize(ImageNet mean, std). Images (B, H, W, 3) in [0, 1]."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f'the default augmentation takes RGB images (batch, height, width, 3), got shape {images.shape}')
    batch = images.shape[0]
    keys = jax.random.split(key, 7)
    jittered = color_jitter(keys[0], images)
    images = jnp.where(_per_image(_uniform_per_image(keys[1], batch) < color_jitter_p, images), jittered, images)
    gray = jnp.broadcast_to(rgb_to_grayscale(images), images.shape)
    images = jnp.where(_per_image(_uniform_per_image(keys[2], batch) < grayscale_p, images), gray, images)
    images = flip_and_blur(keys[3], images, flip_p, blur_p, blur_sigma)
    return (images - jnp.asarray(mean, images.dtype)) / jnp.asarray(std, images.dtype)


def flip_and_blur(key, images, flip_p=0.5, blur_p=0.2, blur_sigma=(1.0, 2.0)):
    """The channel-agnostic part of `default_augment`, per image: horizontal flip, then Gaussian blur."""
    batch = images.shape[0]
    keys = jax.random.split(key, 3)
    images = jnp.where(_per_image(_uniform_per_image(keys[0], batch) < flip_p, images), images[:, :, ::-1], images)
    blurred = gaussian_blur(images, _uniform_per_image(keys[1], batch, *blur_sigma))
    return jnp.where(_per_image(_uniform_per_image(keys[2], batch) < blur_p, images), blurred, images)


class DefaultAugment(nn.Module):
    """`default_augment` as a module drawing from the 'augment' stream (no parameters)."""

    @nn.compact
    def __call__(self, images):
        return default_augment(self.make_rng(AUGMENT), images)


class FlipAndBlur(nn.Module):
    """`flip_and_blur` as a module drawing from the 'augment' stream: for images of any channel count that are
    already normalised (the trainer's), where the default's colour jitter, grayscale and ImageNet Normalize do
    not apply."""

    @nn.compact
    def __call__(self, images):
        return flip_and_blur(self.make_rng(AUGMENT), images)


class RandomApply(nn.Module):
    """vit-pytorch's RandomApply(fn, p): `fn(x)` with probability p (one draw per image from 'augment'; torch's
    draws once per batch). `RandomApply(L2Norm(), p=0.)` is the identity in both frameworks, which the registry
    uses to switch augmentation off in a way a vit-pytorch user can rebuild from the JSON sidecar."""

    fn: Any
    p: float

    @nn.compact
    def __call__(self, x):
        if self.p <= 0:
            return x
        apply = jax.random.uniform(self.make_rng(AUGMENT), (x.shape[0],)) <= self.p
        return jnp.where(_per_image(apply, x), self.fn(x), x)


# random resized crops


def random_resized_crop_boxes(key, batch: int, height: int, width: int, scale, ratio=(3.0 / 4.0, 4.0 / 3.0),
                              attempts: int = 10):
    """torchvision's RandomResizedCrop.get_params per image: (B, 4) int32 boxes (top, left, h, w). Up to 10
    draws of an area fraction in `scale` and a log-uniform aspect ratio; the first that fits is taken, else the
    whole image clipped to `ratio` (a centre crop)."""
    area = height * width
    k_area, k_ratio, k_top, k_left = jax.random.split(key, 4)
    target_area = area * jax.random.uniform(k_area, (batch, attempts), jnp.float32, scale[0], scale[1])
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    aspect = jnp.exp(jax.random.uniform(k_ratio, (batch, attempts), jnp.float32, *log_ratio))
    w = jnp.round(jnp.sqrt(target_area * aspect)).astype(jnp.int32)
    h = jnp.round(jnp.sqrt(target_area / aspect)).astype(jnp.int32)
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = jnp.argmax(fits, axis=-1)
    pick = lambda a: jnp.take_along_axis(a, first[:, None], axis=-1)[:, 0]
    h, w, any_fits = pick(h), pick(w), fits.any(axis=-1)
    top = jnp.floor(jax.random.uniform(k_top, (batch,)) * (height - h + 1)).astype(jnp.int32)
    left = jnp.floor(jax.random.uniform(k_left, (batch,)) * (width - w + 1)).astype(jnp.int32)

    in_ratio = width / height  # fallback: centre crop
    if in_ratio < min(ratio):
        fw, fh = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fh, fw = height, round(height * max(ratio))
    else:
        fw, fh = width, height
    fallback = jnp.array([(height - fh) // 2, (width - fw) // 2, fh, fw], jnp.int32)
    boxes = jnp.stack((top, left, h, w), axis=-1)
    return jnp.where(any_fits[:, None], boxes, fallback)


def _resize_weights(start, length, in_size: int, out_size: int):
    """(B, out, in) weights of torch's antialiased bilinear interpolation (align_corners=False) of
    rows [start, start + length) to `out_size` rows: a triangle filter widened by the scale when shrinking,
    normalised over the rows inside the crop (PIL's and torch's `_upsample_bilinear2d_aa`)."""
    scale = (length / out_size).astype(jnp.float32)[:, None, None]
    support = jnp.where(scale >= 1.0, scale, 1.0)
    invscale = jnp.where(scale >= 1.0, 1.0 / scale, 1.0)
    center = scale * (jnp.arange(out_size, dtype=jnp.float32)[None, :, None] + 0.5)
    rows = jnp.arange(in_size)[None, None, :] - start[:, None, None]  # row index inside the crop
    inside = (rows >= 0) & (rows < length[:, None, None])
    # torch's window [trunc(center - support + 0.5), trunc(center + support + 0.5)) clipped to the crop; the
    # triangle is zero outside it except exactly at its ends
    low = jnp.maximum(jnp.trunc(center - support + 0.5), 0.0)
    high = jnp.minimum(jnp.trunc(center + support + 0.5), length[:, None, None].astype(jnp.float32))
    in_window = inside & (rows >= low) & (rows < high)
    weights = jnp.maximum(0.0, 1.0 - jnp.abs((rows - center + 0.5) * invscale))
    weights = jnp.where(in_window, weights, 0.0)
    return weights / weights.sum(axis=-1, keepdims=True)


def resized_crop(images, boxes, size):
    """Crop each image (B, H, W, C) to its box (top, left, h, w) and resize to `size` (an int or (h, w)) with
    torch's antialiased bilinear interpolation, as torchvision's RandomResizedCrop does on tensors."""
    out_h, out_w = (size, size) if isinstance(size, int) else size
    boxes = jnp.asarray(boxes, jnp.int32)
    rows = _resize_weights(boxes[:, 0], boxes[:, 2], images.shape[1], out_h)
    columns = _resize_weights(boxes[:, 1], boxes[:, 3], images.shape[2], out_w)
    out = jnp.einsum('boh,bhwc->bowc', rows.astype(images.dtype), images)
    return jnp.einsum('bpw,bowc->bopc', columns.astype(images.dtype), out)


# exponential moving average


class EMA:
    def __init__(self, beta):
        self.beta = beta

    def update_average(self, old, new):
        if old is None:
            return new
        return old * self.beta + (1 - self.beta) * new


def _ema(old_tree, new_tree, beta):
    return jax.tree_util.tree_map(EMA(beta).update_average, old_tree, new_tree)


def update_moving_average(variables, moving_average_decay: float = 0.9, center_moving_average_decay: float = 0.9,
                          *, centers=(('teacher_centers', 'last_teacher_centers'),)):
    """torch's `learner.update_moving_average()` as a pure function of the variables: teacher <- decay * teacher +
    (1 - decay) * student, and each teacher centre buffer <- the EMA of its `last_...` buffer. Returns new
    variables (the others unchanged). Call it after the optimiser step, with the buffers `__call__` returned."""
    params = dict(variables['params'])
    params['teacher_encoder'] = _ema(params['teacher_encoder'], params['student_encoder'], moving_average_decay)
    buffers = dict(variables['buffers'])
    for center, last in centers:
        buffers[center] = EMA(center_moving_average_decay).update_average(buffers[center], buffers[last])
    return {**variables, 'params': params, 'buffers': buffers}


def reset_moving_average(variables, *, target: str = 'teacher_encoder', online: str = 'student_encoder'):
    """The teacher set to a copy of the student (torch's `reset_moving_average()` followed by a forward).
    `target` and `online` name the two subtrees (lejepa.LeJEPA's are 'target_encoder' and 'encoder')."""
    params = dict(variables['params'])
    params[target] = jax.tree_util.tree_map(lambda a: a, params[online])
    return {**variables, 'params': params}


def trainable_mask(params, *, frozen: str = 'teacher_encoder'):
    """A pytree of bools like `params` (or like variables holding 'params'): False for the teacher (the subtree
    `frozen`), which only the EMA moves. For optax.masked / optax.multi_transform."""
    flat = traverse_util.flatten_dict(dict(params))
    return traverse_util.unflatten_dict({path: frozen not in path for path in flat})


# MLP class for projector and predictor


def l2norm(x, eps: float = 1e-6):
    """torch's x / x.norm(dim=1).clamp(min=eps), over the feature axis."""
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
    return x / jnp.maximum(norm, eps)


class L2Norm(nn.Module):
    @nn.compact
    def __call__(self, x):
        return l2norm(x)


class MLP(nn.Module):
    dim: int
    dim_out: int
    num_layers: int
    hidden_size: int = 256

    def __post_init__(self):
        if not isinstance(self.num_layers, int) or self.num_layers < 1:
            raise ValueError(f'projection_layers must be a positive integer, got projection_layers={self.num_layers!r}')
        if self.num_layers == 1 and self.dim != self.hidden_size:
            raise ValueError(
                f'projection_layers=1 feeds the embedding (size {self.dim}) straight to a Linear of '
                f'projection_hidden_size={self.hidden_size} inputs: they must be equal (vit-pytorch fails otherwise)'
            )
        super().__post_init__()

    @nn.compact
    def __call__(self, x):
        for i in range(self.num_layers - 1):  # every one followed by a GELU: torch's `is_last` is never true
            x = gelu(Linear(self.hidden_size, name=f'net_{2 * i}')(x))
        x = l2norm(x)
        return Linear(self.dim_out, name=f'net_{2 * (self.num_layers - 1) + 1}')(x)


# the hidden layer of the wrapped network

TORCH_CHILDREN = {  # names of vit-pytorch's `net.children()`, for integer hidden layers
    'vit.ViT': ('to_patch_embedding', 'dropout', 'transformer', 'to_latent', 'mlp_head'),
    'cvt.CvT': ('layers', 'to_logits'),
}
def resolve_hidden_layer(net: nn.Module, layer) -> str | int:
    """An integer hidden layer as torch's child name (or -1); a ValueError naming it when unknown."""
    if isinstance(layer, bool) or not isinstance(layer, (int, str)):
        raise ValueError(f'hidden_layer must be a layer name or an index, got hidden_layer={layer!r}')
    if isinstance(layer, str) or layer == -1:
        return layer
    name = f"{type(net).__module__.removeprefix('vit_flax.')}.{type(net).__name__}"
    children = TORCH_CHILDREN.get(name)
    if children is None or not -len(children) <= layer < len(children):
        raise ValueError(
            f'hidden_layer={layer} is an index into vit-pytorch\'s children of {name}, which vit-flax knows only for '
            f'{", ".join(TORCH_CHILDREN)} (and -1, the whole network); pass the layer\'s name instead'
        )
    return children[layer]


class NetWrapper(nn.Module):
    """The wrapped network and the projector: returns (projection, embedding), or the embedding alone."""

    net: nn.Module
    output_dim: int
    projection_hidden_size: int
    projection_num_layers: int
    layer: int | str = -2

    def get_hidden(self, x, train: bool = False):
        """The hidden layer's output as the Flax encoder gives it (channels-last for feature maps)."""
        layer = resolve_hidden_layer(self.net, self.layer)
        if layer == -1:
            return call_plugged_in(self.net, x, train)

        captured = []
        net_path = None

        def interceptor(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            path = context.module.scope.path if context.module.scope is not None else None
            if path is None or net_path is None or path[:len(net_path)] != net_path:
                return out
            seen = layer_call(layer, path[len(net_path):], context.method_name, args, out)
            if seen is not NOT_THIS_LAYER:
                captured.append(seen)
            return out

        net_path = tuple(self.scope.path) + ('net',)
        with nn.intercept_methods(interceptor):
            call_plugged_in(self.net, x, train)
        if not captured:
            raise ValueError(f'hidden layer ({self.layer!r}) not found in {type(self.net).__name__}')
        return captured[-1]

    def get_embedding(self, x, train: bool = False):
        hidden = self.get_hidden(x, train)
        if self.layer == -1:
            return hidden
        if hidden.ndim == 4:  # a channels-last feature map: torch flattens (c h w)
            hidden = rearrange(hidden, 'b h w c -> b c h w')
        return hidden.reshape(hidden.shape[0], -1)

    @nn.compact
    def __call__(self, x, return_projection: bool = True, train: bool = False):
        embed = self.get_embedding(x, train)
        if not return_projection:
            return embed
        projector = MLP(embed.shape[-1], self.output_dim, self.projection_num_layers, self.projection_hidden_size,
                        name='projector')
        return projector(embed), embed


# main class


def _check_config(module):
    image_size = module.image_size
    if not isinstance(image_size, int):
        raise ValueError(f'image_size must be one positive int (square crops, as torch), got image_size={image_size!r}')
    if not 0.05 < module.local_upper_crop_scale <= 1.0:
        raise ValueError(f'local_upper_crop_scale must be in (0.05, 1], got {module.local_upper_crop_scale!r}')
    if not 0.0 < module.global_lower_crop_scale <= 1.0:
        raise ValueError(f'global_lower_crop_scale must be in (0, 1], got {module.global_lower_crop_scale!r}')
    for name in ('augment_fn', 'augment_fn2'):
        if getattr(module, name) is not None and not callable(getattr(module, name)):
            raise ValueError(f'{name} must be a callable or a Flax module, got {getattr(module, name)!r}')
    MLP(1 if module.projection_layers != 1 else module.projection_hidden_size, 1, module.projection_layers,
        module.projection_hidden_size)  # checks projection_layers
    resolve_hidden_layer(module.net, module.hidden_layer)


class _InitCopiesStudent:
    """`init` returns the teacher as a copy of the student, as torch's deep copy makes it."""

    def init(self, rngs, *args, **kwargs):
        return reset_moving_average(super().init(rngs, *args, **kwargs))


class CropViews:
    """What Dino (and es_vit.EsViTTrainer) and lejepa.LeJEPA share, from their fields `net`, `hidden_layer`,
    `num_classes_K`, `projection_hidden_size`, `projection_layers`, `local_upper_crop_scale` and
    `global_lower_crop_scale`: the wrapped network with its projector, the augmentation (vit-pytorch's default where
    none is given) and each image's two local and two global crops from the 'crop' stream."""

    def _encoder(self, name):
        return NetWrapper(self.net.clone(), self.num_classes_K, self.projection_hidden_size, self.projection_layers,
                          layer=self.hidden_layer, name=name)

    def _augment(self, fn, name, x):
        if fn is None:
            return DefaultAugment(name=name)(x)
        return fn(x)

    def crop_boxes(self, x):
        """The crop boxes a call on `x` draws from the 'crop' stream: (4, B, 4) int32 (top, left, h, w) for the
        local crops of views one and two, then the global crops of views one and two (torch's call order)."""
        batch, height, width = x.shape[:3]
        local_scale = (0.05, self.local_upper_crop_scale)
        global_scale = (self.global_lower_crop_scale, 1.0)
        return jnp.stack([
            random_resized_crop_boxes(self.make_rng(CROP), batch, height, width, scale)
            for scale in (local_scale, local_scale, global_scale, global_scale)
        ])


class Dino(CropViews, _InitCopiesStudent, nn.Module):
    net: nn.Module
    image_size: int
    hidden_layer: int | str = -2
    projection_hidden_size: int = 256
    num_classes_K: int = 65336
    projection_layers: int = 4
    student_temp: float = 0.9
    teacher_temp: float = 0.04
    local_upper_crop_scale: float = 0.4
    global_lower_crop_scale: float = 0.5
    moving_average_decay: float = 0.9
    center_moving_average_decay: float = 0.9
    augment_fn: Callable | None = None
    augment_fn2: Callable | None = None

    # what the trainer reads off an objective (vit_flax.training.objectives.Objective, FreezesParameters,
    # UpdatesAfterStep): the student's network, augmentations and crops from their streams, the EMA teacher
    encoder_keyword = 'net'
    encoder_path = ('student_encoder', 'net')
    rng_streams = (AUGMENT, CROP)
    takes_labels = False

    @nn.nowrap
    def trainable_mask(self, params):
        """False for the teacher, which only the EMA moves (the module-level `trainable_mask`)."""
        return trainable_mask(params)

    @nn.nowrap
    def after_step(self, variables):
        """The EMA of the teacher and the centres after an optimiser step, with this learner's decays."""
        return update_moving_average(variables, self.moving_average_decay, self.center_moving_average_decay)

    def torch_aliases(self) -> dict[str, str]:
        """vit-pytorch registers the wrapped network twice (`Dino.net` and `student_encoder.net`): its state dict
        repeats `student_encoder.net.*` as `net.*` (the converters write and check the copy)."""
        return {'net.': 'student_encoder.net.'}

    def __post_init__(self):
        check_keywords(self)
        _check_config(self)
        super().__post_init__()

    @nn.compact
    def __call__(self, x, return_embedding: bool = False, return_projection: bool = True, student_temp=None,
                 teacher_temp=None, train: bool = False):
        check_floating_input(self, 'x', x)
        if x.ndim != 4:
            raise ValueError(f'expected images of shape (batch, height, width, channels), got shape {x.shape}')
        student_encoder = self._encoder('student_encoder')
        teacher_encoder = self._encoder('teacher_encoder')
        teacher_centers = self.variable('buffers', 'teacher_centers', jnp.zeros, (1, self.num_classes_K))
        last_teacher_centers = self.variable('buffers', 'last_teacher_centers', jnp.zeros, (1, self.num_classes_K))

        if return_embedding:
            return student_encoder(x, return_projection=return_projection, train=train)

        image_one = self._augment(self.augment_fn, 'augment1', x)
        image_two = self._augment(self.augment_fn2, 'augment2', x)

        boxes = self.crop_boxes(x)
        crop = lambda images, b: resized_crop(images, b, self.image_size)
        local_image_one, local_image_two = crop(image_one, boxes[0]), crop(image_two, boxes[1])
        global_image_one, global_image_two = crop(image_one, boxes[2]), crop(image_two, boxes[3])

        student_proj_one, _ = student_encoder(local_image_one, train=train)
        student_proj_two, _ = student_encoder(local_image_two, train=train)

        teacher_proj_one, _ = teacher_encoder(global_image_one, train=train)
        teacher_proj_two, _ = teacher_encoder(global_image_two, train=train)
        teacher_proj_one, teacher_proj_two = jax.lax.stop_gradient((teacher_proj_one, teacher_proj_two))

        def loss_fn_(teacher_logits, student_logits):
            return loss_fn(teacher_logits, student_logits, teacher_temp=default(teacher_temp, self.teacher_temp),
                           student_temp=default(student_temp, self.student_temp), centers=teacher_centers.value)

        teacher_logits_avg = jnp.concatenate((teacher_proj_one, teacher_proj_two)).mean(axis=0)
        if self.is_mutable_collection('buffers'):
            last_teacher_centers.value = teacher_logits_avg[None].astype(last_teacher_centers.value.dtype)

        return (loss_fn_(teacher_proj_one, student_proj_two) + loss_fn_(teacher_proj_two, student_proj_one)) / 2
