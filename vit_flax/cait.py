"""CaiT ("Going deeper with Image Transformers", Touvron et al., 2021), mirroring vit_pytorch/cait.py.

LayerScale on every residual branch, talking-heads attention (heads mixed before and after the softmax), and
class-attention layers: a second transformer in which the class token attends to itself and the patch tokens.

Parameter tree = vit-pytorch's module tree: `patch_transformer.layers.0.0.fn.to_q.weight` lives at
`params/patch_transformer/layers_0_0/fn/to_q/kernel`. LayerScale's torch `scale` is the Flax leaf
`.../layers_0_0/layer_scale` (the leaf name `scale` means a norm's `weight` to the converter rules).

Layer dropout draws from the 'layer_dropout' rng stream, in training only. The draw follows torch's
`dropout_layers`: one uniform per layer, a layer is dropped where its uniform is below `layer_dropout`, and if
every layer would be dropped one layer, chosen uniformly, is kept. The draw of each transformer is sown to
'intermediates' (`layer_drop_uniforms`, `layer_drop_fallback`, `layer_keep`) so a caller can replay it.

Quirks of vit-pytorch kept so weights transfer:
- `image_size` and `patch_size` are single ints (torch computes `image_size % patch_size`) and images have 3
  channels (the patch LayerNorm is built for `3 * patch_size ** 2`); there is no `channels` keyword.
- LayerScale's initial value is chosen from the layer's index plus one, not from the depth of the network:
  0.1 for layers 1-18, 1e-5 for layers 19-24, 1e-6 from layer 25 on.
- In the class-attention layers the class token is normalised but the patch tokens it attends to (the
  `context`) are not: torch concatenates the normalised token with the raw context.
- The patch transformer and the class transformer have no final LayerNorm; `mlp_head` starts with one.
- An input smaller than `image_size` (also a rectangular one) takes the first `n` rows of the position
  embedding, whatever its height and width; only the patch count has to fit.
- `num_classes=0` keeps an `mlp_head` with no outputs, returning (batch, 0).

Deliberate difference: vit-pytorch drops layers whenever `layer_dropout > 0`, in eval mode too (its
`dropout_layers` does not look at `self.training`), so its eval output is random; here layers are dropped only
with `train=True`. With the same draw the outputs agree (tests/test_cait.py replays Flax's draw in torch).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from einops import rearrange, repeat

from vit_flax.layers import (
    LayerNorm, Linear, add_position_embedding, check_floating_input, check_keywords, check_square_image_config,
    exists, randn, softmax,
)
from vit_flax.vit import FeedForward, patchify

CHANNELS = 3  # vit-pytorch's CaiT hard-codes RGB input

# helpers


def layer_drop_draw(key, num_layers: int):
    """The random numbers of one `dropout_layers` call: a uniform per layer and the fallback layer's index
    (torch: `torch.zeros(num_layers).uniform_(0., 1.)` and `random.randrange(num_layers)`)."""
    uniform_key, index_key = jax.random.split(key)
    uniforms = jax.random.uniform(uniform_key, (num_layers,), jnp.float32)
    fallback = jax.random.randint(index_key, (), 0, num_layers)
    return uniforms, fallback


def layers_to_keep(uniforms, fallback, dropout: float):
    """Which layers run: those whose uniform is not below `dropout`, or only `fallback` if none is."""
    to_drop = uniforms < dropout
    only_fallback = jnp.arange(uniforms.shape[0]) == fallback
    return jnp.where(jnp.all(to_drop), only_fallback, ~to_drop)


def init_eps(depth: int) -> float:
    if depth <= 18:  # epsilon detailed in section 2 of paper
        return 0.1
    if depth <= 24:
        return 1e-5
    return 1e-6


# classes


class LayerScale(nn.Module):
    dim: int
    fn: nn.Module
    depth: int

    @nn.compact
    def __call__(self, x, train: bool = False, **kwargs):
        # torch's `scale`: Flax's LayerNorm already owns the leaf name 'scale' (torch `weight`) in the converter rules
        scale = self.param('layer_scale', nn.initializers.constant(init_eps(self.depth)), (1, 1, self.dim))
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

        mix_heads_pre_attn = self.param('mix_heads_pre_attn', randn, (self.heads, self.heads))
        mix_heads_post_attn = self.param('mix_heads_post_attn', randn, (self.heads, self.heads))

        dots = jnp.einsum('bhid,bhjd->bhij', q, k) * self.dim_head**-0.5
        dots = jnp.einsum('bhij,hg->bgij', dots, mix_heads_pre_attn.astype(dots.dtype))  # talking heads, pre-softmax

        attn = softmax(dots, axis=-1)
        attn = nn.Dropout(self.dropout, deterministic=not train)(attn)

        attn = jnp.einsum('bhij,hg->bgij', attn, mix_heads_post_attn.astype(attn.dtype))  # talking heads, post-softmax

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

        keep = None
        if train and self.layer_dropout != 0 and self.depth > 0:
            uniforms, fallback = layer_drop_draw(self.make_rng('layer_dropout'), self.depth)
            keep = layers_to_keep(uniforms, fallback, self.layer_dropout)
            self.sow('intermediates', 'layer_drop_uniforms', uniforms)
            self.sow('intermediates', 'layer_drop_fallback', fallback)
            self.sow('intermediates', 'layer_keep', keep)

        for ind, (attn, ff) in enumerate(layers):
            y = attn(x, train=train, context=context) + x
            y = ff(y, train=train) + y
            # the mask is traced under jit, so a dropped layer is computed and discarded
            x = y if keep is None else jnp.where(keep[ind], y, x)
        return x


class CaiT(nn.Module):
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
    layer_dropout: float = 0.0

    channels = CHANNELS  # not a field (vit-pytorch has no such keyword): what the registry's Images reads
    rng_streams = ('layer_dropout',)  # drawn in training (the trainer passes it)

    def __post_init__(self):
        check_keywords(self)
        check_square_image_config('CaiT', self.image_size, self.patch_size)
        if self.layer_dropout != 0 and (self.depth == 0 or self.cls_depth == 0):
            # torch's dropout_layers calls random.randrange(0) on an empty transformer and fails
            raise ValueError(f'layer_dropout={self.layer_dropout} needs at least one layer in each transformer, '
                             f'got depth={self.depth}, cls_depth={self.cls_depth}')
        super().__post_init__()

    @nn.compact
    def __call__(self, img, train: bool = False):
        check_floating_input(self, 'img', img)
        num_patches = (self.image_size // self.patch_size) ** 2

        x = patchify(img, self.patch_size, CHANNELS)
        x = LayerNorm(name='to_patch_embedding_1')(x)
        x = Linear(self.dim, name='to_patch_embedding_2')(x)
        x = LayerNorm(name='to_patch_embedding_3')(x)
        b = x.shape[0]

        pos_embedding = self.param('pos_embedding', randn, (1, num_patches, self.dim))
        cls_token = self.param('cls_token', randn, (1, 1, self.dim))

        x = add_position_embedding(x, pos_embedding, img.shape[1:3], self.image_size, what='patches')
        x = nn.Dropout(self.emb_dropout, deterministic=not train)(x)

        transformer = lambda depth, name: Transformer(self.dim, depth, self.heads, self.dim_head, self.mlp_dim,
                                                      self.dropout, self.layer_dropout, name=name)
        x = transformer(self.depth, 'patch_transformer')(x, train=train)

        cls_tokens = repeat(cls_token, '() n d -> b n d', b=b).astype(x.dtype)
        x = transformer(self.cls_depth, 'cls_transformer')(cls_tokens, context=x, train=train)

        x = LayerNorm(name='mlp_head_0')(x[:, 0])
        return Linear(self.num_classes, name='mlp_head_1')(x)
