"""CrossViT beyond the registry configs: depths, widths, vit-pytorch's quirks, dropout, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import parity
from vit_flax import converters
from tests.conftest import (
    apply, assert_close_outputs, converted_pair, float64_reference, images, torch_class, torch_forward,
)

from vit_flax.cross_vit import Attention, CrossTransformer, CrossViT

ENTRY = parity.BY_NAME['cross_vit.CrossViT']
TINY = ENTRY.configs[0]  # image 16, patches 4 / 8, widths 16 / 32, one layer of everything


def test_parameter_tree_mirrors_torch():
    variables = jax.eval_shape(CrossViT(**TINY).init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    params = variables['params']
    assert params['sm_image_embedder']['pos_embedding'].shape == (1, 17, 16)
    assert params['lg_image_embedder']['pos_embedding'].shape == (1, 5, 32)
    assert params['lg_image_embedder']['cls_token'].shape == (1, 1, 32)
    layer = params['multi_scale_encoder']['layers_0_0']  # the small branch's transformer
    assert set(layer) == {'layers_0_0', 'layers_0_1', 'norm'}
    assert set(layer['layers_0_0']) == {'norm', 'to_q', 'to_kv', 'to_out_0'}
    assert layer['layers_0_0']['to_kv']['kernel'].shape == (16, 32) and 'bias' not in layer['layers_0_0']['to_q']
    cross = params['multi_scale_encoder']['layers_0_2']['layers_0_0']  # small cls attends the large patches
    assert cross['project_in']['kernel'].shape == (16, 32) and cross['project_out']['kernel'].shape == (32, 16)
    assert cross['fn']['to_q']['kernel'].shape == (32, 16)
    assert set(params['sm_mlp_head_0']) == {'scale', 'bias'} and params['lg_mlp_head_1']['kernel'].shape == (32, 10)


def test_equal_widths_have_no_projections():
    config = {**TINY, 'lg_dim': 16}
    variables = jax.eval_shape(CrossViT(**config).init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    cross = variables['params']['multi_scale_encoder']['layers_0_2']
    assert set(cross['layers_0_0']) == set(cross['layers_0_1']) == {'fn'}
    torch_keys = torch_class(ENTRY)(**config).state_dict().keys()
    assert not any('project_' in key for key in torch_keys)


# depths (multi-scale, branch, cross), widths, heads and dim_head beyond the registry configs, forward only
VARIANTS = [
    # two multi-scale layers, two cross steps, odd heads, dim_head unlike the width
    dict(TINY, depth=2, cross_attn_depth=2, cross_attn_heads=3, cross_attn_dim_head=5, sm_enc_heads=5,
         sm_enc_dim_head=3),
    # no multi-scale layer at all: embedders and heads only
    dict(TINY, depth=0),
    # no cross attention, an empty small-branch transformer (its final LayerNorm only), no classes; the large
    # patch is the whole image (one large patch token), a wider small branch, one head
    dict(TINY, cross_attn_depth=0, sm_enc_depth=0, num_classes=0, sm_dim=24, lg_dim=8, lg_patch_size=16,
         lg_enc_heads=1, channels=2),
]


@pytest.mark.parametrize('index', range(len(VARIANTS)))
def test_variants_match_torch(index):
    config = VARIANTS[index]
    model, variables, torch_model = converted_pair(ENTRY, config, seed=index)
    x = images((2, 16, 16, config.get('channels', 3)), seed=index)
    out = apply(model, variables, x)
    assert out.shape == (2, config['num_classes'])
    assert_close_outputs(out, torch_forward(torch_model, x), ENTRY.tolerance)


@pytest.mark.parametrize('size', [(8, 24)])
def test_smaller_and_non_square_inputs_slice_the_position_embeddings(size):
    """Only the token counts have to fit: (8, 24) is wider than image_size=16 and torch accepts it."""
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    x = images((2, *size, 3))
    assert_close_outputs(apply(model, variables, x), torch_forward(torch_model, x), ENTRY.tolerance)


def test_larger_input_is_refused_with_sizes():
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    x = images((1, 24, 16, 3))
    with pytest.raises(RuntimeError):
        torch_forward(torch_model, x)  # torch: a shape mismatch in `x += pos_embedding[:, :n + 1]`
    with pytest.raises(ValueError, match=r'input of size \(24, 16\) gives 25 tokens, more than the 17'):
        model.apply(variables, x)


def tensor(a):
    return torch.from_numpy(np.array(a))


def test_cross_attention_normalises_only_the_query():
    """kv_include_self: keys / values are [LayerNorm(cls), context], the context un-normalised, as in torch."""
    dim, heads, dim_head = 8, 3, 4
    attention = Attention(dim=dim, heads=heads, dim_head=dim_head)
    cls = jnp.asarray(images((2, 1, dim)))
    context = jnp.asarray(images((2, 5, dim), seed=1))
    params = jax.jit(lambda key: attention.init(key, cls, context, kv_include_self=True))(jax.random.key(0))['params']
    params = jax.tree_util.tree_map(lambda a: a + 0.1 * jnp.asarray(images(a.shape, seed=a.size)), params)

    torch_module = converters.import_vit_pytorch(ENTRY.torch_module)
    torch_attention = torch_module.Attention(dim, heads=heads, dim_head=dim_head).eval()
    with torch.no_grad():
        torch_attention.load_state_dict({
            'norm.weight': tensor(params['norm']['scale']), 'norm.bias': tensor(params['norm']['bias']),
            'to_q.weight': tensor(params['to_q']['kernel'].T), 'to_kv.weight': tensor(params['to_kv']['kernel'].T),
            'to_out.0.weight': tensor(params['to_out_0']['kernel'].T),
            'to_out.0.bias': tensor(params['to_out_0']['bias']),
        })
        expected = float64_reference(torch_attention)(tensor(cls).double(), context=tensor(context).double(),
                                                      kv_include_self=True)
    run = jax.jit(lambda q, c: attention.apply({'params': params}, q, c, kv_include_self=True))
    out = run(cls, context)
    assert out.shape == (2, 1, dim)
    assert_close_outputs(out, expected, ENTRY.tolerance)

    # shifting and scaling the context changes the output (it is not normalised), the query's does not matter
    assert not np.allclose(run(cls, 3 * context + 1), out, atol=1e-3)
    np.testing.assert_allclose(run(3 * cls + 1, context), out, rtol=1e-4, atol=1e-4)


def test_patch_tokens_pass_the_cross_transformer_unchanged():
    module = CrossTransformer(sm_dim=8, lg_dim=12, depth=1, heads=2, dim_head=4, dropout=0.0)
    sm, lg = jnp.asarray(images((2, 5, 8))), jnp.asarray(images((2, 3, 12), seed=1))
    (sm_out, lg_out), _ = jax.jit(module.init_with_output)(jax.random.key(0), sm, lg)
    np.testing.assert_array_equal(sm_out[:, 1:], sm[:, 1:])
    np.testing.assert_array_equal(lg_out[:, 1:], lg[:, 1:])
    assert not np.allclose(sm_out[:, 0], sm[:, 0]) and not np.allclose(lg_out[:, 0], lg[:, 0])


def test_dropout_on_by_default_only_in_training_and_reproducible():
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    assert model.dropout == model.emb_dropout == 0.1  # torch's defaults: dropout is on in training
    assert torch_model.sm_image_embedder.dropout.p == 0.1
    x = images((2, 16, 16, 3))
    eval_out = apply(model, variables, x)
    assert_close_outputs(eval_out, torch_forward(torch_model, x), ENTRY.tolerance)  # eval mode: no dropout

    train = lambda seed: apply(model, variables, x, train=True, rngs={'dropout': jax.random.key(seed)})
    np.testing.assert_array_equal(train(1), train(1))
    assert not np.allclose(train(1), train(2))
    assert not np.allclose(train(1), eval_out)
    with pytest.raises(Exception, match='dropout'):
        jax.eval_shape(lambda v: model.apply(v, x, train=True), variables)  # no 'dropout' rng stream given


def test_torch_rejects_what_we_reject():
    """The sizes vit-pytorch's asserts (or arithmetic) refuse, which CrossViT refuses with a ValueError."""
    cls = torch_class(ENTRY)
    base = dict(image_size=16, num_classes=2, sm_dim=8, lg_dim=8, sm_patch_size=4, lg_patch_size=8)
    for bad in (dict(image_size=18), dict(lg_patch_size=6), dict(image_size=(16, 16)), dict(sm_patch_size=(4, 4))):
        with pytest.raises((AssertionError, TypeError)):
            cls(**{**base, **bad})
        with pytest.raises(ValueError):
            CrossViT(**{**base, **bad})


