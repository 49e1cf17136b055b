"""levjepa_nd beyond the registry configs: training mode against vit-pytorch's float64 reference on the same draws
(token dropping, BatchNorm's batch statistics and running ones, augmentations that draw from the 'augment' stream),
vit-pytorch's flex_attention forward and its unmasked fallback with gradients, the encoder being levjepa's
VideoTransformer on 3-D inputs, the pieces it imports from levjepa, refusals and vit-pytorch's quick run."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import parity
from parity import levjepa_nd as parity_levjepa_nd
from tests.conftest import (
    apply, assert_close_outputs, converted_pair, float64_default, float64_reference, torch_inputs,
)
from tests.objective_helpers import assert_same_gradients
from vit_flax import converters, levjepa, levjepa_nd
from vit_flax.levjepa_nd import LeVJEPAND, NDTransformer

ENCODER_ENTRY = parity.BY_NAME['levjepa_nd.NDTransformer']
ENTRY = parity.BY_NAME['levjepa_nd.LeVJEPAND']
TINY = ENTRY.configs[0]  # a 3-D encoder (2, 4, 4) in (1, 2, 2) patches, causal along the first dimension


def torch_module():
    return converters.import_vit_pytorch('vit_pytorch.levjepa_nd')


def channels_first(x):
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.array(x), -1, 1))).double()


class AddNoise(nn.Module):
    """A test augmentation drawing from the 'augment' stream: x + scale * standard normal noise."""

    scale: float = 0.1

    @nn.nowrap
    def noise(self, shape):
        return jax.random.normal(self.make_rng('augment'), shape)

    def __call__(self, x):
        return x + self.scale * self.noise(x.shape).astype(x.dtype)


class AddGivenNoise(torch.nn.Module):
    """vit-pytorch's side of AddNoise: x + the noise the Flax call drew (channels first)."""

    def __init__(self, noise):
        super().__init__()
        self.noise = noise

    def forward(self, x):
        return x + self.noise


