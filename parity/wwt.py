"""Parity with vit_pytorch.wwt: the test configurations and random-configuration sweep of `wwt.WWT` (its task heads,
AutoencodingHead and FeedForward decoders, built as their vit-pytorch twins by the converters)."""

from unittest import mock

import jax
import numpy as np
import torch

from parity.spec import Spec
from vit_flax import wwt
from vit_flax.lejepa import SIGREG
from vit_flax.wwt import AutoencodingHead, FeedForward


class torch_randn_replays:
    """A context under which `torch.randn` returns `draws` (numpy arrays, in order), one per call, in the dtype torch
    asks for: vit-pytorch's `sigreg_loss` then projects on the directions the Flax call drew, level after level. The
    shapes must agree, and every draw must be used by the time the context exits. Reusable: each entry replays the
    draws from the first."""

    def __init__(self, draws):
        self.draws = [np.asarray(draw, np.float32) for draw in draws]

    def __enter__(self):
        self._queue = list(self.draws)

        def randn(*size, device=None, dtype=None, **kwargs):
            size = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else size
            if not self._queue:
                raise AssertionError(f'torch.randn{tuple(size)} asked for, but the Flax call drew only '
                                     f'{len(self.draws)} arrays')
            draw = self._queue.pop(0)
            if tuple(size) != draw.shape:
                raise AssertionError(f'torch.randn{tuple(size)} asked for, but the Flax draw has shape {draw.shape}')
            return torch.from_numpy(draw.copy()).to(device=device, dtype=dtype or torch.get_default_dtype())

        self._patch = mock.patch.object(torch, 'randn', randn)
        self._patch.__enter__()
        return self

    def __exit__(self, *exc):
        self._patch.__exit__(*exc)
        if exc[0] is None and self._queue:
            raise AssertionError(f'vit-pytorch used {len(self.draws) - len(self._queue)} of the {len(self.draws)} '
                                 'arrays the Flax call drew')
        return False


def draws(model, inputs: tuple, seed: int = 0):
    """A WWT with `sigreg_slots` draws SIGReg's directions in every call: the Flax rngs for a call on `inputs`, and a
    context under which vit-pytorch's `torch.randn((1024, dim))` returns the very same draws, one per selected slot
    level. (The objective WWTAutoencoder replays the same way, with its own `sigreg_directions`.)"""
    rngs = {SIGREG: jax.random.key(seed)}
    directions = model.apply({}, *inputs, rngs=rngs, method=type(model).sigreg_directions)
    return rngs, torch_randn_replays(directions)


