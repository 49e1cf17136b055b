"""SigLIPVAT: a vision-action transformer over the layer-wise hidden states of a SigLIP image tower, mirroring
vit_pytorch/vat_siglip.py ("VAT: Vision Action Transformer by Unlocking Full Representation of ViT", ICLR 2026
submission, openreview TalHOvvLZu: action tokens cross-attend, layer by layer, to the tower's representation
trajectory; gated attention after Qiu et al., 2025, arXiv 2505.06708).

`SigLIP` is the tower alone: SigLIP's ViT (no class token, a learned position table, pre-norm blocks with GELU-tanh
MLPs, a final LayerNorm) in vit-pytorch's layout, `model(images)` -> (batch, patches, dim), with
`return_hiddens=True` also the (depth, batch, patches, dim) inputs of its layers. `SigLIPVAT` runs it on every view
and frame and lets `action_chunk_len` learned action tokens (with register, advantage and extra tokens) cross-attend
to the tower's hiddens, one chosen hidden per VAT layer (`vit_layer_indices`; index `siglip_depth` is the tower's
final normed output), then predicts the action chunk:

    model(video_or_image, extra=None, tasks=None, advantages=None, actions=None, return_hiddens=False,
          freeze_vit=False)

`video_or_image` is channels-last: (batch, views, frames, height, width, 3), (batch, views, height, width, 3) for one
frame, or (batch, height, width, 3) for one view and frame (vit-pytorch takes (b v c t h w), (b v c h w), (b c h w)).
`extra` (batch, ..., dim_extra_token) adds extra tokens, `tasks` (batch,) integer task ids FiLM-condition every layer,
`advantages` (batch, ...) integers in [-1, num_advantage_bins) (or one Python int for the whole batch) add advantage
tokens. The output is the predicted actions (batch, action_chunk_len, dim_action); with `return_hiddens` also the
(depth + 1, batch, tokens, dim) token states before and after every layer; with `actions` the mean absolute error
against them instead. The conditioning keywords may also be given positionally, in that order (vit-pytorch takes them
as keywords only). `freeze_vit` cuts the tower from the gradient, as vit-pytorch's `torch.no_grad()` around it.

Parameter tree = vit-pytorch's module tree: `vit.layers.3.0.to_kv.weight` is `params/vit/layers_3_0/to_kv/kernel`,
the patch embedding `vit.to_patch_embed.1` (a Linear on (p1 p2 c) patches) is `params/vit/to_patch_embed_1`, the VAT
layers `layers.i.{0: FiLM, 1: self-attention, 2: cross-attention, 3: feed-forward}` are `params/layers_i_{0..3}`
(a slot vit-pytorch leaves None is absent here too). Pretrained SigLIP weights (Hugging Face, timm, big_vision) are
read by `vit_flax.converters.siglip`, as vit-pytorch's `SigLIPVAT.load_siglip` reads Hugging Face's.

Quirks of vit-pytorch kept so weights transfer and outputs match:
- The tower's patch embedding is a Linear on 3-channel (p1 p2 c) patches (Hugging Face's Conv, rearranged); the
  tower takes only RGB. Its LayerNorms have eps `norm_eps` (1e-6); the VAT's attention and feed-forward norms 1e-6,
  its `final_norm` torch's default 1e-5. The feed-forwards use the tanh GELU.
- `num_patches = (image_size // patch_size) ** 2`: `image_size` need not be a multiple of the patch, and an image
  smaller than it (any whole number of patches, any aspect ratio) takes the first rows of the position table (their
  2-D layout then no longer matches the table's); one of more patches is refused.
- Each attention's head width in the tower is `dim // heads` (the projections are `heads * (dim // heads)` wide).
- The attention gates of the cross-attention read the normed tokens: `sigmoid(Linear(norm(x)))` per head.
- FiLM starts at zero weight and bias and computes `tokens * gamma + beta`, so at init it zeroes the tokens of every
  layer it runs in (vit-pytorch's init; training moves it).
- `advantages` index `advantage_emb` at `advantages + 1` (-1 is "no advantage"); they are ignored, as in vit-pytorch,
  when `num_advantage_bins=0`. A view axis of 1 is broadcast against `num_views` view embeddings (each view gets a
  copy of the one view's tokens).
- The register tokens always exist (shape (0, dim) with `num_register_tokens=0`).

Fixed here where vit-pytorch fails (the parity spec patches its forward the same way for the comparison): a
(batch, channels, height, width) input, which vit-pytorch's `rearrange(video_or_image, 'b 1 c h w')` (no arrow)
refuses, is taken as one view of one frame. Refused here where vit-pytorch fails or would index silently: a
`vit_layer_indices` entry outside the tower's `siglip_depth + 1` hiddens or of another length than `depth` (and
`depth=0`, which indexes with an empty float tensor there), `siglip_depth=0` (torch.stack of no hiddens), more heads
than `siglip_dim` (a zero head width), a view or frame count the embeddings do not fit, `extra` or `tasks` for a model
built without them, `extra` of another batch or width, task or advantage ids that are not integers or not one (or
more) per sample, `actions` of another shape than the prediction (vit-pytorch checks the chunk length and broadcasts
the rest). Task and advantage ids outside their tables are clamped by JAX's gather (vit-pytorch raises).

No random draws but dropout (the 'dropout' stream, in training: the VAT attentions' output dropout).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from einops import pack, rearrange, repeat, unpack

from vit_flax.layers import (
    Embedding, LayerNorm, Linear, SequentialFeedForward, add_position_embedding, check_floating_input,
    check_integer_input, check_keywords, default, exists, gelu_tanh, multi_head_attention, randn, residual_boundary,
    small_randn,
)
from vit_flax.vit import patchify


def _refuse_keyword(module: nn.Module, keyword: str, value, why: str):
    raise ValueError(f'{type(module).__name__}: {keyword}={value!r} {why}')


def _check_tower(module: nn.Module, image_size, patch_size, dim, heads, prefix: str = ''):
    for keyword, value in ((f'{prefix}image_size', image_size), (f'{prefix}patch_size', patch_size)):
        if isinstance(value, bool) or not isinstance(value, int):
            _refuse_keyword(module, keyword, value, 'must be one int: the tower takes square images and patches')
    if isinstance(dim, int) and isinstance(heads, int) and heads > dim:
        _refuse_keyword(module, f'{prefix}heads', heads, f'exceeds {prefix}dim={dim}: the head width dim // heads '
                                                         'would be 0 (vit-pytorch divides by it)')


# attention


class Attention(nn.Module):
    """vat_siglip's Attention: pre-norm, `to_q` and a joint `to_kv` (both with biases), softmax attention, optional
    per-head output gates from the normed queries' tokens (`gate_attn`), `to_out` with dropout. With `dim_context`
    it cross-attends to a normed `context`; without it, it attends to itself (a context given is ignored)."""

    dim: int
    dim_context: int | None = None
    heads: int = 8
    dim_head: int = 64
    dropout: float = 0.0
    norm_eps: float = 1e-6
    gate_attn: bool = False

    @nn.compact
    def __call__(self, x, context=None, train: bool = False):
        inner_dim = self.dim_head * self.heads
        x = LayerNorm(self.norm_eps, name='norm')(x)
        if exists(self.dim_context):
            if not exists(context):
                raise ValueError('Attention: a cross-attention (dim_context set) needs a context')
            context = LayerNorm(self.norm_eps, name='norm_context')(context)
        else:
            context = x

        q = Linear(inner_dim, name='to_q')(x)
        k, v = jnp.split(Linear(inner_dim * 2, name='to_kv')(context), 2, axis=-1)
        out = multi_head_attention(self, q, k, v, self.heads, self.dim_head**-0.5, 'explicit')

        if self.gate_attn:  # https://arxiv.org/abs/2505.06708
            gates = jax.nn.sigmoid(Linear(self.heads, name='to_out_gates_0')(x))
            out = rearrange(out, 'b n (h d) -> b n h d', h=self.heads) * gates[..., None]
            out = rearrange(out, 'b n h d -> b n (h d)')

        out = Linear(self.dim, name='to_out_0')(out)
        return nn.Dropout(self.dropout, deterministic=not train)(out)


def FeedForward(dim: int, dim_inner: int, norm_eps: float = 1e-6, name: str | None = None) -> SequentialFeedForward:
    """vat_siglip's FeedForward: `nn.Sequential(LayerNorm(eps), Linear, GELU(tanh), Linear)`, indices 0, 1, 3
    (`dim` is the input's width, which the module reads from its input)."""
    del dim
    return SequentialFeedForward(dim_inner, epsilon=norm_eps, activation=gelu_tanh, name=name)


# the SigLIP image tower


class SigLIP(nn.Module):
    image_size: int = 224
    patch_size: int = 14
    dim: int = 1152
    depth: int = 27
    heads: int = 16
    mlp_dim: int = 4304
    norm_eps: float = 1e-6

    def __post_init__(self):
        check_keywords(self)
        _check_tower(self, self.image_size, self.patch_size, self.dim, self.heads)
        super().__post_init__()

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @nn.compact
    def __call__(self, x, return_hiddens: bool = False, train: bool = False):
        check_floating_input(self, 'x', x)
        if return_hiddens and self.depth == 0:
            raise ValueError('SigLIP: depth=0 has no layers, so no hiddens to return (vit-pytorch stacks an empty '
                             'list and fails)')
        x_size = x.shape[1:3]
        x = patchify(x, self.patch_size, 3)
        x = Linear(self.dim, name='to_patch_embed_1')(x)
        pos_embed = self.param('pos_embed', randn, (self.num_patches, self.dim))
        x = add_position_embedding(x, pos_embed, x_size, self.image_size, 'patches')

        hiddens = []
        for i in range(self.depth):
            hiddens.append(x)
            x = Attention(self.dim, heads=self.heads, dim_head=self.dim // self.heads, norm_eps=self.norm_eps,
                          name=f'layers_{i}_0')(x) + x
            x = FeedForward(self.dim, self.mlp_dim, self.norm_eps, name=f'layers_{i}_1')(x) + x
            x = residual_boundary(x)  # linear, not quadratic, backward work on CPU (layers.py)

        out = LayerNorm(self.norm_eps, name='norm')(x)
        if not return_hiddens:
            return out
        return out, jnp.stack(hiddens)


class FiLM(nn.Module):
    """tokens * gamma + beta, (gamma, beta) = Linear(cond), the Linear zero-initialised as in vit-pytorch."""

    dim: int

    @nn.compact
    def __call__(self, tokens, cond):
        proj = Linear(self.dim * 2, kernel_init=nn.initializers.zeros, bias_init=nn.initializers.zeros,
                      name='to_gamma_beta_0')
        gamma, beta = rearrange(proj(cond), 'b (two d) -> two b 1 d', two=2)
        return tokens * gamma + beta


# the vision-action transformer


def tower_keywords(model: SigLIPVAT) -> dict:
    """The SigLIP keywords of a SigLIPVAT's tower (its `siglip_*` keywords), which vit-pytorch builds as `self.vit`."""
    return {key: getattr(model, f'siglip_{key}') for key in
            ('image_size', 'patch_size', 'dim', 'depth', 'heads', 'mlp_dim', 'norm_eps')}


class SigLIPVAT(nn.Module):
    dim: int = 512
    depth: int = 27
    heads: int = 8
    dim_head: int = 64
    dim_action: int = 32
    mlp_dim: int = 2048
    num_views: int | None = 1
    num_tasks: int | None = None
    dim_extra_token: int | None = None
    num_register_tokens: int = 4
    action_chunk_len: int = 50
    time_seq_len: int = 1
    dropout: float = 0.0
    add_self_attn: bool = True
    self_attn_heads: int = 4
    self_attn_dim_head: int = 32
    vit_layer_indices: tuple[int, ...] | None = None
    num_advantage_bins: int = 0
    siglip_image_size: int = 224
    siglip_patch_size: int = 14
    siglip_dim: int = 1152
    siglip_depth: int = 27
    siglip_heads: int = 16
    siglip_mlp_dim: int = 4304
    siglip_norm_eps: float = 1e-6

    def __post_init__(self):
        check_keywords(self)
        if self.siglip_depth == 0:  # the depth rule lets a plain transformer have no layers; the tower stacks them
            _refuse_keyword(self, 'siglip_depth', 0, 'must be a positive integer: the tower stacks the inputs of its '
                                                     'layers (vit-pytorch: torch.stack of none)')
        _check_tower(self, self.siglip_image_size, self.siglip_patch_size, self.siglip_dim, self.siglip_heads,
                     'siglip_')
        if self.depth == 0:
            _refuse_keyword(self, 'depth', 0, 'builds no layers, and vit-pytorch indexes the hiddens with the empty '
                                              'float tensor of vit_layer_indices and fails')
        indices = self.layer_indices
        if len(indices) != self.depth:
            _refuse_keyword(self, 'vit_layer_indices', self.vit_layer_indices,
                            f'has {len(indices)} entries, but depth={self.depth} (one tower hidden per VAT layer)')
        hiddens = self.siglip_depth + 1
        for index in indices:
            if isinstance(index, bool) or not isinstance(index, int) or not -hiddens <= index < hiddens:
                given = '' if exists(self.vit_layer_indices) else f'(the default range(depth) = {indices}) '
                _refuse_keyword(self, 'vit_layer_indices', self.vit_layer_indices,
                                f'{given}holds {index!r}; each entry must be an int indexing the tower\'s {hiddens} '
                                f'hiddens (the inputs of its siglip_depth={self.siglip_depth} layers, then its output)')
        super().__post_init__()

    @property
    def layer_indices(self) -> tuple:
        # vit-pytorch's non-persistent buffer `layer_indices`: not in the state dict, so static here
        return tuple(default(self.vit_layer_indices, tuple(range(self.depth))))

    @property
    def has_view_emb(self) -> bool:
        return exists(self.num_views) and self.num_views > 1

    def _video(self, video_or_image):
        """(b, v, t, h, w, c) from any of the three input layouts, checked against the embeddings."""
        if video_or_image.ndim == 4:
            video_or_image = video_or_image[:, None]
        if video_or_image.ndim == 5:
            video_or_image = video_or_image[:, :, None]
        if video_or_image.ndim != 6:
            raise ValueError(f'SigLIPVAT: video_or_image of shape {video_or_image.shape}; expected (batch, views, '
                             'frames, height, width, 3), (batch, views, height, width, 3) or (batch, height, width, 3)')
        views, frames = video_or_image.shape[1:3]
        if frames != self.time_seq_len:
            raise ValueError(f'SigLIPVAT: video_or_image has {frames} frames, but time_seq_len={self.time_seq_len}')
        if self.has_view_emb and views not in (1, self.num_views):
            raise ValueError(f'SigLIPVAT: video_or_image has {views} views, but num_views={self.num_views} view '
                             'embeddings (one view is broadcast against them)')
        return video_or_image

    @nn.compact
    def __call__(self, video_or_image, extra=None, tasks=None, advantages=None, actions=None, *,
                 return_hiddens: bool = False, freeze_vit: bool = False, train: bool = False):
        check_floating_input(self, 'video_or_image', video_or_image, 'videos')
        if exists(extra):
            check_floating_input(self, 'extra', extra, 'extra tokens')
        if exists(actions):
            check_floating_input(self, 'actions', actions, 'actions')
        video = self._video(video_or_image)
        batch, dtype = video.shape[0], video.dtype
        initializing = self.is_initializing()

        # the representation trajectory of every view and frame

        images, packed_shape = pack([video], '* h w c')
        embed, hiddens = SigLIP(**tower_keywords(self), name='vit')(images, return_hiddens=True)
        if freeze_vit:
            embed, hiddens = jax.lax.stop_gradient((embed, hiddens))
        hiddens = jnp.concatenate((hiddens, embed[None]))
        count = self.siglip_depth + 1  # negative indices count from the end, as torch's indexing
        hiddens = jnp.take(hiddens, jnp.asarray([index % count for index in self.layer_indices]), axis=0)
        (hiddens,) = unpack(hiddens, packed_shape, 'l * n d')  # l b v t n d

        vit_dim = self.siglip_dim
        if self.time_seq_len > 1:
            time_pos_emb = self.param('time_pos_emb', small_randn, (self.time_seq_len, vit_dim))
            hiddens = hiddens + rearrange(time_pos_emb.astype(dtype), 't d -> t 1 d')
        if self.has_view_emb:
            view_emb = self.param('view_emb', small_randn, (self.num_views, vit_dim))
            hiddens = hiddens + rearrange(view_emb.astype(dtype), 'v d -> v 1 1 d')

        task_emb = None
        if exists(self.num_tasks):
            task_table = self.param('task_emb', small_randn, (self.num_tasks, self.dim)).astype(dtype)
            if exists(tasks):
                tasks = jnp.asarray(tasks)
                check_integer_input(self, 'tasks', tasks)
                if tasks.shape != (batch,):
                    raise ValueError(f'SigLIPVAT: tasks of shape {tasks.shape}; expected one task id per sample, '
                                     f'shape ({batch},)')
                task_emb = task_table[tasks]
        elif exists(tasks):
            raise ValueError('SigLIPVAT: tasks given, but the model has no task embeddings (num_tasks=None)')

        context = rearrange(hiddens, 'l b v t n d -> l b (v t n) d')

        # the tokens: registers, advantages, actions, extra

        action_pos_emb = self.param('action_pos_emb', small_randn, (self.action_chunk_len, self.dim))
        action_tokens = repeat(action_pos_emb.astype(dtype), 'n d -> b n d', b=batch)
        empty_token = action_tokens[:, 0:0]

        maybe_advantage_embed = empty_token
        if self.num_advantage_bins > 0:
            advantage_emb = Embedding(self.num_advantage_bins + 1, self.dim, name='advantage_emb')
            if exists(advantages):
                if isinstance(advantages, int):
                    advantages = jnp.full((batch,), advantages)
                advantages = jnp.asarray(advantages)
                check_integer_input(self, 'advantages', advantages)
                if advantages.shape[:1] != (batch,):
                    raise ValueError(f'SigLIPVAT: advantages of shape {advantages.shape}; expected (batch={batch}, '
                                     '...) advantage ids, or one int')
                maybe_advantage_embed = advantage_emb(advantages + 1).astype(dtype)
            elif initializing:  # every parameter exists, as in vit-pytorch
                advantage_emb(jnp.zeros((1,), jnp.int32))

        register_tokens = self.param('register_tokens', small_randn, (self.num_register_tokens, self.dim))
        register_tokens = repeat(register_tokens.astype(dtype), 'n d -> b n d', b=batch)

        maybe_extra_embed = empty_token
        if exists(self.dim_extra_token):
            to_extra_token = Linear(self.dim, name='to_extra_token')
            if exists(extra):
                if extra.ndim < 2 or extra.shape[0] != batch or extra.shape[-1] != self.dim_extra_token:
                    raise ValueError(f'SigLIPVAT: extra of shape {extra.shape}; expected (batch={batch}, ..., '
                                     f'dim_extra_token={self.dim_extra_token})')
                maybe_extra_embed = to_extra_token(extra)
            elif initializing:
                to_extra_token(jnp.zeros((1, self.dim_extra_token), dtype))
        elif exists(extra):
            raise ValueError('SigLIPVAT: extra given, but the model takes no extra token (dim_extra_token=None)')

        tokens, packed_tokens = pack((register_tokens, maybe_advantage_embed, action_tokens, maybe_extra_embed),
                                     'b * d')

        # the layers, each cross-attending to its hidden of the tower

        vat_hiddens = [tokens]
        for i, layer_context in enumerate(context):
            if exists(self.num_tasks):
                film = FiLM(self.dim, name=f'layers_{i}_0')
                if exists(task_emb):
                    tokens = film(tokens, task_emb)
                elif initializing:
                    film(tokens, jnp.zeros((batch, self.dim), dtype))

            cross_attn = Attention(self.dim, dim_context=vit_dim, heads=self.heads, dim_head=self.dim_head,
                                   dropout=self.dropout, gate_attn=True, name=f'layers_{i}_2')
            tokens = cross_attn(tokens, layer_context, train) + tokens

            if self.add_self_attn:
                self_attn = Attention(self.dim, heads=self.self_attn_heads, dim_head=self.self_attn_dim_head,
                                      dropout=self.dropout, name=f'layers_{i}_1')
                tokens = self_attn(tokens, train=train) + tokens

            tokens = FeedForward(self.dim, self.mlp_dim, name=f'layers_{i}_3')(tokens) + tokens
            if tokens.size:  # its derivative reads the first element
                tokens = residual_boundary(tokens)  # linear, not quadratic, backward work on CPU (layers.py)
            vat_hiddens.append(tokens)

        _, _, action_tokens, _ = unpack(tokens, packed_tokens, 'b * d')

        action_tokens = LayerNorm(name='final_norm')(action_tokens)
        pred_action = Linear(self.dim_action, use_bias=False, name='to_pred_action')(action_tokens)

        if not exists(actions):
            if not return_hiddens:
                return pred_action
            return pred_action, jnp.stack(vat_hiddens)

        if actions.shape != pred_action.shape:
            raise ValueError(f'SigLIPVAT: actions of shape {actions.shape}; the model predicts {pred_action.shape} '
                             f'(batch, action_chunk_len={self.action_chunk_len}, dim_action={self.dim_action})')
        return jnp.mean(jnp.abs(pred_action - actions))

