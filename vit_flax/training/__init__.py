"""The trainer's parts: optimiser, sharding, train state, steps, checkpoints and metrics."""

from vit_flax.extras import require

require('train', 'vit_flax.training')
