"""ViT for 1-D series (Dosovitskiy et al., 2020, on patches of a sequence), mirroring vit_pytorch/vit_1d.py.

Input is channels-last, (batch, seq_len, channels); vit-pytorch takes (batch, channels, seq_len). Tokens are the
`seq_len // patch_size` patches in order, each flattened as `(p c)` (vit-pytorch's `b c (n p) -> b n (p c)`).

Parameter tree = vit-pytorch's module tree: `transformer.layers.0.1.net.1.weight` lives at
`params/transformer/layers_0_1/net_1/kernel`. Attention, FeedForward and the layer stack are vit.py's (vit-pytorch's
copies are identical); the Transformer has no final LayerNorm (vit_3d.Transformer).

Quirks of vit-pytorch kept so weights transfer:
- `cls_token` is a vector, (dim,), and `pos_embedding` has the older (1, num_patches + 1, dim) layout.
- There is no `pool` keyword: the head always reads the class token.
- A shorter series (a multiple of `patch_size`) takes the first `n + 1` rows of the position embedding; a longer
  one is refused.
- The transformer has no final LayerNorm; `mlp_head` starts with one.
- With `heads == 1 and dim_head == dim` the attention output projection (and its dropout) is dropped.
- `num_classes=0` keeps a head with no outputs, returning (batch, 0).

Randomness: dropout only ('dropout' stream, with `train=True`).

JAX-only options: `scan_layers`, `remat_policy` and `attention_impl`, vit.py's, passed to its layers.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from einops import rearrange, repeat

from vit_flax.layers import (
    LayerNorm, Linear, add_position_embedding, check_attention_impl, check_floating_input, check_keywords, randn,
)
from vit_flax.scan import check_remat_policy
from vit_flax.vit_3d import Transformer


def check_series_config(seq_len: int, patch_size: int):
    """vit-pytorch's construction-time check, with the values in the message (their signs are check_keywords')."""
    if seq_len % patch_size:
        raise ValueError(f'seq_len must be divisible by the patch size: seq_len={seq_len}, patch_size={patch_size}')


def patchify_1d(series, patch_size: int, channels: int):
    """(b, L, c) -> (b, n, (p c)): the token order and patch layout of vit-pytorch's `b c (n p) -> b n (p c)`."""
    if series.ndim != 3:
        raise ValueError(f'expected series of shape (batch, seq_len, channels), got shape {series.shape}')
    _, length, c = series.shape
    if c != channels:
        raise ValueError(f'expected {channels} channels (channels-last input), got shape {series.shape}')
    if length % patch_size:
        raise ValueError(f'series of length {length} is not divisible by patch size {patch_size}')
    return rearrange(series, 'b (n p) c -> b n (p c)', p=patch_size)


class ViT(nn.Module):
    seq_len: int
    patch_size: int
    num_classes: int
    dim: int
    depth: int
    heads: int
    mlp_dim: int
    channels: int = 3
    dim_head: int = 64
    dropout: float = 0.0
    emb_dropout: float = 0.0
    # JAX-only: vit.py's layer scan, remat and attention switch, passed to its layers
    scan_layers: bool = False
    remat_policy: str | None = None
    attention_impl: str = 'explicit'

    def __post_init__(self):
        check_keywords(self)
        check_series_config(self.seq_len, self.patch_size)
        check_remat_policy(self.remat_policy)
        check_attention_impl(self.attention_impl)
        super().__post_init__()

    @nn.compact
    def __call__(self, series, train: bool = False):
        check_floating_input(self, 'series', series, what='series')
        x = patchify_1d(series, self.patch_size, self.channels)
        x = LayerNorm(name='to_patch_embedding_1')(x)
        x = Linear(self.dim, name='to_patch_embedding_2')(x)
        x = LayerNorm(name='to_patch_embedding_3')(x)

        num_patches = self.seq_len // self.patch_size
        pos_embedding = self.param('pos_embedding', randn, (1, num_patches + 1, self.dim))
        cls_token = self.param('cls_token', randn, (self.dim,))

        cls_tokens = repeat(cls_token, 'd -> b 1 d', b=x.shape[0])
        x = jnp.concatenate((cls_tokens.astype(x.dtype), x), axis=1)
        if series.shape[1] > self.seq_len:  # torch's broadcast fails
            raise ValueError(f'series of length {series.shape[1]} gives more patches than the position embedding '
                             f'of seq_len={self.seq_len} holds ({num_patches}, and the class token)')
        x = add_position_embedding(x, pos_embedding, series.shape[1:2], self.seq_len)
        x = nn.Dropout(self.emb_dropout, deterministic=not train)(x)

        transformer = Transformer(
            self.dim, self.depth, self.heads, self.dim_head, self.mlp_dim, self.dropout, scan_layers=self.scan_layers,
            remat_policy=self.remat_policy, attention_impl=self.attention_impl, name='transformer',
        )
        x = transformer(x, train)

        x = LayerNorm(name='mlp_head_0')(x[:, 0])
        return Linear(self.num_classes, name='mlp_head_1')(x)
