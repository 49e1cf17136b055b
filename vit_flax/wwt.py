"""What-Where Transformer (Yoshihashi et al., 2026, "What-Where Transformer: A Slot-Centric Visual Backbone for
Concurrent Representation and Localization"), mirroring vit_pytorch/wwt.py.

`WWT(image_size, patch_size, num_classes, dim, depth, num_slots, ...)` keeps a hierarchy of sequences: the patch
tokens (level 0) and one set of learned slots per entry of `num_slots` (levels 1, 2, ..., strictly fewer slots per
level, a part-whole hierarchy). Each `interactions` pair (i, j), i < j (default: the tokens with every slot level),
is a MutualAttention between level i ("tokens") and level j ("slots") that carries a mask, logits (b, groups, heads,
n_i, n_j) of "where" each token sits among the slots, from layer to layer: the attention logits are the mask plus
q k^T, the tokens read the slots (softmax over the tokens by default, over the slots with
`token_softmax_over_slots`, which splits the queries into two groups), the slots read the tokens (slot softmax, over
the slots; `l1norm_after_tokens_softmax` then normalises it over the tokens), sigmoid gates per head
(`gate_attention`), and an MLP (`mlp_mask`) computes the next mask from the logits and the updated tokens
(`project_mask_groups` first mixes the two groups' logits with a 1x1 convolution). The classifier averages the
logits of every slot of every level (`mlp_head`); `return_tokens` adds the mean logits of the patch tokens
(`mlp_head_tokens`) as `WWTReturn(slot_logits, token_logits)`.

    model = WWT(image_size=256, patch_size=32, num_classes=1000, dim=256, depth=2, num_slots=(64, 32, 16),
                interactions=((0, 1), (0, 2), (1, 2), (2, 3)), heads=4, mlp_dim=512)
    variables = model.init(jax.random.key(0), img)                       # img: (batch, 256, 256, 3)
    logits = model.apply(variables, img)                                 # (batch, 1000)
    slots, tokens, masks = model.apply(variables, img, return_embeddings=True)   # WWTFeatureReturn

What a call returns, as vit-pytorch's forward builds it:
- `return_embeddings=True`: `WWTFeatureReturn(slots, tokens, masks)`: the tuple of each level's slots
  (b, num_slots[k], dim), the patch tokens (b, n, dim) with `return_tokens` (else None), and the list of each
  interaction's final mask logits, registers cut off, (b, heads, n_i, n_j), or (b, 2, heads, n_i, n_j) with
  `token_softmax_over_slots` and without `project_mask_groups`.
- otherwise `out`: the slot logits (b, num_classes), or `WWTReturn(slot_logits, token_logits)` with
  `return_tokens`; with `task_heads`, the tuple `(out, *each head's output)`; with a SIGReg loss, that loss (a
  scalar) appended: `(out, *heads, sigreg)`, or, without task heads, `(out, sigreg)`, where an `out` that is a
  WWTReturn is spread (`(slot_logits, token_logits, sigreg)`, a plain tuple), as vit-pytorch's `(*ret, loss)` does.

`sigreg_slots` (a bool, or one per slot level) picks the slot levels whose SIGReg loss (lejepa.sigreg_loss: the
slots projected on 1024 random directions, compared with a standard normal through their characteristic function)
is summed into that loss. Those directions are random in every call, in eval mode too: vit-pytorch draws them with
`torch.randn`; here each level's come from the rng stream 'sigreg' (`WWT.rng_streams`), one `make_rng` per selected
level in level order, and `WWT.sigreg_directions` returns the draws of a call with the same rngs.

`task_heads`: a Flax module or a tuple / list of them, each called as `head(hierarchy_features, masks,
interactions)` (with `train=` when its `__call__` takes it) on the features of every level (the patch tokens, then
each level's slots) and the final masks. Their variables live under `task_heads_{i}`, as torch's under
`task_heads.{i}`. `AutoencodingHead` is vit-pytorch's: it routes a level's features along a pathway of levels
through the softmax of the (head-averaged) masks of the interactions on the way, default the pathways from every
slot level that interacts with the patch tokens down to them, `(j, 0)`; a pathway that ends at the patch level is
laid out on the patch grid, (b, h, w, d), or (b, d, h, w) with `channel_first`; its optional `decoder` (any Flax
module, its variables under `decoder`) maps each result. One pathway returns one array, several a tuple. Give
modules that have vit-pytorch twins (`AutoencodingHead`, `FeedForward` of this file) for the converters to build
vit-pytorch's model; others work here but have none. With `channel_first`, the decoder gets the channels-first map
as vit-pytorch's does (a channels-last decoder such as a layers.Conv wants `channel_first=False`).

Parameter tree = vit-pytorch's module tree: `to_patch_embedding_{1,2,3}`, `pos_embedding` (n, dim), the
ParameterLists `slots_{k}` and `register_slots_{k}`, `register_tokens` (num_register_tokens, dim), the blocks
`layers_{d}` with `attns_{i}` (one MutualAttention per interaction), `norms_{k}` and `mlps_{k}` (one per level),
`mlp_head_{0,1}`, `mlp_head_tokens_{0,1}`, `task_heads_{i}`.

Quirks of vit-pytorch kept so weights transfer and outputs agree:
- Every LayerNorm has no bias (`LayerNormNoBias`); patches are (p1 p2 c), as ViT's; the position embedding is
  (n, dim), added to every image, so an input of another patch count is refused.
- Register tokens and register slots (`num_register_tokens`, `num_register_slots`, per slot level) go before their
  sequence's tokens / slots; the masks include them; they are cut off before the heads and the returned masks.
- MutualAttention's `num_slots` is the slot level's length with its registers; `mlp_mask` takes the flattened logits
  (groups heads slots) and the updated tokens and returns the next logits; `project_mask_groups` only acts with
  `token_softmax_over_slots`.
- A level outside every interaction still goes through its norm (unused) and its MLP, `x + mlp(x)`.
- The slot logits are each level's mean over its slots, averaged over the levels.
- `interactions=()` is taken (no mutual attention); the masks are then an empty list.
- The SIGReg loss is only computed without `return_embeddings`; with `return_embeddings`, the heads and task heads
  are not run (here they are run at `init` only, so that the variables are always the whole model's).

Refused here with the value named where vit-pytorch asserts or fails later: slot counts that do not strictly
decrease, `sigreg_slots` or `num_register_slots` of another length, repeated interactions, an interaction (i, j)
with i >= j or outside the levels (vit-pytorch indexes from the end for a negative one; refused here), a task head
that is not a Flax module, an AutoencodingHead pathway that changes direction or is empty, or whose interaction is
missing, or with no default pathway. Images: not divisible into patches, another channel count or patch count.

`WWTAutoencoder` (below) is vit-flax's own self-supervised objective for the trainer (`config.objective='wwt'`), not
part of vit-pytorch, which has no training wrapper for WWT.

Rng streams: 'sigreg' (the SIGReg directions, every call with `sigreg_slots`), 'dropout' (with `train=True`).
"""

