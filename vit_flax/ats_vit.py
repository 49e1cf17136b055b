"""ViT with adaptive token sampling ("Adaptive Token Sampling For Efficient Vision Transformers", Fayyaz et al.,
2021), mirroring vit_pytorch/ats_vit.py.

Layer `i` keeps at most `max_tokens_per_depth[i]` patch tokens (plus the cls token): it draws that many token
ids by Gumbel-max sampling from the cls token's attention (weighted by the value norms, summed over heads),
keeps each distinct id once, and carries only those rows (of the attention, the residual and the token ids)
into the next layer.

Static shapes. vit-pytorch removes duplicate ids with `torch.unique` and pads each batch to its largest kept
count, so its shapes depend on the draw. Here a sampling layer always has `max_tokens_per_depth[i] + 1`
slots: slot 0 is the cls token, then the kept ids in increasing order, then padding. This is vit-pytorch's
own layout, padding content included (a padding slot gathers id 0, a copy of the cls token's row, as torch's
zero padding does), only with more padding columns: torch's tensors are the first `max_b kept_b + 1` slots of
ours. A boolean mask marks the real slots and keeps padding out of every real token's attention, as in
torch, so the logits are the same; the whole forward jits to one program.

`return_sampled_token_ids=True` also returns the patch index (0-based) of every slot left after the last
layer, (batch, slots - 1), padded with -1 as torch pads; torch's result is our first columns, the rest of
ours is -1.

Randomness: the Gumbel noise is drawn even in eval mode, from the rng stream 'token_sampling'
(`model.apply(variables, img, rngs={'token_sampling': key})`). `ViT.token_sampling_noise` returns the noise
a call draws with the same rngs: layer `i` gets (batch, max_tokens_per_depth[i], slots_i - 1), over the
fixed token slots, of which vit-pytorch asks `sample_gumbel` for the first `max_b kept_b` columns (the rest
are masked out of the draw). During `init` without that stream Flax falls back on 'params'.

Parameter tree = vit-pytorch's module tree: `transformer.layers.0.0.to_qkv.weight` lives at
`params/transformer/layers_0_0/to_qkv/kernel`. AdaptiveTokenSampling has no parameters.

Quirks of vit-pytorch kept so weights transfer and outputs agree:
- Whether a layer samples depends on the whole batch: it samples when the batch's largest kept count exceeds
  its `max_tokens_per_depth[i]` (torch tests its padded length), else it passes every token on. A layer whose
  budget equals the previous layer's therefore never samples.
- The attention dropout acts before sampling: the cls attention that scores tokens is the dropped-out one.
- `pos_embedding` is (1, num_patches + 1, dim) and `cls_token` is (1, 1, dim); a smaller input (by token
  count) takes the first rows of the position embedding.
- The attention output projection is always kept (no `heads == 1 and dim_head == dim` shortcut); the
  transformer has no final LayerNorm; the head is LayerNorm + Linear (`mlp_head.0`, `mlp_head.1`) on the cls
  token; there is no `pool` argument. `num_classes=0` returns (batch, 0) logits, as torch does.
- Padding rows are garbage in both (a fully masked row attends uniformly); they never reach a real token.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange, repeat

from vit_flax.layers import (
    LayerNorm, Linear, add_position_embedding, attention_weights, check_floating_input, check_keywords, exists, pair,
    randn,
)
from vit_flax.vit import FeedForward, check_image_config, embed_patches

TOKEN_SAMPLING = 'token_sampling'  # the rng stream of the Gumbel noise

# adaptive token sampling functions and classes


def log(t, eps: float = 1e-6):
    return jnp.log(t + eps)


def sample_gumbel(key, shape, dtype=jnp.float32, eps: float = 1e-6):
    """vit-pytorch's Gumbel noise, -log(-log(u + eps) + eps) with u ~ U[0, 1), drawn in float32."""
    u = jax.random.uniform(key, shape, jnp.float32, 0.0, 1.0)
    return (-log(-log(u, eps), eps)).astype(dtype)


