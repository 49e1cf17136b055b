"""Parity with vit_pytorch.attn_residual_with_dca_simple_vit: the test configurations and random-configuration sweep
of `attn_residual_with_dca_simple_vit.SimpleViT`."""

from unittest import mock

import numpy as np

from parity.spec import Spec
from vit_flax.converters import import_vit_pytorch


def torch_merges_one_head():
    """A context under which vit-pytorch's TransformerBlock with `per_head=True` and one head is built to merge its
    depth mix's single head, as the shared mix is (its forward fails otherwise; see the Flax module's docstring):
    the same parameters, a Rearrange and a flag changed."""
    torch_module = import_vit_pytorch('vit_pytorch.attn_residual_with_dca_simple_vit')
    block_class = torch_module.TransformerBlock
    init = block_class.__init__

    def fixed_init(self, dim, heads, *args, per_head=False, **kwargs):
        init(self, dim, heads, *args, per_head=per_head, **kwargs)
        if per_head and heads == 1:
            self.per_head = False
            self.attn_res.merge_heads = torch_module.maybe(torch_module.Rearrange('s 1 b n d -> s b n d'))

    return mock.patch.object(block_class, '__init__', fixed_init)
from parity.vit import random_plain_vit_keywords


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random model (per-head mixes or not, one to three feed-forward heads, gated or not, eps and temperature) and
    images of image_size (its fixed position embedding takes no other patch count)."""
    config, patch, grid = random_plain_vit_keywords(rng)
    ffn_heads = int(rng.integers(1, 4))
    config.update(mlp_dim=ffn_heads * int(rng.integers(1, 12)), ffn_heads=ffn_heads, per_head=bool(rng.random() < 0.5),
                  gate=bool(rng.random() < 0.7), eps=float(rng.choice([1e-6, 1e-3])),
                  temperature=int(rng.choice([100, 10000])))
    shape = (2, grid[0] * patch[0], grid[1] * patch[1], config['channels'])
    return config, (rng.standard_normal(shape, dtype=np.float32),)


SPECS = {
    'SimpleViT': Spec(
        configs=(
            # per-head mixes with grouped projections, two feed-forward heads with their own mixes, the gate
            dict(image_size=16, patch_size=8, num_classes=5, dim=16, depth=1, heads=2, mlp_dim=16, dim_head=4,
                 per_head=True, ffn_heads=2),
            # the defaults: one shared mix for q / k / v, one feed-forward head, gated
            dict(image_size=(24, 16), patch_size=(8, 4), num_classes=3, dim=24, depth=2, heads=3, mlp_dim=18,
                 dim_head=6, channels=1),
            dict(image_size=8, patch_size=4, num_classes=0, dim=8, depth=2, heads=1, mlp_dim=9, dim_head=8,
                 channels=2, gate=False, ffn_heads=3, eps=1e-3, temperature=100),
        ),
        notes='q / k / v each from a softmax mix over all earlier outputs (per head optionally), value mix as the '
              'residual, head gates, grouped feed-forward heads; torch.nn.RMSNorm; fixed: `per_head` with one '
              'head (fails in vit-pytorch) mixes as the shared path',
        torch_construction=torch_merges_one_head,
        random_configuration=random_configuration,
        sweep_draws=6,
    ),
}
