"""VAT, a vision-action transformer (https://openreview.net/forum?id=TalHOvvLZu; vit-pytorch: "simple way to get SOTA
on Libero"): action tokens that cross-attend to a ViT's representation trajectory, mirroring vit_pytorch/vat.py.

`ViT` is a ViT whose attention layers carry per-head sigmoid output gates (https://arxiv.org/abs/2505.06708), with
register tokens, a cls token and a LayerNorm'd patch embedding; `return_hiddens=True` gives its tokens and the
input of every layer, its representation trajectory. `VAT` runs the ViT over every view (and frame) of its input,
and `action_chunk_len` learned action tokens (beside register tokens, an optional advantage token and an optional
projected `extra` token, the robot's joint state) cross-attend in layer i to the ViT's layer `vit_layer_indices[i]`,
each layer optionally FiLM-conditioned on a task embedding; the normalised action tokens are projected to
`dim_action`. Given `actions`, it returns the L1 loss instead.

Parameter tree = vit-pytorch's module tree: `layers.0.2.to_kv.weight` (the cross attention of layer 0) lives at
`params/layers_0_2/to_kv/kernel`, the ViT under `params/vit` (torch's `vit.*`); FiLM is `layers_{i}_0`, the self
attention `layers_{i}_1`, the cross attention `layers_{i}_2`, the feed-forward `layers_{i}_3`, as in torch's
ModuleList (whose None entries keep the indices).

Inputs, channels-last: `VAT(video_or_image, extra=None, tasks=None, advantages=None, actions=None, ...)` takes views
(batch, views, height, width, channels), videos (batch, views, frames, height, width, channels) when
`time_seq_len > 1`, or one view (batch, height, width, channels); vit-pytorch takes (b, v, c, h, w) and
(b, v, c, t, h, w). vit-pytorch's inputs after the video are keywords only; here they may also come positionally,
in the same order (the registry passes them so).

Quirks of vit-pytorch kept so weights transfer and outputs match:
- FiLM's projection starts at zeros, so an untrained FiLM multiplies the tokens by 0 (`tokens * gamma + beta`, not
  `tokens * (1 + gamma) + beta`).
- FiLM conditions the tokens only when `tasks` are given; advantages are ignored unless `num_advantage_bins > 0`;
  `return_hiddens` is ignored when `actions` are given (the loss alone is returned).
- `vit_layer_indices` index the ViT's trajectory: the inputs of its `vit.depth` layers, then its final (normed)
  tokens at index `vit.depth`; negative indices count from the end, as torch's tensor indexing does. Without them
  layer i reads the input of the ViT's layer i (the ViT's depth must then be the VAT's).
- `num_views` of 0 or 1 adds no view embedding and then any number of views is taken; with more, the input must
  have exactly `num_views` views.
- The ViT's `mlp_head` and `pool` are unused by VAT (its head is in the state dict all the same: it is created at
  init); the ViT's `pos_embedding` has no cls row, and an input smaller than `image_size` takes its first rows.
- `advantages` may be a Python int, used for every row (torch.full); ids are `advantages + 1` into the
  `num_advantage_bins + 1` rows of `advantage_emb`, so -1 is a bin of its own.

Fixed here where vit-pytorch's forward fails:
- One view without a view axis (batch, height, width, channels): vit-pytorch's `rearrange(x, 'b 1 c h w')` has no
  '->' and raises; here it is one view.
- A depth-0 VAT (vit-pytorch indexes the ViT's layers with an empty float tensor) and a depth-0 ViT under VAT
  (`torch.stack` of no layer inputs) fail in vit-pytorch; both are refused at construction, naming the value.

Task ids outside [-num_tasks, num_tasks) and advantages outside [-1, num_advantage_bins) raise in torch; JAX cannot
raise on values inside jit, so their embeddings (and the outputs) are NaN instead of another row.

RNG streams: 'dropout' only (attention, feed-forward and embedding dropout, in training).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange

from vit_flax.layers import (
    Embedding, LayerNorm, Linear, add_position_embedding, check_floating_input, check_integer_input, check_keywords,
    multi_head_attention, pair, randn, residual_boundary, small_randn,
)
from vit_flax.vit import FeedForward, check_image_config, embed_patches

__all__ = ['FiLM', 'FeedForward', 'Attention', 'Transformer', 'ViT', 'VAT']


class FiLM(nn.Module):
    """Feature-wise linear modulation: tokens (b, n, dim) * gamma + beta, with (gamma, beta) a zero-initialised
    projection of the condition (b, dim)."""

    dim: int

    @nn.compact
    def __call__(self, tokens, cond):
        if cond.ndim != 2 or cond.shape[-1] != self.dim:
            raise ValueError(f'FiLM takes a condition of shape (batch, {self.dim}), got shape {cond.shape}')
        proj = Linear(self.dim * 2, kernel_init=nn.initializers.zeros, bias_init=nn.initializers.zeros,
                      name='to_gamma_beta_0')
        gamma, beta = rearrange(proj(cond), 'b (two d) -> two b 1 d', two=2)
        return tokens * gamma + beta


def gated_attention(module: nn.Module, x, context, train: bool):
    """vit-pytorch's vat / vaat Attention, run as `module`'s (its fields: dim, dim_context, heads, dim_head, dropout,
    cross_attend): pre-norm multi-head attention of x (b, n, dim) over itself, or over the LayerNorm'd `context`
    (b, m, dim_context) when cross attending, each head's output scaled by a sigmoid gate computed from the normed x
    (https://arxiv.org/abs/2505.06708) before the heads are merged and projected."""
    if module.cross_attend != (context is not None):
        raise ValueError('context must be passed in if cross attending, or vice versa: '
                         f'cross_attend={module.cross_attend}, context given: {context is not None}')
    dim_context = module.dim if module.dim_context is None else module.dim_context
    inner_dim = module.dim_head * module.heads
    project_out = not (module.heads == 1 and module.dim_head == module.dim)
    if x.shape[-1] != module.dim:
        raise ValueError(f'{type(module).__name__} of dim={module.dim} takes tokens (..., {module.dim}), '
                         f'got shape {x.shape}')

    x = LayerNorm(name='norm')(x)
    kv_input = x
    if module.cross_attend:
        kv_input = LayerNorm(name='context_norm')(context)
    if kv_input.shape[-1] != dim_context:
        raise ValueError(f'{type(module).__name__} of dim_context={dim_context} takes keys and values of width '
                         f'{dim_context}, got shape {kv_input.shape}')

    q = Linear(inner_dim, use_bias=False, name='to_q')(x)
    k, v = jnp.split(Linear(inner_dim * 2, use_bias=False, name='to_kv')(kv_input), 2, axis=-1)
    out = multi_head_attention(module, q, k, v, module.heads, module.dim_head**-0.5, 'explicit', module.dropout,
                               train)

    # per-head output gates from the normed queries' tokens: torch's (b, h, n, 1) scale of (b, h, n, d)
    gates = jax.nn.sigmoid(Linear(module.heads, name='to_out_gates_0')(x))
    out = rearrange(out, 'b n (h d) -> b n h d', h=module.heads) * gates[..., None]
    out = rearrange(out, 'b n h d -> b n (h d)')
    if not project_out:
        return out
    out = Linear(module.dim, name='to_out_0')(out)
    return nn.Dropout(module.dropout, deterministic=not train)(out)


class Attention(nn.Module):
    dim: int
    dim_context: int | None = None
    heads: int = 8
    dim_head: int = 64
    dropout: float = 0.0
    cross_attend: bool = False

    @nn.compact
    def __call__(self, x, context=None, train: bool = False):
        return gated_attention(self, x, context, train)


class Transformer(nn.Module):
    dim: int
    depth: int
    heads: int
    dim_head: int
    mlp_dim: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, return_hiddens: bool = False, train: bool = False):
        """The normed output, and with `return_hiddens` the list of every layer's input, as vit-pytorch returns."""
        hiddens = []
        for i in range(self.depth):
            hiddens.append(x)
            x = Attention(self.dim, heads=self.heads, dim_head=self.dim_head, dropout=self.dropout,
                          name=f'layers_{i}_0')(x, train=train) + x
            x = residual_boundary(x)  # linear, not quadratic, backward work on CPU (layers.py)
            x = FeedForward(self.dim, self.mlp_dim, self.dropout, name=f'layers_{i}_1')(x, train) + x
            x = residual_boundary(x)
        x = LayerNorm(name='norm')(x)
        if not return_hiddens:
            return x
        return x, hiddens