def batched_index_select(values, indices, dim: int = 1):
    """values[b, ..., indices[b, ..., i], ...] along `dim`: indices (b, *values.shape[1:dim], k)."""
    indices = indices.reshape(indices.shape + (1,) * (values.ndim - dim - 1))
    return jnp.take_along_axis(values, indices, axis=dim)


def unique_sorted_padded(sampled_token_ids, num_tokens: int):
    """torch.unique(sorted) per row, right-padded with 0 to the row length: (b, k) ids in [1, num_tokens)."""
    k = sampled_token_ids.shape[-1]
    present = jnp.any(sampled_token_ids[..., None] == jnp.arange(num_tokens), axis=-2)  # (b, num_tokens)
    rank = jnp.cumsum(present, axis=-1) - 1  # position of each present id in the sorted unique ids
    at = present[..., None, :] & (rank[..., None, :] == jnp.arange(k)[:, None])  # (b, k, num_tokens)
    return jnp.sum(jnp.where(at, jnp.arange(num_tokens), 0), axis=-1)  # no slot matched: 0


class AdaptiveTokenSampling(nn.Module):
    """Keeps at most `output_num_tokens` tokens (+ cls) of attention maps `attn` (b, h, n, n).

    Returns the attention rows of the kept tokens (b, h, output_num_tokens + 1, n), their mask and their ids
    into the current n tokens (cls = id 0 first; padding = id 0 after the kept ids, mask False). `noise`
    (b, output_num_tokens, n - 1) is the Gumbel noise; without it, it is drawn from the 'token_sampling' stream.
    """

    output_num_tokens: int
    eps: float = 1e-6

    @nn.compact
    def __call__(self, attn, value, mask, noise=None):
        heads, output_num_tokens, eps, dtype = attn.shape[1], self.output_num_tokens, self.eps, attn.dtype
        num_tokens = attn.shape[-1]

        # the attention of the cls token to all other tokens, weighted by the value norms, summed over heads

        cls_attn = attn[..., 0, 1:]
        value_norms = jnp.sqrt(jnp.sum(jnp.square(value[..., 1:, :]), axis=-1))
        cls_attn = jnp.einsum('bhn,bhn->bn', cls_attn, value_norms)

        normed_cls_attn = cls_attn / (cls_attn.sum(axis=-1, keepdims=True) + eps)

        # gumbel-max sampling on the inverted softmax, padding masked out

        pseudo_logits = log(normed_cls_attn)
        mask_value = -jnp.finfo(dtype).max / 2
        pseudo_logits = jnp.where(mask[:, 1:], pseudo_logits, mask_value)

        pseudo_logits = repeat(pseudo_logits, 'b n -> b k n', k=output_num_tokens)
        if noise is None:
            noise = sample_gumbel(self.make_rng(TOKEN_SAMPLING), pseudo_logits.shape, dtype)
        if noise.shape != pseudo_logits.shape:
            raise ValueError(f'token sampling noise must have shape {pseudo_logits.shape}, got {noise.shape}')
        pseudo_logits = pseudo_logits + noise.astype(dtype)

        # +1 reserves id 0 for the cls token and padding

        sampled_token_ids = jnp.argmax(pseudo_logits, axis=-1) + 1
        unique_sampled_token_ids = unique_sorted_padded(sampled_token_ids, num_tokens)

        new_mask = jnp.pad(unique_sampled_token_ids != 0, ((0, 0), (1, 0)), constant_values=True)
        unique_sampled_token_ids = jnp.pad(unique_sampled_token_ids, ((0, 0), (1, 0)), constant_values=0)

        expanded_unique_sampled_token_ids = repeat(unique_sampled_token_ids, 'b n -> b h n', h=heads)
        new_attn = batched_index_select(attn, expanded_unique_sampled_token_ids, dim=2)

        return new_attn, new_mask, unique_sampled_token_ids


# classes