from __future__ import annotations

import math
from collections import namedtuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from einops import rearrange

from vit_flax.layers import (
    Conv, LayerNorm, Linear, ParameterListEntry, check_floating_input, check_keywords, check_patch_count, default,
    exists, gelu, pair, randn, softmax, takes_train,
)
from vit_flax.lejepa import SIGREG, sigreg_loss, sigreg_slice_draws
from vit_flax.vit import check_image_config, patchify

SIGREG_SLICES = 1024  # vit-pytorch's sigreg_loss default, which WWT calls with (its directions: lejepa.SIGREG)

WWTReturn = namedtuple('WWTReturn', ['slot_logits', 'token_logits'])
WWTFeatureReturn = namedtuple('WWTFeatureReturn', ['slots', 'tokens', 'masks'])

# helpers


def cast_tuple(val, length: int = 1) -> tuple:
    return tuple(val) if isinstance(val, (tuple, list)) else ((val,) * length)


def l1norm(t, axis: int = -1, eps: float = 1e-8):
    """vit-pytorch's l1norm: `t / max(sum(t), eps)` along `axis`."""
    return t / jnp.maximum(t.sum(axis=axis, keepdims=True), eps)


def call_head(module: nn.Module, train: bool, *args):
    """A user-supplied module called on `args`, with `train=` when its `__call__` takes it."""
    return module(*args, train=train) if takes_train(module) else module(*args)


def sigreg_keys(module: nn.Module, sigreg_slots) -> list:
    """One key of `module`'s 'sigreg' stream per slot level whose SIGReg loss a call computes (`sigreg_slots`
    resolved, or None), in level order, as the call draws them: a method of the same module drawing them first
    replays the call's directions."""
    return [module.make_rng(SIGREG) for selected in sigreg_slots or () if selected]


