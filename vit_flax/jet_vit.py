"""JetViT (a ViT whose layers pick their attention among full, windowed and linear attention), mirroring
vit_pytorch/jet_vit.py.

Every layer holds three attention options, `options.WA` (window attention with a learned relative position bias),
`options.LA` (ReLU linear attention plus a squeeze dynamic convolution of the values: a depthwise 3 x 3 convolution
over the patch grid whose per-sample kernels an MLP predicts from the mean value) and `options.FA` (full attention,
vit.Attention). `attn_layers[i]` names the option layer i uses ('WA', 'LA', 'FA'; all 'FA' by default) or a tuple of
options, one of which is drawn at random in every call (training or not), as vit-pytorch's `random.choice`.
`num_classes=0` returns the transformer's normalised tokens (batch, n, dim); otherwise the mean token's logits.

Random draws: the layer choice from the 'layer_selection' rng stream, one integer per layer with a tuple, drawn
together as the model's first draw from that stream (`JetViT.layer_choices` replays them: the parity spec feeds
them to vit-pytorch's `random.choice`); dropout from the 'dropout' stream (`train=True`). Under jit every option of a
tuple is computed and the drawn one selected (no Python control flow on traced values).

Parameter tree = vit-pytorch's module tree: `transformer.layers.0.0.options.WA.to_qkv.weight` at
`params/transformer/layers_0_0/options/WA/to_qkv/kernel`, the relative position bias table `rel_pos_bias.weight` at
`.../rel_pos_bias/embedding`; vit-pytorch's `rel_pos_indices` is a non-persistent buffer, here a constant. Every
option's parameters exist whichever a layer uses, as in vit-pytorch.

Quirks of vit-pytorch kept: the patch embedding is LayerNorm, Linear, LayerNorm (`to_patch_embedding.1..3`); the
position embedding is (num_patches, dim) with no class token; window attention has `dim // dim_head` heads and
ignores `heads`; linear attention clamps its normaliser at 1e-6; with `heads == 1 and dim_head == dim` the full and
linear attentions drop their output projection.
Refused at construction, where vit-pytorch asserts or fails in its forward: sizes not divisible by the patch, `dim`
not divisible by `dim_head` (vit-pytorch builds the window attention of every layer), an unknown option name,
`attn_layers` not one entry per layer, and a window option on a patch grid not divisible by `window_size`.

No JAX-only options: the layers differ from one another, so there is no uniform stack to scan.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange

from vit_flax.layers import (
    Embedding, LayerNorm, Linear, check_floating_input, check_keywords, pair, randn, softmax,
)
from vit_flax.vit import Attention, FeedForward, patchify

LAYER_SELECTION = 'layer_selection'
OPTIONS = ('WA', 'LA', 'FA')


def linear_attn(q, k, v):
    """vit-pytorch's ReLU linear attention on (b, h, n, d) queries, keys and values."""
    q, k = jax.nn.relu(q), jax.nn.relu(k)
    context = jnp.einsum('bhnd,bhne->bhde', k, v)
    normalizer = jnp.einsum('bhnd,bhd->bhn', q, k.sum(axis=2))
    attn = jnp.einsum('bhnd,bhde->bhne', q, context)
    return attn / jnp.maximum(normalizer[..., None], 1e-6)


def relative_position_indices(window_size: int) -> np.ndarray:
    """vit-pytorch's `rel_pos_indices`, (w * w, w * w): the index of each pair's offset in the bias table."""
    pos = np.arange(window_size)
    grid = rearrange(np.stack(np.meshgrid(pos, pos, indexing='ij')), 'c i j -> (i j) c')
    rel_pos = grid[:, None] - grid[None, :] + window_size - 1
    return (rel_pos * np.array([2 * window_size - 1, 1])).sum(axis=-1)


