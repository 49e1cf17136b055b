"""XCiT ("XCiT: Cross-Covariance Image Transformers", El-Nouby et al., 2021), mirroring vit_pytorch/xcit.py.

The patch tokens keep their (h, w) grid. Each layer is cross-covariance attention (attention between feature
channels, not tokens: queries and keys l2-normalised along the tokens, a learned temperature per head), local
patch interaction (two depthwise convolutions with BatchNorm and GELU between them) and a feed-forward, every
branch behind LayerScale. A class-attention transformer then lets a class token attend to itself and the patches.

Parameter tree = vit-pytorch's module tree: `xcit_transformer.layers.0.1.fn.net.2.weight` lives at
`params/xcit_transformer/layers_0_1/fn/net_2/kernel` (HWIO), the BatchNorm's running statistics at
`batch_stats/xcit_transformer/layers_0_1/fn/net_3/{mean,var}` (so `train=True` needs `mutable=['batch_stats']`;
the update follows torch's momentum and unbiased running variance). LayerScale's torch `scale` is the Flax leaf
`.../layers_0_0/layer_scale` (the leaf name `scale` means a norm's `weight` to the converter rules).

Layer dropout draws from the 'layer_dropout' rng stream, in training only, as in vit_flax/cait.py (same draw,
same rule as torch's `dropout_layers`, sown to 'intermediates' as `layer_drop_uniforms`, `layer_drop_fallback`,
`layer_keep` per transformer). A dropped layer is computed and discarded under jit; its BatchNorm running
statistics are put back, since torch never runs a dropped layer.

Quirks of vit-pytorch kept so weights transfer:
- `image_size` and `patch_size` are single ints and images have 3 channels (the patch LayerNorm is built for
  `3 * patch_size ** 2`); there is no `channels` keyword.
- LayerScale's initial value comes from the layer's index plus one, and torch's test `18 > depth <= 24` is
  never true past 18: 0.1 for layers 1-18 and 1e-6 from layer 19 on (CaiT has 1e-5 for layers 19-24).
- `local_patch_kernel_size` must be odd (torch asserts it), but only when there is a layer to build:
  with `depth=0` torch accepts any value, and so does this port.
- In the class-attention layers the class token is normalised but the patch tokens it attends to (the
  `context`, already through `final_norm`) are not normalised again: torch concatenates the normalised token
  with the raw context.
- The cross-covariance and class transformers have no final LayerNorm of their own; `mlp_head` starts with one.
- An input smaller than `image_size` (also a rectangular one) takes the first `n` rows of the position
  embedding, whatever its height and width; only the patch count has to fit.
- `num_classes=0` keeps an `mlp_head` with no outputs, returning (batch, 0).

Deliberate difference: vit-pytorch drops layers whenever `layer_dropout > 0`, in eval mode too (its
`dropout_layers` does not look at `self.training`), so its eval output is random; here layers are dropped only
with `train=True`. With the same draw the outputs agree (tests/test_xcit.py replays Flax's draw in torch).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from einops import rearrange, repeat

from vit_flax.cait import layer_drop_draw, layers_to_keep
from vit_flax.layers import (
    BatchNorm, Conv, LayerNorm, Linear, add_position_embedding, attention_weights, check_floating_input,
    check_keywords, check_square_image_config, exists, gelu, randn, softmax,
)
from vit_flax.vit import FeedForward, patchify

CHANNELS = 3  # vit-pytorch's XCiT hard-codes RGB input

# helpers


def l2norm(t, axis: int = -1, eps: float = 1e-12):
    """torch's F.normalize(p=2): t / max(||t||, eps). The clamp is taken on the squared norm (the same value), so
    an all-zero vector has torch's gradient (1 / eps) instead of the NaN of sqrt at zero."""
    sum_of_squares = jnp.sum(jnp.square(t), axis=axis, keepdims=True)
    return t * jax.lax.rsqrt(jnp.maximum(sum_of_squares, jnp.asarray(eps * eps, t.dtype)))


def init_eps(depth: int) -> float:
    # torch: `if depth <= 18: 0.1 elif 18 > depth <= 24: 1e-5 else 1e-6`; the elif is never true
    return 0.1 if depth <= 18 else 1e-6


def layer_drop_mask(module: nn.Module, num_layers: int, layer_dropout: float, train: bool):
    """Which layers run in this call (None: all), drawn from the 'layer_dropout' stream and sown for replay."""
    if not (train and layer_dropout != 0 and num_layers > 0):
        return None
    uniforms, fallback = layer_drop_draw(module.make_rng('layer_dropout'), num_layers)
    keep = layers_to_keep(uniforms, fallback, layer_dropout)
    module.sow('intermediates', 'layer_drop_uniforms', uniforms)
    module.sow('intermediates', 'layer_drop_fallback', fallback)
    module.sow('intermediates', 'layer_keep', keep)
    return keep


# classes


