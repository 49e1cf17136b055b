"""Parity with vit_pytorch.local_vit: the test configurations and random-configuration sweep of `local_vit.LocalViT`,
and the patched vit-pytorch forward the comparison runs.

vit-pytorch's FeedForward applies its `LayerNorm(dim)` to the (b, dim, h, w) map, so it normalises over the map's
width and fails unless the patch grid is `dim` wide. vit-flax normalises each token's channels (vit_flax/local_vit.py);
the reference is vit-pytorch's LocalViT with its FeedForward's forward patched to do the same: the LayerNorm
(`net[0]`) on the tokens, then the rest of `net` on the map, unchanged.
"""

import contextlib
from math import sqrt
from unittest import mock

import numpy as np
from einops import rearrange

from parity.spec import Spec
from vit_flax import converters


def fixed_feed_forward_forward(self, x):
    """vit_pytorch.local_vit.FeedForward.forward with the LayerNorm over the channels (before the map is formed)."""
    h = w = int(sqrt(x.shape[-2]))
    x = self.net[0](x)
    x = rearrange(x, 'b (h w) c -> b c h w', h=h, w=w)
    x = self.net[1:](x)
    return rearrange(x, 'b c h w -> b (h w) c')


@contextlib.contextmanager
def channel_layer_norm():
    local_vit = converters.import_vit_pytorch('vit_pytorch.local_vit')
    with mock.patch.object(local_vit.FeedForward, 'forward', fixed_feed_forward_forward):
        yield


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random LocalViT (square ints, as it takes) and square images of up to image_size: a smaller one slices the
    position embedding."""
    patch, grid, heads = int(rng.integers(1, 5)), int(rng.integers(1, 5)), int(rng.integers(1, 4))
    config = dict(image_size=patch * grid, patch_size=patch, num_classes=int(rng.integers(0, 5)),
                  dim=int(rng.integers(2, 25)), depth=int(rng.integers(1, 3)), heads=heads,
                  mlp_dim=int(rng.integers(1, 24)), channels=int(rng.integers(1, 4)), dim_head=int(rng.integers(1, 12)))
    side = patch * int(rng.integers(1, grid + 1))
    return config, (rng.standard_normal((2, side, side, config['channels']), dtype=np.float32),)


SPECS = {
    'LocalViT': Spec(
        configs=(
            dict(image_size=16, patch_size=4, num_classes=5, dim=16, depth=1, heads=2, mlp_dim=24, dim_head=8),
            dict(image_size=24, patch_size=8, num_classes=0, dim=12, depth=2, heads=1, mlp_dim=8, dim_head=12,
                 channels=1),
            dict(image_size=8, patch_size=2, num_classes=3, dim=8, depth=2, heads=3, mlp_dim=16, dim_head=4,
                 channels=2),
        ),
        notes="conv feed-forward on the patch map (class token excluded); vit-pytorch's LayerNorm(dim) normalises "
              "the map's width and fails unless it is dim wide: fixed to normalise the channels, as the reference "
              'patched the same way',
        torch_context=channel_layer_norm,
        random_configuration=random_configuration,
        sweep_draws=6,
    ),
}
