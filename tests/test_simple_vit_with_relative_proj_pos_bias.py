"""simple_vit_with_relative_proj_pos_bias.SimpleViT beyond the registry configs: the bias module on 1-, 2- and 3-D
grids against vit-pytorch's (its file's example), the scanned stack, the file's example shapes."""

import jax
import jax.numpy as jnp
import pytest
import torch

import parity
from vit_flax import converters
from tests.conftest import apply, assert_close_outputs, converted_pair, float64_default, images, torch_forward
from vit_flax.simple_vit_with_relative_proj_pos_bias import RelativeProjPositionalBias, SimpleViT

ENTRY = parity.BY_NAME['simple_vit_with_relative_proj_pos_bias.SimpleViT']
TINY = ENTRY.configs[0]  # 12 x 12 images in 4 x 4 patches, dim 16, one layer, 4 curves, max_dist 2


@pytest.mark.parametrize('spatial, dim_pos, max_dist', [((16,), 1, 512), ((3, 5), 2, 3), ((2, 3, 4), 3, 2)])
def test_bias_matches_vit_pytorch_on_any_grid(spatial, dim_pos, max_dist):
    torch.manual_seed(0)
    torch_module = converters.import_vit_pytorch('vit_pytorch.simple_vit_with_relative_proj_pos_bias') \
        .RelativeProjPositionalBias(dim=8, heads=2, dim_pos=dim_pos, num_distance_basis=3, max_dist=max_dist)
    x = images((2, *spatial, 8))
    with torch.no_grad():
        torch_module.distance_banks.normal_()  # O(1) curves, so the bias is not small
        with float64_default():
            expected = torch_module.double()(torch.from_numpy(x).double())
    flax_module = RelativeProjPositionalBias(8, 2, dim_pos, 3, max_dist)
    variables = converters.from_torch(flax_module, torch_module.float().state_dict(), example_inputs=(x,))
    assert_close_outputs(jax.jit(flax_module.apply)(variables, x), expected, ENTRY.tolerance)


def test_wrong_grid_rank_is_refused():
    with pytest.raises(ValueError, match='expected input with 2 spatial dimensions, but got 1'):
        jax.eval_shape(RelativeProjPositionalBias(8, 2).init, jax.random.key(0), jnp.zeros((1, 5, 8)))


@pytest.mark.slow
def test_scanned_stack_matches_vit_pytorch():
    config = {**TINY, 'depth': 2}
    model, variables, torch_model = converted_pair(ENTRY, config)
    scanned = SimpleViT(**config, scan_layers=True, remat_policy='nothing_saveable')
    x = images((2, 12, 12, 3))
    expected = torch_forward(torch_model, x)
    assert_close_outputs(apply(scanned, converters.from_torch(scanned, torch_model.state_dict()), x), expected,
                         ENTRY.tolerance)
    assert_close_outputs(apply(model, variables, x), expected, ENTRY.tolerance)


@pytest.mark.slow
def test_vit_pytorch_example_shapes():
    """The file's example, at a smaller size, with its default max_dist of 512."""
    model = SimpleViT(image_size=64, patch_size=16, num_classes=1000, dim=64, depth=2, heads=8, mlp_dim=128,
                      dim_head=8)
    x = jnp.zeros((2, 64, 64, 3))
    variables = jax.jit(model.init)(jax.random.key(0), x)
    assert variables['params']['transformer']['layers_0_0']['rel_pos_bias']['distance_banks'].shape == (2, 16, 1023)
    assert jax.jit(model.apply)(variables, x).shape == (2, 1000)


@pytest.mark.slow
@pytest.mark.parametrize('scan_layers', [False, True])
def test_fused_attention_takes_the_bias(scan_layers):
    """attention_impl='xla': jax.nn.dot_product_attention with the relative position bias, as vit-pytorch's."""
    config = {**TINY, 'depth': 2}
    _, _, torch_model = converted_pair(ENTRY, config)
    fused = SimpleViT(**config, attention_impl='xla', scan_layers=scan_layers)
    x = images((2, 12, 12, 3))
    assert_close_outputs(apply(fused, converters.from_torch(fused, torch_model.state_dict()), x),
                         torch_forward(torch_model, x), ENTRY.tolerance)
