"""mp3.ViT behaviour beyond the registry configs: cross-attention to a context, the pieces MP3 uses, input sizes,
vit-pytorch's quirks, dropout, bad configs and inputs (random configurations: parity.mp3)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from einops import rearrange

import parity
from vit_flax import converters
from tests.conftest import (
    apply,
    assert_close_outputs,
    converted_pair,
    float64_reference,
    images,
    init_variables,
    nchw,
    torch_class,
    torch_forward,
)

from vit_flax.mp3 import Transformer, ViT

ENTRY = parity.BY_NAME['mp3.ViT']
TINY = ENTRY.configs[0]  # 16x16 images, 4x4 patches, dim 32, 4 heads of 8, depth 2


def test_parameter_tree_mirrors_torch():
    config = {**TINY, 'heads': 1, 'dim_head': 32, 'depth': 1}
    params = jax.eval_shape(ViT(**config).init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))['params']
    layer = params['transformer']['layers_0_0']
    assert layer['to_q']['kernel'].shape == (32, 32) and layer['to_kv']['kernel'].shape == (32, 64)
    assert 'to_out_0' in layer  # kept for one head with dim_head == dim, unlike vit.py
    assert set(params['transformer']) == {'layers_0_0', 'layers_0_1'}  # no final LayerNorm, unlike vit.py
    assert set(params['linear_head_0']) == {'scale', 'bias'} and params['linear_head_1']['kernel'].shape == (32, 10)
    assert 'pos_embedding' not in params
    assert ViT(**TINY).num_patches == 16 and ViT(**ENTRY.configs[1]).num_patches == 30


@pytest.mark.parametrize('size', [(8, 8), (24, 16), (4, 28), (20, 20)])
def test_any_input_size_gets_its_own_position_embedding(size):
    """The sin-cos embedding is built from each input's patch grid: larger, smaller and other shapes all work."""
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    x = images((2, *size, 3))
    assert_close_outputs(apply(model, variables, x), torch_forward(torch_model, x), ENTRY.tolerance)


def transformer_pair(config, seed=0):
    """(Flax Transformer, its variables converted from a randomised torch Transformer, that torch Transformer)."""
    torch.manual_seed(seed)
    torch_transformer = converters.import_vit_pytorch(ENTRY.torch_module).Transformer(**config).eval()
    with torch.no_grad():
        for parameter in torch_transformer.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    model = Transformer(**config)
    example = (np.zeros((1, 3, config['dim']), np.float32), np.zeros((1, 2, config['dim']), np.float32))
    variables = converters.from_torch(model, torch_transformer.state_dict(), example_inputs=example)
    return model, variables, torch_transformer


@pytest.mark.parametrize('config', [
    dict(dim=16, depth=2, heads=3, dim_head=5, mlp_dim=24),
    dict(dim=12, depth=1, heads=1, dim_head=12, mlp_dim=8, dropout=0.1),
])
def test_transformer_with_and_without_context_matches_torch(config):
    model, variables, torch_transformer = transformer_pair(config)
    x, context = images((2, 7, config['dim']), seed=1), images((2, 4, config['dim']), seed=2)
    run = jax.jit(lambda v, x, c: model.apply(v, x, context=c))
    exact = float64_reference(torch_transformer)
    with torch.no_grad():
        expected_cross = exact(torch.from_numpy(x).double(), torch.from_numpy(context).double())
        expected_self = exact(torch.from_numpy(x).double())
    assert_close_outputs(run(variables, x, context), expected_cross, ENTRY.tolerance)
    assert_close_outputs(jax.jit(model.apply)(variables, x), expected_self, ENTRY.tolerance)
    # and the context matters
    assert not np.allclose(run(variables, x, context), expected_self.numpy(), atol=1e-3)


