"""optax AdamW with linear warmup and cosine decay, gradient clipping, and weight decay on weights only."""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np
import optax
from flax import traverse_util


def learning_rate_schedule(config) -> optax.Schedule:
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.learning_rate,
        warmup_steps=config.warmup_steps,
        decay_steps=max(config.total_steps, config.warmup_steps + 1),
        end_value=config.learning_rate * config.min_learning_rate_ratio,
    )


def weight_decay_mask(params):
    """Decay Linear / Conv kernels and embedding tables; not norms, biases, position embeddings or tokens."""
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({path: path[-1] in ('kernel', 'embedding') for path in flat})


def scale_by_path(scale: Callable[[str], np.ndarray]) -> optax.GradientTransformation:
    """Each update times `scale(path)`, its path in the tree ('blocks_3/attn/qkv/kernel'): a number, or one per row
    of the update's leading axis (stacked layers). optax has no per-parameter scale of its own, and one label per
    scale in `optax.multi_transform` cannot give the rows of one stacked array different rates. Parameters another
    transformation masked out (optax.MaskedNode) are no leaves here, so it composes with `multi_transform`."""
    def update(updates, params=None):
        del params

        def scaled(path, leaf):
            factor = np.asarray(scale('/'.join(str(getattr(key, 'key', key)) for key in path)))
            return leaf * factor.reshape(factor.shape + (1,) * (leaf.ndim - factor.ndim)).astype(leaf.dtype)
        return jax.tree_util.tree_map_with_path(scaled, updates)
    return optax.stateless(update)


def make_optimizer(config, trainable=None, lr_scale=None) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """`trainable(params)`: a pytree of bools, False for parameters the optimiser must leave alone (DINO's teacher,
    which follows the student by EMA instead; everything but the head with config.freeze_backbone); None trains all.
    `lr_scale(path)`: each parameter's learning-rate scale (config.layer_decay, training/finetune.py), applied to
    AdamW's whole update so that weight decay scales with it, as in timm; None: 1 everywhere."""
    schedule = learning_rate_schedule(config)
    parts = []
    if config.grad_clip_norm:
        parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
    parts.append(optax.adamw(schedule, b1=config.b1, b2=config.b2, weight_decay=config.weight_decay,
                             mask=weight_decay_mask))
    if lr_scale is not None:
        parts.append(scale_by_path(lr_scale))
    tx = optax.chain(*parts)
    if trainable is not None:
        tx = optax.multi_transform({True: tx, False: optax.set_to_zero()}, trainable)
    return tx, schedule
