"""MaxViT with register tokens in every window, mirroring vit_pytorch/max_vit_with_registers.py.

MaxViT ("MaxViT: Multi-Axis Vision Transformer", Tu et al., 2022; see vit_flax/max_vit.py) with the register tokens
of "Vision Transformers Need Registers" (Darcet et al., 2023): each block owns `num_register_tokens` learned tokens,
which are put before the tokens of every local window for block attention and its feed-forward; their outputs,
averaged over all windows of an image, are put before the tokens of every grid window for grid attention, and then
dropped (the grid feed-forward sees the image tokens only). The registers attend and are attended with a relative
position bias of their own: one extra row of the bias table, used for every pair that involves a register. The
stem, the MBConvs, the stage widths and the head are max_vit's, imported from there; the model subclasses
max_vit.MaxViT for its keywords and configuration checks. Feature maps are channels-last ((B, H, W, C)).

Parameter tree = vit-pytorch's module tree: a block `b` (counted over all stages) is `layers.b`, a ModuleList of its
MBConv `layers.b.0` (as in max_vit: the Sequential's layers at `layers_b_0_{k}`, or `layers_b_0/fn_{k}` when it is
residual), block attention and feed-forward `layers.b.1.{0,1}` and grid attention and feed-forward
`layers.b.2.{0,1}` (attention at `params/layers_b_1_0/{norm,to_qkv,rel_pos_bias,to_out_0}`, the feed-forward's
Sequential at `params/layers_b_1_1/{0,1,4}`); the block's registers are the nn.ParameterList entry
`register_tokens.b`, here `params/register_tokens_b/parameter_list_entry` (layers.ParameterListEntry).

Quirks of vit-pytorch kept so weights transfer (besides max_vit's: tuple `depth`, stage widths, the residual MBConv
only where it keeps width and size, no Dropsample inside the model, no attention biases, `num_classes=0` heads):
- The block feed-forward runs on the registers too (they stay packed with the window until after it), the grid one
  does not; the registers' grid-attention outputs are discarded, so every block starts from its own parameters.
- The relative position table has `(2 * window_size - 1) ** 2 + 1` rows; torch pads its index buffer (a
  non-persistent buffer, recomputed here) with the last row for every query or key that is a register.
- `Attention`'s own `num_registers` defaults to 1; the model passes `num_register_tokens` (default 4).
- The register tokens are drawn N(0, 1) (`torch.randn`), the relative position table too (nn.Embedding's default).

Where torch fails late or not at all, this port refuses at construction with a ValueError naming the value:
`num_register_tokens` must be positive (torch asserts it), and max_vit's checks (non-tuple `depth`, `dim` not
divisible by `dim_head`, widths that an empty stage would break, non-positive sizes ...). An image whose feature map
at some stage the window does not divide is refused at the first call, naming the sizes.

rng streams: 'dropout' (attention weights, attention output and feed-forward dropout, in training only). BatchNorm
statistics live in 'batch_stats' (torch's BatchNorm2d: batch statistics in training, running ones in eval).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from einops import rearrange

from vit_flax import max_vit
from vit_flax.layers import Embedding, LayerNorm, Linear, ParameterListEntry, gelu, randn, softmax
from vit_flax.max_vit import relative_position_indices

# helper classes


class FeedForward(nn.Module):
    """torch's `FeedForward(dim, mult, dropout)`, a function returning `Sequential(LayerNorm, Linear, GELU, Dropout,
    Linear, Dropout)`: the layers named by their indices `0`, `1`, `4`."""

    dim: int
    mult: float = 4
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        inner_dim = int(self.dim * self.mult)
        x = LayerNorm(name='0')(x)
        x = gelu(Linear(inner_dim, name='1')(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = Linear(self.dim, name='4')(x)
        return nn.Dropout(self.dropout, deterministic=not train)(x)


# attention related classes


def register_position_indices(window_size: int, num_registers: int) -> np.ndarray:
    """torch's `rel_pos_indices` buffer: max_vit's (w*w, w*w) indices into the (2w - 1)^2 relative position table,
    padded before both axes with `num_registers` rows and columns of index (2w - 1)^2, the registers' bias row."""
    num_rel_pos_bias = (2 * window_size - 1) ** 2
    indices = relative_position_indices(window_size)
    return np.pad(indices, ((num_registers, 0), (num_registers, 0)), constant_values=num_rel_pos_bias)


class Attention(nn.Module):
    """Attention over one window's tokens (b, num_registers + window_size^2, dim), registers first, with
    `dim // dim_head` heads and a relative position bias (one shared bias per head for pairs with a register)."""

    dim: int
    dim_head: int = 32
    dropout: float = 0.0
    window_size: int = 7
    num_registers: int = 1

    def __post_init__(self):
        if self.num_registers <= 0:
            raise ValueError(f'num_registers={self.num_registers} must be positive')
        if self.dim_head <= 0 or self.dim % self.dim_head:
            raise ValueError(
                f'dimension should be divisible by dimension per head: dim={self.dim}, dim_head={self.dim_head}'
            )
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = self.dim // self.dim_head
        scale = self.dim_head**-0.5

        x = LayerNorm(name='norm')(x)

        q, k, v = jnp.split(Linear(self.dim * 3, use_bias=False, name='to_qkv')(x), 3, axis=-1)
        q, k, v = (rearrange(t, 'b n (h d) -> b h n d', h=h) for t in (q, k, v))

        q = q * scale
        sim = jnp.einsum('bhid,bhjd->bhij', q, k)

        num_rel_pos_bias = (2 * self.window_size - 1) ** 2
        indices = jnp.asarray(register_position_indices(self.window_size, self.num_registers))
        bias = Embedding(num_rel_pos_bias + 1, h, name='rel_pos_bias')(indices)
        sim = sim + rearrange(bias, 'i j h -> h i j').astype(sim.dtype)

        attn = softmax(sim, axis=-1)
        attn = nn.Dropout(self.dropout, deterministic=not train)(attn)

        out = jnp.einsum('bhij,bhjd->bhid', attn, v)
        out = rearrange(out, 'b h n d -> b n (h d)')
        out = Linear(self.dim, use_bias=False, name='to_out_0')(out)
        return nn.Dropout(self.dropout, deterministic=not train)(out)


