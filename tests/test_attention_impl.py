"""The JAX-only `attention_impl` switch of vit.ViT, simple_vit.SimpleViT and the two NaViTs (masked attention):
jax.nn.dot_product_attention ('xla', 'auto'; 'cudnn' on a GPU) computes what the explicit softmax computes, against
vit-pytorch too."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import parity
from vit_flax import converters
from tests.conftest import assert_close_outputs, randomised_torch_model, run_torch, torch_forward
from vit_flax import layers, na_vit, registry
from vit_flax.recorder import Recorder

CONFIGS = {
    'vit.ViT': dict(image_size=16, patch_size=4, num_classes=5, dim=32, depth=2, heads=4, mlp_dim=32, dim_head=8),
    'simple_vit.SimpleViT': dict(image_size=16, patch_size=4, num_classes=5, dim=32, depth=2, heads=4, mlp_dim=32,
                                 dim_head=8),
}
IMAGES = np.random.default_rng(0).standard_normal((2, 16, 16, 3), np.float32)


def fused_and_explicit(name, attention_impl, **options):
    """(fused model, explicit model, variables converted from a randomised vit-pytorch model, that torch model)."""
    entry = parity.BY_NAME[name]
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
    gradients_equal(fused, explicit, variables['params'], lambda model, p: (model.apply({'params': p}, IMAGES) ** 2).sum())


def gradients_equal(fused, explicit, params, loss):
    def gradients(model):
        return jax.jit(jax.grad(lambda p: loss(model, p)))(params)

    for g, g_explicit in zip(jax.tree_util.tree_leaves(gradients(fused)),
                             jax.tree_util.tree_leaves(gradients(explicit))):
        np.testing.assert_allclose(g, g_explicit, rtol=1e-5, atol=1e-5 * float(np.abs(g_explicit).max()))


# the nested-tensor variant runs in `make test-slow`: its masks are na_vit's
NAVITS = ['na_vit.NaViT', pytest.param('na_vit_nested_tensor.NaViT', marks=pytest.mark.slow)]


@pytest.mark.parametrize('name', NAVITS)
def test_masked_fused_attention_matches_vit_pytorch_and_the_explicit_path(name):
    """NaViT's masks (each token sees its own image, padding is seen by none, one pool query per image slot) pass to
    the fused kernel: rows of two, one and three images, so the sequences hold padding and the pool has empty slots."""
    entry = parity.BY_NAME[name]
    config = entry.configs[0]
    torch_model = randomised_torch_model(entry, config)
    fused, explicit = entry.flax_class(**config, attention_impl='xla'), entry.flax_class(**config)
    variables = converters.from_torch(fused, torch_model.state_dict())
    inputs = entry.inputs.example(fused, batch=3, rng=np.random.default_rng(0))
    assert_close_outputs(fused.apply(variables, *inputs), run_torch(entry, torch_model, inputs), 2e-5)

    buffers = {k: v for k, v in variables.items() if k != 'params'}
    gradients_equal(fused, explicit, variables['params'],
                    lambda model, p: (model.apply({'params': p, **buffers}, *inputs) ** 2).sum())


def test_packed_batch_fused_equals_explicit():
    """A PackedBatch from the grain packer (padding, and a row with empty image slots) through the fused kernel."""
    entry = parity.BY_NAME['na_vit.NaViT']
    config = entry.configs[0]
    fused, explicit = entry.flax_class(**config, attention_impl='xla'), entry.flax_class(**config)
    rng = np.random.default_rng(0)
    images = [rng.standard_normal((h, w, 3), np.float32) for h, w in [(32, 32), (16, 8), (8, 24)]]
    batch, _, _ = na_vit.pack(explicit, images, max_seq_len=20, max_images_per_seq=3)
    assert not bool(batch.token_mask.all()) and not bool(batch.image_mask.all())
    variables = explicit.init(jax.random.key(0), batch)
    real = np.asarray(batch.image_mask)
    assert_close_outputs(fused.apply(variables, batch)[real], explicit.apply(variables, batch)[real], 2e-5)


def test_a_query_that_may_see_no_key_sees_every_key():
    """Kernels disagree on a row with no key allowed (uniform, zeros, NaN), and a NaN in a padding token's row would
    reach the real tokens through the next layer's `0 * NaN`: such a row is let see every key, the others keep their
    mask."""
    q, k, v = jax.random.normal(jax.random.key(0), (3, 1, 4, 2, 8))
    mask = jnp.array([[True, False, True, False], [False] * 4, [True] * 4, [False, False, False, True]])[None, None]
    out = layers.fused_attention(q, k, v, 0.5, 'xla', mask)
    unmasked = jax.nn.dot_product_attention(q, k, v, scale=0.5)
    masked = jax.nn.dot_product_attention(q, k, v, scale=0.5, mask=mask)
    np.testing.assert_allclose(out[:, 1], unmasked[:, 1], rtol=1e-6)
    for row in (0, 2, 3):
        np.testing.assert_allclose(out[:, row], masked[:, row], rtol=1e-6)


def test_attention_dropout_in_training_keeps_the_explicit_path():
    """The fused kernels cannot drop out attention weights: with dropout > 0, training runs the explicit softmax (the
    same draws, so the same output); evaluation and dropout-free training run fused."""
    name = 'vit.ViT'
    config = {**CONFIGS[name], 'dropout': 0.5}
    entry = parity.BY_NAME[name]
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
        parity.BY_NAME['vit.ViT'].flax_class(**CONFIGS['vit.ViT'], attention_impl='flash')


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