class LayerScale(nn.Module):
    dim: int
    fn: nn.Module
    depth: int

    @nn.compact
    def __call__(self, x, train: bool = False, **kwargs):
        # torch's `scale`: Flax's LayerNorm already owns the leaf name 'scale' (torch `weight`) in the converter rules
        scale = self.param('layer_scale', nn.initializers.constant(init_eps(self.depth)), (self.dim,))
        return self.fn(x, train=train, **kwargs) * scale.astype(x.dtype)


class Attention(nn.Module):
    dim: int
    heads: int = 8
    dim_head: int = 64
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, context=None, train: bool = False):
        inner_dim = self.dim_head * self.heads

        x = LayerNorm(name='norm')(x)
        context = x if not exists(context) else jnp.concatenate((x, context.astype(x.dtype)), axis=1)

        q = Linear(inner_dim, use_bias=False, name='to_q')(x)
        k, v = jnp.split(Linear(inner_dim * 2, use_bias=False, name='to_kv')(context), 2, axis=-1)
        q, k, v = (rearrange(t, 'b n (h d) -> b h n d', h=self.heads) for t in (q, k, v))

        attn = attention_weights(q, k, scale=self.dim_head**-0.5)
        attn = nn.Dropout(self.dropout, deterministic=not train)(attn)

        out = jnp.einsum('bhij,bhjd->bhid', attn, v)
        out = rearrange(out, 'b h n d -> b n (h d)')
        out = Linear(self.dim, name='to_out_0')(out)
        return nn.Dropout(self.dropout, deterministic=not train)(out)


class XCAttention(nn.Module):
    dim: int
    heads: int = 8
    dim_head: int = 64
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        inner_dim = self.dim_head * self.heads
        b, *grid, _ = x.shape
        x = x.reshape(b, -1, x.shape[-1])  # torch: pack_one(x, 'b * d')

        x = LayerNorm(name='norm')(x)
        q, k, v = jnp.split(Linear(inner_dim * 3, use_bias=False, name='to_qkv')(x), 3, axis=-1)
        q, k, v = (rearrange(t, 'b n (h d) -> b h d n', h=self.heads) for t in (q, k, v))

        q, k = l2norm(q), l2norm(k)  # along the tokens

        temperature = self.param('temperature', nn.initializers.ones, (self.heads, 1, 1))
        sim = jnp.einsum('bhin,bhjn->bhij', q, k) * jnp.exp(temperature).astype(q.dtype)

        attn = softmax(sim, axis=-1)
        attn = nn.Dropout(self.dropout, deterministic=not train)(attn)

        out = jnp.einsum('bhij,bhjn->bhin', attn, v)
        out = rearrange(out, 'b h d n -> b n (h d)')

        out = out.reshape(b, *grid, inner_dim)  # torch: unpack_one(out, ps, 'b * d')
        out = Linear(self.dim, name='to_out_0')(out)
        return nn.Dropout(self.dropout, deterministic=not train)(out)


class LocalPatchInteraction(nn.Module):
    """Depthwise conv, BatchNorm, GELU, depthwise conv on the (b, h, w, dim) grid.

    `keep` (JAX-only): a boolean scalar, False when layer drop discards this layer; the BatchNorm running
    statistics are then left as they were, as torch, which does not run a dropped layer, leaves them.
    """

    dim: int
    kernel_size: int = 3

    def __post_init__(self):
        check_kernel_size(self.kernel_size)
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False, keep=None):
        padding = self.kernel_size // 2
        conv = lambda name: Conv(self.dim, self.kernel_size, padding=padding, groups=self.dim, name=name)

        x = LayerNorm(name='net_0')(x)
        x = conv('net_2')(x)

        norm = BatchNorm(name='net_3')
        restore = (exists(keep) and train and not self.is_initializing()
                   and self.is_mutable_collection('batch_stats') and 'net_3' in self.variables.get('batch_stats', {}))
        if restore:
            before = dict(self.variables['batch_stats']['net_3'])
        x = norm(x, train=train)
        if restore:
            for name, value in before.items():
                norm.put_variable('batch_stats', name, jnp.where(keep, norm.get_variable('batch_stats', name), value))

        x = gelu(x)
        return conv('net_5')(x)


def check_kernel_size(kernel_size):
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 != 1:
        raise ValueError(f'local_patch_kernel_size must be a positive odd int, got {kernel_size!r}')


