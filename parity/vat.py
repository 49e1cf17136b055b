"""Parity with vit_pytorch.vat: the test configurations and random-configuration sweeps of `vat.ViT` (the vision
tower alone) and `vat.VAT`, and the patched vit-pytorch forward the comparison runs.

vit-pytorch's `VAT.forward(video_or_image, *, extra, tasks, advantages, actions, ...)` takes the conditioning as
keywords only, while the parity tests call every model with positional inputs (registry.VisionActionInputs: the
video, then extra, tasks, advantages). The reference runs under `positional_conditioning`: the shipped forward, given
the positional inputs as its keywords. The state dict and everything else are untouched.
"""

import contextlib
from unittest import mock

import numpy as np

from parity.spec import Spec
from vit_flax import converters, vat
from vit_flax.layers import pair


def keywords_forward(shipped, leading: int):
    """`shipped` (a vit-pytorch forward) taking its first `leading` inputs positionally, as shipped, and then extra,
    tasks, advantages and actions positionally too, which it takes as keywords only."""
    def forward(self, *inputs, **keywords):
        leading_inputs, conditioning = inputs[:leading], inputs[leading:]
        names = ('extra', 'tasks', 'advantages', 'actions')
        if len(conditioning) > len(names):
            raise TypeError(f'{len(inputs)} positional inputs for {leading} and {", ".join(names)}')
        return shipped(self, *leading_inputs, **dict(zip(names, conditioning)), **keywords)

    return forward


@contextlib.contextmanager
def positional_conditioning():
    module = converters.import_vit_pytorch('vit_pytorch.vat')
    with mock.patch.object(module.VAT, 'forward', keywords_forward(module.VAT.forward, leading=1)):
        yield


def random_vit_keywords(rng: np.random.Generator, min_depth: int = 1) -> tuple[dict, tuple[int, int]]:
    """A random vat.ViT (rectangular or int patches and grids, channels, heads with dim_head == dim for one head
    sometimes, both pools, class counts with 0, register tokens) and its patch size as (height, width)."""
    patch = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
    grid = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    heads, dim = int(rng.integers(1, 4)), int(rng.integers(2, 25))
    config = dict(image_size=(patch[0] * grid[0], patch[1] * grid[1]), patch_size=patch,
                  num_classes=int(rng.integers(0, 5)), dim=dim, depth=int(rng.integers(min_depth, 3)), heads=heads,
                  mlp_dim=int(rng.integers(1, 33)), pool=str(rng.choice(['cls', 'mean'])),
                  channels=int(rng.integers(1, 4)),
                  dim_head=dim if heads == 1 and rng.random() < 0.3 else int(rng.integers(1, 10)),
                  num_register_tokens=int(rng.integers(0, 4)))
    if rng.random() < 0.3:  # plain ints, as most users write them
        config.update(image_size=patch[0] * grid[0], patch_size=patch[0])
        patch = (patch[0], patch[0])
    return config, patch


