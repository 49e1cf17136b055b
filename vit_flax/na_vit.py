"""NaViT ("Patch n' Pack: NaViT, a Vision Transformer for any Aspect Ratio and Resolution", Dehghani et al., 2023),
mirroring vit_pytorch/na_vit.py.

Images of any size (multiples of `patch_size`, up to `image_size`) are cut into patches and several images share
one sequence; attention masks keep each image to itself and padding out of sight, and one learned query per image
pools it (attention pooling) before the head.

JAX needs static shapes to compile, so there are two ways in:

- `model.apply(variables, batched_images)`: what vit-pytorch's forward takes, channels-last. A list of lists of
  (height, width, channels) images, each inner list one sequence, or a flat list (one sequence, or grouped by
  `group_images=True, group_max_seq_len=...`). Returns logits (number of images, num_classes) in input order.
  The packing is worked out while tracing, from the images' shapes: under `jax.jit` each new set of shapes
  compiles anew, which suits evaluation and parity, not a training stream.
- `model.apply(variables, batch)` with a `PackedBatch` of fixed shape (rows, max_seq_len) and `max_images` image
  slots per row, made on the host by `pack` or `packed_dataset` (grain's first-fit packing). A jitted step
  compiles once per (rows, max_seq_len, max_images). Returns logits (rows, max_images, num_classes); slots beyond
  a row's `num_images` hold meaningless values (`batch.image_mask` says which are real).

Token dropout (`token_dropout_prob`: a constant in [0, 1) or a function of (height, width)) keeps
`max(1, int(n * (1 - p)))` of an image's n patches, those with the largest of n standard normal draws, as
vit-pytorch does; only with `train=True`. For image lists the draws come from the rng stream 'token_dropout'
(`NaViT.token_dropout_draws` gives them, so tests can hand vit-pytorch the same ones). For packed batches the packer
drops tokens on the host (its `train=True`), because which tokens survive decides how many images fit a row.

Quirks of vit-pytorch kept so weights transfer:
- Its LayerNorm has no bias parameter but a persistent zero `beta` buffer: Flax keeps it in the 'buffers'
  collection (saved and loaded with the weights; `apply` needs it next to 'params').
- The q/k RMSNorm is `normalize(x) * sqrt(dim_head) * gamma`, so attention uses scale 1.
- The attention pool normalises its queries but attends over the transformer's output as is, and adds the
  queries back (a residual); the head's Linear has no bias.
- Position embeddings are factorised, one table per axis, sized for `image_size`: a larger image has no
  embedding (torch raises an IndexError; here a ValueError names the image).

JAX-only option: `attention_impl`, 'explicit' (default: the softmax of the masked q k^T, written out) or 'xla' /
'cudnn' / 'auto' for jax.nn.dot_product_attention with the same masks (vit-pytorch calls F.scaled_dot_product_attention
here). Training with attention dropout > 0 keeps the explicit path, which the fused kernels cannot drop out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange, repeat

from vit_flax.extras import require
from vit_flax.layers import LayerNorm as _BiasedLayerNorm
from vit_flax.layers import (
    Linear, attention_weights, check_attention_impl, check_floating_input, check_keywords, default, fused_attention,
    RMSNorm, gelu, pair, randn, uses_fused_attention,
)

if TYPE_CHECKING:
    import grain

TOKEN_DROPOUT = 'token_dropout'  # rng stream of token dropout for image lists


# image lists: checks, patches, positions, grouping


def is_image(x) -> bool:
    return hasattr(x, 'shape') and hasattr(x, 'ndim')


def check_image(image, patch_size: int, channels: int, image_size, where: str = 'image') -> tuple[int, int]:
    """The (rows, columns) patch grid of one (height, width, channels) image, or a ValueError naming it."""
    if not is_image(image) or image.ndim != 3 or image.shape[-1] != channels:
        shape = getattr(image, 'shape', type(image).__name__)
        raise ValueError(f'{where}: expected an image of shape (height, width, {channels}), got {shape}')
    height, width = image.shape[:2]
    if height % patch_size or width % patch_size or not height or not width:
        raise ValueError(f'{where}: height and width {(height, width)} must be positive multiples of the patch size '
                         f'{patch_size}')
    max_height, max_width = pair(image_size)
    if height > max_height or width > max_width:
        raise ValueError(f'{where}: size {(height, width)} exceeds image_size {(max_height, max_width)}: there is no '
                         'position embedding beyond it')
    return height // patch_size, width // patch_size


def to_patches(image, patch_size: int):
    """(height, width, channels) -> (h * w, channels * p * p), vit-pytorch's `c (h p1) (w p2) -> (h w) (c p1 p2)`."""
    return rearrange(image, '(h p1) (w p2) c -> (h w) (c p1 p2)', p1=patch_size, p2=patch_size)


