"""SimpleViT with query-key normalisation (QK RMSNorm, as in "Scaling Vision Transformers to 22 Billion Parameters",
Dehghani et al., 2023), mirroring vit_pytorch/simple_vit_with_qk_norm.py: simple_vit.py's model whose attention
RMS-normalises each head's queries and keys with a learned per-head gamma, and takes no 1 / sqrt(dim_head) scale.

Parameter tree = vit-pytorch's module tree: `transformer.layers.0.0.q_norm.gamma` lives at
`params/transformer/layers_0_0/q_norm/gamma`, (heads, 1, dim_head), initialised to 1 / sqrt(dim_head) so that
`normalize(q) * sqrt(dim_head) * gamma` starts as the unit vector (layers.RMSNorm). FeedForward and the layer stack are simple_vit.py's.

Fix (vit-pytorch 1.26.11 cannot classify): vit-pytorch's `linear_head` is a bare `LayerNorm(dim)`, so the model
returns (batch, dim) features and ignores `num_classes`. The file was written from simple_vit.py while that file's
head had lost its Linear (vit-pytorch commit 3e5d1be moved the head's LayerNorm into the Transformer; 950c901 put
`nn.Linear(dim, num_classes)` back there, four days before this file was added, which kept the LayerNorm). Here
`linear_head` is simple_vit.py's `Linear(dim, num_classes)` after the Transformer's final LayerNorm, returning
(batch, num_classes) logits: torch's `linear_head.weight` / `bias` are then the Linear's, (num_classes, dim) and
(num_classes,), so a released vit-pytorch state dict (a (dim,) LayerNorm there) is refused by shape, and an export
loads into vit-pytorch's class patched the same way (parity/simple_vit_with_qk_norm.py), not into the released one.

Quirks of vit-pytorch kept so weights transfer:
- The position embedding is built for `image_size`; an input must give the same number of patches (torch adds
  the embedding by broadcasting, so only the count is checked, not the height and width).
- `num_classes=0` keeps a `linear_head` with no outputs, returning (batch, 0).

No random draws: `train` is accepted for a uniform interface.

JAX-only options (defaults keep vit-pytorch's behaviour and tree; see vit_flax/scan.py): `scan_layers` (parameters
stacked under `params/transformer/layers_scan/{0,1}`), `remat_policy`, and `attention_impl` ('explicit', whose maps
recorder.Recorder records, or 'xla' / 'cudnn' / 'auto' for jax.nn.dot_product_attention on the normalised queries
and keys, scale 1).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from einops import rearrange

from vit_flax import simple_vit
from vit_flax.layers import LayerNorm, Linear, RMSNorm, multi_head_attention


class Attention(nn.Module):
    dim: int
    heads: int = 8
    dim_head: int = 64
    attention_impl: str = 'explicit'  # JAX-only, see the module docstring

    @nn.compact
    def __call__(self, x):
        inner_dim = self.dim_head * self.heads
        x = LayerNorm(name='norm')(x)

        q, k, v = jnp.split(Linear(inner_dim * 3, use_bias=False, name='to_qkv')(x), 3, axis=-1)
        q, k = (rearrange(t, 'b n (h d) -> b h n d', h=self.heads) for t in (q, k))
        q = RMSNorm(self.dim_head, self.heads, gamma_init=self.dim_head**-0.5, name='q_norm')(q)
        k = RMSNorm(self.dim_head, self.heads, gamma_init=self.dim_head**-0.5, name='k_norm')(k)
        q, k = (rearrange(t, 'b h n d -> b n (h d)') for t in (q, k))

        out = multi_head_attention(self, q, k, v, self.heads, 1.0, self.attention_impl)
        return Linear(self.dim, use_bias=False, name='to_out')(out)


class Layer(simple_vit.Layer):
    attention_class = Attention


class Transformer(simple_vit.Transformer):
    """simple_vit.py's stack (scan, remat, final LayerNorm) of layers with the q/k-normalised attention."""

    layer_class = Layer


class SimpleViT(simple_vit.SimpleViT):
    """simple_vit.SimpleViT (keywords, checks, patch embedding, head) over the q/k-normalised Transformer; the head
    is its `Linear(dim, num_classes)`, the fix described in the module docstring."""

    transformer_class = Transformer
