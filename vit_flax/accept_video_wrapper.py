"""AcceptVideoWrapper, mirroring vit_pytorch/accept_video_wrapper.py: runs an image model on every frame of a video
and gives its outputs a time axis, optionally projecting one output, adding a learned time position embedding to it
and running MOSS (vivit_with_moss.MOSS) over its patch tokens.

    v = Extractor(ViT(image_size=256, patch_size=32, num_classes=1000, dim=1024, depth=6, heads=16, mlp_dim=2048))
    video_acceptor = AcceptVideoWrapper(v, add_time_pos_emb=True, output_pos_add_pos_emb=1, time_seq_len=12,
                                        dim_emb=1024, proj_embed_to_dim=512,
                                        moss=dict(dim=512, orders=2, causal=True))
    variables = video_acceptor.init(key, videos)                 # videos (batch, frames, height, width, channels)
    logits, embeddings = video_acceptor.apply(variables, videos, eval_with_no_grad=True)
    # logits (1, 7, 1000), embeddings (1, 7, 65, 512) for seven 256 x 256 frames

Videos are channels-last, (batch, frames, height, width, channels); vit-pytorch takes (batch, channels, frames,
height, width). `image_net` is any Flax image model (a registered one: vit.ViT, simple_vit.SimpleViT, cvt.CvT ...) or
an extractor.Extractor of one. Its parameters live under `params/image_net` (an Extractor's model under
`params/image_net/vit`, torch's `image_net.vit.*`), the wrapper's own at torch's names: `embed_proj` (a Linear),
`pos_emb` (time_seq_len, proj_embed_to_dim or dim_emb), `moss`.

As in vit-pytorch:
- the frames run through `image_net` as one batch of (batch * frames) images, calling its `forward_function`:
  'forward' (the default) is the model's `__call__`, any other name one of its methods (cvt.CvT's 'layers' gives the
  feature maps; `init` then also runs the whole model once, so the variables hold every parameter of torch's state
  dict); `forward_kwargs` are passed to it (an Extractor's `return_embeddings_only=True`), and `train` where the
  method takes it;
- the outputs are flattened as torch.utils._pytree flattens them: tuples, lists and dicts (in insertion order) are
  nodes, everything else, None included, is a leaf; every array leaf of more than one element gets its time axis
  ((batch * frames, ...) -> (batch, frames, ...)), the others (an aux loss, None) pass as they are, and the outputs
  come back in their own structure. A one-element array is not reshaped either: with one video of one frame, an
  output of shape (1, 1) stays (1, 1);
- `output_pos_add_pos_emb` picks the output (its index among those leaves) that is projected (`proj_embed_to_dim`:
  a Linear from `dim_emb` on its last axis), gets the time embedding and goes through MOSS;
- the time embedding (time_seq_len, d), drawn as `randn * 1e-2`, adds its first `frames` rows along the output's
  time axis, its `d` features along the last axis, or with `embed_is_channel_first` along the axis after time, the
  axes between broadcast;
- MOSS (`moss`: a vivit_with_moss.MOSS, or a dict of its keywords) runs over the patch tokens of an output of shape
  (batch, frames, tokens, dim): the last `(height // p1) * (width // p2)` tokens for the video's size and the
  `patch_size` (by default the image model's `patch_size`, or its `vit.patch_size` for an Extractor), the tokens
  before them (cls tokens) passing as they are. MOSS needs a patch size.

Layouts: vit-flax's feature maps are channels-last where vit-pytorch's are channels-first, and
`embed_is_channel_first` says how the wrapped output is laid out here: wrapping cvt.CvT's 'layers', whose
(batch, frames, h, w, dim) maps come out channels-last, takes `embed_is_channel_first=False` where vit-pytorch's
(batch, frames, dim, h, w) maps take True; the outputs are the same, up to that move of the channel axis.

Differences:
- `eval_with_no_grad=True` runs the image model with `train=False` and stops the gradient at its outputs (torch's
  `no_grad`); vit-pytorch's `.eval()` also leaves the image model in eval mode for every later call, a state Flax
  modules do not have.
- An Extractor here is vit-flax's: it captures its layer inside the wrapper's `apply` (a layer inside a scanned or
  rematerialised stack cannot be taken, as with the Extractor itself).
- Refused with a ValueError naming the value where vit-pytorch asserts or fails later: `proj_embed_to_dim` without
  `dim_emb`; `add_time_pos_emb` without `dim_emb` and `time_seq_len`; MOSS without a patch size; a video of more
  frames than `time_seq_len`; an `output_pos_add_pos_emb` past the outputs; an output to project whose last axis
  is not `dim_emb`; MOSS on an output that is not (batch, frames, tokens, dim) with at least as many tokens as
  patches; a `forward_function` the image model does not have.

No rng streams of its own: the image model's ('dropout' with `train=True`) pass through.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange

from vit_flax.extractor import NOT_THIS_LAYER, Extractor, layer_call
from vit_flax.layers import Linear, call_plugged_in, check_floating_input, check_keywords, exists, pair, small_randn
from vit_flax.vivit_with_moss import MOSS

# helper functions


def tree_flatten(tree) -> tuple[list, Callable[[list], Any]]:
    """torch.utils._pytree.tree_flatten's leaves, with a function that puts new leaves back into the structure:
    tuples (namedtuples too), lists and dicts, in insertion order, are nodes; anything else, None included, is a
    leaf (JAX's tree_flatten drops None and sorts dict keys, so its leaf indices differ)."""
    if isinstance(tree, (tuple, list, dict)):
        keys = list(tree) if isinstance(tree, dict) else None
        children = [tree[key] for key in keys] if keys is not None else list(tree)
        parts = [tree_flatten(child) for child in children]
        leaves = [leaf for part_leaves, _ in parts for leaf in part_leaves]

        def unflatten(new_leaves):
            items, start = [], 0
            for part_leaves, part_unflatten in parts:
                items.append(part_unflatten(new_leaves[start:start + len(part_leaves)]))
                start += len(part_leaves)
            if keys is not None:
                rebuilt = copy.copy(tree)  # keeps the dict's class (OrderedDict, defaultdict's factory)
                rebuilt.clear()
                rebuilt.update(zip(keys, items))
                return rebuilt
            if isinstance(tree, tuple) and hasattr(tree, '_fields'):
                return type(tree)(*items)
            return type(tree)(items)

        return leaves, unflatten
    return [tree], lambda new_leaves: new_leaves[0]


def is_array(value) -> bool:
    return isinstance(value, (jax.Array, np.ndarray))


def call_with_train(method, x, train: bool, **kwargs):
    """`method(x, **kwargs)`, with `train=` where the module method takes it (by name, or through **kwargs) and
    `kwargs` do not set it: layers.call_plugged_in's rule, for any method and with keywords."""
    parameters = inspect.signature(method).parameters.values()
    if 'train' not in kwargs and any(p.name == 'train' or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        kwargs['train'] = train
    return method(x, **kwargs)


def check_positive_or_none(module: nn.Module, **values):
    for key, value in values.items():
        if value is not None and not (isinstance(value, (int, np.integer)) and not isinstance(value, bool)
                                      and value >= 1):
            raise ValueError(f'{type(module).__name__}: {key}={value!r} must be a positive integer (or None)')


# classes


class ExtractorSubmodule(nn.Module):
    """vit-pytorch's Extractor as a submodule of the wrapper: its model a child named `vit` (torch's
    `image_net.vit.*`), its layer's output captured inside the wrapper's own `apply` (extractor.Extractor applies the
    model on its own). `__call__(img, return_embeddings_only=False, train=False)` returns `(logits, embeddings)` or
    the embeddings, as vit-pytorch's `Extractor.forward` does; the layer is found by extractor.layer_call's rule."""

    vit: nn.Module
    layer_name: str = 'transformer'
    layer_save_input: bool = False
    return_embeddings_only: bool = False
    detach: bool = True

    @nn.compact
    def __call__(self, img, return_embeddings_only: bool = False, train: bool = False):
        vit_path = (*self.scope.path, 'vit')
        captured, called = [], set()

        def capture(next_fun, args, kwargs, context):
            output = next_fun(*args, **kwargs)
            scope = context.module.scope
            if scope is None or tuple(scope.path[:len(vit_path)]) != vit_path:
                return output  # a module being built outside apply, or not one of the model's
            path = tuple(scope.path[len(vit_path):])
            called.add(path[0] if path else context.method_name)
            seen = layer_call(self.layer_name, path, context.method_name, args, output, self.layer_save_input)
            if seen is not NOT_THIS_LAYER:  # the last call's, as torch's hook overwrites its latents
                captured[:] = [seen]
            return output

        with nn.intercept_methods(capture):
            pred = call_plugged_in(self.vit, img, train)
        if not captured:
            raise ValueError(
                f'layer {self.layer_name!r} whose embeddings to take was not found in {type(self.vit).__name__}; '
                f'its layers: {", ".join(sorted(called - {"__call__"}))}'
            )
        (latents,) = captured
        if self.detach:
            latents = jax.tree_util.tree_map(jax.lax.stop_gradient, latents)

        if return_embeddings_only or self.return_embeddings_only:
            return latents
        return pred, latents


class AcceptVideoWrapper(nn.Module):
    image_net: nn.Module | Extractor
    forward_function: str = 'forward'
    add_time_pos_emb: bool = False
    dim_emb: int | None = None
    time_seq_len: int | None = None
    embed_is_channel_first: bool = False
    output_pos_add_pos_emb: int = 0  # defaults to first output position to add embedding
    proj_embed_to_dim: int | None = None
    patch_size: int | tuple[int, int] | None = None
    moss: MOSS | dict | None = None

    def __post_init__(self):
        check_keywords(self)
        check_positive_or_none(self, dim_emb=self.dim_emb, time_seq_len=self.time_seq_len,
                               proj_embed_to_dim=self.proj_embed_to_dim)
        name = type(self).__name__
        if not isinstance(self.image_net, (nn.Module, Extractor)):
            raise TypeError(f'{name} wraps a Flax image model or an extractor.Extractor of one, got image_net of type '
                            f'{type(self.image_net).__name__}')
        if isinstance(self.image_net, Extractor):
            if self.forward_function != 'forward':
                raise ValueError(f"{name}: an Extractor is called through its forward, got "
                                 f"forward_function={self.forward_function!r}")
        elif self.forward_function != 'forward' and not callable(getattr(type(self.image_net),
                                                                         self.forward_function, None)):
            raise ValueError(f'{name}: {type(self.image_net).__name__} has no method '
                             f'forward_function={self.forward_function!r}')
        if exists(self.proj_embed_to_dim) and not exists(self.dim_emb):
            raise ValueError(f'{name}: `dim_emb` must be passed in with proj_embed_to_dim={self.proj_embed_to_dim}')
        if self.add_time_pos_emb and not (exists(self.dim_emb) and exists(self.time_seq_len)):
            raise ValueError(
                f'{name}: `dim_emb` and `time_seq_len` must be set if adding positional embeddings to the output, got '
                f'dim_emb={self.dim_emb}, time_seq_len={self.time_seq_len}'
            )
        if not (self.moss is None or isinstance(self.moss, (MOSS, Mapping))):
            raise TypeError(f'{name}: moss must be a vivit_with_moss.MOSS, a dict of its keywords or None, got '
                            f'{type(self.moss).__name__}')
        if isinstance(self.moss, Mapping):  # a dict, which Flax holds as a FrozenDict once bound
            MOSS(**self.moss, parent=None)  # its keywords checked now
        if exists(self.moss) and not exists(self.resolved_patch_size):
            raise ValueError(f'{name}: `patch_size` must be provided either on the `image_net` or passed in explicitly '
                             'if using MOSS')
        super().__post_init__()

    @property
    def image_model(self) -> nn.Module:
        """The image model run on the frames (an Extractor's model)."""
        return self.image_net.vit if isinstance(self.image_net, Extractor) else self.image_net

    @property
    def resolved_patch_size(self):
        """`patch_size`, else the image model's (vit-pytorch reads `image_net.patch_size`, then
        `image_net.vit.patch_size`); None when neither has one."""
        if exists(self.patch_size):
            return self.patch_size
        for net in (self.image_net, getattr(self.image_net, 'vit', None)):
            if exists(getattr(net, 'patch_size', None)):
                return net.patch_size
        return None

    def _run_image_net(self, images, train: bool, forward_kwargs: dict):
        if isinstance(self.image_net, Extractor):
            extractor = self.image_net
            net = ExtractorSubmodule(extractor.vit, extractor.layer_name, extractor.layer_save_input,
                                     extractor.return_embeddings_only, extractor.detach, name='image_net')
            return net(images, train=train, **forward_kwargs)
        if self.forward_function == 'forward':
            return call_with_train(self.image_net.__call__, images, train, **forward_kwargs)
        if self.is_initializing():
            # the whole model once, so that init creates every parameter of its tree (torch's state dict has them
            # all), also those the method leaves unused (cvt.CvT's head, when the wrapper calls its `layers`)
            call_plugged_in(self.image_net, images, False)
        return call_with_train(getattr(self.image_net, self.forward_function), images, train, **forward_kwargs)

    def _selected_output(self, outputs: list, what: str):
        index = self.output_pos_add_pos_emb
        if not -len(outputs) <= index < len(outputs):
            raise ValueError(
                f'output_pos_add_pos_emb={index} picks the output to {what}, but the image net gives {len(outputs)} '
                'outputs'
            )
        embed = outputs[index]
        if not is_array(embed):
            raise ValueError(f'output {index} of the image net, the one to {what}, is {embed!r}, not an array')
        return embed

    @nn.compact
    def __call__(self, video, eval_with_no_grad: bool = False, forward_kwargs: dict | None = None,
                 train: bool = False):
        check_floating_input(self, 'video', video, what='videos')
        if video.ndim != 5:
            raise ValueError(f'expected videos of shape (batch, frames, height, width, channels), got shape '
                             f'{video.shape}')
        add_time_pos_emb = self.add_time_pos_emb
        time = video.shape[1]

        # maybe validate time positional embedding

        if add_time_pos_emb and time > self.time_seq_len:
            raise ValueError(
                f'received video with {time} frames but `time_seq_len` ({self.time_seq_len}) is too low'
            )

        video_height, video_width = video.shape[2:4]

        video = rearrange(video, 'b t h w c -> (b t) h w c')

        # forward through image net for outputs

        outputs = self._run_image_net(video, train and not eval_with_no_grad, dict(forward_kwargs or {}))
        if eval_with_no_grad:
            outputs = jax.tree_util.tree_map(lambda t: jax.lax.stop_gradient(t) if is_array(t) else t, outputs)

        # handle multiple outputs, say logits and embeddings returned from extractor - also handle some reduce aux
        # loss being returned

        outputs, rebuild = tree_flatten(outputs)

        outputs = [rearrange(t, '(b t) ... -> b t ...', t=time) if is_array(t) and t.size > 1 else t
                   for t in outputs]

        # maybe project embedding

        if exists(self.proj_embed_to_dim):
            embed = self._selected_output(outputs, 'project')
            if embed.shape[-1] != self.dim_emb:
                raise ValueError(f'the output to project has shape {embed.shape}, whose last axis is not '
                                 f'dim_emb={self.dim_emb}')
            outputs[self.output_pos_add_pos_emb] = Linear(self.proj_embed_to_dim, name='embed_proj')(embed)

        # maybe add time positional embedding

        if add_time_pos_emb:
            embed = self._selected_output(outputs, 'add the time embedding to')
            dim_pos_emb = self.proj_embed_to_dim if exists(self.proj_embed_to_dim) else self.dim_emb
            pos_emb = self.param('pos_emb', small_randn, (self.time_seq_len, dim_pos_emb))
            pos_emb = rearrange(pos_emb, 't d -> 1 t d')

            # handle the network outputting embeddings with spatial dimensions intact - assume embedded dimension is
            # last

            dims_to_unsqueeze = embed.ndim - pos_emb.ndim
            one_dims = (1,) * dims_to_unsqueeze

            if self.embed_is_channel_first:
                pos_emb = pos_emb.reshape(*pos_emb.shape, *one_dims)
            else:
                pos_emb = pos_emb.reshape(*pos_emb.shape[:2], *one_dims, pos_emb.shape[-1])

            pos_emb = pos_emb[:, :embed.shape[1]]

            outputs[self.output_pos_add_pos_emb] = embed + pos_emb.astype(embed.dtype)

        # moss - stack of ssts

        if exists(self.moss):
            embed = self._selected_output(outputs, 'run MOSS on')
            patch_h, patch_w = pair(self.resolved_patch_size)
            num_h, num_w = video_height // patch_h, video_width // patch_w
            num_patches = num_h * num_w

            if embed.ndim != 4 or embed.shape[-2] < num_patches:
                raise ValueError(
                    f'MOSS runs on tokens (batch, frames, tokens, dim) with at least the {num_patches} patch tokens of '
                    f'{video_height} x {video_width} frames in patches of {(patch_h, patch_w)}; output '
                    f'{self.output_pos_add_pos_emb} has shape {embed.shape}'
                )
            num_cls_tokens = embed.shape[-2] - num_patches
            cls_tokens, patch_tokens = embed[:, :, :num_cls_tokens], embed[:, :, num_cls_tokens:]

            moss = self.moss if isinstance(self.moss, MOSS) else MOSS(**self.moss, name='moss')
            patch_tokens = rearrange(patch_tokens, 'b t (h w) d -> b t h w d', h=num_h, w=num_w)
            patch_tokens = moss(patch_tokens)
            patch_tokens = rearrange(patch_tokens, 'b t h w d -> b t (h w) d')

            outputs[self.output_pos_add_pos_emb] = jnp.concatenate((cls_tokens, patch_tokens), axis=-2)

        return rebuild(outputs)


