"""NesT beyond the registry configs: the parameter tree, the last hierarchy's position embedding (a zero
gradient), input sizes, vit-pytorch's quirks, dropout and bad configurations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import parity
from tests.conftest import apply, assert_close_outputs, converted_pair, float64_reference, images, nchw, torch_forward

from vit_flax.nest import NesT

ENTRY = parity.BY_NAME['nest.NesT']
TINY = ENTRY.configs[0]
TOLERANCE = ENTRY.tolerance


def example(model, batch=1, seed=None):
    shape = (batch, model.image_size, model.image_size, model.channels)
    return (np.zeros(shape, np.float32) if seed is None else images(shape, seed),)


def converted(config, seed=0):
    return converted_pair(ENTRY, config, seed)


def run(model, variables, x, train=False, rngs=None):
    return apply(model, variables, x, train=train, rngs=rngs)


def test_parameter_tree_mirrors_torch():
    model = NesT(**ENTRY.configs[1])
    params = jax.eval_shape(model.init, jax.random.key(0), *example(model))['params']
    assert set(params) == {'to_patch_embedding_1', 'to_patch_embedding_2', 'to_patch_embedding_3', 'layers_0_0',
                           'layers_0_1_0', 'layers_0_1_1', 'layers_1_0', 'layers_1_1_0', 'layers_1_1_1', 'layers_2_0',
                           'mlp_head_0', 'mlp_head_2'}  # the last hierarchy aggregates nothing (nn.Identity)
    assert params['to_patch_embedding_1']['g'].shape == (1, 4, 1, 1)  # patch_dim = 1 * 2 * 2
    assert params['layers_0_0']['pos_emb'].shape == (4,)  # 8 x 8 patches in 4 x 4 blocks of 2 x 2
    assert params['layers_2_0']['pos_emb'].shape == (4,)  # the same at every hierarchy
    # dim_head=5 is ignored: dim // heads = 4 per head, widths and heads doubling per hierarchy
    assert params['layers_0_0']['layers_0_0']['to_qkv']['kernel'].shape == (1, 1, 12, 36)
    assert params['layers_2_0']['layers_0_0']['to_qkv']['kernel'].shape == (1, 1, 48, 144)
    assert 'layers_1_0' in params['layers_1_0'] and 'layers_1_0' not in params['layers_2_0']  # block_repeats
    assert params['layers_1_1_0']['kernel'].shape == (3, 3, 24, 48)
    assert params['mlp_head_2']['kernel'].shape == (48, 7)


@pytest.mark.parametrize('index', range(len(ENTRY.configs)))
def test_last_position_embedding_gets_no_gradient(index):
    """The last hierarchy's `pos_emb` adds one scalar to every channel of a position, and everything after it reads
    the residual stream through a channel LayerNorm, which removes such a shift: its true gradient is zero (the
    registry's gradient test checks Flax's is round-off); earlier ones reach the aggregation conv."""
    config = ENTRY.configs[index]
    model, variables, torch_model = converted(config, seed=index)
    (x,) = example(model, batch=2, seed=index)
    weights = images((2, config['num_classes']), seed=7)
    reference = float64_reference(torch_model)
    (reference(nchw(x)) * torch.from_numpy(weights).double()).sum().backward()
    expected = {name: p.grad.numpy() for name, p in reference.named_parameters()}
    scale = max(float(np.abs(g).max()) for g in expected.values())
    last = f"layers.{config['num_hierarchies'] - 1}.0.pos_emb"
    assert np.abs(expected[last]).max() <= 1e-12 * scale
    if config['num_hierarchies'] > 1:
        assert np.abs(expected['layers.0.0.pos_emb']).max() > 1e-4 * scale


def test_position_embedding_is_drawn_like_torch_randn():
    # pos_emb is torch.randn(seq_len): few draws in the registry configs, so check the family on a big one
    big = NesT(image_size=64, patch_size=1, num_classes=1, dim=4, heads=1, num_hierarchies=1, block_repeats=0)
    pos_emb = jax.eval_shape(big.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))['params']['layers_0_0']
    assert pos_emb['pos_emb'].shape == (4096,)
    drawn = np.asarray(jax.jit(big.init)(jax.random.key(1), jnp.zeros((1, 64, 64, 3)))['params']['layers_0_0']['pos_emb'])
    assert abs(drawn.mean()) < 0.1 and abs(drawn.std() - 1) < 0.05


@pytest.mark.parametrize('size', [(8, 8), (8, 16), (16, 8)])
def test_smaller_and_non_square_inputs_slice_the_position_embedding(size):
    model, variables, torch_model = converted(TINY)
    x = images((2, *size, 3))
    assert_close_outputs(run(model, variables, x), torch_forward(torch_model, x), TOLERANCE)


def test_larger_input_and_bad_inputs_are_refused():
    model, variables, _ = converted(TINY)
    with pytest.raises(ValueError, match=r'blocks of 2 x 4 positions hold more than the seq_len=4'):
        model.apply(variables, images((1, 16, 32, 3)))
    with pytest.raises(ValueError, match=r'image of size \(12, 16\) must be divisible by .* = 8'):
        model.apply(variables, images((1, 12, 16, 3)))
    with pytest.raises(ValueError, match=r'expected 3 channels \(channels-last input\), got shape \(1, 3, 16, 16\)'):
        model.apply(variables, images((1, 3, 16, 16)))
    with pytest.raises(ValueError, match=r'expected images of shape'):
        model.apply(variables, images((16, 16, 3)))


def test_dim_head_is_ignored():
    shapes = lambda config: jax.tree_util.tree_map(
        lambda a: a.shape, jax.eval_shape(NesT(**config).init, jax.random.key(0), jnp.zeros((1, 16, 16, 3))))
    assert shapes(TINY) == shapes({**TINY, 'dim_head': 7})


def test_longer_block_repeats_ignores_the_extra_entries():
    config = {**TINY, 'block_repeats': (2, 1, 5)}
    model, variables, torch_model = converted(config)
    assert len(torch_model.layers) == 2 and 'layers_1_0' in variables['params']['layers_0_0']
    x = images((2, 16, 16, 3))
    assert_close_outputs(run(model, variables, x), torch_forward(torch_model, x), TOLERANCE)


def test_dropout_only_in_training_and_reproducible():
    config = ENTRY.configs[2]
    model, variables, torch_model = converted(config)
    (x,) = example(model, batch=2, seed=3)
    eval_out = run(model, variables, x)
    out_1 = run(model, variables, x, train=True, rngs={'dropout': jax.random.key(1)})
    np.testing.assert_array_equal(out_1, run(model, variables, x, train=True, rngs={'dropout': jax.random.key(1)}))
    assert not np.allclose(out_1, run(model, variables, x, train=True, rngs={'dropout': jax.random.key(2)}))
    assert not np.allclose(out_1, eval_out)


@pytest.mark.parametrize('config, message', [
    (dict(image_size=18), r'divisible by the patch size: image_size=18, patch_size=4'),
    (dict(image_size=(16, 16)), r'image_size=\(16, 16\)'),
    (dict(image_size=24), r'patch map \(6 = .*\) must divide into 2\^\(num_hierarchies - 1\) = 4 .*num_hierarchies=3'),
    (dict(num_hierarchies=0), r'num_hierarchies=0'),
    (dict(heads=17), r'heads=17'),
    (dict(heads=0), r'heads=0'),
    (dict(num_hierarchies=3, block_repeats=(1, 1)), r'block_repeats=\(1, 1\) .*num_hierarchies=3'),
    (dict(channels=0), r'channels=0'),
])
def test_bad_configs_fail_at_construction(config, message):
    config = {**TINY, **config}
    if config['image_size'] == 24:
        config['num_hierarchies'] = 3
    with pytest.raises(ValueError, match=message):
        NesT(**config)


def test_torch_refuses_what_is_refused_here():
    from vit_pytorch.nest import NesT as TorchNesT
    with pytest.raises(ZeroDivisionError):
        TorchNesT(**{**TINY, 'heads': 17})
    with pytest.raises(Exception):  # 6 x 6 patches in 4 x 4 blocks: fails at the first forward
        TorchNesT(**{**TINY, 'image_size': 24, 'num_hierarchies': 3})(torch.zeros(1, 3, 24, 24))
