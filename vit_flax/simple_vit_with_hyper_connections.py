"""SimpleViT with hyper-connections and register tokens ("Hyper-Connections", Zhu et al., 2024), mirroring
vit_pytorch/simple_vit_with_hyper_connections.py.

The residual stream is widened to `num_residual_streams` copies (batch, n, streams, dim). Before each attention and
feed-forward block a `HyperConnection` (the paper's dynamic variant, appendix J algorithm 2) mixes the streams:
a bias-free LayerNorm of the streams gives, through tanh projections scaled by learned scalars, input-dependent
offsets to a static mixing matrix `static_alpha` (its first column picks the block's input, the others the new
streams) and to static output weights `static_beta`; the block's output is added to every stream weighted by beta.
After the last layer the streams are summed. `num_register_tokens` learned tokens are appended after the patches
and dropped before the mean pooling. vit-pytorch implements the hyper-connections itself (no outside package).

Quirks of vit-pytorch kept so weights transfer:
- The position embedding is built for `image_size`; an input must give the same number of patches.
- `static_alpha` starts as [one-hot(layer_index % streams), identity]: the attention and feed-forward connections of
  one layer start alike, and layers cycle through the streams as their input.
- `num_classes=0` keeps a `linear_head` with no outputs, returning (batch, 0).

Nothing is random in the forward pass; `train` is accepted for a uniform interface.

JAX-only options (defaults keep vit-pytorch's behaviour and tree; see vit_flax/scan.py):
- `scan_layers=True` runs the `depth` layers as one `nn.scan` over `Layer`, parameters stacked on a leading axis
  under `params/transformer/layers_scan/{0,1,2,3}` (attention hyper-connection, attention, feed-forward
  hyper-connection, feed-forward), which the converters map to torch's `transformer.layers.{i}.{0,1,2,3}`. The layer
  index that sets `static_alpha`'s initial value travels in the scan's carry.
- `remat_policy`: None, or a `jax.checkpoint_policies` name: the backward pass recomputes each scanned layer
  (unscanned: each attention and feed-forward block) instead of keeping its activations.
- `attention_impl`: 'explicit' (default, whose maps recorder.Recorder records) or 'xla' / 'cudnn' / 'auto' for
  jax.nn.dot_product_attention.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from einops import repeat

from vit_flax.layers import (
    LayerNorm, Linear, add_posemb_sincos_2d, append_register_tokens, check_attention_impl, check_floating_input,
    check_keywords, check_sincos_dim, drop_register_tokens, residual_boundary,
)
from vit_flax.scan import check_remat_policy, layer_scan, remat, scanned_name
from vit_flax.simple_vit import Attention, FeedForward
from vit_flax.vit import check_image_config, embed_patches


def static_alpha_init(layer_index, num_residual_streams: int):
    """vit-pytorch's initial `static_alpha`, (streams, streams + 1): a one-hot column at `layer_index % streams`
    (the stream read as the block's input), then the identity (each stream kept). `layer_index` may be traced (the
    scanned stack's carry)."""

    def init(key, shape, dtype=jnp.float32):
        first = jax.nn.one_hot(layer_index % num_residual_streams, num_residual_streams, dtype=dtype)
        return jnp.concatenate((first[:, None], jnp.eye(num_residual_streams, dtype=dtype)), axis=1)

    return init


class HyperConnection(nn.Module):
    """Dynamic hyper-connection around one block: `width_connection` mixes the streams into the block's input and
    the residual streams, `depth_connection` adds the block's output back to every stream."""

    dim: int
    num_residual_streams: int
    layer_index: int | jax.Array

    def setup(self):
        streams = self.num_residual_streams
        self.norm = LayerNorm(use_bias=False)
        self.static_beta = self.param('static_beta', nn.initializers.ones, (streams,))
        self.static_alpha = self.param('static_alpha', static_alpha_init(self.layer_index, streams),
                                       (streams, streams + 1))
        self.dynamic_alpha_fn = self.param('dynamic_alpha_fn', nn.initializers.zeros, (self.dim, streams + 1))
        self.dynamic_alpha_scale = self.param('dynamic_alpha_scale', nn.initializers.constant(1e-2), ())
        self.dynamic_beta_fn = self.param('dynamic_beta_fn', nn.initializers.zeros, (self.dim,))
        self.dynamic_beta_scale = self.param('dynamic_beta_scale', nn.initializers.constant(1e-2), ())

    def width_connection(self, residuals):
        """(b, n, streams, d) -> the block's input (b, n, d), the mixed residual streams, beta (b, n, streams)."""
        dtype = residuals.dtype
        normed = self.norm(residuals)
        alpha = (jnp.tanh(normed @ self.dynamic_alpha_fn.astype(dtype)) * self.dynamic_alpha_scale.astype(dtype)
                 + self.static_alpha.astype(dtype))
        beta = (jnp.tanh(normed @ self.dynamic_beta_fn.astype(dtype)) * self.dynamic_beta_scale.astype(dtype)
                + self.static_beta.astype(dtype))
        mix_h = jnp.einsum('...ij,...id->...jd', alpha, residuals)
        return mix_h[..., 0, :], mix_h[..., 1:, :], beta

    def depth_connection(self, branch_output, residuals, beta):
        return branch_output[..., None, :] * beta[..., None] + residuals

    def __call__(self, residuals):  # the width connection; a module needs a __call__ for init and remat
        return self.width_connection(residuals)


class Layer(nn.Module):
    """One of vit-pytorch's `transformer.layers` (hyper-connection, attention, hyper-connection, feed-forward): the
    body of the layer scan, carrying (streams, layer index) and returning nn.scan's (carry, nothing per layer)."""

    dim: int
    heads: int
    dim_head: int
    mlp_dim: int
    num_residual_streams: int
    attention_impl: str = 'explicit'

    @nn.compact
    def __call__(self, carry):
        x, layer_index = carry
        x = _hyper_connected_layer(self, x, layer_index, '{}', Attention, FeedForward)
        return (x, layer_index + 1), None


def _hyper_connected_layer(module, x, layer_index, name, attention, feed_forward):
    """Attention, then feed-forward, each between its hyper-connection's width and depth connections; submodules
    named `name.format(k)` for torch's k-th entry of the layer."""
    streams = module.num_residual_streams
    attn_hyper_conn = HyperConnection(module.dim, streams, layer_index, name=name.format(0))
    branch, residuals, beta = attn_hyper_conn.width_connection(x)
    branch = attention(module.dim, module.heads, module.dim_head, module.attention_impl, name=name.format(1))(branch)
    x = attn_hyper_conn.depth_connection(branch, residuals, beta)

    ff_hyper_conn = HyperConnection(module.dim, streams, layer_index, name=name.format(2))
    branch, residuals, beta = ff_hyper_conn.width_connection(x)
    branch = feed_forward(module.dim, module.mlp_dim, name=name.format(3))(branch)
    return ff_hyper_conn.depth_connection(branch, residuals, beta)


class Transformer(nn.Module):
    dim: int
    depth: int
    heads: int
    dim_head: int
    mlp_dim: int
    num_residual_streams: int
    scan_layers: bool = False  # JAX-only, see the module docstring
    remat_policy: str | None = None  # JAX-only
    attention_impl: str = 'explicit'  # JAX-only

    def __post_init__(self):
        check_remat_policy(self.remat_policy)
        check_attention_impl(self.attention_impl)
        super().__post_init__()

    @nn.compact
    def __call__(self, x):
        x = repeat(x, 'b n d -> b n e d', e=self.num_residual_streams)
        if self.scan_layers:
            layers = layer_scan(Layer, self.depth, self.remat_policy)
            (x, _), _ = layers(self.dim, self.heads, self.dim_head, self.mlp_dim, self.num_residual_streams,
                               self.attention_impl, name=scanned_name('layers'))((x, jnp.zeros((), jnp.int32)))
        else:
            attention, feed_forward = remat(Attention, self.remat_policy), remat(FeedForward, self.remat_policy)
            for i in range(self.depth):
                x = _hyper_connected_layer(self, x, i, f'layers_{i}_{{}}', attention, feed_forward)
                x = residual_boundary(x)  # linear, not quadratic, backward work on CPU (layers.py)
        x = x.sum(axis=2)
        return LayerNorm(name='norm')(x)


class SimpleViT(nn.Module):
    image_size: int | tuple[int, int]
    patch_size: int | tuple[int, int]
    num_classes: int
    dim: int
    depth: int
    heads: int
    mlp_dim: int
    num_residual_streams: int
    num_register_tokens: int = 4
    channels: int = 3
    dim_head: int = 64
    scan_layers: bool = False  # JAX-only, see the module docstring
    remat_policy: str | None = None  # JAX-only
    attention_impl: str = 'explicit'  # JAX-only

    def __post_init__(self):
        check_keywords(self)
        check_image_config(self.image_size, self.patch_size)
        check_sincos_dim(self.dim)
        check_remat_policy(self.remat_policy)
        check_attention_impl(self.attention_impl)
        super().__post_init__()

    @nn.compact
    def __call__(self, img, train: bool = False):  # `train` accepted for a uniform interface; nothing is random
        check_floating_input(self, 'img', img)
        x = embed_patches(img, self.patch_size, self.channels, self.dim)

        x = add_posemb_sincos_2d(x, img.shape[1:3], self.image_size, self.patch_size, self.dim)

        x = append_register_tokens(self, x, self.num_register_tokens)  # after the patches, as vit-pytorch packs them

        x = Transformer(self.dim, self.depth, self.heads, self.dim_head, self.mlp_dim, self.num_residual_streams,
                        scan_layers=self.scan_layers, remat_policy=self.remat_policy,
                        attention_impl=self.attention_impl, name='transformer')(x)
        x = drop_register_tokens(x, self.num_register_tokens).mean(axis=1)
        return Linear(self.num_classes, name='linear_head')(x)