class Attention(nn.Module):
    dim: int
    heads: int = 8
    dim_head: int = 64
    dropout: float = 0.0
    output_num_tokens: int | None = None

    @nn.compact
    def __call__(self, x, *, mask, noise=None, train: bool = False):
        """(out, mask, sampled_token_ids); sampled_token_ids is None when this layer never samples."""
        num_tokens = x.shape[1]
        inner_dim = self.dim_head * self.heads

        x = LayerNorm(name='norm')(x)
        qkv = jnp.split(Linear(inner_dim * 3, use_bias=False, name='to_qkv')(x), 3, axis=-1)
        q, k, v = (rearrange(t, 'b n (h d) -> b h n d', h=self.heads) for t in qkv)

        dots_mask = rearrange(mask, 'b i -> b 1 i 1') & rearrange(mask, 'b j -> b 1 1 j')
        attn = attention_weights(q, k, scale=self.dim_head**-0.5, mask=dots_mask)
        attn = nn.Dropout(self.dropout, deterministic=not train)(attn)

        sampled_token_ids = None

        # torch samples when its padded length, the batch's largest real token count, exceeds the budget
        if exists(self.output_num_tokens) and (num_tokens - 1) > self.output_num_tokens:
            kept = self.output_num_tokens + 1
            sampled_attn, sampled_mask, sampled_ids = AdaptiveTokenSampling(self.output_num_tokens, name='ats')(
                attn, v, mask, noise
            )
            samples = mask.sum(axis=-1).max() - 1 > self.output_num_tokens
            # else every real token sits in the first `kept` slots: keep those
            attn = jnp.where(samples, sampled_attn, attn[:, :, :kept])
            mask = jnp.where(samples, sampled_mask, mask[:, :kept])
            sampled_token_ids = jnp.where(samples, sampled_ids, jnp.arange(kept))

        out = jnp.einsum('bhij,bhjd->bhid', attn, v)
        out = rearrange(out, 'b h n d -> b n (h d)')
        out = Linear(self.dim, name='to_out_0')(out)
        return nn.Dropout(self.dropout, deterministic=not train)(out), mask, sampled_token_ids


def check_max_tokens_per_depth(depth: int, max_tokens_per_depth: Sequence[int]):
    """vit-pytorch's asserts on the token budgets, with the values in the message."""
    max_tokens_per_depth = tuple(max_tokens_per_depth)
    if len(max_tokens_per_depth) != depth:
        raise ValueError(
            'max_tokens_per_depth must be a tuple of length that is equal to the depth of the transformer, got '
            f'max_tokens_per_depth={max_tokens_per_depth} for depth={depth}'
        )
    if sorted(max_tokens_per_depth, reverse=True) != list(max_tokens_per_depth):
        raise ValueError(f'max_tokens_per_depth must be in decreasing order, got {max_tokens_per_depth}')
    if not max_tokens_per_depth or min(max_tokens_per_depth) <= 0:
        # torch's min() of an empty tuple (depth=0) fails too
        raise ValueError(
            f'max_tokens_per_depth must have at least 1 token at any layer, got max_tokens_per_depth='
            f'{max_tokens_per_depth}'
        )


class Transformer(nn.Module):
    dim: int
    depth: int
    max_tokens_per_depth: Sequence[int]
    heads: int
    dim_head: int
    mlp_dim: int
    dropout: float = 0.0

    def __post_init__(self):
        check_max_tokens_per_depth(self.depth, self.max_tokens_per_depth)
        super().__post_init__()

    @nn.compact
    def __call__(self, x, noise: Sequence | None = None, train: bool = False):
        """(tokens, token_ids): token_ids (b, slots) are positions in the input sequence, 0 for cls and padding."""
        b, n = x.shape[:2]
        noise = tuple(noise) if exists(noise) else (None,) * self.depth

        mask = jnp.ones((b, n), dtype=bool)
        token_ids = repeat(jnp.arange(n), 'n -> b n', b=b)

        for i, output_num_tokens in enumerate(self.max_tokens_per_depth):
            attention = Attention(self.dim, self.heads, self.dim_head, self.dropout, output_num_tokens,
                                  name=f'layers_{i}_0')
            attn_out, mask, sampled_token_ids = attention(x, mask=mask, noise=noise[i], train=train)

            # gather the residual tokens and their ids with the sampled ids
            if exists(sampled_token_ids):
                x = batched_index_select(x, sampled_token_ids, dim=1)
                token_ids = batched_index_select(token_ids, sampled_token_ids, dim=1)

            x = x + attn_out
            x = FeedForward(self.dim, self.mlp_dim, self.dropout, name=f'layers_{i}_1')(x, train) + x

        return x, token_ids


