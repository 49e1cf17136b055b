"""jet_vit.JetViT beyond the registry configs: the layer choice (drawn in every call, replayed from its rng stream,
refused without it), each attention option alone against vit-pytorch, the dynamic convolution against torch's grouped
conv2d, vit-pytorch's README examples and bad configurations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import parity
from tests.conftest import apply, assert_close_outputs, converted_pair, images, run_torch
from vit_flax import converters
from vit_flax.jet_vit import LAYER_SELECTION, JetViT, SqueezeDynamicConv


ENTRY = parity.BY_NAME['jet_vit.JetViT']
TINY = ENTRY.configs[0]  # a 4 x 4 patch grid, layer 0 drawing among WA, LA, FA; layer 1 linear
X = images((2, 16, 16, 3))


def test_the_choice_follows_the_rng_stream_and_each_option_is_vit_pytorchs():
    """Over a few seeds layer 0 takes each of its three options, and each run matches vit-pytorch replaying it."""
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    taken = set()
    for seed in range(8):
        rngs, draws = ENTRY.spec.draws(model, (X,), seed)
        taken.add(int(model.apply({}, rngs=rngs, method=JetViT.layer_choices)[0]))
        with draws:
            expected = run_torch(ENTRY, torch_model, (X,))
        assert_close_outputs(apply(model, variables, X, rngs=rngs), expected, ENTRY.tolerance)
        if taken == {0, 1, 2}:
            break
    assert taken == {0, 1, 2}


def test_a_drawn_layer_needs_its_rng_stream():
    model = JetViT(**TINY)
    variables = jax.eval_shape(model.init, jax.random.key(0), X)
    with pytest.raises(Exception, match=LAYER_SELECTION):
        jax.eval_shape(model.apply, variables, X)
    fixed = JetViT(**{**TINY, 'attn_layers': ('WA', 'FA')})
    assert jax.eval_shape(fixed.apply, jax.eval_shape(fixed.init, jax.random.key(0), X), X).shape == (2, 5)


def test_dynamic_conv_is_torchs_grouped_conv():
    jet_vit = converters.import_vit_pytorch('vit_pytorch.jet_vit')
    torch.manual_seed(0)
    torch_conv = jet_vit.SqueezeDynamicConv(8, 3, 4).double()
    v = np.random.default_rng(0).standard_normal((2, 2, 12, 4))
    module = SqueezeDynamicConv(8, 3, 4)
    variables = converters.from_torch(module, {k: t.float() for k, t in torch_conv.state_dict().items()},
                                      example_inputs=(jnp.zeros((2, 2, 12, 4)),))
    with torch.no_grad():
        expected = torch_conv(torch.from_numpy(v)).numpy()
    np.testing.assert_allclose(module.apply(variables, jnp.asarray(v, jnp.float32)), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('attn_layers, shape', [
    ([('WA', 'LA')] * 6, (1, 1000)),
    ([('LA', 'FA'), ('LA', 'FA'), ('WA', 'FA'), ('LA', 'FA'), ('LA', 'FA'), ('WA', 'FA')], (1, 1000)),
    (['LA', 'LA', 'WA', 'FA', 'LA', 'FA'], (1, 1000)),
])
def test_vit_pytorch_readme_examples(attn_layers, shape):
    model = JetViT(image_size=224, patch_size=16, num_classes=1000, dim=512, depth=6, heads=8, dim_head=64,
                   mlp_dim=3072, window_size=7, attn_layers=attn_layers)
    img = jnp.zeros((1, 224, 224, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), img)
    rngs = {LAYER_SELECTION: jax.random.key(0)}
    assert jax.eval_shape(lambda v: model.apply(v, img, rngs=rngs), variables).shape == shape


@pytest.mark.parametrize('config, message', [
    (dict(dim=12), r'dimension should be divisible by dimension per head: dim=12, dim_head=8'),
    (dict(image_size=18), 'Image dimensions must be divisible by the patch size'),
    (dict(attn_layers=('LA',)), r'attn_layers must give one entry per layer \(2\)'),
    (dict(attn_layers=('LA', 'XA')), 'each attn_layers entry is one of WA, LA, FA'),
    (dict(window_size=3), 'window attention needs a patch grid divisible by window_size=3, got a 4 x 4 grid'),
])
def test_bad_configs_fail_at_construction(config, message):
    with pytest.raises(ValueError, match=message):
        JetViT(**{**TINY, **config})