def patch_positions(rows: int, columns: int) -> np.ndarray:
    """(rows * columns, 2) int32 (row, column) of each patch in token order (vit-pytorch's `posemb_grid`)."""
    return np.stack(np.meshgrid(np.arange(rows), np.arange(columns), indexing='ij'), -1).reshape(-1, 2).astype(np.int32)


def token_dropout_fn(token_dropout_prob) -> Callable[[int, int], float] | None:
    """vit-pytorch's `calc_token_dropout`: None, or a function of (height, width) giving the fraction to drop."""
    if token_dropout_prob is None:
        return None
    if callable(token_dropout_prob):
        return token_dropout_prob
    p = float(token_dropout_prob)
    return lambda height, width: p


def num_kept_tokens(num_tokens: int, drop_fraction: float) -> int:
    return max(1, int(num_tokens * (1 - drop_fraction)))


def kept_token_indices(draws, num_keep: int):
    """The indices of the `num_keep` largest draws, largest first (torch's `topk(...).indices`); numpy or jax."""
    if isinstance(draws, np.ndarray):
        return np.argsort(-draws, kind='stable')[:num_keep]
    return jax.lax.top_k(draws, num_keep)[1]


def group_images_by_max_seq_len(
    images: Sequence, patch_size: int, calc_token_dropout=None, max_seq_len: int = 2048
) -> list[list]:
    """vit-pytorch's greedy grouping, in order: a new sequence starts when the next image's tokens (after token
    dropout, counted as `int(n * (1 - p))`) would pass `max_seq_len`."""
    if isinstance(calc_token_dropout, (float, int)):
        calc_token_dropout = token_dropout_fn(calc_token_dropout)
    calc_token_dropout = calc_token_dropout or (lambda height, width: 0.0)

    groups, group, seq_len = [], [], 0
    for index, image in enumerate(images):
        if not is_image(image) or image.ndim != 3:
            raise ValueError(f'image {index}: expected an array (height, width, channels), got '
                             f'{getattr(image, "shape", type(image).__name__)}')
        height, width = image.shape[:2]
        image_seq_len = int((height // patch_size) * (width // patch_size) * (1 - calc_token_dropout(height, width)))
        if image_seq_len > max_seq_len:
            raise ValueError(f'image {index} with dimensions {(height, width)} gives {image_seq_len} tokens, more than '
                             f'group_max_seq_len={max_seq_len}')
        if seq_len + image_seq_len > max_seq_len:
            groups.append(group)
            group, seq_len = [], 0
        group.append(image)
        seq_len += image_seq_len
    if group:
        groups.append(group)
    return groups


# packed batches


class PackedBatch(flax.struct.PyTreeNode):
    """Images packed into fixed-shape rows. `max_images` (image slots per row) is static: part of the compiled shape.

    patches: (rows, max_seq_len, channels * p * p) float; padding is zero.
    positions: (rows, max_seq_len, 2) int32 patch (row, column) in its image; 0 for padding.
    image_ids: (rows, max_seq_len) int32 slot of the token's image in its row, -1 for padding.
    num_images: (rows,) int32 images in each row.
    """

    patches: Any
    positions: Any
    image_ids: Any
    num_images: Any
    max_images: int = flax.struct.field(pytree_node=False)

    @property
    def token_mask(self):
        return self.image_ids >= 0

    @property
    def image_mask(self):
        """(rows, max_images): True for the slots that hold an image."""
        return jnp.arange(self.max_images) < self.num_images[:, None]

    @property
    def fill(self) -> float:
        """Fraction of token positions that are real tokens (not padding): the packing efficiency."""
        return float(np.mean(np.asarray(self.image_ids) >= 0))


def _tokens(model, image, rng: np.random.Generator | None, where: str):
    """One image's patches and positions on the host, with the model's token dropout when `rng` is given."""
    rows, columns = check_image(image, model.patch_size, model.channels, model.image_size, where)
    check_floating_input(model, where, image)
    patches = to_patches(np.asarray(image, np.float32), model.patch_size)
    positions = patch_positions(rows, columns)
    if rng is not None:
        num_keep = model.kept_tokens(len(patches), *np.shape(image)[:2])
        keep = kept_token_indices(rng.standard_normal(len(patches)), num_keep)
        patches, positions = patches[keep], positions[keep]
    return patches, positions


def _grain(part: str):
    """grain, which packing needs and the models do not: the [train] extra."""
    require('train', part)
    import grain

    return grain


def packed_dataset(
    model: 'NaViT',
    dataset: grain.MapDataset,
    *,
    rows: int,
    max_seq_len: int,
    max_images_per_seq: int,
    train: bool = False,
    seed: int = 0,
    shuffle_rows: bool = False,
    image_key: str = 'image',
    label_key: str = 'label',
) -> grain.IterDataset:
    """A grain pipeline from a MapDataset of records {image_key: (h, w, c) image, label_key: int} to packed
    training batches.

    Each element is `(PackedBatch, labels, example_index)`: labels and the record's index in `dataset` per
    image slot, (rows, max_images_per_seq) int32, -1 in empty slots. Packing is grain's first-fit over `rows` rows
    of `max_seq_len` tokens and `max_images_per_seq` images each, so every batch has the same shape (the last is
    padded with empty rows) and a jitted step compiles once. With `train=True` token dropout (the model's
    `token_dropout_prob`) is applied first, from grain's per-record random streams (reproducible from `seed`).
    """
    grain = _grain('na_vit.packed_dataset')
    if max_images_per_seq < 1 or max_seq_len < 1 or rows < 1:
        raise ValueError(f'rows, max_seq_len and max_images_per_seq must be positive, got {rows}, {max_seq_len}, '
                         f'{max_images_per_seq}')
    dropping = train and model.kept_tokens(1, *pair(model.image_size)) is not None

    def tokens(index_and_record, rng):
        index, record = index_and_record
        patches, positions = _tokens(model, record[image_key], rng, f'record {index}')
        if len(patches) > max_seq_len:
            raise ValueError(f'record {index}: {len(patches)} tokens do not fit max_seq_len={max_seq_len}')
        label = record.get(label_key, -1) if isinstance(record, dict) else -1
        return {'patches': patches, 'positions': positions,
                'label': np.asarray([label], np.int32), 'index': np.asarray([index], np.int32)}

    if not isinstance(dataset, grain.MapDataset):
        raise TypeError(f'packed_dataset takes a grain.MapDataset (shuffle and repeat it first), got {type(dataset)}')
    indexed = dataset.map_with_index(lambda index, record: (index, record))
    per_image = indexed.random_map(tokens, seed=seed) if dropping else indexed.map(lambda x: tokens(x, None))
    packed = grain.experimental.FirstFitPackIterDataset(
        per_image.to_iter_dataset(),
        length_struct={'patches': max_seq_len, 'positions': max_seq_len, 'label': max_images_per_seq,
                       'index': max_images_per_seq},
        num_packing_bins=rows,
        seed=seed,
        shuffle_bins=shuffle_rows,
        max_sequences_per_bin=max_images_per_seq,
    )
    return packed.batch(rows).map(lambda batch: _to_packed_batch(batch, rows, max_images_per_seq))


def _to_packed_batch(batch: dict, rows: int, max_images: int):
    """grain's packed features -> (PackedBatch, labels, example_index), padded to `rows` rows."""
    missing = rows - batch['patches'].shape[0]
    if missing:  # the stream's end: empty rows keep the shape
        batch = {k: np.concatenate([v, np.zeros((missing, *v.shape[1:]), v.dtype)]) for k, v in batch.items()}
    occupied = batch['label_segment_ids'] > 0
    packed = PackedBatch(
        patches=batch['patches'].astype(np.float32),
        positions=np.where(batch['patches_segment_ids'][..., None] > 0, batch['positions'], 0).astype(np.int32),
        image_ids=(batch['patches_segment_ids'] - 1).astype(np.int32),
        num_images=occupied.sum(-1).astype(np.int32),
        max_images=max_images,
    )
    return packed, np.where(occupied, batch['label'], -1).astype(np.int32), np.where(
        occupied, batch['index'], -1).astype(np.int32)


def pack(
    model: 'NaViT',
    images: Sequence,
    labels: Sequence[int] | None = None,
    *,
    max_seq_len: int,
    max_images_per_seq: int,
    train: bool = False,
    seed: int = 0,
):
    """Packs a list of images into one `PackedBatch` with as few rows as first-fit needs.

    Returns (PackedBatch, labels, example_index) as `packed_dataset` does; `example_index[r, s]` is the position in
    `images` of the image in row r, slot s. `unpack(logits, example_index)` restores input order.
    """
    if not len(images):
        raise ValueError('pack needs at least one image')
    records = [{'image': image, 'label': -1 if labels is None else int(labels[i])} for i, image in enumerate(images)]
    rows = len(records)  # first-fit over as many rows as images: every image finds a place in the first round
    batch, packed_labels, index = next(iter(packed_dataset(
        model, _grain('na_vit.pack').MapDataset.source(records), rows=rows, max_seq_len=max_seq_len,
        max_images_per_seq=max_images_per_seq, train=train, seed=seed)))
    used = int(np.max(np.nonzero(batch.num_images)[0])) + 1
    trim = PackedBatch(batch.patches[:used], batch.positions[:used], batch.image_ids[:used], batch.num_images[:used],
                       max_images_per_seq)
    return trim, packed_labels[:used], index[:used]


def unpack(per_slot, example_index):
    """(rows, max_images, ...) per-slot values -> (number of images, ...) in the order given by `example_index`."""
    example_index = np.asarray(example_index)
    rows, slots = np.nonzero(example_index >= 0)
    order = np.argsort(example_index[rows, slots], kind='stable')
    return per_slot[rows[order], slots[order]]


# modules


class NoBiasLayerNorm(nn.Module):
    """vit-pytorch na_vit's LayerNorm: a learned `gamma` and a zero `beta` buffer (torch's LayerNorm numerics)."""

    @nn.compact
    def __call__(self, x):
        dim = x.shape[-1]
        gamma = self.param('gamma', nn.initializers.ones, (dim,))
        beta = self.variable('buffers', 'beta', lambda: jnp.zeros((dim,), jnp.float32)).value
        x = _BiasedLayerNorm(use_bias=False, use_scale=False)(x)
        return x * gamma.astype(x.dtype) + beta.astype(x.dtype)


class FeedForward(nn.Module):
    """vit-pytorch's `FeedForward` is an nn.Sequential: submodules are named by their index. `norm` is the
    LayerNorm flavour (na_vit_nested_tensor uses torch's own without bias)."""

    dim: int
    hidden_dim: int
    dropout: float = 0.0
    norm: Callable[..., nn.Module] = NoBiasLayerNorm

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = self.norm(name='0')(x)
        x = gelu(Linear(self.hidden_dim, name='1')(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = Linear(self.dim, name='4')(x)
        return nn.Dropout(self.dropout, deterministic=not train)(x)


class Attention(nn.Module):
    """Masked attention with q/k RMSNorm; `context` gives the keys and values (attention pooling)."""

    dim: int
    heads: int = 8
    dim_head: int = 64
    dropout: float = 0.0
    attention_impl: str = 'explicit'  # JAX-only, see the module docstring

    @nn.compact
    def __call__(self, x, context=None, mask=None, train: bool = False):
        inner_dim = self.dim_head * self.heads
        x = NoBiasLayerNorm(name='norm')(x)
        kv_input = default(context, x)

        q = Linear(inner_dim, use_bias=False, name='to_q')(x)
        k, v = jnp.split(Linear(inner_dim * 2, use_bias=False, name='to_kv')(kv_input), 2, axis=-1)
        q, k, v = (rearrange(t, 'b n (h d) -> b h n d', h=self.heads) for t in (q, k, v))
        q = RMSNorm(self.dim_head, self.heads, name='q_norm')(q)
        k = RMSNorm(self.dim_head, self.heads, name='k_norm')(k)

        # scale 1: the RMSNorm already multiplies by sqrt(dim_head). A row with no key allowed (an empty image slot
        # of the pool, a padding token) is never read: the explicit path gives it uniform weights instead of torch's
        # NaN or zeros, the fused one lets it see every key (layers.fused_attention).
        if uses_fused_attention(self.attention_impl, self.dropout, train):
            q, k, v = (rearrange(t, 'b h n d -> b n h d') for t in (q, k, v))
            out = rearrange(fused_attention(q, k, v, 1.0, self.attention_impl, mask), 'b n h d -> b n (h d)')
        else:
            attn = attention_weights(q, k, scale=1.0, mask=mask)
            attn = nn.Dropout(self.dropout, deterministic=not train)(attn)
            out = rearrange(jnp.einsum('bhij,bhjd->bhid', attn, v), 'b h n d -> b n (h d)')
        out = Linear(self.dim, use_bias=False, name='to_out_0')(out)
        return nn.Dropout(self.dropout, deterministic=not train)(out)


class Transformer(nn.Module):
    dim: int
    depth: int
    heads: int
    dim_head: int
    mlp_dim: int
    dropout: float = 0.0
    attention_impl: str = 'explicit'

    @nn.compact
    def __call__(self, x, mask=None, train: bool = False):
        for i in range(self.depth):
            x = Attention(self.dim, self.heads, self.dim_head, self.dropout, self.attention_impl, name=f'layers_{i}_0')(
                x, mask=mask, train=train) + x
            x = FeedForward(self.dim, self.mlp_dim, self.dropout, name=f'layers_{i}_1')(x, train) + x
        return NoBiasLayerNorm(name='norm')(x)


class NaViT(nn.Module):
    image_size: int | tuple[int, int]
    patch_size: int
    num_classes: int
    dim: int
    depth: int
    heads: int
    mlp_dim: int
    channels: int = 3
    dim_head: int = 64
    dropout: float = 0.0
    emb_dropout: float = 0.0
    token_dropout_prob: float | Callable[[int, int], float] | None = None
    attention_impl: str = 'explicit'  # JAX-only, see the module docstring

    def __post_init__(self):
        check_keywords(self)
        check_attention_impl(self.attention_impl)
        image_height, image_width = pair(self.image_size)
        if not isinstance(self.patch_size, int):
            raise ValueError(f'patch_size must be a positive int, got patch_size={self.patch_size!r}')
        if image_height % self.patch_size or image_width % self.patch_size:
            raise ValueError(f'Image dimensions must be divisible by the patch size: image_size='
                             f'{(image_height, image_width)}, patch_size={self.patch_size}')
        super().__post_init__()

    # image lists -> one packed batch, while tracing

    def _groups(self, batched_images, group_images: bool, group_max_seq_len: int, train: bool) -> list[list]:
        if is_image(batched_images) or not len(batched_images):
            raise ValueError('NaViT takes a list of images or a list of lists of images (or a PackedBatch), got '
                             f'{getattr(batched_images, "shape", batched_images)!r}')
        if group_images:
            calc = token_dropout_fn(self.token_dropout_prob) if train else None
            return group_images_by_max_seq_len(batched_images, self.patch_size, calc, group_max_seq_len)
        if is_image(batched_images[0]):
            return [list(batched_images)]
        return [list(group) for group in batched_images]

    def token_dropout_draws(self, batched_images, group_images=False, group_max_seq_len=2048):
        """The standard normal draw per image, in order, whose largest entries pick its kept tokens in training
        (`apply(..., rngs={'token_dropout': key}, method=NaViT.token_dropout_draws)` gives the draws the same
        `__call__` makes)."""
        groups = self._groups(batched_images, group_images, group_max_seq_len, train=True)
        key = self.make_rng(TOKEN_DROPOUT)
        images = [image for group in groups for image in group]
        return [jax.random.normal(jax.random.fold_in(key, i), ((image.shape[0] // self.patch_size)
                                                              * (image.shape[1] // self.patch_size),))
                for i, image in enumerate(images)]

    def kept_tokens(self, num_tokens: int, height: int, width: int) -> int | None:
        """How many of an image's tokens token dropout keeps in training; None when it is off."""
        calc = token_dropout_fn(self.token_dropout_prob)
        return None if calc is None else num_kept_tokens(num_tokens, calc(height, width))

    def _pack_lists(self, groups, train: bool):
        dropping = train and self.kept_tokens(1, *pair(self.image_size)) is not None
        draws = self.token_dropout_draws(groups) if dropping else None
        rows, counter = [], 0
        for g, group in enumerate(groups):
            patches, positions, ids = [], [], []
            for j, image in enumerate(group):
                grid = check_image(image, self.patch_size, self.channels, self.image_size, f'group {g}, image {j}')
                tokens, pos = to_patches(jnp.asarray(image), self.patch_size), jnp.asarray(patch_positions(*grid))
                if dropping:
                    keep = kept_token_indices(draws[counter], self.kept_tokens(len(pos), *image.shape[:2]))
                    tokens, pos = tokens[keep], pos[keep]
                counter += 1
                patches.append(tokens)
                positions.append(pos)
                ids.append(np.full(len(pos), j, np.int32))
            rows.append((jnp.concatenate(patches), jnp.concatenate(positions), np.concatenate(ids)))

        length = max(len(ids) for _, _, ids in rows)
        pad = lambda a, value=0: jnp.pad(a, [(0, length - len(a))] + [(0, 0)] * (a.ndim - 1), constant_values=value)
        num_images = np.array([len(group) for group in groups], np.int32)
        return PackedBatch(
            patches=jnp.stack([pad(p) for p, _, _ in rows]),
            positions=jnp.stack([pad(q) for _, q, _ in rows]),
            image_ids=jnp.asarray(np.stack([np.pad(i, (0, length - len(i)), constant_values=-1) for _, _, i in rows])),
            num_images=jnp.asarray(num_images),
            max_images=int(num_images.max()),
        ), num_images

    # the model; na_vit_nested_tensor.NaViT swaps the blocks

    pool_residual = True  # the pooled token is queries + attention (vit-pytorch's na_vit), or the attention alone

    @nn.nowrap
    def patch_embedding_norm(self, name: str) -> nn.Module:
        return NoBiasLayerNorm(name=name)

    @nn.nowrap
    def norm(self, name: str) -> nn.Module:
        return NoBiasLayerNorm(name=name)

    @nn.nowrap
    def transformer(self) -> nn.Module:
        return Transformer(self.dim, self.depth, self.heads, self.dim_head, self.mlp_dim, self.dropout,
                           self.attention_impl, name='transformer')

    @nn.nowrap
    def attention_pool(self) -> nn.Module:
        return Attention(self.dim, self.heads, self.dim_head, attention_impl=self.attention_impl, name='attn_pool')

    @nn.compact
    def _logits_per_slot(self, batch: PackedBatch, train: bool):
        image_height, image_width = pair(self.image_size)
        x = self.patch_embedding_norm(name='to_patch_embedding_0')(batch.patches)
        x = Linear(self.dim, name='to_patch_embedding_1')(x)
        x = self.patch_embedding_norm(name='to_patch_embedding_2')(x)

        pos_embed_height = self.param('pos_embed_height', randn, (image_height // self.patch_size, self.dim))
        pos_embed_width = self.param('pos_embed_width', randn, (image_width // self.patch_size, self.dim))
        x = x + pos_embed_height[batch.positions[..., 0]] + pos_embed_width[batch.positions[..., 1]]
        x = nn.Dropout(self.emb_dropout, deterministic=not train)(x)

        # each token sees the tokens of its own image; padding is seen by none
        ids, token_mask = batch.image_ids, batch.token_mask
        attn_mask = (ids[:, :, None] == ids[:, None, :]) & token_mask[:, None, :]
        x = self.transformer()(x, mask=attn_mask[:, None], train=train)

        # one query per image slot, attending to that image's tokens
        queries = repeat(self.param('attn_pool_queries', randn, (self.dim,)), 'd -> b n d', b=x.shape[0],
                         n=batch.max_images).astype(x.dtype)
        pool_mask = (jnp.arange(batch.max_images)[None, :, None] == ids[:, None, :]) & token_mask[:, None, :]
        pooled = self.attention_pool()(queries, context=x, mask=pool_mask[:, None], train=train)
        x = pooled + queries if self.pool_residual else pooled

        x = self.norm(name='mlp_head_0')(x)
        return Linear(self.num_classes, use_bias=False, name='mlp_head_1')(x)

    def __call__(self, batched_images, group_images: bool = False, group_max_seq_len: int = 2048,
                 train: bool = False):
        if isinstance(batched_images, PackedBatch):
            check_floating_input(self, 'batched_images.patches', batched_images.patches)
            return self._logits_per_slot(batched_images, train)
        check_floating_input(self, 'batched_images', batched_images)
        groups = self._groups(batched_images, group_images, group_max_seq_len, train)
        batch, num_images = self._pack_lists(groups, train)
        logits = self._logits_per_slot(batch, train)
        # every group's images in order, as torch's x[is_images]
        rows = np.repeat(np.arange(len(num_images)), num_images)
        slots = np.concatenate([np.arange(n) for n in num_images])
        return logits[rows, slots]
