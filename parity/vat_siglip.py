"""Parity with vit_pytorch.vat_siglip: the test configurations and random-configuration sweeps of `vat_siglip.SigLIP`
(the image tower alone) and `vat_siglip.SigLIPVAT`, and the patched vit-pytorch forward the comparison runs.

vit-pytorch's `SigLIPVAT.forward(video_or_image, *, extra, tasks, advantages, actions, ...)` takes the conditioning
as keywords only, while the parity tests call every model with positional inputs (registry.ViewsAndConditioning:
the video, then extra, tasks, advantages); and its (batch, channels, height, width) branch calls
`rearrange(video_or_image, 'b 1 c h w')`, a pattern with no arrow, which einops refuses. The reference runs under
`positional_conditioning`: the shipped forward, given the positional inputs as its keywords, and a 4-dimensional
input made one view ('b c h w -> b 1 c h w') first, as vit_flax/vat_siglip.py does. The state dict and everything
else are untouched.
"""

import contextlib
from unittest import mock

import numpy as np
from einops import rearrange

from parity.spec import Spec
from vit_flax import converters


@contextlib.contextmanager
def positional_conditioning():
    vat_siglip = converters.import_vit_pytorch('vit_pytorch.vat_siglip')
    shipped = vat_siglip.SigLIPVAT.forward

    def forward(self, video_or_image, extra=None, tasks=None, advantages=None, actions=None, **keywords):
        if video_or_image.ndim == 4:
            video_or_image = rearrange(video_or_image, 'b c h w -> b 1 c h w')
        return shipped(self, video_or_image, extra=extra, tasks=tasks, advantages=advantages, actions=actions,
                       **keywords)

    with mock.patch.object(vat_siglip.SigLIPVAT, 'forward', forward):
        yield


def random_tower_keywords(rng: np.random.Generator, prefix: str = '') -> dict:
    """A random SigLIP tower: an image_size that need not be a multiple of the patch, widths that heads need not
    divide (the head width is dim // heads)."""
    patch = int(rng.integers(1, 5))
    heads = int(rng.integers(1, 5))
    return {f'{prefix}image_size': patch * int(rng.integers(1, 4)) + int(rng.integers(0, patch)),
            f'{prefix}patch_size': patch, f'{prefix}dim': int(rng.integers(heads, 25)),
            f'{prefix}depth': int(rng.integers(1 if prefix else 0, 3)), f'{prefix}heads': heads,
            f'{prefix}mlp_dim': int(rng.integers(1, 25)),
            f'{prefix}norm_eps': float(rng.choice([1e-6, 1e-5]))}


