"""The trainer's parts: optimiser, sharding, train state, steps, checkpoints and metrics."""
