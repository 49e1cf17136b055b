"""NaViT for videos and volumes with register tokens, mirroring vit_pytorch/na_vit_nested_tensor_3d.py.

na_vit_nested_tensor.py's NaViT ("Patch n' Pack", Dehghani et al., 2023) on 3-D inputs: each video (or CT volume) of
its own number of frames, height and width is cut into `frame_patch_size` x `patch_size` x `patch_size` patches
(feature order `(c pf p1 p2)`, as vit-pytorch's), embedded (LayerNorm, Linear, LayerNorm, with biases), given
factorised position embeddings (one table per axis: frame, row, column) and preceded by `num_registers` learned
register tokens; a transformer runs over each video alone, one learned query per video pools it by attention
(no residual) and a bias-free LayerNorm and Linear give the logits. The transformer, its attention (separate query /
key / value projections, `qk_rmsnorm` as a bias-free LayerNorm over each head's features) and the pool are
na_vit_nested_tensor's, imported from there.

vit-pytorch runs every video as one sequence of a jagged nested tensor. JAX has no ragged arrays, so here the
videos are padded to one length (one row per video, the registers first) and attention is masked to the row's real
tokens; within a video the arithmetic is the same. `model.apply(variables, videos)` takes a flat list of
(frames, height, width, channels) arrays, channels-last (vit-pytorch: (channels, frames, height, width)), and
returns (len(videos), num_classes). The padded layout is worked out while tracing from the videos' shapes: under
`jax.jit` each new set of shapes compiles anew.

Quirks of vit-pytorch kept so weights transfer:
- torch's own LayerNorm without bias (`weight` only) before attention and feed-forward, after the transformer and on
  the head; the patch embedding's two LayerNorms have biases. The head's Linear has no bias.
- The position tables and the register tokens are drawn N(0, 0.02^2); the pool's query N(0, 1).
- The registers join after the position embeddings (they have none) and are dropped out by `emb_dropout` too.
- Token dropout takes a constant `token_dropout_prob` only and keeps `max(1, int((1 - p) * n))` of a video's n
  patch tokens (the product rounded in float32, as torch's tensor arithmetic does), those with the largest of n
  standard normal draws, in training only; the registers are always kept.

Fixes (vit-pytorch as released fails or misbehaves here):
- `token_dropout_prob=None` (the default) keeps every token in training, where vit-pytorch raises a TypeError
  comparing None with 0, as na_vit_nested_tensor.py's port does.
- vit-pytorch builds its jagged tensors with `torch.nested.nested_tensor`, which copies without autograd history,
  so its patch embedding, position embeddings, register tokens and pooling query get no gradient and never train.
  Here every parameter trains. The parity tests run vit-pytorch under `parity/na_vit_nested_tensor_3d.py:
  torch_keeps_gradients()` (`as_nested_tensor`, which keeps the history) to compare all gradients.
- A video with more frames than `max_frames`, or larger than `image_size`, has no position embedding: torch fails
  with an IndexError, this port with a ValueError naming the video. So do sides that are not multiples of the
  patch sizes (torch: an einops error).

rng streams: 'dropout' (embedding, attention and feed-forward dropout), 'token_dropout' (token dropout's draws;
`NaViT.token_dropout_draws` gives them), both in training only.

JAX-only option: `attention_impl`, na_vit's: 'explicit' (default) or 'xla' / 'cudnn' / 'auto' for
jax.nn.dot_product_attention with the same masks (vit-pytorch calls F.scaled_dot_product_attention).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange, repeat

from vit_flax.layers import LayerNorm, Linear, check_attention_impl, check_floating_input, check_keywords, pair, randn
from vit_flax.na_vit import TOKEN_DROPOUT, is_image, kept_token_indices
from vit_flax.na_vit_nested_tensor import Attention, NoBiasLayerNorm, Transformer

normal_002 = nn.initializers.normal(stddev=0.02)  # torch's nn.init.normal_(t, std=0.02)


def to_patches(volume, patch_size: int, frame_patch_size: int):
    """(frames, height, width, channels) -> (f * h * w, channels * pf * p * p), vit-pytorch's
    `c (f pf) (h p1) (w p2) -> f h w (c pf p1 p2)` flattened over (f h w)."""
    return rearrange(volume, '(f pf) (h p1) (w p2) c -> (f h w) (c pf p1 p2)', pf=frame_patch_size, p1=patch_size,
                     p2=patch_size)


def patch_positions(frames: int, rows: int, columns: int) -> np.ndarray:
    """(frames * rows * columns, 3) int32 (frame, row, column) of each patch in token order."""
    grid = np.meshgrid(np.arange(frames), np.arange(rows), np.arange(columns), indexing='ij')
    return np.stack(grid, -1).reshape(-1, 3).astype(np.int32)


class NaViT(nn.Module):
    image_size: int | tuple[int, int]
    max_frames: int
    patch_size: int
    frame_patch_size: int
    num_classes: int
    dim: int
    depth: int
    heads: int
    mlp_dim: int
    channels: int = 3
    dim_head: int = 64
    dropout: float = 0.0
    emb_dropout: float = 0.0
    num_registers: int = 4
    qk_rmsnorm: bool = True
    token_dropout_prob: float | None = None
    attention_impl: str = 'explicit'  # JAX-only, see the module docstring

    def __post_init__(self):
        check_keywords(self)
        check_attention_impl(self.attention_impl)
        if callable(self.token_dropout_prob):
            raise ValueError('this NaViT takes a constant token_dropout_prob (vit-pytorch na_vit_nested_tensor_3d), '
                             f'got {self.token_dropout_prob!r}')
        image_height, image_width = pair(self.image_size)
        if not isinstance(self.patch_size, int):
            raise ValueError(f'patch_size must be a positive int, got patch_size={self.patch_size!r}')
        if image_height % self.patch_size or image_width % self.patch_size:
            raise ValueError(f'Image dimensions must be divisible by the patch size: image_size='
                             f'{(image_height, image_width)}, patch_size={self.patch_size}')
        if self.max_frames % self.frame_patch_size:
            raise ValueError(f'max_frames={self.max_frames} must be divisible by '
                             f'frame_patch_size={self.frame_patch_size}')
        super().__post_init__()

    def check_volume(self, volume, where: str) -> tuple[int, int, int]:
        """The (frames, rows, columns) patch grid of one (frames, height, width, channels) video, or a ValueError
        naming it."""
        if not is_image(volume) or volume.ndim != 4 or volume.shape[-1] != self.channels:
            shape = getattr(volume, 'shape', type(volume).__name__)
            raise ValueError(f'{where}: expected a volume of shape (frames, height, width, {self.channels}), '
                             f'got {shape}')
        frames, height, width = volume.shape[:3]
        pf, p = self.frame_patch_size, self.patch_size
        if not (frames and height and width) or frames % pf or height % p or width % p:
            raise ValueError(f'{where}: frames {frames} must be a positive multiple of frame_patch_size {pf}, and '
                             f'height and width {(height, width)} positive multiples of patch_size {p}')
        max_height, max_width = pair(self.image_size)
        if frames > self.max_frames or height > max_height or width > max_width:
            raise ValueError(f'{where}: size {(frames, height, width)} exceeds (max_frames, *image_size) '
                             f'{(self.max_frames, max_height, max_width)}: there is no position embedding beyond it')
        return frames // pf, height // p, width // p

    def kept_tokens(self, num_tokens: int) -> int | None:
        """How many of a video's patch tokens token dropout keeps in training (vit-pytorch's float32
        `((1. - p) * seq_lens).int().clamp(min = 1)`); None when it is off."""
        if not self.token_dropout_prob:
            return None
        return max(1, int(np.float32(1.0 - self.token_dropout_prob) * np.float32(num_tokens)))

    def token_dropout_draws(self, volumes):
        """The standard normal draw per video, in order, whose largest entries pick its kept tokens in training
        (`apply(..., rngs={'token_dropout': key}, method=NaViT.token_dropout_draws)` gives the draws `__call__`
        makes)."""
        key = self.make_rng(TOKEN_DROPOUT)
        return [jax.random.normal(jax.random.fold_in(key, i), (int(np.prod(self.check_volume(v, f'volume {i}'))),))
                for i, v in enumerate(volumes)]

    @nn.compact
    def __call__(self, volumes, train: bool = False):
        check_floating_input(self, 'volumes', volumes)
        if is_image(volumes) or not len(volumes) or not all(is_image(volume) for volume in volumes):
            raise ValueError('this NaViT takes a flat list of (frames, height, width, channels) volumes')
        grids = [self.check_volume(volume, f'volume {i}') for i, volume in enumerate(volumes)]

        tokens = [to_patches(jnp.asarray(v), self.patch_size, self.frame_patch_size) for v in volumes]
        positions = [jnp.asarray(patch_positions(*grid)) for grid in grids]
        if train and self.kept_tokens(1) is not None:
            draws = self.token_dropout_draws(volumes)
            keep = [kept_token_indices(d, self.kept_tokens(len(p))) for d, p in zip(draws, positions)]
            tokens = [t[k] for t, k in zip(tokens, keep)]
            positions = [p[k] for p, k in zip(positions, keep)]

        # one row per video, padded to the longest
        lengths = [len(p) for p in positions]
        length = max(lengths)
        pad = lambda a: jnp.pad(a, [(0, length - len(a)), (0, 0)])
        patches = jnp.stack([pad(t) for t in tokens])
        fhw = jnp.stack([pad(p) for p in positions])
        valid = np.arange(length)[None, :] < np.asarray(lengths)[:, None]

        x = LayerNorm(name='to_patch_embedding_0')(patches)
        x = Linear(self.dim, name='to_patch_embedding_1')(x)
        x = LayerNorm(name='to_patch_embedding_2')(x)

        image_height, image_width = pair(self.image_size)
        pos_embed_frame = self.param('pos_embed_frame', normal_002, (self.max_frames // self.frame_patch_size,
                                                                      self.dim))
        pos_embed_height = self.param('pos_embed_height', normal_002, (image_height // self.patch_size, self.dim))
        pos_embed_width = self.param('pos_embed_width', normal_002, (image_width // self.patch_size, self.dim))
        pos_embed = pos_embed_frame[fhw[..., 0]] + pos_embed_height[fhw[..., 1]] + pos_embed_width[fhw[..., 2]]
        x = x + pos_embed.astype(x.dtype)

        # the registers before each video's tokens
        register_tokens = self.param('register_tokens', normal_002, (self.num_registers, self.dim))
        x = jnp.concatenate((repeat(register_tokens.astype(x.dtype), 'n d -> b n d', b=len(volumes)), x), axis=1)
        valid = np.concatenate((np.ones((len(volumes), self.num_registers), bool), valid), axis=1)
        mask = jnp.asarray(valid)[:, None, None, :]  # each query sees its own video's tokens, none of the padding

        x = nn.Dropout(self.emb_dropout, deterministic=not train)(x)
        x = Transformer(self.dim, self.depth, self.heads, self.dim_head, self.mlp_dim, self.dropout, self.qk_rmsnorm,
                        self.attention_impl, name='transformer')(x, mask=mask, train=train)

        # one query per video, attending to its tokens (registers included); no residual
        queries = repeat(self.param('attn_pool_queries', randn, (self.dim,)), 'd -> b 1 d', b=len(volumes))
        pooled = Attention(self.dim, self.heads, self.dim_head, attention_impl=self.attention_impl, name='attn_pool')(
            queries.astype(x.dtype), context=x, mask=mask, train=train)
        x = rearrange(pooled, 'b 1 d -> b d')

        x = NoBiasLayerNorm(name='mlp_head_0')(x)
        return Linear(self.num_classes, use_bias=False, name='mlp_head_1')(x)