class SqueezeDynamicConv(nn.Module):
    dim: int
    h_s: int
    w_s: int
    kernel_size: int = 3

    @nn.compact
    def __call__(self, v):
        heads, k = v.shape[1], self.kernel_size
        v_mean = rearrange(v.mean(axis=2), 'b h d -> b (h d)')
        weight = Linear(self.dim // 4, name='mlp_0')(v_mean)
        weight = Linear(self.dim * k * k, name='mlp_2')(jax.nn.silu(weight))
        weight = rearrange(weight, 'b (c k1 k2) -> b k1 k2 c', c=self.dim, k1=k, k2=k)

        # torch's grouped conv2d with one kernel per (sample, channel): a depthwise cross-correlation, padded k // 2
        x = rearrange(v, 'b h (h_s w_s) d -> b h_s w_s (h d)', h_s=self.h_s, w_s=self.w_s)
        pad = k // 2
        x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        height, width = self.h_s + 2 * pad - k + 1, self.w_s + 2 * pad - k + 1
        out = sum(x[:, i:i + height, j:j + width] * weight[:, i, j][:, None, None] for i in range(k) for j in range(k))
        return rearrange(out, 'b h_s w_s (h d) -> b h (h_s w_s) d', h=heads)


class WindowAttention(nn.Module):
    dim: int
    h_s: int
    w_s: int
    dim_head: int = 64
    dropout: float = 0.0
    window_size: int = 7

    @nn.compact
    def __call__(self, x, train: bool = False):
        heads, w = self.dim // self.dim_head, self.window_size
        tiles = not (self.h_s % w or self.w_s % w)
        tokens = x
        x = LayerNorm(name='norm')(x)
        if not tiles:
            # only an unused option's initialisation (JetViT refuses window attention on such a grid): vit-pytorch
            # builds it all the same, so the parameters are made on one window of zeros and the output is unused
            self.windows(jnp.zeros((1, w * w, self.dim), x.dtype), heads, train)
            return jnp.zeros_like(tokens)
        x = rearrange(x, 'b (x w1 y w2) d -> (b x y) (w1 w2) d', x=self.h_s // w, w1=w, y=self.w_s // w, w2=w)
        out = self.windows(x, heads, train)
        return rearrange(out, '(b x y) (w1 w2) d -> b (x w1 y w2) d', x=self.h_s // w, y=self.w_s // w, w1=w, w2=w)

    def windows(self, x, heads: int, train: bool):
        """Attention within each window, x (windows, w * w, dim)."""
        w = self.window_size
        q, k, v = jnp.split(Linear(self.dim * 3, use_bias=False, name='to_qkv')(x), 3, axis=-1)
        q, k, v = (rearrange(t, 'b n (h d) -> b h n d', h=heads) for t in (q, k, v))

        sim = jnp.einsum('bhid,bhjd->bhij', q * self.dim_head**-0.5, k)
        bias = Embedding((2 * w - 1) ** 2, heads, name='rel_pos_bias')(relative_position_indices(w))
        attn = softmax(sim + rearrange(bias, 'i j h -> h i j'), axis=-1)
        attn = nn.Dropout(self.dropout, deterministic=not train)(attn)
        out = rearrange(jnp.einsum('bhij,bhjd->bhid', attn, v), 'b h n d -> b n (h d)')
        return nn.Dropout(self.dropout, deterministic=not train)(Linear(self.dim, use_bias=False, name='to_out_0')(out))


class JetViTLinearAttention(nn.Module):
    dim: int
    h_s: int
    w_s: int
    heads: int = 8
    dim_head: int = 64
    dropout: float = 0.0
    kernel_size: int = 3

    @nn.compact
    def __call__(self, x, train: bool = False):
        inner_dim = self.dim_head * self.heads
        project_out = not (self.heads == 1 and self.dim_head == self.dim)
        x = LayerNorm(name='norm')(x)
        qkv = jnp.split(Linear(inner_dim * 3, use_bias=False, name='to_qkv')(x), 3, axis=-1)
        q, k, v = (rearrange(t, 'b n (h d) -> b h n d', h=self.heads) for t in qkv)
        linear_out = rearrange(linear_attn(q, k, v), 'b h n d -> b n (h d)')
        conv_out = SqueezeDynamicConv(inner_dim, self.h_s, self.w_s, self.kernel_size, name='dynamic_conv')(v)
        out = linear_out + rearrange(conv_out, 'b h n d -> b n (h d)')
        if not project_out:
            return out
        return nn.Dropout(self.dropout, deterministic=not train)(Linear(self.dim, name='to_out_0')(out))


class Options(nn.Module):
    """vit-pytorch's `options` ModuleDict of one layer: the three attentions, `names` computed, the one at `index`
    (a traced integer) returned."""

    dim: int
    heads: int
    dim_head: int
    h_s: int
    w_s: int
    dropout: float = 0.0
    window_size: int = 7

    def setup(self):
        self.WA = WindowAttention(self.dim, self.h_s, self.w_s, dim_head=self.dim_head, dropout=self.dropout,
                                  window_size=self.window_size)
        self.LA = JetViTLinearAttention(self.dim, self.h_s, self.w_s, heads=self.heads, dim_head=self.dim_head,
                                        dropout=self.dropout)
        self.FA = Attention(self.dim, heads=self.heads, dim_head=self.dim_head, dropout=self.dropout)

    def __call__(self, x, names: tuple[str, ...], index=0, train: bool = False):
        outs = [getattr(self, name)(x, train) for name in names]
        if len(outs) == 1:
            return outs[0]
        return jnp.select([index == i for i in range(len(outs) - 1)], outs[:-1], outs[-1])


class RandomLayerSelector(nn.Module):
    dim: int
    heads: int
    dim_head: int
    h_s: int
    w_s: int
    attn_layer: str | tuple[str, ...]
    dropout: float = 0.0
    window_size: int = 7

    @nn.compact
    def __call__(self, x, index=0, train: bool = False):
        options = Options(self.dim, self.heads, self.dim_head, self.h_s, self.w_s, self.dropout, self.window_size,
                          name='options')
        unused = tuple(name for name in OPTIONS if name not in layer_names(self.attn_layer))
        if self.is_initializing() and unused:  # every option's parameters exist, as in vit-pytorch
            options(x, unused, train=train)
        return options(x, layer_names(self.attn_layer), index, train)


def layer_names(attn_layer) -> tuple[str, ...]:
    return (attn_layer,) if isinstance(attn_layer, str) else tuple(attn_layer)


class Transformer(nn.Module):
    dim: int
    heads: int
    dim_head: int
    mlp_dim: int
    h_s: int
    w_s: int
    attn_layers: tuple[tuple[str, ...], ...]
    dropout: float = 0.0
    window_size: int = 7

    @nn.compact
    def __call__(self, x, choices, train: bool = False):
        for i, names in enumerate(self.attn_layers):
            attn = RandomLayerSelector(self.dim, self.heads, self.dim_head, self.h_s, self.w_s, names, self.dropout,
                                       self.window_size, name=f'layers_{i}_0')
            x = attn(x, choices[i], train) + x
            x = FeedForward(self.dim, self.mlp_dim, self.dropout, name=f'layers_{i}_1')(x, train) + x
        return LayerNorm(name='norm')(x)


class JetViT(nn.Module):
    image_size: int | tuple[int, int]
    patch_size: int | tuple[int, int]
    num_classes: int
    dim: int
    depth: int
    heads: int
    mlp_dim: int
    channels: int = 3
    dim_head: int = 64
    dropout: float = 0.0
    emb_dropout: float = 0.0
    window_size: int = 7
    attn_layers: tuple | None = None

    def __post_init__(self):
        check_keywords(self)
        (image_height, image_width), (patch_height, patch_width) = pair(self.image_size), pair(self.patch_size)
        if image_height % patch_height or image_width % patch_width:
            raise ValueError(f'Image dimensions must be divisible by the patch size: image_size={self.image_size}, '
                             f'patch_size={self.patch_size}')
        if self.dim % self.dim_head:
            raise ValueError(f'dimension should be divisible by dimension per head: dim={self.dim}, '
                             f'dim_head={self.dim_head}')
        layers = self.layer_options
        if len(layers) != self.depth:
            raise ValueError(f'attn_layers must give one entry per layer ({self.depth}), got {self.attn_layers!r}')
        for names in layers:
            if not names or any(name not in OPTIONS for name in names):
                raise ValueError(f"each attn_layers entry is one of {', '.join(OPTIONS)} or a tuple of them, got "
                                 f'attn_layers={self.attn_layers!r}')
            h_s, w_s = self.grid
            if 'WA' in names and (h_s % self.window_size or w_s % self.window_size):
                raise ValueError(f'window attention needs a patch grid divisible by window_size={self.window_size}, '
                                 f'got a {h_s} x {w_s} grid')
        super().__post_init__()

    @property
    def grid(self) -> tuple[int, int]:
        (image_height, image_width), (patch_height, patch_width) = pair(self.image_size), pair(self.patch_size)
        return image_height // patch_height, image_width // patch_width

    @property
    def layer_options(self) -> tuple[tuple[str, ...], ...]:
        attn_layers = ('FA',) * self.depth if self.attn_layers is None else tuple(self.attn_layers)
        return tuple(layer_names(layer) for layer in attn_layers)

    def layer_choices(self):
        """The index into its options tuple of each layer (0 for a single option), (depth,) int32: the model's first
        draw from the 'layer_selection' stream, which a call makes the same way (apply with the same rngs and
        `method=JetViT.layer_choices`)."""
        counts = np.array([len(names) for names in self.layer_options])
        if (counts == 1).all() or self.is_initializing():  # init builds every option
            return jnp.zeros((self.depth,), jnp.int32)
        uniform = jax.random.uniform(self.make_rng(LAYER_SELECTION), (self.depth,))
        return jnp.minimum(jnp.floor(uniform * counts).astype(jnp.int32), counts - 1)

    @nn.compact
    def __call__(self, img, train: bool = False):
        check_floating_input(self, 'img', img)
        choices = self.layer_choices()
        x = patchify(img, self.patch_size, self.channels)
        if tuple(img.shape[1:3]) != pair(self.image_size):
            raise ValueError(f'expected images of size {pair(self.image_size)}, got shape {img.shape}')
        x = LayerNorm(name='to_patch_embedding_1')(x)
        x = Linear(self.dim, name='to_patch_embedding_2')(x)
        x = LayerNorm(name='to_patch_embedding_3')(x)
        h_s, w_s = self.grid
        x = x + self.param('pos_embedding', randn, (h_s * w_s, self.dim)).astype(x.dtype)
        x = nn.Dropout(self.emb_dropout, deterministic=not train)(x)

        x = Transformer(self.dim, self.heads, self.dim_head, self.mlp_dim, h_s, w_s, self.layer_options, self.dropout,
                        self.window_size, name='transformer')(x, choices, train)

        if self.num_classes == 0:
            return x
        return Linear(self.num_classes, name='mlp_head')(x.mean(axis=1))