class ViT(nn.Module):
    image_size: int | tuple[int, int]
    patch_size: int | tuple[int, int]
    num_classes: int
    dim: int
    depth: int
    max_tokens_per_depth: Sequence[int]
    heads: int
    mlp_dim: int
    channels: int = 3
    dim_head: int = 64
    dropout: float = 0.0
    emb_dropout: float = 0.0

    def __post_init__(self):
        check_keywords(self)
        check_image_config(self.image_size, self.patch_size)
        check_max_tokens_per_depth(self.depth, self.max_tokens_per_depth)
        super().__post_init__()

    def token_sampling_noise(self, img) -> tuple:
        """The Gumbel noise of a call on `img`, one entry per layer (no parameters needed).

        (batch, max_tokens_per_depth[i], slots_i - 1) for a layer that may sample, None for one that cannot
        (its budget is not below its slot count). Drawn from the 'token_sampling' stream: with the same rngs,
        `model.apply({}, img, rngs=rngs, method=ViT.token_sampling_noise)` returns the noise that
        `model.apply(variables, img, rngs=rngs)` uses. One draw for all layers (one random-bits program to compile).
        """
        (patch_height, patch_width), (batch, height, width) = pair(self.patch_size), img.shape[:3]
        shapes, slots = [], (height // patch_height) * (width // patch_width) + 1
        for output_num_tokens in self.max_tokens_per_depth:
            if slots - 1 > output_num_tokens:
                shapes.append((batch, output_num_tokens, slots - 1))
                slots = output_num_tokens + 1
            else:
                shapes.append(None)
        if not any(shapes):  # no layer samples: no draw, and no rng needed, as in torch
            return (None,) * len(shapes)
        sizes = [math.prod(shape) if shape else 0 for shape in shapes]
        flat = sample_gumbel(self.make_rng(TOKEN_SAMPLING), (sum(sizes),))
        starts = np.cumsum([0] + sizes)
        return tuple(
            flat[start : start + size].reshape(shape) if shape else None
            for start, size, shape in zip(starts, sizes, shapes)
        )

    @nn.compact
    def __call__(self, img, return_sampled_token_ids: bool = False, train: bool = False):
        check_floating_input(self, 'img', img)
        (image_height, image_width), (patch_height, patch_width) = pair(self.image_size), pair(self.patch_size)
        num_patches = (image_height // patch_height) * (image_width // patch_width)

        x = embed_patches(img, self.patch_size, self.channels, self.dim)
        b = x.shape[0]

        noise = self.token_sampling_noise(img)

        pos_embedding = self.param('pos_embedding', randn, (1, num_patches + 1, self.dim))
        cls_token = self.param('cls_token', randn, (1, 1, self.dim))

        cls_tokens = repeat(cls_token, '1 n d -> b n d', b=b)
        x = jnp.concatenate((cls_tokens.astype(x.dtype), x), axis=1)
        x = add_position_embedding(x, pos_embedding, img.shape[1:3], self.image_size)
        x = nn.Dropout(self.emb_dropout, deterministic=not train)(x)

        x, token_ids = Transformer(self.dim, self.depth, self.max_tokens_per_depth, self.heads, self.dim_head,
                                   self.mlp_dim, self.dropout, name='transformer')(x, noise=noise, train=train)

        x = LayerNorm(name='mlp_head_0')(x[:, 0])
        logits = Linear(self.num_classes, name='mlp_head_1')(x)

        if return_sampled_token_ids:
            # drop the cls token; -1 marks padding
            return logits, token_ids[:, 1:] - 1

        return logits
