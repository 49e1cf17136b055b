"""T2T-ViT ("Tokens-to-Token ViT", Yuan et al., 2021), mirroring vit_pytorch/t2t.py.

Tokens-to-token: the image is cut into overlapping patches by a "soft split" (torch's `nn.Unfold`, kernel k,
stride s, padding s // 2), each split is followed by a small transformer (one head, `dim_head` = `mlp_dim` =
the token width) and the tokens are folded back into an image for the next split. `t2t_layers` lists the
(kernel_size, stride) of each split; the token width grows by k * k at each one. A Linear maps the last split's
tokens to `dim`, and a ViT transformer follows.

Parameter tree = vit-pytorch's module tree. `to_patch_embedding` is one torch `nn.Sequential` of four modules
per split (fold-back or Identity, Unfold, Rearrange, Transformer or Identity) and a closing Linear, so the
transformer of split `i` lives at `params/to_patch_embedding_{4i+3}` (torch `to_patch_embedding.{4i+3}`) and
the Linear at `params/to_patch_embedding_{4 * len(t2t_layers)}`. The soft split keeps torch's feature order
`(c kh kw)` (channel slowest, kernel column fastest), so the Linear and LayerNorm weights transfer as they are.

`transformer`: as in vit-pytorch, any module may replace the ViT transformer. Pass an (unbound) Flax linen module
that maps tokens (batch, seq, dim) to (batch, seq, dim); it becomes the child `transformer`, so its variables
live under `params/transformer` like the torch module's state under `transformer.`. It is called as
`transformer(x, train=train)` when its `__call__` takes a `train` keyword (or `**kwargs`), else as
`transformer(x)`. `depth`, `heads`, `dim_head` and `mlp_dim` are then ignored. Create it outside any other
module (or with `parent=None`), as with any Flax module handed to another as an attribute.

Quirks of vit-pytorch kept so weights transfer:
- `image_size` is a single int (torch computes the token grid with `conv_output_size(image_size, ...)`).
- The t2t transformers have one head with `dim_head` equal to the token width, so their attention has no output
  projection (`to_out` is torch's Identity); each ends with the ViT transformer's final LayerNorm. The last
  split has no transformer (an Identity in torch), only the Linear.
- The soft split pads with `stride // 2` whatever the kernel size.
- Between splits the tokens are folded back into a grid of `int(sqrt(n))` rows, whatever the input's aspect
  ratio: a non-square input is re-folded as if it were square (torch's `RearrangeImage`). An input whose token
  count is not divisible by that row count fails, as in torch.
- `pos_embedding` is (1, n + 1, dim) and `cls_token` is (1, 1, dim); the cls token is always prepended, and
  `pool='mean'` averages it with the patch tokens.
- An input smaller than `image_size` takes the first `n + 1` rows of the position embedding, whatever its shape.
- `num_classes=0` keeps an `mlp_head` with no outputs and returns (batch, 0), as torch does.

JAX-only options: `scan_layers`, `remat_policy` and `attention_impl`, vit.py's, passed to the ViT transformer (not
to the one-layer t2t transformers, nor to a plugged-in `transformer`, which carries its own).

Deliberate difference: vit-pytorch accepts an empty `t2t_layers` or a split larger than the image and fails only
in its forward pass; here both are refused at construction, with the value in the message.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
from einops import rearrange, repeat

from vit_flax.layers import (
    Linear, add_position_embedding, call_plugged_in, check_attention_impl, check_floating_input, check_keywords,
    conv_output_size, exists, randn, unfold,
)
from vit_flax.scan import check_remat_policy
from vit_flax.vit import Transformer

# helpers


def rearrange_image(x):
    """torch's `RearrangeImage`: tokens (b, n, c) back to a grid of int(sqrt(n)) rows, channels-last."""
    n = x.shape[1]
    rows = int(math.sqrt(n))
    if n % rows:
        raise ValueError(
            f'{n} tokens cannot be folded into {rows} rows (vit-pytorch folds tokens back into int(sqrt(n)) rows '
            f'between soft splits, so intermediate token grids must be square or nearly so)'
        )
    return rearrange(x, 'b (h w) c -> b h w c', h=rows)


def _as_pairs(t2t_layers):
    """Lists (from JSON configs) as tuples; anything else is left for the checks to name."""
    return tuple(tuple(layer) if isinstance(layer, (list, tuple)) else (layer,) for layer in t2t_layers)