@pytest.mark.parametrize('config, message', [
    (dict(image_size=(16, 16)), r'single int sizes .* got image_size=\(16, 16\)'),
    (dict(sm_patch_size=(4, 4)), r'got sm_patch_size=\(4, 4\)'),
    (dict(image_size=18), r'divisible by the patch size: image_size=18, sm_patch_size=4'),
    (dict(lg_patch_size=6), r'divisible by the patch size: image_size=16, lg_patch_size=6'),
    (dict(lg_patch_size=0), 'lg_patch_size=0'),
    (dict(channels=0), 'channels=0'),
    (dict(sm_dim=0), 'sm_dim=0'),
    (dict(cross_attn_heads=0), 'cross_attn_heads=0'),
    (dict(lg_enc_dim_head=0), 'lg_enc_dim_head=0'),
    (dict(num_classes=-1), 'num_classes=-1'),
    (dict(depth=-1), 'depth=-1'),
    (dict(dropout=1.5), 'dropout=1.5'),
])
def test_bad_configs_fail_at_construction(config, message):
    with pytest.raises(ValueError, match=message):
        CrossViT(**{**TINY, **config})


@pytest.mark.parametrize('shape, message', [
    ((1, 16, 16, 1), r'expected 3 channels \(channels-last input\), got shape \(1, 16, 16, 1\)'),
    ((1, 3, 16, 16), r'expected 3 channels \(channels-last input\), got shape \(1, 3, 16, 16\)'),
    ((16, 16, 3), r'expected images of shape \(batch, height, width, channels\), got shape \(16, 16, 3\)'),
    ((1, 12, 16, 3), r'image of size \(12, 16\) is not divisible by patch size \(8, 8\)'),  # fine for the small
])
def test_bad_inputs_name_the_shape(shape, message):
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(CrossViT(**TINY).init, jax.random.key(0), jnp.zeros(shape))
