"""ViT with a decorrelation auxiliary loss (after "Decorrelation speeds up vision transformers", arXiv 2510.14657,
without the paper's decorrelation layers), mirroring vit_pytorch/vit_with_decorr.py.

Every attention and feed-forward block returns its LayerNormed input beside its output; the loss pushes the
off-diagonal entries of the features' second-moment matrix (covariance with `decorr_mean_center`) towards zero, over
all normed block inputs, or with `decorr_layer_outputs_across_depth` over the block outputs of each token across
depth. `decorr_use_subspace` first projects the features onto `decorr_num_subspaces` fixed random orthonormal
`decorr_dim_subspace`-dimensional subspaces (a persistent buffer `decorr_loss.proj`, in 'buffers').

`__call__(img, return_decorr_aux_loss=None, train=False)` mirrors vit-pytorch's forward and always returns
(logits, decorr_aux_loss): the loss is computed when `return_decorr_aux_loss` (default: `train`, as vit-pytorch's
default is `self.training`) and `decorr_sample_frac > 0`, else it is 0. Add it, weighted, to the training loss: it
is differentiable in every parameter that shapes the features.

Randomness: with `decorr_sample_frac < 1` (and not across depth) the loss uses a random subset of
`int(n * decorr_sample_frac)` tokens per block input and image, the ranks of standard normal noise (vit-pytorch's
`torch.randn(...).argsort()`), drawn from the rng stream 'decorr' (`ViT.rng_streams`); `ViT.decorr_sampling_noise`
returns the noise a call draws with the same rngs. Dropout uses 'dropout' with `train=True`.

Quirks of vit-pytorch kept so weights transfer:
- The class token and position embedding have the older 3-D shapes (1, 1, dim) and (1, num_patches + 1, dim), and
  the class token is prepended with `pool='mean'` too (the mean includes it).
- An input smaller than `image_size` takes the first rows of the position embedding; only the token count has to
  fit.
- With `heads == 1 and dim_head == dim` the attention output projection (and its dropout) is dropped.
- `num_classes=0` keeps an `mlp_head` with no outputs, returning (batch, 0) logits.
- Fewer than two sampled tokens is refused, as vit-pytorch asserts; a subspace dimension of 1 divides by zero (NaN),
  as in vit-pytorch.

JAX-only options (defaults keep vit-pytorch's behaviour and tree; see vit_flax/scan.py):
- `scan_layers=True` runs the `depth` layers as one `nn.scan` over `Layer`, parameters stacked on a leading axis
  under `params/transformer/layers_scan/{0,1}`, which the converters map to torch's `transformer.layers.{i}.{0,1}`;
  the normed inputs and block outputs come out of the scan stacked, in vit-pytorch's order.
- `remat_policy`: None, or a `jax.checkpoint_policies` name: the backward pass recomputes each scanned layer
  (unscanned: each attention and feed-forward block) instead of keeping its activations.
- `attention_impl`: 'explicit' (default, whose maps recorder.Recorder records) or 'xla' / 'cudnn' / 'auto' for
  jax.nn.dot_product_attention (the explicit path while attention dropout acts).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from einops import rearrange, repeat

from vit_flax.layers import (
    LayerNorm, Linear, add_position_embedding, check_attention_impl, check_floating_input, check_keywords, gelu,
    multi_head_attention, pair, randn, residual_boundary,
)
from vit_flax.scan import check_remat_policy, layer_scan, remat, scanned_name
from vit_flax.vit import check_image_config, embed_patches

DECORR = 'decorr'  # the rng stream of the loss's token sampling


def num_decorr_sampled(seq_len: int, sample_frac: float) -> int:
    return int(seq_len * sample_frac)


class DecorrelationLoss(nn.Module):
    """The mean over images of the summed squared off-diagonal second moments of `tokens` (..., batch, n, dim),
    each divided by dim * (dim - 1). `noise` (tokens.shape[:-1]) ranks the tokens to sample when `sample_frac < 1`
    (and not `across_depth`)."""

    sample_frac: float = 1.0
    soft_validate_num_sampled: bool = False
    use_subspace: bool = False
    dim: int | None = None
    dim_subspace: int = 64
    num_subspaces: int = 1
    mean_center: bool = False
    across_depth: bool = False

    def __post_init__(self):
        if not 0 <= self.sample_frac <= 1:
            raise ValueError(f'decorrelation sample_frac={self.sample_frac} must be in [0, 1]')
        if self.use_subspace:
            if self.dim is None:
                raise ValueError('dim must be passed in if using subspaces')
            if not self.dim_subspace < self.dim:
                raise ValueError(f'the subspace dimension must be less than the feature dimension: '
                                 f'dim_subspace={self.dim_subspace}, dim={self.dim}')
        super().__post_init__()

    @property
    def need_sample(self) -> bool:
        return self.sample_frac < 1 and not self.across_depth

    def setup(self):
        if self.use_subspace:
            # torch's nn.init.orthogonal_ of each (dim, dim_subspace) slice: a Haar-random orthonormal basis
            self.proj = self.variable('buffers', 'proj', lambda: jax.vmap(
                lambda key: nn.initializers.orthogonal()(key, (self.dim, self.dim_subspace)))(
                jax.random.split(self.make_rng('params'), self.num_subspaces)))

    def declare_buffers(self):
        """Nothing but setup's variables (the model's init calls it, whether or not it computes the loss)."""

    def __call__(self, tokens, noise=None):
        seq_len, dim = tokens.shape[-2:]
        proj = self.proj if self.use_subspace else None

        if self.need_sample:
            num_sampled = num_decorr_sampled(seq_len, self.sample_frac)
            if not self.soft_validate_num_sampled and num_sampled < 2:
                raise ValueError(f'the decorrelation loss samples {num_sampled} of {seq_len} tokens '
                                 f'(sample_frac={self.sample_frac}); it needs at least 2')
            if num_sampled <= 1:
                return jnp.zeros((), tokens.dtype)
            indices = jnp.argsort(noise, axis=-1)[..., :num_sampled]
            tokens = jnp.take_along_axis(tokens, indices[..., None], axis=-2)

        if self.use_subspace:
            tokens = jnp.einsum('...nd,sde->...sne', tokens, proj.value.astype(tokens.dtype))
            dim = self.dim_subspace
        else:
            tokens = tokens[..., None, :, :]

        if self.mean_center:
            tokens = tokens - tokens.mean(axis=-2, keepdims=True)

        dist = jnp.einsum('...snd,...sne->...sde', tokens, tokens) / tokens.shape[-2]
        eye = jnp.eye(dim, dtype=dist.dtype)
        loss = dist**2 * (1.0 - eye) / ((dim - 1) * dim)
        loss = jnp.moveaxis(loss, -4, 0).reshape(loss.shape[-4], -1).sum(axis=-1)  # '... b s d e -> b', sum
        return loss.mean()


class FeedForward(nn.Module):
    dim: int
    hidden_dim: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        normed = LayerNorm(name='norm')(x)
        x = gelu(Linear(self.hidden_dim, name='net_0')(normed))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = Linear(self.dim, name='net_3')(x)
        return nn.Dropout(self.dropout, deterministic=not train)(x), normed


class Attention(nn.Module):
    dim: int
    heads: int = 8
    dim_head: int = 64
    dropout: float = 0.0
    attention_impl: str = 'explicit'  # JAX-only, see the module docstring

    @nn.compact
    def __call__(self, x, train: bool = False):
        inner_dim = self.dim_head * self.heads
        project_out = not (self.heads == 1 and self.dim_head == self.dim)

        normed = LayerNorm(name='norm')(x)
        q, k, v = jnp.split(Linear(inner_dim * 3, use_bias=False, name='to_qkv')(normed), 3, axis=-1)
        out = multi_head_attention(self, q, k, v, self.heads, self.dim_head**-0.5, self.attention_impl, self.dropout,
                                   train)
        if project_out:
            out = nn.Dropout(self.dropout, deterministic=not train)(Linear(self.dim, name='to_out_0')(out))
        return out, normed


class Layer(nn.Module):
    """One of vit-pytorch's `transformer.layers`: the body of the layer scan, returning (x, ((attention's normed
    input, feed-forward's), (attention's output, feed-forward's)))."""

    dim: int
    heads: int
    dim_head: int
    mlp_dim: int
    dropout: float = 0.0
    attention_impl: str = 'explicit'

    @nn.compact
    def __call__(self, x, train: bool = False):
        attention = Attention(self.dim, self.heads, self.dim_head, self.dropout, self.attention_impl, name='0')
        attn_out, attn_normed = attention(x, train)
        x = attn_out + x
        ff_out, ff_normed = FeedForward(self.dim, self.mlp_dim, self.dropout, name='1')(x, train)
        x = ff_out + x
        return x, (jnp.stack((attn_normed, ff_normed)), jnp.stack((attn_out, ff_out)))


