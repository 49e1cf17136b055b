"""CvT ("CvT: Introducing Convolutions to Vision Transformers", Wu et al., 2021), mirroring vit_pytorch/cvt.py.

Three stages, each a strided convolutional token embedding, a LayerNorm over channels and a transformer whose
attention projects queries, keys and values with depth-wise separable convolutions (depth-wise conv, BatchNorm,
point-wise conv; keys and values strided by `kv_proj_stride`). Everything runs on feature maps, channels-last
here ((B, H, W, C)) where vit-pytorch is channels-first; the logits come from global average pooling.

Parameter tree = vit-pytorch's module tree: `layers.0.0.weight` (stage 1's embedding conv) lives at
`params/layers_0_0/kernel`, `layers.0.2.layers.0.0.to_kv.net.1.weight` (a BatchNorm) at
`params/layers_0_2/layers_0_0/to_kv/net_1/scale` with its running statistics at
`batch_stats/layers_0_2/layers_0_0/to_kv/net_1/{mean,var}`, `to_logits.2.weight` at `params/to_logits_2/kernel`.

What torch exposes is reachable here too:
- `model.layers(x)` (the three stages, image -> latents) is `model.apply(variables, x, method='layers')`, giving
  (B, h, w, s3_emb_dim) channels-last where torch gives (B, s3_emb_dim, h, w); `model.to_logits(latents)` is
  `method='to_logits'`. (EsViT's default `hidden_layer=-2` hooks exactly `model.layers`.)
- A forward hook on stage `i` (`model.layers[i]`) is Flax's `capture_intermediates`: a stage's output is the
  output of its transformer, `intermediates/layers_{i}_2/__call__`.

JAX-only: `remat_policy` (None, or a `jax.checkpoint_policies` name such as 'dots_saveable') rematerialises each
attention and feed-forward block in the backward pass; parameters, statistics and results do not change.

BatchNorm statistics live in 'batch_stats' and follow torch's BatchNorm2d: `train=True` normalises with the
batch's biased variance and, with `mutable=['batch_stats']`, updates the running variance with the unbiased one
(momentum 0.1).

Quirks of vit-pytorch kept so weights transfer:
- The channel LayerNorm owns raw parameters `g` and `b` of torch's shape (1, dim, 1, 1) (not a LayerNorm's
  `weight` / `bias`), and divides by sqrt(biased variance + eps).
- Every attention uses `dim_head=64`: CvT does not expose it, so a stage's inner width is `64 * heads` whatever its
  `emb_dim`. Query and key/value projections have no conv biases (their BatchNorms have biases).
- Paddings are torch's: the embedding conv pads `emb_kernel // 2` (an even kernel grows the map by one before the
  stride), the projection convs `proj_kernel // 2`.
- Any image size and aspect ratio works (there is no `image_size`); a map shrinks to 1 x 1 at worst.
- `num_classes=0` keeps a head with no outputs, returning (batch, 0).

Where torch fails late or not at all, this port refuses at construction with a ValueError naming the value:
- An even `proj_kernel` makes the query map one pixel larger than the input, so torch's rearrange or residual
  add fails at the first forward (except on maps one pixel high, where the residual add broadcasts to a
  different shape); it is refused here.
- Non-positive dims, kernels, strides, heads, `mlp_mult` or `channels` construct in torch and fail at the first
  forward; negative `num_classes` or `dropout` outside [0, 1] fail at construction; a negative depth builds an
  empty transformer in torch and is refused here.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp
from einops import rearrange

from vit_flax.layers import (
    BatchNorm, ChanLayerNorm, Conv, Linear, attention_weights, check_floating_input, check_keywords, gelu,
    group_by_key_prefix_and_remove_prefix,
)
from vit_flax.scan import check_remat_policy, remat

# classes


class FeedForward(nn.Module):
    """The channel-first feed-forward that cvt, twins_svt and sep_vit each define alike (sep_vit's `mult` may be a
    float: the hidden width is int(dim * mult))."""

    dim: int
    mult: float = 4
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = ChanLayerNorm(self.dim, name='net_0')(x)
        x = Conv(int(self.dim * self.mult), 1, name='net_1')(x)
        x = gelu(x)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = Conv(self.dim, 1, name='net_4')(x)
        return nn.Dropout(self.dropout, deterministic=not train)(x)


class DepthWiseConv2d(nn.Module):
    dim_in: int
    dim_out: int
    kernel_size: int
    padding: int
    stride: int
    bias: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = Conv(self.dim_in, self.kernel_size, stride=self.stride, padding=self.padding, groups=self.dim_in,
                 use_bias=self.bias, name='net_0')(x)
        x = BatchNorm(name='net_1')(x, train)
        return Conv(self.dim_out, 1, use_bias=self.bias, name='net_2')(x)


class Attention(nn.Module):
    dim: int
    proj_kernel: int
    kv_proj_stride: int
    heads: int = 8
    dim_head: int = 64
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        inner_dim = self.dim_head * self.heads
        padding = self.proj_kernel // 2
        y, h = x.shape[2], self.heads  # torch's `y` is the map's width

        x = ChanLayerNorm(self.dim, name='norm')(x)
        q = DepthWiseConv2d(self.dim, inner_dim, self.proj_kernel, padding=padding, stride=1, bias=False,
                            name='to_q')(x, train)
        kv = DepthWiseConv2d(self.dim, inner_dim * 2, self.proj_kernel, padding=padding, stride=self.kv_proj_stride,
                             bias=False, name='to_kv')(x, train)
        k, v = jnp.split(kv, 2, axis=-1)
        q, k, v = (rearrange(t, 'b x y (h d) -> b h (x y) d', h=h) for t in (q, k, v))

        attn = attention_weights(q, k, scale=self.dim_head**-0.5)
        attn = nn.Dropout(self.dropout, deterministic=not train)(attn)

        out = jnp.einsum('bhij,bhjd->bhid', attn, v)
        out = rearrange(out, 'b h (x y) d -> b x y (h d)', y=y)
        out = Conv(self.dim, 1, name='to_out_0')(out)
        return nn.Dropout(self.dropout, deterministic=not train)(out)


class Transformer(nn.Module):
    dim: int
    proj_kernel: int
    kv_proj_stride: int
    depth: int
    heads: int
    dim_head: int = 64
    mlp_mult: int = 4
    dropout: float = 0.0
    remat_policy: str | None = None  # JAX-only

    @nn.compact
    def __call__(self, x, train: bool = False):
        attention = remat(Attention, self.remat_policy, static_argnums=(2,))
        feed_forward = remat(FeedForward, self.remat_policy, static_argnums=(2,))
        for i in range(self.depth):
            attn = attention(self.dim, proj_kernel=self.proj_kernel, kv_proj_stride=self.kv_proj_stride,
                             heads=self.heads, dim_head=self.dim_head, dropout=self.dropout, name=f'layers_{i}_0')
            ff = feed_forward(self.dim, self.mlp_mult, dropout=self.dropout, name=f'layers_{i}_1')
            x = attn(x, train) + x
            x = ff(x, train) + x
        return x


STAGES = ('s1', 's2', 's3')


class CvT(nn.Module):
    num_classes: int
    s1_emb_dim: int = 64
    s1_emb_kernel: int = 7
    s1_emb_stride: int = 4
    s1_proj_kernel: int = 3
    s1_kv_proj_stride: int = 2
    s1_heads: int = 1
    s1_depth: int = 1
    s1_mlp_mult: int = 4
    s2_emb_dim: int = 192
    s2_emb_kernel: int = 3
    s2_emb_stride: int = 2
    s2_proj_kernel: int = 3
    s2_kv_proj_stride: int = 2
    s2_heads: int = 3
    s2_depth: int = 2
    s2_mlp_mult: int = 4
    s3_emb_dim: int = 384
    s3_emb_kernel: int = 3
    s3_emb_stride: int = 2
    s3_proj_kernel: int = 3
    s3_kv_proj_stride: int = 2
    s3_heads: int = 6
    s3_depth: int = 10
    s3_mlp_mult: int = 4
    dropout: float = 0.0
    channels: int = 3
    remat_policy: str | None = None  # JAX-only

    def __post_init__(self):
        check_keywords(self)
        check_remat_policy(self.remat_policy)
        for prefix, config in zip(STAGES, self.stage_configs()):
            if config['proj_kernel'] % 2 == 0:
                raise ValueError(
                    f'{prefix}_proj_kernel must be odd: an even kernel makes the query map one pixel larger than its '
                    f'input and vit-pytorch fails at the residual add, got {prefix}_proj_kernel={config["proj_kernel"]}'
                )
        super().__post_init__()

    def stage_configs(self) -> tuple[dict, ...]:
        """Each stage's keywords without its prefix, split off as vit-pytorch does."""
        kwargs = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)
                  if field.name not in ('parent', 'name', 'remat_policy')}
        configs = []
        for prefix in STAGES:
            config, kwargs = group_by_key_prefix_and_remove_prefix(f'{prefix}_', kwargs)
            configs.append(config)
        return tuple(configs)

    def setup(self):
        # explicit attribute names keep torch's flat `layers.{i}.{j}` keys: layers_{i}_0 embeds, layers_{i}_1
        # normalises, layers_{i}_2 is the stage's transformer
        for i, config in enumerate(self.stage_configs()):
            setattr(self, f'layers_{i}_0', Conv(config['emb_dim'], config['emb_kernel'],
                                                padding=config['emb_kernel'] // 2, stride=config['emb_stride']))
            setattr(self, f'layers_{i}_1', ChanLayerNorm(config['emb_dim']))
            setattr(self, f'layers_{i}_2', Transformer(
                dim=config['emb_dim'], proj_kernel=config['proj_kernel'], kv_proj_stride=config['kv_proj_stride'],
                depth=config['depth'], heads=config['heads'], mlp_mult=config['mlp_mult'], dropout=self.dropout,
                remat_policy=self.remat_policy))
        self.to_logits_2 = Linear(self.num_classes)

    def layers(self, x, train: bool = False):
        """torch's `self.layers`: images (B, H, W, channels) -> latents (B, h, w, s3_emb_dim)."""
        check_floating_input(self, 'x', x)
        if x.ndim != 4:
            raise ValueError(f'expected images of shape (batch, height, width, channels), got shape {x.shape}')
        if x.shape[-1] != self.channels:
            raise ValueError(f'expected {self.channels} channels (channels-last input), got shape {x.shape}')
        for i in range(len(STAGES)):
            x = getattr(self, f'layers_{i}_0')(x)
            x = getattr(self, f'layers_{i}_1')(x)
            x = getattr(self, f'layers_{i}_2')(x, train)
        return x

    def to_logits(self, latents):
        """torch's `self.to_logits`: global average pool, then the Linear head."""
        return self.to_logits_2(latents.mean(axis=(1, 2)))

    def __call__(self, x, train: bool = False):
        latents = self.layers(x, train)
        return self.to_logits(latents)