def random_interactions(rng: np.random.Generator, levels: int) -> tuple[tuple[int, int], ...]:
    """A random non-empty set of pairs (i, j), 0 <= i < j < levels, in random order."""
    pairs = [(i, j) for j in range(levels) for i in range(j)]
    chosen = rng.permutation(len(pairs))[: int(rng.integers(1, len(pairs) + 1))]
    return tuple(pairs[k] for k in chosen)


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random WWT: one to three slot levels (strictly decreasing, int or tuple), default or random interactions
    (tokens with or without every level, slots with slots), SIGReg on some levels, register tokens and register
    slots, the mask variants (token softmax over slots, mask-group projection, l1 norm, no gates), return_tokens, and
    sometimes an AutoencodingHead (default pathways, with or without a FeedForward decoder, channel first) when an
    interaction starts at the patches; rectangular images and patches, channels 1 to 3."""
    patch = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    grid = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    image_size = (grid[0] * patch[0], grid[1] * patch[1])
    levels = int(rng.integers(1, 4))
    num_slots = tuple(sorted(rng.choice(np.arange(1, 7), levels, replace=False).tolist(), reverse=True))
    dim = int(rng.choice([8, 12, 16]))
    config = dict(
        image_size=image_size, patch_size=patch, num_classes=int(rng.integers(1, 6)), dim=dim,
        depth=int(rng.integers(0, 3)), num_slots=num_slots[0] if levels == 1 and rng.random() < 0.5 else num_slots,
        heads=int(rng.integers(1, 4)), dim_head=int(rng.integers(2, 9)), mlp_dim=int(rng.integers(4, 33)),
        channels=int(rng.integers(1, 4)), return_tokens=bool(rng.random() < 0.5),
        l1norm_after_tokens_softmax=bool(rng.random() < 0.5), token_softmax_over_slots=bool(rng.random() < 0.5),
        project_mask_groups=bool(rng.random() < 0.5), gate_attention=bool(rng.random() < 0.7),
        num_register_tokens=int(rng.integers(0, 3)),
        num_register_slots=tuple(int(r) for r in rng.integers(0, 3, levels)) if rng.random() < 0.5 else 0,
    )
    if rng.random() < 0.5:
        config['interactions'] = random_interactions(rng, levels + 1)
    if rng.random() < 0.6:
        config['sigreg_slots'] = tuple(bool(s) for s in rng.random(levels) < 0.6) if rng.random() < 0.5 else True
    interactions = wwt.resolved_interactions(config.get('interactions'), num_slots)
    if wwt.default_pathways(interactions, 0) and rng.random() < 0.6:
        decoder = FeedForward(dim, int(rng.integers(2, 9)), out_dim=int(rng.integers(1, 6))) if rng.random() < 0.5 \
            else None
        config['task_heads'] = AutoencodingHead(image_size=image_size, patch_size=patch, decoder=decoder,
                                                channel_first=decoder is None and bool(rng.random() < 0.5))
    images = rng.standard_normal((2, *image_size, config['channels']), dtype=np.float32)
    return config, (images,)


SPECS = {
    'WWT': Spec(
        configs=(
            dict(image_size=8, patch_size=4, num_classes=5, dim=16, depth=1, num_slots=2, heads=2, dim_head=8,
                 mlp_dim=16),
            # vit-pytorch's quick run, shrunk: three slot levels, slots with slots, SIGReg on two levels, registers,
            # l1 norm, return_tokens, an AutoencodingHead with both directions of a pathway and a FeedForward decoder
            dict(image_size=16, patch_size=4, num_classes=7, dim=16, depth=2, num_slots=(6, 4, 2),
                 sigreg_slots=(True, False, True), interactions=((0, 1), (0, 2), (1, 2), (2, 3)), heads=2, dim_head=8,
                 mlp_dim=32, return_tokens=True, l1norm_after_tokens_softmax=True, num_register_tokens=2,
                 num_register_slots=(2, 2, 1),
                 task_heads=AutoencodingHead(image_size=16, patch_size=4, pathways=((3, 2, 0), (0, 2, 3)),
                                             decoder=FeedForward(16, 8, out_dim=5))),
            # the tokens' softmax over the slots (two query groups, both masks returned), no gates, rectangular
            # one-channel images, SIGReg on every level, no task head
            dict(image_size=(12, 8), patch_size=(4, 2), num_classes=3, dim=12, depth=2, num_slots=(3, 2),
                 sigreg_slots=True, heads=3, dim_head=4, mlp_dim=24, channels=1, dropout=0.1,
                 token_softmax_over_slots=True, gate_attention=False, num_register_tokens=1),
            # the mask groups projected by a 1x1 conv, return_tokens, two task heads (default pathways, channel
            # first; a pathway from the patches up), an interaction between slot levels only
            dict(image_size=8, patch_size=2, num_classes=4, dim=8, depth=1, num_slots=(4, 3),
                 sigreg_slots=(False, True), interactions=((0, 2), (1, 2), (0, 1)), heads=2, dim_head=4, mlp_dim=16,
                 channels=2, return_tokens=True, token_softmax_over_slots=True, project_mask_groups=True,
                 num_register_slots=1,
                 task_heads=(AutoencodingHead(image_size=8, patch_size=2, channel_first=True),
                             AutoencodingHead(image_size=8, patch_size=2, pathways=((0, 1, 2),),
                                              decoder=FeedForward(8, 4)))),
            # no layers (depth 0), one slot level without SIGReg selected, no classes
            dict(image_size=4, patch_size=2, num_classes=0, dim=8, depth=0, num_slots=(3,), sigreg_slots=False,
                 heads=1, dim_head=8, mlp_dim=8),
        ),
        draws=draws,
        notes="patch tokens and a part-whole hierarchy of slot levels in mutual attention carrying mask logits; "
              "SIGReg of slot levels (rng stream 'sigreg', even in eval mode); register tokens and slots; "
              '`task_heads` as Flax modules (AutoencodingHead, FeedForward decoders); `return_embeddings`; '
              "objective 'wwt' (vit-flax's own)",
        random_configuration=random_configuration,
        sweep_draws=12,
    ),
}
