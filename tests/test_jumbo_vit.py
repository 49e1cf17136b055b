"""jumbo_vit.JumboViT beyond the registry configs: vit-pytorch's quick test, the feed-forward widths it derives from
its multipliers, the shared jumbo feed-forward, the fused attention path and bad configurations."""

import jax
import jax.numpy as jnp
import pytest

import parity
from tests.conftest import apply, assert_close_outputs, converted_pair, images, torch_forward
from vit_flax.jumbo_vit import JumboViT


ENTRY = parity.BY_NAME['jumbo_vit.JumboViT']
TINY = ENTRY.configs[0]  # 16 x 16 images in 8 x 8 patches, dim 8, depth 2, one jumbo token split in 2


def test_vit_pytorch_quick_test_shapes_and_widths():
    """vit-pytorch's own example: mlp_dim=32 gives dim * 32 hidden features; the jumbo feed-forward, 48 wide, is
    handed int(48 * 2) as its multiplier."""
    v = JumboViT(num_classes=1000, image_size=64, patch_size=8, dim=16, depth=2, heads=2, mlp_dim=32, jumbo_cls_k=3,
                 jumbo_ff_mult=2)
    logits, variables = jax.eval_shape(lambda: v.init_with_output(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
    assert logits.shape == (1, 1000)
    params = variables['params']
    assert params['layers_0_1']['1']['kernel'].shape == (16, 16 * 32)
    assert params['jumbo_ff_1']['1']['kernel'].shape == (48, 48 * 96)
    assert params['jumbo_cls_token'].shape == (1, 48)
    assert 'jumbo_ff_1' in params and not any('jumbo' in name for name in params['layers_1_1'])  # one, shared


def test_fused_attention_matches_vit_pytorch():
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    x = images((2, 16, 16, 3))
    fused = JumboViT(**TINY, attention_impl='xla')
    assert_close_outputs(apply(fused, variables, x), torch_forward(torch_model, x), ENTRY.tolerance)


@pytest.mark.parametrize('config, message', [
    (dict(depth=0), 'JumboViT needs at least one layer .* got depth=0'),
    (dict(patch_size=5), r'divisible by the patch size: image_size=\(16, 16\), patch_size=\(5, 5\)'),
    (dict(jumbo_cls_k=0), 'JumboViT: jumbo_cls_k=0 must be a positive integer'),
])
def test_bad_configs_fail_at_construction(config, message):
    with pytest.raises(ValueError, match=message):
        JumboViT(**{**TINY, **config})