def test_vit_pieces_as_mp3_uses_them():
    """MP3 runs `vit.to_patch_embedding` and `vit.transformer(tokens, unmasked_tokens)`: the same on both sides."""
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    x = images((2, 16, 16, 3))
    unmasked = np.array([[0, 3, 5, 9, 10, 15], [1, 2, 4, 8, 12, 14]])

    def mp3_tokens(vit, img):
        tokens = rearrange(vit.to_patch_embedding(img), 'b h w d -> b (h w) d')
        context = jnp.take_along_axis(tokens, jnp.asarray(unmasked)[..., None], axis=1)
        return vit.transformer(tokens, context)

    out = jax.jit(lambda v, img: model.apply(v, img, method=mp3_tokens))(variables, x)
    exact = float64_reference(torch_model)
    with torch.no_grad():
        tokens = rearrange(exact.to_patch_embedding(nchw(x)), 'b ... d -> b (...) d')
        context = tokens[torch.arange(2)[:, None], torch.from_numpy(unmasked)]
        expected = exact.transformer(tokens, context)
    assert out.shape == (2, 16, 32)
    assert_close_outputs(out, expected, ENTRY.tolerance)


def test_num_classes_zero_gives_empty_logits():
    model, variables, torch_model = converted_pair(ENTRY, {**TINY, 'num_classes': 0})
    x = images((2, 16, 16, 3))
    out = apply(model, variables, x)
    assert out.shape == (2, 0) and variables['params']['linear_head_1']['kernel'].shape == (32, 0)
    assert_close_outputs(out, torch_forward(torch_model, x), ENTRY.tolerance)


def test_dropout_only_in_training_and_reproducible():
    model = ENTRY.build(1)  # dropout=0.1; its eval-mode parity with torch is a registry test
    x = images((2, 24, 40, 1))
    variables = init_variables(model)
    eval_out = apply(model, variables, x)

    train = lambda seed: apply(model, variables, x, train=True, rngs={'dropout': jax.random.key(seed)})
    np.testing.assert_array_equal(train(1), train(1))
    assert not np.allclose(train(1), train(2))
    assert not np.allclose(train(1), eval_out)
    with pytest.raises(Exception, match='dropout'):
        model.apply(variables, x, train=True)  # no 'dropout' rng stream given


def test_dim_four_is_refused_where_torch_returns_nan():
    torch_model = torch_class(ENTRY)(**{**TINY, 'dim': 4}).eval()
    assert torch.isnan(torch_forward(torch_model, images((1, 16, 16, 3)))).all()
    with pytest.raises(ValueError, match='dim >= 8, got dim=4'):
        ViT(**{**TINY, 'dim': 4})


@pytest.mark.parametrize('config, message', [
    (dict(image_size=18), r'divisible by the patch size: image_size=\(18, 18\), patch_size=\(4, 4\)'),
    (dict(image_size=(16, 20), patch_size=(4, 8)), r'image_size=\(16, 20\), patch_size=\(4, 8\)'),
    (dict(patch_size=0), 'patch_size=0'),
    (dict(image_size=(16, 0)), r'image_size=\(16, 0\)'),
    (dict(dim=30), 'multiple of 4 .* dim=30'),
    (dict(channels=0), 'channels'),
    (dict(heads=0), 'heads=0'),
    (dict(dim_head=0), 'dim_head=0'),
    (dict(depth=-1), 'depth=-1'),
    (dict(num_classes=-1), 'num_classes=-1'),
])
def test_bad_configs_fail_at_construction(config, message):
    with pytest.raises(ValueError, match=message):
        ViT(**{**TINY, **config})


@pytest.mark.parametrize('shape, message', [
    ((1, 16, 16, 1), r'expected 3 channels \(channels-last input\), got shape \(1, 16, 16, 1\)'),
    ((1, 3, 16, 16), r'expected 3 channels \(channels-last input\), got shape \(1, 3, 16, 16\)'),
    ((16, 16, 3), r'expected images of shape \(batch, height, width, channels\), got shape \(16, 16, 3\)'),
    ((1, 14, 16, 3), r'image of size \(14, 16\) is not divisible by patch size \(4, 4\)'),
])
def test_bad_inputs_name_the_shape(shape, message):
    with pytest.raises(ValueError, match=message):
        ViT(**TINY).init(jax.random.key(0), jnp.zeros(shape))