class MaxViT(max_vit.MaxViT):
    """max_vit.MaxViT's keywords and checks, plus `num_register_tokens` register tokens per block."""

    num_register_tokens: int = 4

    def __post_init__(self):
        super().__post_init__()
        if self.num_register_tokens <= 0:
            raise ValueError(f'MaxViT: num_register_tokens={self.num_register_tokens!r} must be a positive integer '
                             '(vit-pytorch asserts num_register_tokens > 0)')

    def attend_windows(self, x, block: int, layer_dim: int, train: bool):
        """max_vit's block and grid attention, with the block's register tokens before every window's tokens."""
        b, w, name = x.shape[0], self.window_size, f'layers_{block}'
        height, width = x.shape[1:3]
        num_windows = (height // w) * (width // w)

        def attention(index):
            return Attention(dim=layer_dim, dim_head=self.dim_head, dropout=self.dropout, window_size=w,
                             num_registers=self.num_register_tokens, name=f'{name}_{index}_0')

        def feedforward(index):
            return FeedForward(dim=layer_dim, dropout=self.dropout, name=f'{name}_{index}_1')

        register_tokens = ParameterListEntry(
            (self.num_register_tokens, layer_dim), randn, name=f'register_tokens_{block}'
        )().astype(x.dtype)

        # block-like attention: the registers before every local window's tokens
        x = rearrange(x, 'b (x w1) (y w2) d -> (b x y) (w1 w2) d', w1=w, w2=w)
        r = jnp.broadcast_to(register_tokens, (x.shape[0], *register_tokens.shape))
        x = jnp.concatenate((r, x), axis=1)

        x = attention(1)(x, train) + x
        x = feedforward(1)(x, train) + x

        r, x = x[:, :self.num_register_tokens], x[:, self.num_register_tokens:]
        x = rearrange(x, '(b x y) (w1 w2) d -> b (x w1) (y w2) d', b=b, x=height // w, w1=w)

        # grid-like attention: the registers' mean over the windows before every grid window's tokens
        x = rearrange(x, 'b (w1 x) (w2 y) d -> (b x y) (w1 w2) d', w1=w, w2=w)
        r = rearrange(r, '(b windows) n d -> b windows n d', b=b).mean(axis=1)
        r = jnp.repeat(r, num_windows, axis=0)
        x = jnp.concatenate((r, x), axis=1)

        x = attention(2)(x, train) + x
        x = x[:, self.num_register_tokens:]
        x = feedforward(2)(x, train) + x

        x = rearrange(x, '(b x y) (w1 w2) d -> b (w1 x) (w2 y) d', b=b, x=height // w, w1=w)
        return x