def stack_hiddens(model: nn.Module, hiddens: list):
    """vit-pytorch's `stack(hiddens)`, which has nothing to stack for a depth-0 transformer: say so."""
    if not hiddens:
        raise ValueError(f'{type(model).__name__}: return_hiddens needs depth >= 1 (vit-pytorch stacks the inputs of '
                         f'its layers, and depth={model.depth} has none)')
    return jnp.stack(hiddens)


class ViT(nn.Module):
    image_size: int | tuple[int, int]
    patch_size: int | tuple[int, int]
    num_classes: int
    dim: int
    depth: int
    heads: int
    mlp_dim: int
    pool: str = 'cls'
    channels: int = 3
    dim_head: int = 64
    dropout: float = 0.0
    emb_dropout: float = 0.0
    num_register_tokens: int = 0

    def __post_init__(self):
        check_keywords(self)
        check_image_config(self.image_size, self.patch_size)
        if self.pool not in {'cls', 'mean'}:
            raise ValueError(f"pool type must be either cls (cls token) or mean (mean pooling), got pool={self.pool!r}")
        super().__post_init__()

    @property
    def num_patches(self) -> int:
        (image_height, image_width), (patch_height, patch_width) = pair(self.image_size), pair(self.patch_size)
        return (image_height // patch_height) * (image_width // patch_width)

    @nn.compact
    def __call__(self, img, return_hiddens: bool = False, train: bool = False):
        """Class logits (batch, num_classes); with `return_hiddens`, the transformer's normed tokens (batch,
        registers + 1 + patches, dim) and the stacked inputs of its layers (depth, batch, registers + 1 + patches,
        dim)."""
        check_floating_input(self, 'img', img)
        x = embed_patches(img, self.patch_size, self.channels, self.dim)
        batch = x.shape[0]

        pos_embedding = self.param('pos_embedding', randn, (self.num_patches, self.dim))
        x = add_position_embedding(x, pos_embedding, img.shape[1:3], self.image_size)

        cls_token = self.param('cls_token', randn, (self.dim,))
        register_tokens = self.param('register_tokens', small_randn, (self.num_register_tokens, self.dim))
        cls_tokens = jnp.broadcast_to(cls_token.astype(x.dtype), (batch, 1, self.dim))
        registers = jnp.broadcast_to(register_tokens.astype(x.dtype), (batch, *register_tokens.shape))
        x = jnp.concatenate((registers, cls_tokens, x), axis=1)  # pack((register_tokens, cls_tokens, x))

        x = nn.Dropout(self.emb_dropout, deterministic=not train)(x)
        x, hiddens = Transformer(self.dim, self.depth, self.heads, self.dim_head, self.mlp_dim, self.dropout,
                                 name='transformer')(x, return_hiddens=True, train=train)

        head = Linear(self.num_classes, name='mlp_head')
        if return_hiddens:
            if self.is_initializing():
                head(x[:, 0])  # vit-pytorch's ViT owns its head whether it is used or not
            return x, stack_hiddens(self, hiddens)

        patches = x[:, self.num_register_tokens + 1:]
        x = patches.mean(axis=1) if self.pool == 'mean' else x[:, self.num_register_tokens]
        return head(x)


# the pieces VAT and vaat.VAAT share


def as_module(model: nn.Module, field: str, module_class: type[nn.Module]) -> nn.Module:
    """A keyword that takes a module or its keywords (VAT's `vit`, VAAT's `ast`): a dict becomes the module, built
    unbound (`parent=None`, so that no module under construction adopts it) for the model to adopt as the child
    `field`, as vit-pytorch builds `ViT(**vit)`; anything else but a `module_class` is refused."""
    value = getattr(model, field)
    if isinstance(value, dict):
        value = module_class(**value, parent=None)
        object.__setattr__(model, field, value)
    if not isinstance(value, module_class):
        raise ValueError(f'{type(model).__name__}: {field} must be a {module_class.__module__}.{module_class.__name__} '
                         f'or a dict of its keywords, got {type(value).__module__}.{type(value).__name__}')
    return value


def check_layer_indices(model: nn.Module, backbone: nn.Module, indices, name: str, backbone_name: str) -> tuple:
    """vit-pytorch's checks of `vit_layer_indices` (`ast_layer_indices`), with the values in the message, and the
    indices the model uses: the given ones, or 0 .. depth - 1 where the backbone is as deep as the model. An index
    must address the backbone's trajectory (its depth layer inputs and its output: depth + 1 entries)."""
    cls = type(model).__name__
    if model.depth < 1:
        raise ValueError(f'{cls}: depth={model.depth} must be a positive integer (vit-pytorch indexes the '
                         f'{backbone_name} layers with an empty float tensor and fails)')
    if backbone.depth < 1:
        raise ValueError(f'{cls}: {backbone_name}.depth={backbone.depth} must be a positive integer (vit-pytorch '
                         'stacks the inputs of its layers, of which it has none)')
    if indices is None:
        if backbone.depth != model.depth:
            raise ValueError(
                f'if the {cls} depth is not equal to the {type(backbone).__name__} depth, you must pass in the indices '
                f'from the {type(backbone).__name__} to be layered to the {cls} in order from bottom to top '
                f'({name}): depth={model.depth}, {backbone_name}.depth={backbone.depth}'
            )
        return tuple(range(model.depth))
    indices = tuple(indices)
    if len(indices) != model.depth:
        raise ValueError(f'{cls}: number of {backbone_name} layer indices {len(indices)} does not match the {cls} '
                         f'depth {model.depth}: {name}={indices}')
    trajectory = backbone.depth + 1
    for index in indices:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not -trajectory <= index < trajectory:
            raise ValueError(f'{cls}: {name}={indices} holds {index!r}; each must be an integer index into the '
                             f'{trajectory} entries of the {backbone_name} trajectory (its {backbone.depth} layer '
                             f'inputs, then its output), from {-trajectory} to {trajectory - 1}')
    return indices


def trajectory(embed, hiddens, indices: tuple, freeze: bool):
    """The backbone's layer inputs (depth, B, n, d) followed by its output (B, n, d), picked at `indices`; cut from
    the gradient with `freeze` (vit-pytorch runs the backbone under torch.no_grad)."""
    picked = jnp.concatenate((hiddens, embed[None]))[np.asarray(indices)]
    return jax.lax.stop_gradient(picked) if freeze else picked


def video_to_images(model: nn.Module, video_or_image, time_seq_len: int, channels: int):
    """Channels-last views (b, v, h, w, c), videos (b, v, t, h, w, c) or one view (b, h, w, c) as (b * v * t, h, w,
    c) images, batch-major as vit-pytorch packs them, and (b, v, t)."""
    cls = type(model).__name__
    x = video_or_image
    if x.ndim == 4:  # one view; vit-pytorch's `rearrange(x, 'b 1 c h w')` raises here
        x = x[:, None]
    is_video = time_seq_len > 1
    if not (x.ndim == 5 and not is_video or x.ndim == 6 and is_video):
        expected = ('videos (batch, views, frames, height, width, channels)' if is_video else
                    'images (batch, height, width, channels) or views (batch, views, height, width, channels)')
        raise ValueError(f'{cls} with time_seq_len={time_seq_len} takes {expected}, got shape {video_or_image.shape}')
    if x.ndim == 5:
        x = x[:, :, None]
    batch, views, frames = x.shape[:3]
    if frames != time_seq_len:
        raise ValueError(f'{cls}: the videos have {frames} frames, time_seq_len={time_seq_len} '
                         f'(shape {video_or_image.shape})')
    if x.shape[-1] != channels:
        raise ValueError(f'{cls}: expected {channels} channels (channels-last input), got shape {video_or_image.shape}')
    return x.reshape(-1, *x.shape[3:]), (batch, views, frames)


def add_view_embedding(model: nn.Module, hiddens, num_views: int | None, name: str, views_axis: int):
    """`hiddens` plus the learned `name` embedding of each view (num_views, d), where `num_views > 1`, broadcast
    along every axis after the views; the input must then have `num_views` views."""
    if num_views is None or num_views <= 1:
        return hiddens
    view_emb = model.param(name, small_randn, (num_views, hiddens.shape[-1]))
    if hiddens.shape[views_axis] != num_views:
        raise ValueError(f'{type(model).__name__}: {name} has {num_views} views, the input has '
                         f'{hiddens.shape[views_axis]}')
    trailing = hiddens.ndim - views_axis - 2  # axes between the views and the features
    return hiddens + view_emb.reshape(num_views, *(1,) * trailing, -1).astype(hiddens.dtype)


def action_tokens_and_task(model: nn.Module, batch: int, dtype, extra, tasks, advantages):
    """The tokens the action transformer starts from, packed as vit-pytorch packs them (register tokens, the
    advantage embedding, the action tokens, the projected extra token), the index of the first action token, and
    the task embeddings of `tasks` (None without). Parameters and layers are `model`'s: `task_emb`,
    `register_tokens`, `action_pos_emb`, `advantage_emb`, `to_extra_token`; each exists as in vit-pytorch whether or
    not this call uses it (created at init)."""
    cls, dim = type(model).__name__, model.dim
    initializing = model.is_initializing()

    task_rows = None
    if model.num_tasks is not None:
        task_emb = model.param('task_emb', small_randn, (model.num_tasks, dim))
    if tasks is not None:
        if model.num_tasks is None:
            raise ValueError(f'`num_tasks` must be set on `{cls}` for task conditioning')
        check_integer_input(model, 'tasks', tasks)
        task_rows = jnp.take(task_emb, jnp.asarray(tasks), axis=0, mode='fill', fill_value=jnp.nan).astype(dtype)

    action_pos_emb = model.param('action_pos_emb', small_randn, (model.action_chunk_len, dim))
    action_tokens = jnp.broadcast_to(action_pos_emb.astype(dtype), (batch, *action_pos_emb.shape))

    advantage_embed = jnp.zeros((batch, 0, dim), dtype)
    if model.num_advantage_bins > 0:
        advantage_emb = Embedding(model.num_advantage_bins + 1, dim, name='advantage_emb')
        if advantages is not None:
            if isinstance(advantages, int):
                advantages = jnp.full((batch,), advantages)
            check_integer_input(model, 'advantages', advantages)
            ids = jnp.asarray(advantages) + 1
            # torch's nn.Embedding refuses a negative id; JAX's take would wrap it to another row: make it NaN
            ids = jnp.where(ids < 0, model.num_advantage_bins + 1, ids)
            advantage_embed = advantage_emb(ids).astype(dtype).reshape(batch, -1, dim)
        elif initializing:
            advantage_emb(jnp.zeros((1,), jnp.int32))

    register_tokens = model.param('register_tokens', small_randn, (model.num_register_tokens, dim))
    registers = jnp.broadcast_to(register_tokens.astype(dtype), (batch, *register_tokens.shape))

    extra_embed = jnp.zeros((batch, 0, dim), dtype)
    if model.dim_extra_token is not None:
        to_extra_token = Linear(dim, name='to_extra_token')
        if extra is not None:
            check_floating_input(model, 'extra', extra, 'joint states')
            if extra.shape[-1] != model.dim_extra_token:
                raise ValueError(f'{cls}: extra has shape {extra.shape}; its last axis must be '
                                 f'dim_extra_token={model.dim_extra_token}')
            extra_embed = to_extra_token(extra.astype(dtype)).reshape(batch, -1, dim)
        elif initializing:
            to_extra_token(jnp.zeros((1, model.dim_extra_token), dtype))
    elif extra is not None:
        raise ValueError(f'{cls} takes no extra token: set dim_extra_token to pass `extra`')

    first_action = registers.shape[1] + advantage_embed.shape[1]
    tokens = jnp.concatenate((registers, advantage_embed, action_tokens, extra_embed), axis=1)
    return tokens, first_action, task_rows


def maybe_film(model: nn.Module, index: int, tokens, task_rows):
    """Layer `index`'s FiLM (`layers_{index}_0`) where the model has tasks: applied when tasks are given, else only
    created at init (it is in vit-pytorch's state dict)."""
    if model.num_tasks is None:
        return tokens
    film = FiLM(model.dim, name=f'layers_{index}_0')
    if task_rows is not None:
        return film(tokens, task_rows)
    if model.is_initializing():
        film(tokens, jnp.zeros((tokens.shape[0], model.dim), tokens.dtype))
    return tokens


def predict_actions(model: nn.Module, tokens, first_action: int, hiddens: list, actions, return_hiddens: bool):
    """The normed action tokens projected to `dim_action`; with `actions`, the L1 loss against them; with
    `return_hiddens` (and no actions), also the stacked token trajectory (depth + 1, batch, tokens, dim)."""
    action_tokens = tokens[:, first_action:first_action + model.action_chunk_len]
    action_tokens = LayerNorm(name='final_norm')(action_tokens)
    pred_action = Linear(model.dim_action, use_bias=False, name='to_pred_action')(action_tokens)
    if actions is None:
        if not return_hiddens:
            return pred_action
        return pred_action, jnp.stack(hiddens)
    check_floating_input(model, 'actions', actions, 'actions')
    if actions.shape != pred_action.shape:
        # vit-pytorch asserts the chunk length and lets F.l1_loss broadcast (with a warning) what else differs
        raise ValueError(f'{type(model).__name__}: actions of shape {actions.shape} for predicted actions of shape '
                         f'{pred_action.shape} (batch, action_chunk_len, dim_action)')
    return jnp.mean(jnp.abs(pred_action - actions.astype(pred_action.dtype)))


class VAT(nn.Module):
    vit: ViT | dict
    dim: int
    depth: int
    heads: int
    dim_head: int
    dim_action: int
    mlp_dim: int
    num_views: int | None = None
    num_tasks: int | None = None
    dim_extra_token: int | None = None
    num_register_tokens: int = 4
    action_chunk_len: int = 7
    time_seq_len: int = 1
    dropout: float = 0.0
    add_self_attn: bool = True
    self_attn_heads: int = 4
    self_attn_dim_head: int = 32
    vit_layer_indices: tuple[int, ...] | None = None
    num_advantage_bins: int = 0

    def __post_init__(self):
        vit = as_module(self, 'vit', ViT)
        check_keywords(self)
        check_layer_indices(self, vit, self.vit_layer_indices, 'vit_layer_indices', 'vit')
        super().__post_init__()

    @property
    def image_size(self):
        return self.vit.image_size

    @property
    def channels(self) -> int:
        return self.vit.channels

    @nn.compact
    def __call__(self, video_or_image, extra=None, tasks=None, advantages=None, actions=None, *,
                 return_hiddens: bool = False, freeze_vit: bool = False, train: bool = False):
        check_floating_input(self, 'video_or_image', video_or_image, 'videos')
        layer_indices = check_layer_indices(self, self.vit, self.vit_layer_indices, 'vit_layer_indices', 'vit')
        images, (batch, views, frames) = video_to_images(self, video_or_image, self.time_seq_len, self.vit.channels)

        # the ViT's representation trajectory, (layers, b, v, t, n, d)
        embed, hiddens = self.vit(images, return_hiddens=True, train=train)
        hiddens = trajectory(embed, hiddens, layer_indices, freeze_vit)
        hiddens = hiddens.reshape(len(layer_indices), batch, views, frames, *hiddens.shape[-2:])

        if self.time_seq_len > 1:
            time_pos_emb = self.param('time_pos_emb', small_randn, (self.time_seq_len, self.vit.dim))
            hiddens = hiddens + time_pos_emb[:, None].astype(hiddens.dtype)
        hiddens = add_view_embedding(self, hiddens, self.num_views, 'view_emb', views_axis=2)

        context = rearrange(hiddens, 'l b v t n d -> l b (v t n) d')

        tokens, first_action, task_rows = action_tokens_and_task(self, batch, context.dtype, extra, tasks, advantages)

        token_hiddens = [tokens]
        for i in range(self.depth):
            tokens = maybe_film(self, i, tokens, task_rows)
            tokens = Attention(self.dim, dim_context=self.vit.dim, heads=self.heads, dim_head=self.dim_head,
                               dropout=self.dropout, cross_attend=True, name=f'layers_{i}_2')(
                tokens, context[i], train=train) + tokens
            if self.add_self_attn:
                tokens = Attention(self.dim, heads=self.self_attn_heads, dim_head=self.self_attn_dim_head,
                                   dropout=self.dropout, name=f'layers_{i}_1')(tokens, train=train) + tokens
            tokens = FeedForward(self.dim, self.mlp_dim, self.dropout, name=f'layers_{i}_3')(tokens, train) + tokens
            tokens = residual_boundary(tokens)
            token_hiddens.append(tokens)

        return predict_actions(self, tokens, first_action, token_hiddens, actions, return_hiddens)