class Transformer(nn.Module):
    dim: int
    depth: int
    heads: int
    dim_head: int
    mlp_dim: int
    dropout: float = 0.0
    scan_layers: bool = False  # JAX-only, see the module docstring
    remat_policy: str | None = None  # JAX-only
    attention_impl: str = 'explicit'  # JAX-only

    def __post_init__(self):
        check_remat_policy(self.remat_policy)
        check_attention_impl(self.attention_impl)
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False):
        """(norm(x), the normed block inputs (2 * depth, b, n, d), the block outputs (2 * depth, b, n, d))."""
        if self.scan_layers:
            layers = layer_scan(Layer, self.depth, self.remat_policy, flags=1)
            x, (normed_inputs, layer_outputs) = layers(self.dim, self.heads, self.dim_head, self.mlp_dim, self.dropout,
                                                       self.attention_impl, name=scanned_name('layers'))(x, train)
            normed_inputs, layer_outputs = (t.reshape(-1, *t.shape[2:]) for t in (normed_inputs, layer_outputs))
        else:
            attention = remat(Attention, self.remat_policy, static_argnums=(2,))
            feed_forward = remat(FeedForward, self.remat_policy, static_argnums=(2,))
            normed_inputs, layer_outputs = [], []
            for i in range(self.depth):
                attn_out, attn_normed = attention(self.dim, self.heads, self.dim_head, self.dropout,
                                                  self.attention_impl, name=f'layers_{i}_0')(x, train)
                x = residual_boundary(attn_out + x)  # linear, not quadratic, backward work on CPU (layers.py)
                ff_out, ff_normed = feed_forward(self.dim, self.mlp_dim, self.dropout, name=f'layers_{i}_1')(x, train)
                x = residual_boundary(ff_out + x)
                normed_inputs += [attn_normed, ff_normed]
                layer_outputs += [attn_out, ff_out]
            empty = jnp.zeros((0, *x.shape), x.dtype)
            normed_inputs, layer_outputs = (jnp.stack(t) if t else empty for t in (normed_inputs, layer_outputs))
        return LayerNorm(name='norm')(x), normed_inputs, layer_outputs


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
    decorr_sample_frac: float = 1.0
    decorr_use_subspace: bool = False
    decorr_dim_subspace: int = 64
    decorr_num_subspaces: int = 1
    decorr_mean_center: bool = False
    decorr_layer_outputs_across_depth: bool = False
    scan_layers: bool = False  # JAX-only, see the module docstring
    remat_policy: str | None = None  # JAX-only
    attention_impl: str = 'explicit'  # JAX-only

    rng_streams = (DECORR,)

    def __post_init__(self):
        check_keywords(self)
        check_image_config(self.image_size, self.patch_size)
        check_remat_policy(self.remat_policy)
        check_attention_impl(self.attention_impl)
        if self.pool not in {'cls', 'mean'}:
            raise ValueError(f"pool type must be either cls (cls token) or mean (mean pooling), got pool={self.pool!r}")
        if self.has_decorr_loss:
            self._decorr_loss(parent=None)  # its checks, at construction as in vit-pytorch
        super().__post_init__()

    @property
    def has_decorr_loss(self) -> bool:
        return self.decorr_sample_frac > 0

    def _decorr_loss(self, **kwargs) -> DecorrelationLoss:
        return DecorrelationLoss(
            self.decorr_sample_frac, use_subspace=self.decorr_use_subspace, dim=self.dim,
            dim_subspace=self.decorr_dim_subspace, num_subspaces=self.decorr_num_subspaces,
            mean_center=self.decorr_mean_center, across_depth=self.decorr_layer_outputs_across_depth, **kwargs,
        )

    def decorr_sampling_noise(self, img):
        """The standard normals (2 * depth, batch, num_patches + 1) whose ranks pick the tokens the loss samples in a
        call on `img` with the same rngs (no parameters needed):
        `model.apply({}, img, rngs=rngs, method=ViT.decorr_sampling_noise)`."""
        (patch_height, patch_width), (batch, height, width) = pair(self.patch_size), img.shape[:3]
        num_tokens = (height // patch_height) * (width // patch_width) + 1
        return jax.random.normal(self.make_rng(DECORR), (2 * self.depth, batch, num_tokens), jnp.float32)

    @nn.compact
    def __call__(self, img, return_decorr_aux_loss: bool | None = None, train: bool = False):
        check_floating_input(self, 'img', img)
        return_decorr_aux_loss = (train if return_decorr_aux_loss is None else return_decorr_aux_loss) \
            and self.has_decorr_loss

        x = embed_patches(img, self.patch_size, self.channels, self.dim)

        (image_height, image_width), (patch_height, patch_width) = pair(self.image_size), pair(self.patch_size)
        num_patches = (image_height // patch_height) * (image_width // patch_width)
        pos_embedding = self.param('pos_embedding', randn, (1, num_patches + 1, self.dim))
        cls_token = self.param('cls_token', randn, (1, 1, self.dim))

        cls_tokens = repeat(cls_token.astype(x.dtype), '1 1 d -> b 1 d', b=x.shape[0])
        x = jnp.concatenate((cls_tokens, x), axis=1)
        x = add_position_embedding(x, pos_embedding, img.shape[1:3], self.image_size)
        x = nn.Dropout(self.emb_dropout, deterministic=not train)(x)

        transformer = Transformer(self.dim, self.depth, self.heads, self.dim_head, self.mlp_dim, self.dropout,
                                  scan_layers=self.scan_layers, remat_policy=self.remat_policy,
                                  attention_impl=self.attention_impl, name='transformer')
        x, normed_layer_inputs, layer_outputs = transformer(x, train)

        decorr_loss = self._decorr_loss(name='decorr_loss') if self.has_decorr_loss else None
        if decorr_loss is not None:
            decorr_loss.declare_buffers()  # its persistent buffer, even in a call that computes no loss

        decorr_aux_loss = jnp.zeros((), x.dtype)
        if return_decorr_aux_loss:
            if self.decorr_layer_outputs_across_depth:
                decorr_aux_loss = decorr_loss(rearrange(layer_outputs, 'l b n d -> n b l d'))
            else:
                noise = self.decorr_sampling_noise(img) if decorr_loss.need_sample else None
                decorr_aux_loss = decorr_loss(normed_layer_inputs, noise)

        x = x.mean(axis=1) if self.pool == 'mean' else x[:, 0]
        return Linear(self.num_classes, name='mlp_head')(x), decorr_aux_loss