@pytest.mark.parametrize('index', [0, pytest.param(1, marks=pytest.mark.slow)])
def test_training_step_matches_torch(index):
    """Token dropping, BatchNorm's batch statistics (or RMSNorm and weight standardisation), augmentations of the
    sources and of the target views drawn from the 'augment' stream and replayed in vit-pytorch's callables."""
    config = {**ENTRY.configs[index], 'drop_ratio': 0.5}
    model, variables, torch_model = converted_pair(ENTRY, config, seed=index)
    model = model.clone(augment_src=AddNoise(0.1), augment_tgt=AddNoise(0.3))
    encoder = model.encoder
    shape = (3, *levjepa_nd.ensure_tuple(encoder.input_shape, encoder.ndim), encoder.channels)
    x = np.random.default_rng(index).standard_normal(shape, dtype=np.float32)
    views = model.num_target_aug_views
    streams = LeVJEPAND.rng_streams
    rngs = dict(zip(streams, jax.random.split(jax.random.key(index + 1), len(streams))))

    def draws(learner):
        return learner.augment_src.noise(x.shape), learner.augment_tgt.noise((3 * views, *x.shape[1:]))

    src_noise, tgt_noise = jax.jit(lambda r: model.apply({}, rngs=r, method=draws))(rngs)
    planned = jax.jit(lambda r: model.apply({}, x, train=True, rngs=r, method=LeVJEPAND.draws))(rngs)
    torch_model.augment_src = AddGivenNoise(0.1 * channels_first(src_noise))
    torch_model.augment_tgt = AddGivenNoise(0.3 * channels_first(tgt_noise))
    exact = float64_reference(torch_model).train()
    with parity_levjepa_nd.replay(planned), ENTRY.torch_context():
        loss, parts = exact(channels_first(x), return_loss_breakdown=True)
    loss.backward()

    def loss_fn(params):
        out, updates = model.apply({**variables, 'params': params}, x, rngs=rngs, train=True,
                                   return_loss_breakdown=True, mutable=['batch_stats'])
        return out[0], (out, updates)

    (_, (out, updates)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(variables['params'])
    assert_close_outputs(out, (loss.detach(), tuple(p.detach() for p in parts)), ENTRY.tolerance)
    assert_same_gradients(model, variables, grads, exact, zero_bound=1e-5)  # the suite's bound for true zeros
    if model.use_batch_norm:
        np.testing.assert_allclose(np.asarray(updates['batch_stats']['projector_1']['mean']),
                                   exact.projector[1].running_mean.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(updates['batch_stats']['projector_1']['var']),
                                   exact.projector[1].running_var.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings('ignore:flex_attention called without torch.compile')
def test_vit_pytorchs_flex_forward_agrees_and_its_fallback_with_gradients_drops_the_mask():
    """Unpatched on this CPU, vit-pytorch takes flex_attention: without gradients it gives our (masked) outputs;
    with gradients flex_attention raises and nd_attention falls back to a softmax with no mask at all."""
    model, variables, torch_model = converted_pair(ENCODER_ENTRY, ENCODER_ENTRY.configs[0])
    x = np.random.default_rng(1).standard_normal((2, 2, 4, 4, 3), dtype=np.float32)
    exact = float64_reference(torch_model)
    inputs = torch_inputs(ENCODER_ENTRY, (x,))
    assert torch_module().flex_attention_supported('cpu')
    with torch.no_grad():
        flex = exact(*inputs)
    assert_close_outputs(apply(model, variables, x), flex, ENCODER_ENTRY.tolerance)

    with_gradients = exact(*inputs)  # parameters that require gradients: flex_attention refuses, the mask is lost
    unmasked_dense = torch_module().dense_nd_mask
    with parity_levjepa_nd.dense_attention(), torch.no_grad(), \
            pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch_module(), 'dense_nd_mask', lambda coords, dims: unmasked_dense(coords, ()))
        unmasked = exact(*inputs)
    np.testing.assert_allclose(with_gradients.detach().numpy(), unmasked.numpy(), rtol=0, atol=1e-12)
    assert np.abs(with_gradients.detach().numpy() - flex.numpy()).max() > 1e-3


def test_the_encoder_is_levjepas_video_transformer_on_three_dimensions():
    """NDTransformer(ndim=3, patches (1, p, p), causal along the first) is levjepa.VideoTransformer: the same
    variable tree, the same outputs; levjepa_nd's shared pieces are levjepa's own."""
    nd = NDTransformer(ndim=3, input_shape=(3, 8, 4), patch_size=(1, 4, 2), dim=16, depth=2, heads=2, mlp_dim=16,
                       dim_head=12, channels=2)
    video = levjepa.VideoTransformer(image_size=(8, 4), patch_size=(4, 2), frames=3, dim=16, depth=2, heads=2,
                                     mlp_dim=16, dim_head=12, channels=2)
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 4, 2), dtype=np.float32)
    variables = jax.jit(nd.init)(jax.random.key(0), x)
    variables = jax.tree_util.tree_map(lambda a: a + 0.1 * jnp.cos(jnp.arange(a.size).reshape(a.shape)), variables)
    np.testing.assert_allclose(np.asarray(jax.jit(nd.apply)(variables, x)),
                               np.asarray(jax.jit(video.apply)(variables, x)), rtol=0, atol=1e-6)
    assert levjepa_nd.sigreg_loss is levjepa.sigreg_loss
    assert levjepa_nd.WeightStandardizedLinear is levjepa.WeightStandardizedLinear
    assert issubclass(levjepa_nd.NDRotaryEmbedding, levjepa.VideoRotaryEmbedding)
    # and vit-pytorch's two sigreg_loss functions are the same function of the same draws
    x = np.random.default_rng(3).standard_normal((2, 5, 6))
    with float64_default(), torch.no_grad():
        torch.manual_seed(0)
        expected = converters.import_vit_pytorch('vit_pytorch.levjepa').sigreg_loss(torch.from_numpy(x), 7, 5)
        torch.manual_seed(0)
        assert float(torch_module().sigreg_loss(torch.from_numpy(x), 7, 5)) == float(expected)


