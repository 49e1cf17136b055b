"""ViT with learnable memory tokens ("Fine-tuning Image Transformers using Learnable Memory", Sandler et al., 2022),
mirroring vit_pytorch/learnable_memory_vit.py.

`ViT` is a plain ViT whose transformer can take extra key / value tokens ("memories") and an attention mask.
`Adapter` fine-tunes a frozen `ViT` for a new task: per layer, `num_memories_per_layer` learnable memory tokens
are appended to the keys and values, a learnable memory cls token is prepended to the image tokens, and a new
head reads that token. The attention mask lets only the memory cls token see the memories and itself, so the
image tokens (and the backbone's own output) are unchanged by any number of adapters on the same backbone.

Parameter tree = vit-pytorch's module tree: `transformer.layers.0.0.to_kv.weight` lives at
`params/transformer/layers_0_0/to_kv/kernel`; an Adapter's backbone lives under `params/vit` like torch's `vit.*`.

The Adapter in Flax:

    vit = ViT(image_size=256, patch_size=16, num_classes=1000, dim=1024, depth=6, heads=16, mlp_dim=2048)
    vit_params = ...                                   # the trained backbone's params
    adapter = Adapter(vit=vit, num_memories_per_layer=5, num_classes=2)
    variables = adapter.init(key, images)              # {'params': {'vit': ..., own ...}, 'buffers': {...}}
    variables['params']['vit'] = vit_params            # every adapter shares the same backbone params
    logits = adapter.apply(variables, images)

- The backbone is the child `vit` (cloned from the module passed in, as Flax does with module attributes), so
  an Adapter's variables are the backbone's plus its own, exactly torch's Adapter state dict: `vit.*`, then
  `memory_cls_token`, `memories_per_layer`, `mlp_head.*` and the persistent buffer `attn_mask`.
- `attn_mask` is a variable in the 'buffers' collection (torch's `register_buffer`, persistent, bool), saved and
  loaded with the weights; `Adapter.apply` needs the 'buffers' collection next to 'params'. Like torch, the
  forward uses the stored mask (cast to bool, as torch's bool buffer casts what it loads), so a state dict
  carrying another mask computes in Flax what it computes in torch.
- Freezing: torch sets `requires_grad=False` on the backbone. Here the Adapter reads the backbone's
  parameters through `jax.lax.stop_gradient` (`nn.map_variables`), so the gradient with respect to
  `params/vit` is exactly zero (torch: `.grad is None`). An optimizer still *updates* what it is given: plain
  SGD / Adam turn zero gradients into zero updates, but weight decay (AdamW) would shrink the backbone. Train
  only the adapter's own parameters (differentiate and optimise the tree without 'vit', or mask 'vit' with
  `optax.multi_transform(..., 'vit': optax.set_to_zero())`), as tests/test_learnable_memory_vit.py shows.
- At init the Adapter also runs the backbone's own forward once, so that the backbone's head (`vit.mlp_head.*`,
  unused by the Adapter but part of torch's state dict) exists in the variables.
- `image_size` and `channels` of an Adapter are its backbone's (read-only properties, not keywords).

Quirks of vit-pytorch kept so weights transfer:
- `pool` is checked ('cls' or 'mean') and then ignored: `ViT` always reads the cls token.
- `pos_embedding` is (1, num_patches + 1, dim) and `cls_token` is (1, 1, dim), leading axes included; the position
  embedding is added whole, not sliced, so the input must give exactly `num_patches` patches (any height and
  width that do so are accepted, as in torch).
- Attention has separate `to_q` and `to_kv` projections (memories enter keys and values only) and always keeps
  its output projection `to_out.0`; the transformer has no final LayerNorm; the head is LayerNorm + Linear
  (`mlp_head.0`, `mlp_head.1`).
- Masked attention logits are set to the most negative float, as torch's `masked_fill(~mask, -finfo.max)`.
- `ViT.__call__` never uses memories or a mask; the backbone's dropout still acts inside an Adapter in training
  (torch freezes the backbone's weights, not its train mode).
- `num_classes=0` keeps a head with no outputs and returns (batch, 0), as torch does.
"""

from __future__ import annotations


import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange, repeat

from vit_flax.layers import (
    LayerNorm, Linear, attention_weights, check_floating_input, check_keywords, exists, pair, randn,
    record_attention_map,
)
from vit_flax.vit import FeedForward, check_image_config, patchify


class Attention(nn.Module):
    dim: int
    heads: int = 8
    dim_head: int = 64
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, attn_mask=None, memories=None, train: bool = False):
        inner_dim = self.dim_head * self.heads

        x = LayerNorm(name='norm')(x)

        x_kv = x  # input for key / values projection

        if exists(memories):
            # add memories to key / values if it is passed in
            memories = repeat(memories, 'n d -> b n d', b=x.shape[0]) if memories.ndim == 2 else memories
            x_kv = jnp.concatenate((x_kv, memories.astype(x.dtype)), axis=1)

        q = Linear(inner_dim, use_bias=False, name='to_q')(x)
        k, v = jnp.split(Linear(inner_dim * 2, use_bias=False, name='to_kv')(x_kv), 2, axis=-1)
        q, k, v = (rearrange(t, 'b n (h d) -> b h n d', h=self.heads) for t in (q, k, v))

        attn = attention_weights(q, k, scale=self.dim_head**-0.5, mask=attn_mask)
        record_attention_map(self, attn)
        attn = nn.Dropout(self.dropout, deterministic=not train)(attn)

        out = jnp.einsum('bhij,bhjd->bhid', attn, v)
        out = rearrange(out, 'b h n d -> b n (h d)')
        out = Linear(self.dim, name='to_out_0')(out)
        return nn.Dropout(self.dropout, deterministic=not train)(out)