class Transformer(nn.Module):
    dim: int
    depth: int
    heads: int
    dim_head: int
    mlp_dim: int
    dropout: float = 0.0
    layer_dropout: float = 0.0

    @nn.compact
    def __call__(self, x, context=None, train: bool = False):
        layers = [
            (
                LayerScale(self.dim, Attention(self.dim, self.heads, self.dim_head, self.dropout, parent=None),
                           depth=ind + 1, name=f'layers_{ind}_0'),
                LayerScale(self.dim, FeedForward(self.dim, self.mlp_dim, self.dropout, parent=None),
                           depth=ind + 1, name=f'layers_{ind}_1'),
            )
            for ind in range(self.depth)
        ]
        keep = layer_drop_mask(self, self.depth, self.layer_dropout, train)

        for ind, (attn, ff) in enumerate(layers):
            y = attn(x, train=train, context=context) + x
            y = ff(y, train=train) + y
            # the mask is traced under jit, so a dropped layer is computed and discarded
            x = y if keep is None else jnp.where(keep[ind], y, x)
        return x


class XCATransformer(nn.Module):
    dim: int
    depth: int
    heads: int
    dim_head: int
    mlp_dim: int
    local_patch_kernel_size: int = 3
    dropout: float = 0.0
    layer_dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        layers = [
            (
                LayerScale(self.dim, XCAttention(self.dim, self.heads, self.dim_head, self.dropout, parent=None),
                           depth=ind + 1, name=f'layers_{ind}_0'),
                LayerScale(self.dim, LocalPatchInteraction(self.dim, self.local_patch_kernel_size, parent=None),
                           depth=ind + 1, name=f'layers_{ind}_1'),
                LayerScale(self.dim, FeedForward(self.dim, self.mlp_dim, self.dropout, parent=None),
                           depth=ind + 1, name=f'layers_{ind}_2'),
            )
            for ind in range(self.depth)
        ]
        keep = layer_drop_mask(self, self.depth, self.layer_dropout, train)

        for ind, (cross_covariance_attn, local_patch_interaction, ff) in enumerate(layers):
            keep_layer = None if keep is None else keep[ind]
            y = cross_covariance_attn(x, train=train) + x
            y = local_patch_interaction(y, train=train, keep=keep_layer) + y
            y = ff(y, train=train) + y
            x = y if keep is None else jnp.where(keep_layer, y, x)
        return x


class XCiT(nn.Module):
    image_size: int
    patch_size: int
    num_classes: int
    dim: int
    depth: int
    cls_depth: int
    heads: int
    mlp_dim: int
    dim_head: int = 64
    dropout: float = 0.0
    emb_dropout: float = 0.0
    local_patch_kernel_size: int = 3
    layer_dropout: float = 0.0

    channels = CHANNELS  # not a field (vit-pytorch has no such keyword): what the registry's Images reads

    def __post_init__(self):
        check_keywords(self)
        check_square_image_config('XCiT', self.image_size, self.patch_size)
        if self.depth > 0:  # torch builds (and asserts on) the kernel size only inside a layer
            check_kernel_size(self.local_patch_kernel_size)
        if self.layer_dropout != 0 and (self.depth == 0 or self.cls_depth == 0):
            # torch's dropout_layers calls random.randrange(0) on an empty transformer and fails
            raise ValueError(f'layer_dropout={self.layer_dropout} needs at least one layer in each transformer, '
                             f'got depth={self.depth}, cls_depth={self.cls_depth}')
        super().__post_init__()

    @nn.compact
    def __call__(self, img, train: bool = False):
        check_floating_input(self, 'img', img)
        num_patches = (self.image_size // self.patch_size) ** 2

        x = patchify(img, self.patch_size, CHANNELS)  # (b, (h w), (p1 p2 c))
        b = x.shape[0]
        grid = (img.shape[1] // self.patch_size, img.shape[2] // self.patch_size)
        x = LayerNorm(name='to_patch_embedding_1')(x)
        x = Linear(self.dim, name='to_patch_embedding_2')(x)
        x = LayerNorm(name='to_patch_embedding_3')(x)

        pos_embedding = self.param('pos_embedding', randn, (1, num_patches, self.dim))
        cls_token = self.param('cls_token', randn, (self.dim,))

        x = add_position_embedding(x, pos_embedding, img.shape[1:3], self.image_size, what='patches')
        x = x.reshape(b, *grid, self.dim)  # torch keeps the patch grid: 'b h w d'
        x = nn.Dropout(self.emb_dropout, deterministic=not train)(x)

        x = XCATransformer(self.dim, self.depth, self.heads, self.dim_head, self.mlp_dim,
                           self.local_patch_kernel_size, self.dropout, self.layer_dropout,
                           name='xcit_transformer')(x, train=train)
        x = LayerNorm(name='final_norm')(x)

        cls_tokens = repeat(cls_token, 'd -> b 1 d', b=b).astype(x.dtype)
        x = rearrange(x, 'b ... d -> b (...) d')
        cls_tokens = Transformer(self.dim, self.cls_depth, self.heads, self.dim_head, self.mlp_dim, self.dropout,
                                 self.layer_dropout, name='cls_transformer')(cls_tokens, context=x, train=train)

        x = LayerNorm(name='mlp_head_0')(cls_tokens[:, 0])
        return Linear(self.num_classes, name='mlp_head_1')(x)