def check_t2t_layers(image_size, t2t_layers, channels):
    """The token grid after every soft split, as torch computes it; refuses splits torch would fail on."""
    if isinstance(image_size, bool) or not isinstance(image_size, int):
        raise ValueError(f'T2TViT takes a single int image_size (square images), got image_size={image_size!r}')
    if channels < 1:
        raise ValueError(f'channels must be positive, got channels={channels}')
    t2t_layers = _as_pairs(t2t_layers)
    if not t2t_layers:
        raise ValueError(f't2t_layers must list at least one (kernel_size, stride), got t2t_layers={t2t_layers}')
    size = image_size
    for i, layer in enumerate(t2t_layers):
        if len(layer) != 2 or not all(isinstance(v, int) and v >= 1 for v in layer):
            raise ValueError(
                f't2t_layers[{i}]={layer} must be a (kernel_size, stride) pair of positive ints, '
                f'in t2t_layers={t2t_layers}'
            )
        kernel_size, stride = layer
        if size + 2 * (stride // 2) < kernel_size:
            raise ValueError(
                f't2t_layers[{i}]={layer}: kernel_size {kernel_size} is larger than the {size}-pixel grid '
                f'(padded by {stride // 2}) it splits, for image_size={image_size}, t2t_layers={t2t_layers}'
            )
        size = conv_output_size(size, kernel_size, stride, stride // 2)
    return size


# main class


class T2TViT(nn.Module):
    image_size: int
    num_classes: int
    dim: int
    depth: int | None = None
    heads: int | None = None
    mlp_dim: int | None = None
    pool: str = 'cls'
    channels: int = 3
    dim_head: int = 64
    dropout: float = 0.0
    emb_dropout: float = 0.0
    transformer: nn.Module | None = None
    t2t_layers: Sequence[tuple[int, int]] = ((7, 4), (3, 2), (3, 2))
    # JAX-only: vit.py's layer scan, remat and attention switch, passed to the ViT transformer
    scan_layers: bool = False
    remat_policy: str | None = None
    attention_impl: str = 'explicit'

    def __post_init__(self):
        check_keywords(self)
        check_remat_policy(self.remat_policy)
        check_attention_impl(self.attention_impl)
        if self.pool not in {'cls', 'mean'}:
            raise ValueError(f"pool type must be either cls (cls token) or mean (mean pooling), got pool={self.pool!r}")
        check_t2t_layers(self.image_size, self.t2t_layers, self.channels)
        object.__setattr__(self, 't2t_layers', _as_pairs(self.t2t_layers))  # hashable, whatever was passed
        if not exists(self.transformer):
            missing = [name for name in ('depth', 'heads', 'mlp_dim') if getattr(self, name) is None]
            if missing:
                raise ValueError(
                    f'depth, heads, and mlp_dim must be supplied (or a transformer); missing {", ".join(missing)}'
                )
        elif not isinstance(self.transformer, nn.Module):
            raise ValueError(f'transformer must be a Flax linen Module, got {type(self.transformer).__name__}')
        super().__post_init__()

    # the pieces of the forward pass, shared with distill.DistillableT2TViT

    def _to_patch_embedding(self, img, train: bool):
        """Four torch modules per soft split (unfold, transformer, ...), then the Linear."""
        if img.ndim != 4:
            raise ValueError(f'expected images of shape (batch, height, width, channels), got shape {img.shape}')
        if img.shape[-1] != self.channels:
            raise ValueError(f'expected {self.channels} channels (channels-last input), got shape {img.shape}')

        x = img
        layer_dim = self.channels
        for i, (kernel_size, stride) in enumerate(self.t2t_layers):
            layer_dim *= kernel_size**2
            if i > 0:
                x = rearrange_image(x)
            height, width = x.shape[1:3]
            if min(height, width) + 2 * (stride // 2) < kernel_size:
                raise ValueError(
                    f'input of size {img.shape[1:3]} is too small: soft split {i} (kernel_size={kernel_size}, '
                    f'stride={stride}) gets a grid of {(height, width)}'
                )
            x = unfold(x, kernel_size, stride, stride // 2)
            if i < len(self.t2t_layers) - 1:  # the last split has no transformer
                x = Transformer(
                    dim=layer_dim, depth=1, heads=1, dim_head=layer_dim, mlp_dim=layer_dim, dropout=self.dropout,
                    name=f'to_patch_embedding_{4 * i + 3}',
                )(x, train)
        return Linear(self.dim, name=f'to_patch_embedding_{4 * len(self.t2t_layers)}')(x)

    def _cls_and_pos_embedding(self):
        output_image_size = check_t2t_layers(self.image_size, self.t2t_layers, self.channels)
        pos_embedding = self.param('pos_embedding', randn, (1, output_image_size**2 + 1, self.dim))
        cls_token = self.param('cls_token', randn, (1, 1, self.dim))
        return cls_token, pos_embedding

    def _attend(self, x, train: bool):
        x = nn.Dropout(self.emb_dropout, deterministic=not train)(x)
        if exists(self.transformer):
            return call_plugged_in(self.transformer, x, train)  # adopted by Flax as the child 'transformer'
        transformer = Transformer(
            self.dim, self.depth, self.heads, self.dim_head, self.mlp_dim, self.dropout, scan_layers=self.scan_layers,
            remat_policy=self.remat_policy, attention_impl=self.attention_impl, name='transformer',
        )
        return transformer(x, train)

    def _mlp_head(self, x):
        return Linear(self.num_classes, name='mlp_head')(x)

    @nn.compact
    def __call__(self, img, train: bool = False):
        check_floating_input(self, 'img', img)
        x = self._to_patch_embedding(img, train)
        cls_token, pos_embedding = self._cls_and_pos_embedding()

        cls_tokens = repeat(cls_token, '() n d -> b n d', b=x.shape[0])
        x = jnp.concatenate((cls_tokens.astype(x.dtype), x), axis=1)
        x = add_position_embedding(x, pos_embedding, img.shape[1:3], self.image_size)
        x = self._attend(x, train)

        x = x.mean(axis=1) if self.pool == 'mean' else x[:, 0]
        return self._mlp_head(x)
