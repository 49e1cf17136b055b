"""PiT beyond the registry configs: the depthwise pooling against torch's, the token-grid arithmetic, input sizes,
vit-pytorch's quirks (heads zipped with depth, empty stages), dropout, bad configs and inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import parity
from parity.pit import input_is_accepted, random_configuration_and_input_size
from vit_flax import converters
from tests.conftest import (apply, assert_close_outputs, converted_pair, float64_reference, images, new_torch_model,
                            torch_forward)

from vit_flax.pit import PiT, Pool, conv_output_size

ENTRY = parity.BY_NAME['pit.PiT']
TINY = ENTRY.configs[0]  # image_size=12, patch_size=4: a 5 x 5 token grid, then 3 x 3, widths 16 and 32


def param_shapes(config, size=None):
    model = PiT(**config)
    size = size or (model.image_size, model.image_size)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *size, model.channels)))
    return variables['params']


def torch_pool_module():
    import vit_pytorch.pit

    return vit_pytorch.pit.Pool


def test_parameter_tree_mirrors_torch():
    params = param_shapes(TINY)
    assert params['pos_embedding'].shape == (1, 26, 16) and params['cls_token'].shape == (1, 1, 16)
    assert set(params) == {'to_patch_embedding_2', 'pos_embedding', 'cls_token', 'layers_0', 'layers_1', 'layers_2',
                           'mlp_head_0', 'mlp_head_1'}
    assert params['to_patch_embedding_2']['kernel'].shape == (3 * 4 * 4, 16)
    assert 'norm' not in params['layers_0']  # no final LayerNorm in PiT's transformer
    pool = params['layers_1']
    assert pool['downsample']['net_0']['kernel'].shape == (3, 3, 1, 32)  # depthwise: torch (32, 1, 3, 3)
    assert pool['downsample']['net_1']['kernel'].shape == (1, 1, 32, 32)
    assert pool['cls_ff']['kernel'].shape == (16, 32)
    assert params['layers_2']['layers_0_0']['to_qkv']['kernel'].shape == (32, 3 * 2 * 8)  # second stage: width 32
    assert params['mlp_head_0']['scale'].shape == (32,) and params['mlp_head_1']['kernel'].shape == (32, 10)


@pytest.mark.parametrize('tokens', [1 + 25, 1 + 6, 1 + 1, 1 + 12])
def test_pool_is_torch_pool_with_grouped_kernels(tokens):
    """The depthwise conv (groups=dim, 2 filters per channel) maps kernel[:, :, 0, o] <-> weight[o, 0]."""
    dim = 6
    torch.manual_seed(tokens)
    torch_pool = torch_pool_module()(dim).eval()
    state = {k: v.numpy() for k, v in torch_pool.state_dict().items()}
    params = {
        'cls_ff': {'kernel': state['cls_ff.weight'].T, 'bias': state['cls_ff.bias']},
        'downsample': {
            'net_0': {'kernel': np.transpose(state['downsample.net.0.weight'], (2, 3, 1, 0)),
                      'bias': state['downsample.net.0.bias']},
            'net_1': {'kernel': np.transpose(state['downsample.net.1.weight'], (2, 3, 1, 0)),
                      'bias': state['downsample.net.1.bias']},
        },
    }
    x = images((2, tokens, dim), seed=tokens)
    with torch.no_grad():
        expected = float64_reference(torch_pool)(torch.from_numpy(x).double()).numpy()
    out = jax.jit(Pool(dim).apply)({'params': params}, jnp.asarray(x))
    assert out.shape == expected.shape
    assert_close_outputs(out, expected, ENTRY.tolerance)

    # output channel o filters input channel o // 2 only
    flax_kernel = params['downsample']['net_0']['kernel']
    for o in range(2 * dim):
        np.testing.assert_array_equal(flax_kernel[:, :, 0, o], state['downsample.net.0.weight'][o, 0])


@pytest.mark.parametrize('image_size, patch_size', [
    (12, 4), (16, 2), (9, 3), (15, 5), (14, 7), (21, 7), (10, 5), (18, 9), (22, 11), (8, 8), (6, 3),
])
def test_token_grid_follows_torch_conv_output_size(image_size, patch_size):
    """Odd patch sizes overlap with stride (p - 1) / 2 and torch's int() floors: same grid, same embedding."""
    config = dict(TINY, image_size=image_size, patch_size=patch_size, depth=(1, 1, 1))
    torch.manual_seed(0)
    torch_model = new_torch_model(ENTRY, config)
    grid = conv_output_size(image_size, patch_size, patch_size // 2)
    assert grid == (image_size - patch_size) // (patch_size // 2) + 1  # nn.Unfold's floor
    params = param_shapes(config)  # traces the forward at image_size: the unfolded tokens fill the embedding
    assert params['pos_embedding'].shape == tuple(torch_model.pos_embedding.shape) == (1, grid**2 + 1, 16)


@pytest.mark.parametrize('size', [(11, 9), (8, 12)])
def test_smaller_non_square_and_indivisible_inputs(size):
    """Inputs up to image_size's token count; sides need not be multiples of the patch. (11, 9) is a 4 x 3 grid,
    re-folded into 3 rows of 4 before the Pool; (8, 12) a 3 x 5 grid, which folds back as it is."""
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    x = images((2, *size, 3))
    assert_close_outputs(apply(model, variables, x), torch_forward(torch_model, x), ENTRY.tolerance)


@pytest.mark.parametrize('size, message', [
    ((14, 14), r'input of size \(14, 14\) gives 37 tokens, more than the 26 position embeddings'),
    ((6, 12), r'10 tokens cannot be folded into 3 rows'),  # a 2 x 5 grid: torch's einops fails
    ((8, 16), r'21 tokens cannot be folded into 4 rows'),
    ((3, 12), r'image of size \(3, 12\) is smaller than the patch size 4'),
])
def test_sizes_torch_refuses_are_refused_by_name(size, message):
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    x = images((1, *size, 3))
    with pytest.raises(Exception):
        torch_forward(torch_model, x)
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(model.apply, variables, x)


def test_single_stage_has_no_pool_and_takes_any_grid():
    config = dict(TINY, depth=(2,), heads=3)
    model, variables, torch_model = converted_pair(ENTRY, config)
    assert set(variables['params']) >= {'layers_0'} and 'layers_1' not in variables['params']
    x = images((2, 6, 12, 3))  # a 2 x 5 grid, which a Pool could not fold
    assert_close_outputs(apply(model, variables, x), torch_forward(torch_model, x), ENTRY.tolerance)


def test_heads_shorter_than_depth_builds_fewer_stages_ending_in_a_pool():
    """torch zips depth with heads but decides "not the last stage" by len(depth): a trailing Pool, doubled head."""
    config = dict(TINY, depth=(1, 1), heads=(3,))
    model, variables, torch_model = converted_pair(ENTRY, config)
    params = variables['params']
    assert 'layers_1' in params and 'layers_2' not in params
    assert params['mlp_head_0']['scale'].shape == (32,)
    x = images((2, 12, 12, 3))
    assert_close_outputs(apply(model, variables, x), torch_forward(torch_model, x), ENTRY.tolerance)


def test_heads_longer_than_depth_are_ignored():
    longer = param_shapes(dict(TINY, heads=(2, 3, 4)))
    shapes = lambda tree: jax.tree_util.tree_map(lambda a: a.shape, tree)
    assert shapes(longer) == shapes(param_shapes(dict(TINY, heads=(2, 3))))
    torch.manual_seed(0)
    torch_keys = new_torch_model(ENTRY, dict(TINY, heads=(2, 3, 4))).state_dict().keys()
    zeros = jax.tree_util.tree_map(lambda a: np.zeros(a.shape, a.dtype), {'params': longer})
    assert converters.to_torch(PiT(**dict(TINY, heads=(2, 3, 4))), zeros).keys() == torch_keys


def test_empty_depth_reads_the_cls_token_from_the_embedding():
    config = dict(TINY, depth=())
    model, variables, torch_model = converted_pair(ENTRY, config)
    params = variables['params']
    assert not any(name.startswith('layers') for name in params)
    x = images((2, 12, 12, 3))
    out = apply(model, variables, x)
    assert_close_outputs(out, torch_forward(torch_model, x), ENTRY.tolerance)
    cls = params['cls_token'][0, 0] + params['pos_embedding'][0, 0]
    cls = (cls - cls.mean()) / jnp.sqrt(cls.var() + 1e-5) * params['mlp_head_0']['scale'] + params['mlp_head_0']['bias']
    expected = cls @ params['mlp_head_1']['kernel'] + params['mlp_head_1']['bias']
    np.testing.assert_allclose(out, np.broadcast_to(expected, out.shape), rtol=1e-5, atol=1e-5)


def test_num_classes_zero_gives_empty_logits():
    model = PiT(**dict(TINY, num_classes=0))
    x = jnp.zeros((2, 12, 12, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    assert variables['params']['mlp_head_1']['kernel'].shape == (32, 0)
    assert jax.eval_shape(model.apply, variables, x).shape == (2, 0)
    torch.manual_seed(0)
    assert tuple(torch_forward(new_torch_model(ENTRY, dict(TINY, num_classes=0)), np.asarray(x)).shape) == (2, 0)


def test_dropout_only_in_training_and_reproducible():
    model = PiT(**dict(TINY, dropout=0.5, emb_dropout=0.5))
    x = images((2, 12, 12, 3))
    _, variables, _ = converted_pair(ENTRY, TINY)
    eval_out = apply(model, variables, x)
    np.testing.assert_array_equal(eval_out, apply(PiT(**TINY), variables, x))

    train = lambda seed: apply(model, variables, x, train=True, rngs={'dropout': jax.random.key(seed)})
    np.testing.assert_array_equal(train(1), train(1))
    assert not np.allclose(train(1), train(2))
    assert not np.allclose(train(1), eval_out)
    with pytest.raises(Exception, match='dropout'):
        model.apply(variables, x, train=True)  # no 'dropout' rng stream given


@pytest.mark.parametrize('config, message, torch_refuses', [
    (dict(image_size=(12, 12)), r'single int image_size .* got image_size=\(12, 12\)', True),
    (dict(patch_size=(4, 4)), r'single int patch_size .* got patch_size=\(4, 4\)', True),
    (dict(image_size=13), r'divisible by the patch size: image_size=13, patch_size=4', True),
    (dict(patch_size=1, image_size=12), r'patch_size must be at least 2 .* got patch_size=1', True),
    (dict(depth=[1, 1]), r'depth must be a tuple of integers.* got depth=\[1, 1\]', True),
    (dict(depth=2), r'depth must be a tuple of integers.* got depth=2', True),
    (dict(heads=0), 'heads=0 must be a positive integer', True),
    (dict(heads=(2, 0)), r'heads=\(2, 0\) holds 0; each entry must be a positive integer', True),
    (dict(heads=[2, 2]), r'heads must be an int or a tuple .* got heads=\[2, 2\]', True),
    (dict(dim_head=0), 'dim_head=0 must be a positive integer', True),
    (dict(num_classes=-1), 'num_classes=-1 must be a non-negative integer', True),
    (dict(mlp_dim=-2), 'mlp_dim=-2 must be a non-negative integer', True),
    (dict(dim=0), 'dim=0 must be a positive integer', True),
    (dict(image_size=0), 'image_size=0 must be a positive integer', True),
    # torch runs these (an empty stage; a model for 0-channel images, which its Unfold refuses); refused here
    (dict(depth=(1, -1)), r'depth=\(1, -1\) holds -1; each entry must be a non-negative integer', False),
    (dict(channels=0), 'channels=0 must be a positive integer', False),
])
def test_bad_configs_fail_at_construction(config, message, torch_refuses):
    kwargs = {**TINY, **config}
    with pytest.raises(ValueError, match=message):
        PiT(**kwargs)
    if torch_refuses:  # at construction, or in the forward pass of an image of the tiny config's size
        with pytest.raises(Exception):
            torch_forward(new_torch_model(ENTRY, kwargs), np.zeros((1, 12, 12, 3), np.float32))


@pytest.mark.parametrize('shape, message', [
    ((1, 12, 12, 1), r'expected 3 channels \(channels-last input\), got shape \(1, 12, 12, 1\)'),
    ((1, 3, 12, 12), r'expected 3 channels \(channels-last input\), got shape \(1, 3, 12, 12\)'),
    ((12, 12, 3), r'expected images of shape \(batch, height, width, channels\), got shape \(12, 12, 3\)'),
])
def test_bad_inputs_name_the_shape(shape, message):
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(PiT(**TINY).init, jax.random.key(0), jnp.zeros(shape))


def test_inputs_torch_refuses_are_refused_with_a_value_error():
    """Random configurations and input sizes that vit-pytorch's forward fails on (too few pixels for a patch, more
    tokens than image_size gives, a token count a Pool cannot fold into rows): a ValueError here. The sweep
    (parity/pit.py) runs the sizes torch accepts."""
    rng = np.random.default_rng(2024)
    refused = 0
    while refused < 12:  # the 11th is the first these draws reach that a Pool cannot fold
        config, size = random_configuration_and_input_size(rng)
        if input_is_accepted(config, size):
            continue
        x = images((1, *size, config['channels']))
        with pytest.raises(Exception):
            torch_forward(new_torch_model(ENTRY, config), x)
        model = PiT(**config)
        side = config['image_size']
        variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, side, side, config['channels'])))
        with pytest.raises(ValueError):
            jax.eval_shape(model.apply, variables, x)
        refused += 1
