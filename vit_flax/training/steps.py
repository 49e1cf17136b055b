"""The train and eval steps, written once and compiled two ways: `jax.jit` over a sharded mesh (the main
path) and `jax.pmap` for pmap-style code. With `axis_name` set (pmap) gradients and metrics are averaged
across devices; under jit the SPMD partitioner does it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vit_flax.training import objectives
from vit_flax.training.sharding import replicated
from vit_flax.training.state import TrainState


def mixup(rng, images, targets, alpha: float):
    """Blend each example with another from the batch (Zhang et al., 2018): one lambda per batch."""
    lam_rng, perm_rng = jax.random.split(rng)
    lam = jax.random.beta(lam_rng, alpha, alpha)
    perm = jax.random.permutation(perm_rng, images.shape[0])
    return lam * images + (1 - lam) * images[perm], lam * targets + (1 - lam) * targets[perm]


def cast_floats(tree, dtype):
    return jax.tree_util.tree_map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def all_finite(tree) -> jax.Array:
    """Whether every float in `tree` is finite, as one boolean (a fused reduction per array: no norm that could
    overflow for large but finite values)."""
    leaves = [jnp.isfinite(x).all() for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.stack(leaves).all() if leaves else jnp.bool_(True)


def make_steps(model, tx, schedule, config, num_classes: int, axis_name: str | None = None):
    """(train_step, eval_step) as plain functions of (state, batch).

    `model` is what `config.objective` trains (see objectives.py): for 'supervised' the classifier, whose
    logits meet the (smoothed, mixed-up) labels in a cross entropy; otherwise an objective module whose `apply`
    returns the loss itself, drawing its masks and crops from its `rng_streams` and taking the labels too where it
    `takes_labels`. After the optimiser update the objective's `after_step` runs (DINO / EsViT: the teacher's
    EMA).
    """
    compute_dtype = jnp.dtype(config.compute_dtype)
    base_key = jax.random.key(config.seed)
    eval_key = jax.random.split(base_key)[0]  # the same masks every evaluation, none of the training steps' keys
    accum = int(config.grad_accum_steps)
    supervised = config.objective == objectives.SUPERVISED
    takes_labels = not supervised and model.takes_labels
    # a classifier may draw from streams of its own in training (patch dropout, CaiT's layer dropout, jet_vit's layer
    # choice): it names them in `rng_streams` as an objective does; 'dropout' keeps the first key either way
    streams = ('dropout', *getattr(model, 'rng_streams', ()))

    def run(variables, images, labels, rng, train: bool):
        """The model on a batch in compute_dtype: (output, updated non-parameter collections)."""
        rngs = {stream: jax.random.fold_in(rng, i) for i, stream in enumerate(streams)}
        inputs = (images.astype(compute_dtype), labels) if takes_labels else (images.astype(compute_dtype),)
        collections = [name for name in variables if name != 'params']
        if train and collections:
            return model.apply(variables, *inputs, train=True, rngs=rngs, mutable=collections)
        return model.apply(variables, *inputs, train=train, rngs=rngs), {}

    def loss_fn(params, collections, images, targets, labels, rng):
        # mixed precision: compute in compute_dtype from float32 master weights
        variables = {'params': cast_floats(params, compute_dtype), **collections}
        out, updates = run(variables, images, labels, rng, train=True)
        if supervised:
            loss = optax.softmax_cross_entropy(out.astype(jnp.float32), targets).mean()
        else:
            loss = out.astype(jnp.float32)
        return loss, {**collections, **updates}

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, batch: dict):
        rng = jax.random.fold_in(base_key, state.step)
        if axis_name:  # a different draw on each device, as each holds different examples
            rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
        model_rng, mixup_rng = jax.random.split(rng)

        images, labels = batch['image'], batch['label']
        targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), config.label_smoothing)
        if supervised and config.mixup_alpha > 0:
            images, targets = mixup(mixup_rng, images, targets, config.mixup_alpha)

        if accum == 1:
            (loss, collections), grads = grad_fn(state.params, state.collections(), images, targets, labels,
                                                 model_rng)
        else:  # gradient accumulation over micro-batches, one optimiser update per step
            def micro(x):
                return x.reshape(accum, x.shape[0] // accum, *x.shape[1:])

            def body(carry, xs):
                grads_sum, loss_sum, collections = carry
                (loss, collections), grads = grad_fn(state.params, collections, *xs)
                return (jax.tree_util.tree_map(jnp.add, grads_sum, grads), loss_sum + loss, collections), None

            zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
            (grads, loss, collections), _ = jax.lax.scan(
                body, (zeros, jnp.zeros((), jnp.float32), state.collections()),
                (micro(images), micro(targets), micro(labels), jax.random.split(model_rng, accum)))
            grads = jax.tree_util.tree_map(lambda g: g / accum, grads)
            loss = loss / accum

        if axis_name:
            grads, loss, collections = jax.lax.pmean((grads, loss, collections), axis_name)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                                  opt_state=opt_state).with_collections(collections)
        variables = objectives.after_step(model, new_state.variables())
        finite = jnp.isfinite(loss) & all_finite(grads) & all_finite(variables)
        new_state = new_state.replace(
            params=variables['params'],
            nonfinite_step=jnp.where(finite | (state.nonfinite_step > 0), state.nonfinite_step, new_state.step),
        ).with_collections(variables)
        metrics = {'train_loss': loss, 'grad_norm': optax.tree.norm(grads), 'learning_rate': schedule(state.step)}
        return new_state, metrics

    def eval_step(state: TrainState, batch: dict):
        variables = cast_floats(state.variables(), compute_dtype)
        mask = batch['mask']
        if not supervised:
            # an objective's loss is a batch mean: a batch is counted whole, or not at all if it holds padding
            # (a padded eval batch would mix zero images into it)
            loss, _ = run(variables, batch['image'], batch['label'], eval_key, train=False)
            full = (mask.min() > 0).astype(jnp.float32)
            sums = {'loss_sum': loss.astype(jnp.float32) * full * mask.sum(), 'correct': jnp.zeros(()),
                    'count': full * mask.sum()}
            return jax.lax.psum(sums, axis_name) if axis_name else sums
        logits = model.apply(variables, batch['image'].astype(compute_dtype)).astype(jnp.float32)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
        sums = {'loss_sum': (loss * mask).sum(), 'correct': ((logits.argmax(-1) == batch['label']) * mask).sum(),
                'count': mask.sum()}
        return jax.lax.psum(sums, axis_name) if axis_name else sums

    return train_step, eval_step


def jit_steps(model, tx, schedule, config, num_classes, state_shardings, batch_sharding: NamedSharding):
    """The steps compiled for the mesh: sharded inputs, donated state, replicated metrics."""
    train_step, eval_step = make_steps(model, tx, schedule, config, num_classes)
    out = replicated(batch_sharding.mesh)
    return (
        jax.jit(train_step, in_shardings=(state_shardings, batch_sharding), out_shardings=(state_shardings, out),
                donate_argnums=0),
        jax.jit(eval_step, in_shardings=(state_shardings, batch_sharding), out_shardings=out),
    )


PMAP_AXIS = 'batch'


def pmap_steps(model, tx, schedule, config, num_classes):
    """The steps for replicated state and batches split (devices, per-device batch, ...)."""
    train_step, eval_step = make_steps(model, tx, schedule, config, num_classes, axis_name=PMAP_AXIS)
    return (jax.pmap(train_step, axis_name=PMAP_AXIS, donate_argnums=0),
            jax.pmap(eval_step, axis_name=PMAP_AXIS))


def _on_devices(tree, devices):
    """Arrays with a leading device axis, one slice per device, as pmap takes them."""
    sharding = NamedSharding(Mesh(np.array(devices), (PMAP_AXIS,)), P(PMAP_AXIS))
    return jax.device_put(tree, sharding)


def replicate(tree, devices):
    """A copy of every array on every device (jax.device_put_replicated is deprecated)."""
    copies = jax.tree_util.tree_map(lambda x: np.broadcast_to(x, (len(devices), *np.shape(x))), jax.device_get(tree))
    return _on_devices(copies, devices)


def split_for_pmap(batch: dict, devices) -> dict:
    """(batch, ...) -> (devices, batch // devices, ...), each device holding its slice."""
    n = len(devices)
    return _on_devices(jax.tree_util.tree_map(lambda x: x.reshape(n, x.shape[0] // n, *x.shape[1:]), batch), devices)


unreplicate = functools.partial(jax.tree_util.tree_map, lambda x: x[0])