def resolved_interactions(interactions, num_slots) -> tuple[tuple[int, int], ...]:
    """vit-pytorch's `interactions`: default the patch tokens with every slot level, each pair a tuple."""
    if interactions is None:
        return tuple((0, i + 1) for i in range(len(cast_tuple(num_slots))))
    return tuple(tuple(interaction) for interaction in interactions)


def default_pathways(interactions, patch_pathway_id: int) -> tuple[tuple[int, ...], ...]:
    """AutoencodingHead's default pathways: from every level that interacts with `patch_pathway_id` down to it."""
    return tuple((j, patch_pathway_id) for i, j in resolved_interactions(interactions, ()) if i == patch_pathway_id)


# classes


class FeedForward(nn.Module):
    """vit-pytorch's `FeedForward(dim, hidden_dim, dropout, out_dim)`, a function returning
    `nn.Sequential(LayerNormNoBias, Linear, GELU, Dropout, Linear, Dropout)`: the layers are named by their Sequential
    indices `0`, `1`, `4`. The output has `out_dim` features (default `dim`)."""

    dim: int
    hidden_dim: int
    dropout: float = 0.0
    out_dim: int | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        if x.shape[-1] != self.dim:
            raise ValueError(f'FeedForward(dim={self.dim}) got inputs of {x.shape[-1]} features, shape {x.shape}')
        x = LayerNorm(use_bias=False, name='0')(x)
        x = gelu(Linear(self.hidden_dim, name='1')(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = Linear(default(self.out_dim, self.dim), name='4')(x)
        return nn.Dropout(self.dropout, deterministic=not train)(x)


def _check_pathways(pathways):
    for pathway in pathways or ():
        pathway = tuple(pathway)
        if not pathway:
            raise ValueError(f'AutoencodingHead: pathways={pathways!r} holds an empty pathway')
        is_descending = pathway[0] > pathway[-1]
        for source, target in zip(pathway[:-1], pathway[1:]):
            if (target < source) != is_descending:
                raise ValueError(f'AutoencodingHead: pathway {pathway} must be strictly directional (every step '
                                 f'{"down" if is_descending else "up"} the levels)')


class AutoencodingHead(nn.Module):
    """vit-pytorch's AutoencodingHead, a WWT task head: see the module docstring. Called as
    `head(hierarchy_features, masks, interactions)`; only the features of each pathway's first level are read."""

    image_size: int | tuple[int, int]
    patch_size: int | tuple[int, int]
    decoder: nn.Module | None = None
    pathways: tuple[tuple[int, ...], ...] | None = None
    patch_pathway_id: int = 0
    channel_first: bool = False

    def __post_init__(self):
        check_keywords(self)
        _check_pathways(self.pathways)
        if self.pathways is not None:  # JSON's lists (a sidecar's) as the tuples vit-pytorch's are
            object.__setattr__(self, 'pathways', tuple(tuple(pathway) for pathway in self.pathways))
        super().__post_init__()

    @nn.compact
    def __call__(self, hierarchy_features, masks, interactions, train: bool = False):
        (image_height, image_width), (patch_height, patch_width) = pair(self.image_size), pair(self.patch_size)
        grid_h, grid_w = image_height // patch_height, image_width // patch_width
        interactions = resolved_interactions(interactions, ())

        # reduce masks: the mean over the heads (and query groups)

        masks = {interaction: m.mean(axis=tuple(range(1, m.ndim - 2))) for m, interaction in zip(masks, interactions)}

        # default pathways

        pathways = default(self.pathways, default_pathways(interactions, self.patch_pathway_id))
        if not pathways:
            raise ValueError(f'AutoencodingHead: no valid pathways found: no interaction of interactions='
                             f'{interactions} starts at patch_pathway_id={self.patch_pathway_id}')

        # feature map construction

        def construct_feature_map(pathway):
            pathway = tuple(pathway)
            start, end = pathway[0], pathway[-1]
            is_descending = start > end
            features = hierarchy_features[start]

            # chain interactions

            for source, target in zip(pathway[:-1], pathway[1:]):
                interaction = (target, source) if is_descending else (source, target)
                if interaction not in masks:
                    raise ValueError(f'AutoencodingHead: pathway {pathway} needs interaction {interaction}, which is '
                                     f'missing from interactions={interactions}')
                mask = masks[interaction]
                if not is_descending:
                    mask = rearrange(mask, 'b i j -> b j i')
                attn = softmax(mask, axis=-1)
                features = jnp.einsum('bts,bsd->btd', attn, features)

            # rearrange spatial if ends in patches

            if end == self.patch_pathway_id:
                pattern = 'b (h w) d -> b d h w' if self.channel_first else 'b (h w) d -> b h w d'
                features = rearrange(features, pattern, h=grid_h, w=grid_w)

            return call_head(self.decoder, train, features) if exists(self.decoder) else features

        feature_maps = tuple(construct_feature_map(p) for p in pathways)
        return feature_maps[0] if len(feature_maps) == 1 else feature_maps


class MutualAttention(nn.Module):
    """vit-pytorch's MutualAttention between `tokens` (b, t, dim) and `slots` (b, s, dim) carrying the mask logits
    `mask` (b, mask groups, heads, t, s): returns (tokens_out, slots_out, next mask)."""

    dim: int
    num_slots: int
    heads: int
    dim_head: int
    mlp_dim: int
    dropout: float = 0.0
    l1norm_after_tokens_softmax: bool = False
    token_softmax_over_slots: bool = False
    project_mask_groups: bool = False
    gate_attention: bool = True

    @property
    def q_groups(self) -> int:
        return 2 if self.token_softmax_over_slots else 1

    @property
    def mask_groups(self) -> int:
        return 1 if self.project_mask_groups and self.token_softmax_over_slots else self.q_groups

    @nn.compact
    def __call__(self, tokens, slots, mask, train: bool = False):
        h, g = self.heads, self.q_groups
        inner_dim = self.heads * self.dim_head
        scale = self.dim_head**-0.5

        # queries, keys, values

        tokens_q_v = rearrange(Linear(inner_dim * (g + 1), use_bias=False, name='to_q_v_tokens')(tokens),
                               'b t (g h d) -> g b h t d', h=h, g=g + 1)
        q, v_tokens = rearrange(tokens_q_v[:-1], 'g b h t d -> b g h t d'), tokens_q_v[-1]
        k, v_slots = rearrange(Linear(inner_dim * 2, use_bias=False, name='to_k_v_slots')(slots),
                               'b s (kv h d) -> kv b h s d', h=h, kv=2)

        # mutual attention

        sim = jnp.einsum('bghtd,bhsd->bghts', q, k) * scale
        mask_prime = mask + sim

        if self.token_softmax_over_slots:
            mask_prime_slots, mask_prime_tokens = mask_prime[:, 0], mask_prime[:, 1]
            attn_tokens = softmax(mask_prime_tokens, axis=-1)
        else:
            mask_prime_slots = mask_prime[:, 0]
            attn_tokens = softmax(mask_prime_slots, axis=-2)

        # slot softmax - https://arxiv.org/abs/2006.15055

        attn_slots = softmax(mask_prime_slots, axis=-1)

        if self.l1norm_after_tokens_softmax:
            attn_slots = l1norm(attn_slots, axis=-2)

        # aggregate

        tokens_out_pre = jnp.einsum('bhts,bhsd->bhtd', attn_tokens, v_slots)
        slots_out_pre = jnp.einsum('bhts,bhtd->bhsd', attn_slots, v_tokens)

        if self.gate_attention:
            tokens_gate = Linear(h, use_bias=False, name='tokens_gate_0')(tokens)
            slots_gate = Linear(h, use_bias=False, name='slots_gate_0')(slots)
            tokens_out_pre = tokens_out_pre * jax.nn.sigmoid(rearrange(tokens_gate, 'b t h -> b h t 1'))
            slots_out_pre = slots_out_pre * jax.nn.sigmoid(rearrange(slots_gate, 'b s h -> b h s 1'))

        tokens_out = Linear(self.dim, name='to_out_tokens_0')(rearrange(tokens_out_pre, 'b h t d -> b t (h d)'))
        tokens_out = nn.Dropout(self.dropout, deterministic=not train)(tokens_out)
        slots_out = Linear(self.dim, name='to_out_slots_0')(rearrange(slots_out_pre, 'b h s d -> b s (h d)'))
        slots_out = nn.Dropout(self.dropout, deterministic=not train)(slots_out)

        # mask update

        if self.project_mask_groups and self.token_softmax_over_slots:
            # torch's 1x1 Conv2d over the (g h) channels of (b, (g h), t, s), channels-last here
            projected = Conv(h, 1, name='mask_project')(rearrange(mask_prime, 'b g h t s -> b t s (g h)'))
            mask_prime = rearrange(projected, 'b t s h -> b 1 h t s')

        groups_heads_slots = self.mask_groups * h * self.num_slots
        mlp_mask = FeedForward(groups_heads_slots + self.dim, self.mlp_dim, self.dropout, out_dim=groups_heads_slots,
                               name='mlp_mask')
        mask_next = mlp_mask(jnp.concatenate((rearrange(mask_prime, 'b g h t s -> b t (g h s)'), tokens + tokens_out),
                                             axis=-1), train)
        mask_next = rearrange(mask_next, 'b t (g h s) -> b g h t s', h=h, g=self.mask_groups)

        return tokens_out, slots_out, mask_next


class WWTBlock(nn.Module):
    """One of vit-pytorch's `layers`: the levels' norms, a MutualAttention per interaction, the levels' MLPs."""

    dim: int
    num_hierarchies: int
    seq_lengths: tuple[int, ...]
    interactions: tuple[tuple[int, int], ...]
    heads: int
    dim_head: int
    mlp_dim: int
    dropout: float = 0.0
    l1norm_after_tokens_softmax: bool = False
    token_softmax_over_slots: bool = False
    project_mask_groups: bool = False
    gate_attention: bool = True

    @nn.compact
    def __call__(self, x, masks, train: bool = False):
        norm_x = [LayerNorm(use_bias=False, name=f'norms_{k}')(seq) for k, seq in enumerate(x)]

        delta_x = [0.0] * len(x)
        next_masks = []

        for index, (mask, (i, j)) in enumerate(zip(masks, self.interactions)):
            attn = MutualAttention(
                dim=self.dim, num_slots=self.seq_lengths[j], heads=self.heads, dim_head=self.dim_head,
                mlp_dim=self.mlp_dim, dropout=self.dropout,
                l1norm_after_tokens_softmax=self.l1norm_after_tokens_softmax,
                token_softmax_over_slots=self.token_softmax_over_slots, project_mask_groups=self.project_mask_groups,
                gate_attention=self.gate_attention, name=f'attns_{index}',
            )
            tokens_out, slots_out, next_mask = attn(norm_x[i], norm_x[j], mask, train)

            delta_x[i] = delta_x[i] + tokens_out
            delta_x[j] = delta_x[j] + slots_out
            next_masks.append(next_mask)

        out = []
        for k, (seq, delta) in enumerate(zip(x, delta_x)):
            mlp = FeedForward(self.dim, self.mlp_dim, self.dropout, name=f'mlps_{k}')
            out.append(seq + delta + mlp(seq + delta, train))
        return out, next_masks


class WWT(nn.Module):
    image_size: int | tuple[int, int]
    patch_size: int | tuple[int, int]
    num_classes: int
    dim: int
    depth: int
    num_slots: int | tuple[int, ...]
    sigreg_slots: bool | tuple[bool, ...] | None = None
    interactions: tuple[tuple[int, int], ...] | None = None
    heads: int = 8
    dim_head: int = 64
    mlp_dim: int | None = None
    channels: int = 3
    dropout: float = 0.0
    return_tokens: bool = False
    l1norm_after_tokens_softmax: bool = False
    token_softmax_over_slots: bool = False
    project_mask_groups: bool = False
    gate_attention: bool = True
    num_register_tokens: int = 0
    num_register_slots: int | tuple[int, ...] = 0
    task_heads: nn.Module | tuple[nn.Module, ...] = ()

    rng_streams = (SIGREG,)  # the SIGReg directions, drawn in every call with sigreg_slots

    def __post_init__(self):
        check_keywords(self)
        check_image_config(self.image_size, self.patch_size)
        num_slots = cast_tuple(self.num_slots)
        if not num_slots:
            raise ValueError(f'WWT: num_slots={self.num_slots!r} needs at least one slot level')
        for s1, s2 in zip(num_slots[:-1], num_slots[1:]):
            if not s1 > s2:
                raise ValueError(f'WWT: num_slots={self.num_slots!r}: to establish a part-whole hierarchy, the number '
                                 'of slots must be strictly decreasing across levels')
        for name in ('sigreg_slots', 'num_register_slots'):
            value = getattr(self, name)
            if isinstance(value, (tuple, list)) and len(value) != len(num_slots):
                raise ValueError(f'WWT: {name}={value!r} has {len(value)} entries for the {len(num_slots)} slot '
                                 f'levels of num_slots={self.num_slots!r}')
        interactions = resolved_interactions(self.interactions, num_slots)
        if len(set(interactions)) != len(interactions):
            raise ValueError(f'WWT: interactions={self.interactions!r} must be unique')
        for interaction in interactions:
            if len(interaction) != 2 or not 0 <= interaction[0] < interaction[1] <= len(num_slots):
                raise ValueError(
                    f'WWT: interaction {interaction} of interactions={self.interactions!r} must be a pair (i, j) of '
                    f'levels in strictly ascending order, 0 <= i < j <= {len(num_slots)} (0: the patch tokens, '
                    'k: the slots of num_slots[k - 1])'
                )
        # torch's `ModuleList(task_heads)`: one module or several, held as a tuple so that Flax names them task_heads_i
        task_heads = self.task_heads
        task_heads = (task_heads,) if isinstance(task_heads, nn.Module) else tuple(task_heads)
        for head in task_heads:
            if not isinstance(head, nn.Module):
                raise ValueError(f'WWT: task_heads must be Flax linen Modules, got {type(head).__name__}')
        object.__setattr__(self, 'task_heads', task_heads)
        if self.interactions is not None:  # JSON's lists (a sidecar's, a trainer config's) as tuples
            object.__setattr__(self, 'interactions', interactions)
        super().__post_init__()

    # the configuration, resolved as vit-pytorch's constructor resolves it (plain functions of the fields)

    @nn.nowrap
    def resolved_num_slots(self) -> tuple[int, ...]:
        return cast_tuple(self.num_slots)

    @nn.nowrap
    def resolved_interactions(self) -> tuple[tuple[int, int], ...]:
        return resolved_interactions(self.interactions, self.num_slots)

    @nn.nowrap
    def resolved_sigreg_slots(self) -> tuple[bool, ...] | None:
        return None if self.sigreg_slots is None else cast_tuple(self.sigreg_slots, len(self.resolved_num_slots()))

    @nn.nowrap
    def num_regs(self) -> tuple[int, ...]:
        return (self.num_register_tokens, *cast_tuple(self.num_register_slots, len(self.resolved_num_slots())))

    @nn.nowrap
    def num_patches(self) -> int:
        (image_height, image_width), (patch_height, patch_width) = pair(self.image_size), pair(self.patch_size)
        return (image_height // patch_height) * (image_width // patch_width)

    @nn.nowrap
    def seq_lengths(self) -> tuple[int, ...]:
        regs = self.num_regs()
        return tuple(n + r for n, r in zip((self.num_patches(), *self.resolved_num_slots()), regs))

    @nn.nowrap
    def mask_groups(self) -> int:
        return 1 if self.project_mask_groups or not self.token_softmax_over_slots else 2

    # the SIGReg draws

    @nn.nowrap
    def sigreg_directions(self, img=None) -> list:
        """The standard normal draws (SIGREG_SLICES, dim) of each selected level's SIGReg loss in a call with the same
        rngs, for float32 slots (before lejepa.sigreg_loss normalises them; vit-pytorch's `torch.randn((num_slices,
        dim))`): `model.apply({}, img, rngs=rngs, method=WWT.sigreg_directions)`."""
        keys = sigreg_keys(self, self.resolved_sigreg_slots())
        return [sigreg_slice_draws(key, SIGREG_SLICES, self.dim) for key in keys]

    @nn.compact
    def __call__(self, img, return_embeddings: bool = False, train: bool = False):
        check_floating_input(self, 'img', img)
        b = img.shape[0]
        num_slots, interactions, num_regs = self.resolved_num_slots(), self.resolved_interactions(), self.num_regs()
        seq_lengths, mlp_dim = self.seq_lengths(), default(self.mlp_dim, self.dim * 4)

        # get tokens

        tokens = LayerNorm(use_bias=False, name='to_patch_embedding_1')(patchify(img, self.patch_size, self.channels))
        tokens = Linear(self.dim, name='to_patch_embedding_2')(tokens)
        tokens = LayerNorm(use_bias=False, name='to_patch_embedding_3')(tokens)
        pos_embedding = self.param('pos_embedding', randn, (self.num_patches(), self.dim))
        check_patch_count(tokens, self.num_patches(), img.shape[1:3], self.image_size)
        tokens = tokens + pos_embedding.astype(tokens.dtype)

        def batched(parameter):
            return jnp.broadcast_to(parameter.astype(tokens.dtype), (b, *parameter.shape))

        slots = [ParameterListEntry((n, self.dim), randn, name=f'slots_{k}')() for k, n in enumerate(num_slots)]
        x = [tokens, *(batched(p) for p in slots)]

        # pack registers (before each sequence)

        register_tokens = self.param('register_tokens', randn, (self.num_register_tokens, self.dim))
        register_slots = [ParameterListEntry((n, self.dim), randn, name=f'register_slots_{k}')()
                          for k, n in enumerate(num_regs[1:])]
        all_regs = [batched(register_tokens), *(batched(p) for p in register_slots)]
        x = [jnp.concatenate((reg, seq), axis=1) for reg, seq in zip(all_regs, x)]

        # initial masks

        masks = [jnp.zeros((b, self.mask_groups(), self.heads, seq_lengths[i], seq_lengths[j]), tokens.dtype)
                 for i, j in interactions]

        # layers

        for d in range(self.depth):
            block = WWTBlock(
                dim=self.dim, num_hierarchies=len(seq_lengths), seq_lengths=seq_lengths, interactions=interactions,
                heads=self.heads, dim_head=self.dim_head, mlp_dim=mlp_dim, dropout=self.dropout,
                l1norm_after_tokens_softmax=self.l1norm_after_tokens_softmax,
                token_softmax_over_slots=self.token_softmax_over_slots, project_mask_groups=self.project_mask_groups,
                gate_attention=self.gate_attention, name=f'layers_{d}',
            )
            x, masks = block(x, masks, train)

        # unpack registers

        tokens_out, *slots_out = (seq[:, r:] for seq, r in zip(x, num_regs))
        slots_out = tuple(slots_out)
        hierarchy_features = (tokens_out, *slots_out)

        # process masks

        processed_masks = []
        for mask, (i, j) in zip(masks, interactions):
            mask = mask[..., num_regs[i]:, num_regs[j]:]
            if not self.token_softmax_over_slots or self.project_mask_groups:
                mask = mask[:, 0]
            processed_masks.append(mask)

        if return_embeddings and not self.is_initializing():
            return WWTFeatureReturn(slots_out, tokens_out if self.return_tokens else None, processed_masks)

        # classification

        def mlp_head(name):  # LayerNormNoBias, Linear
            norm, linear = LayerNorm(use_bias=False, name=f'{name}_0'), Linear(self.num_classes, name=f'{name}_1')
            return lambda t: linear(norm(t))

        slot_head = mlp_head('mlp_head')  # one head for every slot level
        pooled_slot_logits = sum(slot_head(s).mean(axis=1) for s in slots_out) / len(slots_out)

        if not self.return_tokens:
            out = pooled_slot_logits
        else:
            pooled_token_logits = mlp_head('mlp_head_tokens')(tokens_out).mean(axis=1)
            out = WWTReturn(pooled_slot_logits, pooled_token_logits)

        # task heads

        heads_out = tuple(call_head(head, train, hierarchy_features, processed_masks, interactions)
                          for head in self.task_heads)

        if return_embeddings:  # initialising: every head has its variables now
            return WWTFeatureReturn(slots_out, tokens_out if self.return_tokens else None, processed_masks)

        # sigreg loss

        sreg_loss = None
        compute = self.resolved_sigreg_slots()
        if exists(compute):
            keys = iter(sigreg_keys(self, compute))
            sreg_losses = [sigreg_loss(s, next(keys), num_slices=SIGREG_SLICES)
                           for s, selected in zip(slots_out, compute) if selected]
            if sreg_losses:
                sreg_loss = sum(sreg_losses)

        # vit-pytorch's return structure

        ret = (out, *heads_out) if self.task_heads else out

        if exists(sreg_loss):
            ret = (*ret, sreg_loss) if isinstance(ret, tuple) else (ret, sreg_loss)

        return ret


# vit-flax's own objective (not vit-pytorch's: it has no training wrapper for WWT)


class WWTAutoencoder(nn.Module):
    """A self-supervised objective for a WWT `encoder` (vit-flax's own; vit-pytorch has no training wrapper for WWT),
    for the trainer's `config.objective='wwt'`.

    The image is reconstructed from the slots alone: the encoder's slot features and final masks
    (`return_embeddings=True`) go through an AutoencodingHead with its default pathways, every slot level that
    interacts with the patch tokens routed down to the patch grid by the softmax over its slots of the head-averaged
    mask logits, and a Linear `decoder` (dim -> the patch's pixels, in the encoder's (p1 p2 c) layout) maps each
    patch's feature to its pixels. The loss is the mean squared error against the image's patches (averaged over the
    pathways) plus `sigreg_loss_weight` times the summed SIGReg loss of the slot levels the encoder's `sigreg_slots`
    selects (none without `sigreg_slots`), whose directions come from the 'sigreg' stream as in WWT's own forward.

        objective = WWTAutoencoder(encoder=WWT(..., sigreg_slots=True))
        loss = objective.apply(variables, img, train=True, rngs={'sigreg': k1, 'dropout': k2})

    The encoder's variables live under `params['encoder']`, exactly a WWT's (its heads included, which this loss does
    not train), so they export to vit-pytorch's WWT, configured without task_heads; the objective's own parameters
    are `decoder` (`kernel`, `bias`). An encoder with `task_heads` is refused (their variables would be untrained and
    the export would need them). `WWTAutoencoder.sigreg_directions` returns the draws of a call with the same rngs.
    """

    encoder: WWT
    sigreg_loss_weight: float = 1.0

    encoder_keyword = 'encoder'
    encoder_path = ('encoder',)
    rng_streams = (SIGREG,)
    takes_labels = False

    def __post_init__(self):
        encoder = self.encoder
        if not isinstance(encoder, WWT):
            raise ValueError(f'WWTAutoencoder takes a vit_flax.wwt.WWT encoder, got encoder='
                             f'{type(encoder).__module__}.{type(encoder).__name__}')
        if encoder.task_heads:
            raise ValueError(f'WWTAutoencoder: the encoder has {len(encoder.task_heads)} task_heads; configure the '
                             'WWT without them (the objective reconstructs the image through its own head)')
        if not default_pathways(encoder.resolved_interactions(), 0):
            raise ValueError(f'WWTAutoencoder: no slot level interacts with the patch tokens (interactions='
                             f'{encoder.resolved_interactions()}), so no pathway leads to the patches')
        if isinstance(self.sigreg_loss_weight, bool) or not (isinstance(self.sigreg_loss_weight, (int, float))
                                                              and math.isfinite(self.sigreg_loss_weight)
                                                              and self.sigreg_loss_weight >= 0):
            raise ValueError(f'WWTAutoencoder: sigreg_loss_weight={self.sigreg_loss_weight!r} must be a non-negative '
                             'number')
        super().__post_init__()

    @property
    def image_size(self):
        return self.encoder.image_size

    @property
    def channels(self) -> int:
        return self.encoder.channels

    @nn.nowrap
    def sigreg_directions(self, img=None) -> list:
        """The standard normal draws of the SIGReg losses of a call with the same rngs, as WWT.sigreg_directions."""
        keys = sigreg_keys(self, self.encoder.resolved_sigreg_slots())
        return [sigreg_slice_draws(key, SIGREG_SLICES, self.encoder.dim) for key in keys]

    @nn.compact
    def __call__(self, img, train: bool = False):
        check_floating_input(self, 'img', img)
        encoder = self.encoder
        (patch_height, patch_width), (image_height, _) = pair(encoder.patch_size), pair(encoder.image_size)
        # the patches in token order, on the grid the head lays the tokens out on
        patches = patchify(img, encoder.patch_size, encoder.channels)
        target = rearrange(patches, 'b (h w) p -> b h w p', h=image_height // patch_height)

        slots, _, masks = encoder(img, return_embeddings=True, train=train)

        # the slot levels routed down to the patches; only each pathway's first level's features are read
        head = AutoencodingHead(image_size=encoder.image_size, patch_size=encoder.patch_size, name='autoencoding_head')
        feature_maps = head((None, *slots), masks, encoder.resolved_interactions(), train)
        feature_maps = feature_maps if isinstance(feature_maps, tuple) else (feature_maps,)

        decoder = Linear(patch_height * patch_width * encoder.channels, name='decoder')
        errors = [jnp.mean(jnp.square(decoder(m) - target.astype(m.dtype))) for m in feature_maps]
        loss = sum(errors) / len(errors)

        compute = encoder.resolved_sigreg_slots()
        if exists(compute) and any(compute):
            keys = iter(sigreg_keys(self, compute))
            sreg = sum(sigreg_loss(s, next(keys), num_slices=SIGREG_SLICES)
                       for s, selected in zip(slots, compute) if selected)
            loss = loss + self.sigreg_loss_weight * sreg
        return loss