class Transformer(nn.Module):
    dim: int
    depth: int
    heads: int
    dim_head: int
    mlp_dim: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, attn_mask=None, memories=None, train: bool = False):
        for i in range(self.depth):
            layer_memories = memories[i] if exists(memories) else None
            attn = Attention(self.dim, self.heads, self.dim_head, self.dropout, name=f'layers_{i}_0')
            x = attn(x, attn_mask=attn_mask, memories=layer_memories, train=train) + x
            x = FeedForward(self.dim, self.mlp_dim, self.dropout, name=f'layers_{i}_1')(x, train) + x
        return x


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

    def setup(self):
        self.to_patch_embedding_1 = LayerNorm()
        self.to_patch_embedding_2 = Linear(self.dim)
        self.to_patch_embedding_3 = LayerNorm()

        self.pos_embedding = self.param('pos_embedding', randn, (1, self.num_patches + 1, self.dim))
        self.cls_token = self.param('cls_token', randn, (1, 1, self.dim))
        self.embedding_dropout = nn.Dropout(self.emb_dropout)  # torch's `dropout`; the name is the keyword's here

        self.transformer = Transformer(self.dim, self.depth, self.heads, self.dim_head, self.mlp_dim, self.dropout)

        self.mlp_head_0 = LayerNorm()
        self.mlp_head_1 = Linear(self.num_classes)

    def img_to_tokens(self, img, train: bool = False):
        x = patchify(img, self.patch_size, self.channels)
        x = self.to_patch_embedding_3(self.to_patch_embedding_2(self.to_patch_embedding_1(x)))

        cls_tokens = repeat(self.cls_token, '1 n d -> b n d', b=x.shape[0])
        x = jnp.concatenate((cls_tokens.astype(x.dtype), x), axis=1)

        if x.shape[1] != self.pos_embedding.shape[1]:
            raise ValueError(
                f'input of size {tuple(img.shape[1:3])} gives {x.shape[1] - 1} patches, but image_size='
                f'{self.image_size} with patch_size={self.patch_size} has {self.num_patches}: this ViT adds its '
                f'whole position embedding, so the patch count must match'
            )
        x = x + self.pos_embedding.astype(x.dtype)
        return self.embedding_dropout(x, deterministic=not train)

    def __call__(self, img, train: bool = False):
        check_floating_input(self, 'img', img)
        x = self.img_to_tokens(img, train)

        x = self.transformer(x, train=train)

        cls_tokens = x[:, 0]
        return self.mlp_head_1(self.mlp_head_0(cls_tokens))


def memory_attention_mask(num_tokens: int, num_memories: int) -> np.ndarray:
    """torch's `attn_mask` buffer, (num_tokens + 1, num_tokens + 1 + num_memories), True where allowed.

    `num_tokens` is the backbone's cls token plus patches. Queries and keys are ordered (memory cls, cls,
    patches) and the keys end with the memories: the memory cls token attends to everything, the others only
    to the backbone's own tokens.
    """
    mask = np.ones((num_tokens, num_tokens), dtype=bool)
    mask = np.pad(mask, ((0, 0), (1, num_memories)), constant_values=False)  # main tokens cannot attend to memories
    mask = np.pad(mask, ((1, 0), (0, 0)), constant_values=True)  # memory CLS token can attend to everything
    return mask


def _stop_gradient(variables):
    return jax.tree_util.tree_map(jax.lax.stop_gradient, variables)


class Adapter(nn.Module):
    vit: ViT
    num_memories_per_layer: int = 10
    num_classes: int = 2

    def __post_init__(self):
        check_keywords(self)
        if not isinstance(self.vit, ViT):
            raise ValueError(
                f'vit must be a vit_flax.learnable_memory_vit.ViT, got vit={type(self.vit).__module__}.'
                f'{type(self.vit).__name__}'
            )
        super().__post_init__()

    @property
    def image_size(self):
        return self.vit.image_size

    @property
    def channels(self) -> int:
        return self.vit.channels

    @nn.compact
    def __call__(self, img, train: bool = False):
        check_floating_input(self, 'img', img)
        dim, layers, num_tokens = self.vit.dim, self.vit.depth, self.vit.num_patches + 1

        # learnable parameters

        memory_cls_token = self.param('memory_cls_token', randn, (dim,))
        memories_per_layer = self.param('memories_per_layer', randn, (layers, self.num_memories_per_layer, dim))

        # specialized attention mask to preserve the output of the original ViT (a persistent buffer in torch)
        attn_mask = self.variable(
            'buffers', 'attn_mask', lambda: jnp.asarray(memory_attention_mask(num_tokens, self.num_memories_per_layer))
        ).value.astype(bool)

        initializing = self.is_initializing()

        def frozen_backbone(vit, img):
            if initializing:
                vit(img)  # creates the backbone's own head, which torch's Adapter state dict holds too

            tokens = vit.img_to_tokens(img, train)

            # add task specific memory tokens
            memory_cls_tokens = repeat(memory_cls_token, 'd -> b 1 d', b=img.shape[0]).astype(tokens.dtype)
            tokens = jnp.concatenate((memory_cls_tokens, tokens), axis=1)

            # pass memories along with image tokens through transformer for attending
            return vit.transformer(tokens, memories=memories_per_layer, attn_mask=attn_mask, train=train)

        # the backbone is frozen: its parameters are read through stop_gradient (torch: requires_grad=False)
        out = nn.map_variables(frozen_backbone, 'params', trans_in_fn=_stop_gradient, init=initializing)(
            self.vit, img
        )

        # extract memory CLS tokens and pass through task specific adapter head
        memory_cls_tokens = out[:, 0]
        x = LayerNorm(name='mlp_head_0')(memory_cls_tokens)
        return Linear(self.num_classes, name='mlp_head_1')(x)