def random_vit(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random ViT and images of up to its patch count (a smaller one takes the position table's first rows)."""
    config, patch = random_vit_keywords(rng, min_depth=0)
    grid = [side // p for side, p in zip(pair(config['image_size']), patch)]
    rows, columns = int(rng.integers(1, grid[0] + 1)), int(rng.integers(1, grid[1] + 1))
    images = rng.standard_normal((2, rows * patch[0], columns * patch[1], config['channels']), dtype=np.float32)
    return config, (images,)


def random_action_keywords(rng: np.random.Generator, backbone_depths: dict[str, int]) -> dict:
    """The keywords VAT and VAAT share, drawn at random: widths, depth, conditioning (tasks, extra token, advantage
    bins, each or not), registers, chunk length, self-attention or not, and per backbone (`backbone_depths`: keyword
    prefix -> its depth) layer indices where needed or by chance (repeats and negative ones)."""
    depth = int(rng.integers(1, 4))
    heads = int(rng.integers(1, 4))
    dim = int(rng.integers(2, 21))
    config = dict(dim=dim, depth=depth, heads=heads,
                  dim_head=dim if heads == 1 and rng.random() < 0.3 else int(rng.integers(1, 9)),
                  dim_action=int(rng.integers(1, 6)), mlp_dim=int(rng.integers(1, 25)),
                  num_tasks=None if rng.random() < 0.4 else int(rng.integers(1, 5)),
                  dim_extra_token=None if rng.random() < 0.3 else int(rng.integers(1, 7)),
                  num_register_tokens=int(rng.integers(0, 4)), action_chunk_len=int(rng.integers(1, 5)),
                  time_seq_len=int(rng.choice([1, 1, 2, 3])), add_self_attn=bool(rng.random() < 0.7),
                  self_attn_heads=int(rng.integers(1, 4)), self_attn_dim_head=int(rng.integers(1, 9)),
                  num_advantage_bins=int(rng.choice([0, 0, 1, 3])))
    for prefix, backbone_depth in backbone_depths.items():
        if backbone_depth != depth or rng.random() < 0.5:
            config[f'{prefix}_layer_indices'] = tuple(
                int(rng.integers(-backbone_depth - 1, backbone_depth + 1)) for _ in range(depth))
    return config


def random_conditioning(rng: np.random.Generator, config: dict, batch: int) -> list:
    """Inputs after the media, as the registry's inputs give them (extra, then tasks, then advantages, each where the
    configuration takes it and the ones before it are given), cut after a random one of them: a model need not be
    given the conditioning it takes."""
    inputs = []
    if config.get('dim_extra_token') is not None:
        inputs.append(rng.standard_normal((batch, config['dim_extra_token']), dtype=np.float32))
        if config.get('num_tasks') is not None:
            inputs.append(rng.integers(0, config['num_tasks'], (batch,)).astype(np.int32))
            if config.get('num_advantage_bins', 0) > 0:
                inputs.append(rng.integers(-1, config['num_advantage_bins'], (batch,)).astype(np.int32))
    return inputs[:int(rng.integers(0, len(inputs) + 1))]


def random_video(rng: np.random.Generator, vit: dict, views: int, time_seq_len: int, batch: int) -> np.ndarray:
    height, width = pair(vit['image_size'])
    frames = (time_seq_len,) if time_seq_len > 1 else ()
    return rng.standard_normal((batch, views, *frames, height, width, vit['channels']), dtype=np.float32)


def random_vat(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random VAT on a random ViT (given as a module or as a dict of its keywords), with views (num_views None, 0,
    1 or more: without a view embedding any count is taken), frames, and random conditioning."""
    vit, _ = random_vit_keywords(rng)
    config = random_action_keywords(rng, {'vit': vit['depth']})
    config['num_views'] = [None, 0, 1, 2, 3][int(rng.integers(0, 5))]
    config['vit'] = vit if rng.random() < 0.3 else vat.ViT(**vit)
    views = config['num_views'] if config['num_views'] and config['num_views'] > 1 else int(rng.integers(1, 3))
    batch = int(rng.integers(1, 4))
    video = random_video(rng, vit, views, config['time_seq_len'], batch)
    return config, (video, *random_conditioning(rng, config, batch))


TINY_VIT = dict(image_size=8, patch_size=4, num_classes=5, dim=16, depth=2, heads=2, mlp_dim=16, dim_head=8,
                num_register_tokens=1)

SPECS = {
    'ViT': Spec(
        configs=(
            dict(image_size=8, patch_size=4, num_classes=5, dim=16, depth=2, heads=2, mlp_dim=32, dim_head=8),
            # rectangular, mean pooling, register tokens, one channel
            dict(image_size=(12, 20), patch_size=(4, 5), num_classes=7, dim=24, depth=1, heads=3, mlp_dim=32,
                 dim_head=12, channels=1, pool='mean', num_register_tokens=3, dropout=0.1, emb_dropout=0.1),
            # one head of width dim (no output projection), no classes
            dict(image_size=8, patch_size=2, num_classes=0, dim=16, depth=3, heads=1, mlp_dim=16, dim_head=16,
                 channels=2, num_register_tokens=1),
        ),
        notes="the vision tower of VAT: per-head sigmoid output gates, register tokens, `return_hiddens` (the "
              "layers' inputs)",
        random_configuration=random_vit,
    ),
    'VAT': Spec(
        configs=(
            # every kind of token and conditioning: two views, tasks (FiLM), an extra token, advantages, registers,
            # self-attention, the ViT's output as the context. One layer: in a second, FiLM with the randomised
            # tests' small gammas (its init is zero) and a shared beta makes the tokens nearly equal, so the
            # self-attention's query gradients cancel: vit-pytorch's own float32 run is 5e-4 (relative) off its
            # float64 reference there, while ours in float64 agrees with it to 2e-12. Conditioning, not the port;
            # the second configuration runs FiLM in three layers without self-attention
            dict(vit=vat.ViT(**TINY_VIT), dim=16, depth=1, heads=2, dim_head=8, dim_action=3, mlp_dim=16,
                 num_views=2, num_tasks=3, dim_extra_token=5, num_register_tokens=2, action_chunk_len=3,
                 self_attn_heads=2, self_attn_dim_head=4, vit_layer_indices=(2,), num_advantage_bins=2),
            # video of three frames, the ViT as a dict, deeper than the ViT (indices with a repeat, its output and a
            # negative one), FiLM in every layer, no self-attention, no register tokens
            dict(vit=dict(TINY_VIT, image_size=(8, 12), channels=1), dim=12, depth=3, heads=3, dim_head=4,
                 dim_action=2, mlp_dim=8, num_tasks=2, dim_extra_token=3, num_register_tokens=0, action_chunk_len=2,
                 time_seq_len=3, add_self_attn=False, vit_layer_indices=(2, 0, -2)),
            # one head of width dim (no output projection), one view (no view embedding), tasks and advantage bins
            # that this call does not use (no extra token: the registry's inputs stop there), dropout (eval mode)
            dict(vit=vat.ViT(**TINY_VIT), dim=8, depth=1, heads=1, dim_head=8, dim_action=4, mlp_dim=8, num_views=1,
                 num_tasks=2, num_register_tokens=1, action_chunk_len=4, dropout=0.1, self_attn_heads=1,
                 self_attn_dim_head=8, vit_layer_indices=(2,), num_advantage_bins=3),
        ),
        notes="action tokens cross-attend (gated) to a chosen ViT layer input per layer; views, frames, FiLM tasks, "
              'extra / advantage / register tokens, `return_hiddens`, `actions` (L1 loss), `freeze_vit`; '
              "conditioning also positional (vit-pytorch's keyword-only forward called so by the patched "
              "reference); vit-pytorch's broken one-view (b c h w) branch fixed",
        torch_context=positional_conditioning,
        random_configuration=random_vat,
    ),
}
