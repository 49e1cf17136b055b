"""simple_vit_with_hyper_connections.SimpleViT beyond the registry configs: the initial hyper-connection matrices
per layer, the scanned stack against the unrolled one and vit-pytorch, the file's own example, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import parity
from vit_flax import converters
from tests.conftest import apply, assert_close_outputs, converted_pair, images, init_variables, torch_forward
from vit_flax.simple_vit_with_hyper_connections import HyperConnection, SimpleViT


ENTRY = parity.BY_NAME['simple_vit_with_hyper_connections.SimpleViT']
TINY = ENTRY.configs[0]  # 16 x 16 images in 8 x 8 patches, dim 16, one layer over two streams, two registers


def test_initial_connections_are_vit_pytorchs():
    """static_alpha starts as [one-hot(layer % streams), identity], the other parameters at torch's constants."""
    streams, layer_index = 3, 4
    torch_module = converters.import_vit_pytorch('vit_pytorch.simple_vit_with_hyper_connections').HyperConnection(
        8, streams, layer_index)
    params = HyperConnection(8, streams, layer_index).init(jax.random.key(0), jnp.zeros((1, 1, streams, 8)))['params']
    torch_params = dict(torch_module.named_parameters())
    assert {*params} == {*torch_params} - {'norm.weight'} | {'norm'}
    np.testing.assert_array_equal(np.asarray(params['norm']['scale']), torch_params.pop('norm.weight').detach().numpy())
    for name, tensor in torch_params.items():
        np.testing.assert_array_equal(np.asarray(params[name]), tensor.detach().numpy(), err_msg=name)
    np.testing.assert_array_equal(np.asarray(params['static_alpha'])[:, 0], [0, 1, 0])


def test_scanned_stack_is_the_unrolled_one():
    """scan_layers=True: the same torch state dict, the same initial values (the layer index rides in the carry),
    the same outputs as vit-pytorch's."""
    config = {**TINY, 'depth': 3, 'num_residual_streams': 2}
    model, variables, torch_model = converted_pair(ENTRY, config)
    scanned = SimpleViT(**config, scan_layers=True, remat_policy='nothing_saveable')
    scanned_variables = converters.from_torch(scanned, torch_model.state_dict())
    x = images((2, 16, 16, 3))
    expected = torch_forward(torch_model, x)
    assert_close_outputs(apply(scanned, scanned_variables, x), expected, ENTRY.tolerance)
    assert_close_outputs(apply(model, variables, x), expected, ENTRY.tolerance)
    fresh = converters.to_torch(scanned, init_variables(scanned))
    unrolled = converters.to_torch(model, init_variables(model))
    for key in (key for key in fresh if 'static_alpha' in key):
        np.testing.assert_array_equal(fresh[key].numpy(), unrolled[key].numpy(), err_msg=key)


def test_vit_pytorch_example_shapes():
    """The file's `__main__` example, at a smaller size: logits per image."""
    model = SimpleViT(num_classes=1000, image_size=64, patch_size=8, dim=64, depth=2, heads=8, mlp_dim=128,
                      num_residual_streams=8, dim_head=8)
    x = jnp.zeros((3, 64, 64, 3))
    variables = jax.jit(model.init)(jax.random.key(0), x)
    assert jax.jit(model.apply)(variables, x).shape == (3, 1000)


def test_another_patch_count_is_refused():
    with pytest.raises(ValueError, match=r'input of size \(8, 16\) gives 2 patches, but the position embedding'):
        jax.eval_shape(SimpleViT(**TINY).init, jax.random.key(0), jnp.zeros((1, 8, 16, 3)))