def random_tower(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random tower and images of whole patches up to its patch count, of any aspect ratio (the position table's
    first rows)."""
    config = random_tower_keywords(rng)
    grid, patch = config['image_size'] // config['patch_size'], config['patch_size']
    rows = int(rng.integers(1, grid + 1))
    columns = int(rng.integers(1, grid * grid // rows + 1))
    images = rng.standard_normal((2, rows * patch, columns * patch, 3), dtype=np.float32)
    return config, (images,)


def random_vat(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random SigLIPVAT (views, frames, tasks, extra and advantage tokens, registers, self-attention, any order of
    tower hiddens with negative indices) on a random tower, and its inputs: the video as (b v t h w c), one view
    broadcast against several view embeddings, (b v h w c) and (b h w c) for one frame, smaller images than the
    tower's, several extra tokens per sample."""
    tower = random_tower_keywords(rng, 'siglip_')
    depth = int(rng.integers(1, 4))
    hiddens = tower['siglip_depth'] + 1
    config = dict(dim=int(rng.integers(2, 20)), depth=depth, heads=int(rng.integers(1, 4)),
                  dim_head=int(rng.integers(1, 9)), dim_action=int(rng.integers(1, 5)),
                  mlp_dim=int(rng.integers(1, 24)), num_views=[None, 1, 2, 3][int(rng.integers(0, 4))],
                  num_register_tokens=int(rng.integers(0, 3)), action_chunk_len=int(rng.integers(1, 5)),
                  time_seq_len=int(rng.integers(1, 3)), add_self_attn=bool(rng.random() < 0.6),
                  self_attn_heads=int(rng.integers(1, 4)), self_attn_dim_head=int(rng.integers(1, 9)),
                  num_advantage_bins=int(rng.integers(0, 3)), **tower)
    if rng.random() < 0.6 or depth > hiddens:  # the default range(depth) must index the tower's hiddens
        config['vit_layer_indices'] = tuple(int(i) for i in rng.integers(-hiddens, hiddens, depth))
    if rng.random() < 0.7:
        config['dim_extra_token'] = int(rng.integers(1, 6))
        if rng.random() < 0.7:
            config['num_tasks'] = int(rng.integers(1, 4))

    batch, frames = 2, config['time_seq_len']
    views = config['num_views'] or 1
    views = views if rng.random() < 0.6 else 1
    grid, patch = tower['siglip_image_size'] // tower['siglip_patch_size'], tower['siglip_patch_size']
    side = patch * int(rng.integers(1, grid + 1))
    shape = (batch, views, frames, side, side, 3)
    if frames == 1 and rng.random() < 0.7:
        shape = (batch, side, side, 3) if views == 1 and rng.random() < 0.6 else (batch, views, side, side, 3)
    inputs = [rng.standard_normal(shape, dtype=np.float32)]
    if 'dim_extra_token' in config:
        tokens = () if rng.random() < 0.7 else (2,)  # one extra token per sample, or two
        extra_shape = (batch, *tokens, config['dim_extra_token'])
        inputs.append(rng.standard_normal(extra_shape, dtype=np.float32))
        if 'num_tasks' in config:
            inputs.append(rng.integers(0, config['num_tasks'], (batch,)).astype(np.int32))
            if config['num_advantage_bins']:
                inputs.append(rng.integers(-1, config['num_advantage_bins'], (batch,)).astype(np.int32))
    return config, tuple(inputs)


TINY_TOWER = dict(siglip_image_size=8, siglip_patch_size=4, siglip_dim=16, siglip_depth=2, siglip_heads=2,
                  siglip_mlp_dim=24)

SPECS = {
    'SigLIP': Spec(
        configs=(
            dict(image_size=8, patch_size=4, dim=16, depth=2, heads=2, mlp_dim=24),
            # an image_size of no whole number of patches (2 x 2 of 4), heads that do not divide dim (head width 4)
            dict(image_size=10, patch_size=4, dim=18, depth=3, heads=4, mlp_dim=8, norm_eps=1e-5),
            # no layers: the patch embedding, position table and final norm
            dict(image_size=6, patch_size=2, dim=8, depth=0, heads=1, mlp_dim=4),
        ),
        notes="SigLIP's image tower in vit-pytorch's layout (patch Linear on (p1 p2 c), no class token, GELU-tanh, "
              'eps 1e-6), `return_hiddens`; Hugging Face / timm / big_vision SigLIP weights through '
              '`converters.siglip`',
        random_configuration=random_tower,
        sweep_draws=8,
    ),
    'SigLIPVAT': Spec(
        configs=(
            # every kind of token and conditioning: two views, two frames, tasks (FiLM), an extra token, advantages,
            # registers, self-attention, the tower's final output as the context. One layer: in a second, FiLM with
            # the randomised tests' small gammas (its init is zero) makes the tokens nearly equal (their spread 2% of
            # their norm), so the self-attention's query gradients cancel to a relative 7e-4 in float32, in
            # vit-pytorch's own float32 run as in ours (float64 agrees to 2e-12): conditioning, not the port
            dict(dim=16, depth=1, heads=2, dim_head=8, dim_action=3, mlp_dim=24, num_views=2, num_tasks=3,
                 dim_extra_token=5, num_register_tokens=2, action_chunk_len=3, time_seq_len=2, self_attn_heads=2,
                 self_attn_dim_head=4, vit_layer_indices=(2,), num_advantage_bins=2, **TINY_TOWER),
            # the plainest: one view, one frame, no registers, no self-attention, the default layer indices
            dict(dim=12, depth=3, heads=3, dim_head=4, dim_action=2, mlp_dim=16, num_register_tokens=0,
                 action_chunk_len=4, add_self_attn=False, siglip_image_size=10, siglip_patch_size=4, siglip_dim=18,
                 siglip_depth=3, siglip_heads=4, siglip_mlp_dim=8, siglip_norm_eps=1e-5),
            # an extra token without tasks, num_views None, dropout (inactive in eval mode), a repeated index
            dict(dim=8, depth=3, heads=1, dim_head=8, dim_action=4, mlp_dim=8, num_views=None, dim_extra_token=3,
                 num_register_tokens=1, action_chunk_len=2, dropout=0.1, self_attn_heads=1, self_attn_dim_head=8,
                 vit_layer_indices=(1, 1, 0), num_advantage_bins=3, **TINY_TOWER),
            # three views, FiLM in two layers (no self-attention), negative indices, no advantage bins
            dict(dim=10, depth=2, heads=2, dim_head=5, dim_action=1, mlp_dim=6, num_views=3, num_tasks=2,
                 dim_extra_token=2, action_chunk_len=1, add_self_attn=False, vit_layer_indices=(-1, -3),
                 **TINY_TOWER),
        ),
        notes='action tokens cross-attend (gated) to a chosen SigLIP hidden per layer; views, frames, FiLM tasks, '
              'extra / advantage / register tokens, `return_hiddens`, `actions` (L1 loss), `freeze_vit`; '
              "conditioning also positional; vit-pytorch's broken (b c h w) branch fixed, its keyword-only forward "
              'called positionally by the patched reference; `converters.siglip` loads SigLIP weights',
        torch_context=positional_conditioning,
        random_configuration=random_vat,
        sweep_draws=12,
    ),
}
