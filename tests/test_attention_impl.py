"""The JAX-only `attention_impl` switch of vit.ViT and simple_vit.SimpleViT: jax.nn.dot_product_attention ('xla',
'auto'; 'cudnn' on a GPU) computes what the explicit softmax computes, against vit-pytorch too."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import converters
from tests.conftest import assert_close_outputs, randomised_torch_model, torch_forward
from vit_flax import registry
from vit_flax.recorder import Recorder

CONFIGS = {
    'vit.ViT': dict(image_size=16, patch_size=4, num_classes=5, dim=32, depth=2, heads=4, mlp_dim=32, dim_head=8),
    'simple_vit.SimpleViT': dict(image_size=16, patch_size=4, num_classes=5, dim=32, depth=2, heads=4, mlp_dim=32,
                                 dim_head=8),
}
IMAGES = np.random.default_rng(0).standard_normal((2, 16, 16, 3), np.float32)


def fused_and_explicit(name, attention_impl, **options):
    """(fused model, explicit model, variables converted from a randomised vit-pytorch model, that torch model)."""
    entry = registry.BY_NAME[name]
    torch_model = randomised_torch_model(entry, CONFIGS[name])
    fused = entry.flax_class(**CONFIGS[name], attention_impl=attention_impl, **options)
    explicit = entry.flax_class(**CONFIGS[name], **options)
    return fused, explicit, converters.from_torch(fused, torch_model.state_dict()), torch_model


@pytest.mark.parametrize('scan_layers', [False, True], ids=['unrolled', 'scanned'])
@pytest.mark.parametrize('attention_impl', ['xla', 'auto'])
@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_fused_attention_matches_vit_pytorch_and_the_explicit_path(name, attention_impl, scan_layers):
    fused, explicit, variables, torch_model = fused_and_explicit(name, attention_impl, scan_layers=scan_layers)
    out = jax.jit(fused.apply)(variables, IMAGES)
    assert_close_outputs(out, torch_forward(torch_model, IMAGES), 2e-5)

    def gradients(model):
        return jax.jit(jax.grad(lambda p: (model.apply({'params': p}, IMAGES) ** 2).sum()))(variables['params'])

    for g, g_explicit in zip(jax.tree_util.tree_leaves(gradients(fused)),
                             jax.tree_util.tree_leaves(gradients(explicit))):
        np.testing.assert_allclose(g, g_explicit, rtol=1e-5, atol=1e-5 * float(np.abs(g_explicit).max()))


def test_attention_dropout_in_training_keeps_the_explicit_path():
    """The fused kernels cannot drop out attention weights: with dropout > 0, training runs the explicit softmax (the
    same draws, so the same output); evaluation and dropout-free training run fused."""
    name = 'vit.ViT'
    config = {**CONFIGS[name], 'dropout': 0.5}
    entry = registry.BY_NAME[name]
    fused, explicit = entry.flax_class(**config, attention_impl='xla'), entry.flax_class(**config)
    variables = explicit.init(jax.random.key(0), IMAGES)
    rngs = {'dropout': jax.random.key(1)}
    np.testing.assert_array_equal(fused.apply(variables, IMAGES, train=True, rngs=rngs),
                                  explicit.apply(variables, IMAGES, train=True, rngs=rngs))
    assert_close_outputs(fused.apply(variables, IMAGES), explicit.apply(variables, IMAGES), 2e-5)


def test_recorder_records_a_fused_model_through_the_explicit_path():
    fused, explicit, variables, _ = fused_and_explicit('vit.ViT', 'xla')
    preds, attns = Recorder(fused).apply(variables, IMAGES)
    expected_preds, expected_attns = Recorder(explicit).apply(variables, IMAGES)
    np.testing.assert_array_equal(attns, expected_attns)
    np.testing.assert_array_equal(preds, expected_preds)


def test_unknown_implementation_is_refused_by_name():
    with pytest.raises(ValueError, match=r"unknown attention_impl='flash'.*explicit, xla, cudnn, auto"):
        registry.BY_NAME['vit.ViT'].flax_class(**CONFIGS['vit.ViT'], attention_impl='flash')


def test_the_option_is_jax_only_and_kept_by_the_sidecar(tmp_path):
    fused, _, variables, _ = fused_and_explicit('simple_vit.SimpleViT', 'xla')
    assert 'attention_impl' not in registry.torch_kwargs(fused)
    path = converters.save_torch(tmp_path / 'model.safetensors', fused, variables)
    model, loaded = converters.load_flax(path)
    assert model.attention_impl == 'xla'
    assert_close_outputs(model.apply(loaded, IMAGES), fused.apply(variables, IMAGES), 0.0)


@pytest.mark.skipif(jax.default_backend() != 'gpu', reason='cuDNN attention needs a GPU')
def test_cudnn_attention_on_gpu():
    fused, explicit, variables, _ = fused_and_explicit('vit.ViT', 'cudnn')
    half = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), variables)
    images = jnp.asarray(IMAGES, jnp.bfloat16)
    out = fused.apply(half, images).astype(jnp.float32)
    expected = explicit.apply(half, images).astype(jnp.float32)
    np.testing.assert_allclose(out, expected, atol=5e-2 * float(jnp.abs(expected).max()))
