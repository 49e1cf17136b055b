"""optax AdamW with linear warmup and cosine decay, gradient clipping, and weight decay on weights only."""

from __future__ import annotations

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


def make_optimizer(config, trainable=None) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """`trainable(params)`: a pytree of bools, False for parameters the optimiser must leave alone (DINO's teacher,
    which follows the student by EMA instead); None trains all."""
    schedule = learning_rate_schedule(config)
    parts = []
    if config.grad_clip_norm:
        parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
    parts.append(optax.adamw(schedule, b1=config.b1, b2=config.b2, weight_decay=config.weight_decay,
                             mask=weight_decay_mask))
    tx = optax.chain(*parts)
    if trainable is not None:
        tx = optax.multi_transform({True: tx, False: optax.set_to_zero()}, trainable)
    return tx, schedule