def test_return_embedding_matches_torch():
    model, variables, torch_model = converted_pair(ENTRY, TINY, seed=4)
    x = np.random.default_rng(5).standard_normal((2, 2, 4, 4, 3), dtype=np.float32)
    with torch.no_grad(), ENTRY.torch_context():
        expected = float64_reference(torch_model)(channels_first(x), return_embedding=True)
    embedding = jax.jit(lambda v: model.apply(v, x, return_embedding=True))(variables)
    assert embedding.shape == (2, 16)
    assert_close_outputs(embedding, expected, ENTRY.tolerance)


def test_eval_mode_draws_only_sigreg():
    model = ENTRY.build(0)
    x = jnp.zeros((2, 2, 4, 4, 3))
    keys = {stream: jax.random.key(0) for stream in LeVJEPAND.rng_streams}
    assert set(jax.eval_shape(lambda: model.apply({}, x, rngs=keys, method=LeVJEPAND.draws))) == {'sigreg'}
    train = jax.eval_shape(lambda: model.apply({}, x, train=True, rngs=keys, method=LeVJEPAND.draws))
    assert train['token_noise'].shape == (4, 8) and train['sigreg'].shape == (8, 16)


@pytest.mark.parametrize('overrides, message', [
    (dict(causal_dims=None), r'causal_dims=None: give an int or a tuple'),
    (dict(causal_dims=3), r'each causal dimension must be between 0 and 2, got causal_dims=3'),
    (dict(dim_head=5), r'dim_head \(5\) too small for rotary on 3 dimensions'),
    (dict(input_shape=(2, 4, 5)), r'Input dimension 2 \(5\) must be divisible by patch size \(2\)'),
    (dict(ndim=8, input_shape=2, patch_size=1), 'ndim must be between 1 and 7'),
])
def test_bad_encoder_configurations_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        NDTransformer(**{**ENCODER_ENTRY.configs[0], **overrides})


def test_bad_inputs_and_learner_configurations_are_refused():
    model = ENCODER_ENTRY.build(0)
    with pytest.raises(ValueError, match=r'takes inputs of shape \(batch, \*input_shape, channels\) = '
                                         r'\(batch, 2, 4, 4, 3\) \(channels-last\), got shape \(1, 2, 4, 6, 3\)'):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 2, 4, 6, 3)))
    with pytest.raises(ValueError, match='num_target_aug_views=-1 must be a non-negative integer'):
        LeVJEPAND(**{**TINY, 'num_target_aug_views': -1})
    with pytest.raises(ValueError, match='augment_src=3 must be a callable'):
        LeVJEPAND(**{**TINY, 'augment_src': 3})
    with pytest.raises(ValueError, match=r'drop_ratio=-0.5 must be None or in \[0, 1\]'):
        LeVJEPAND(**{**TINY, 'drop_ratio': -0.5})


@pytest.mark.slow  # compiles the 3-D and 4-D examples for about 20 s
def test_vit_pytorch_quick_run():
    """vit-pytorch's quick run: noise augmentations (from the 'augment' stream), 3-D videos and 4-D volumes."""
    for encoder, shape in (
        (NDTransformer(ndim=3, input_shape=(8, 64, 64), patch_size=(1, 16, 16), dim=128, depth=2, heads=4,
                       mlp_dim=256), (2, 8, 64, 64, 3)),
        (NDTransformer(ndim=4, input_shape=(8, 16, 32, 32), patch_size=(1, 4, 8, 8), dim=128, depth=2, heads=4,
                       mlp_dim=256), (2, 8, 16, 32, 32, 3)),
    ):
        learner = LeVJEPAND(encoder, input_shape=encoder.input_shape, augment_src=AddNoise(), augment_tgt=AddNoise())
        x = jnp.asarray(np.random.default_rng(0).standard_normal(shape, dtype=np.float32))
        rngs = {stream: jax.random.key(i) for i, stream in enumerate(('params', *LeVJEPAND.rng_streams))}
        variables = jax.jit(learner.init)(rngs, x)

        def loss_fn(params):
            return learner.apply({**variables, 'params': params}, x, train=True, rngs=rngs,
                                 mutable=['batch_stats'])[0]

        loss, grads = jax.jit(jax.value_and_grad(loss_fn))(variables['params'])
        assert loss.shape == () and np.isfinite(float(loss))
        assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(grads))
        embed = jax.jit(lambda v: learner.apply(v, x, return_embedding=True))(variables)
        assert embed.shape == (2, 128)
