"""ViViT with MOSS beyond the registry configs: vit-pytorch's example, the causal cls quirk, masks, fewer frames,
key / value and MOSS caches, dropout, bad configurations and inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import parity
from parity.vivit_with_moss import frame_masks
from tests.conftest import apply, assert_close_outputs, converted_pair, float64_reference, images, nchw
from vit_flax import converters
from vit_flax.vivit_with_moss import MOSS, Attention, Transformer, ViViT

VIVIT = parity.BY_NAME['vivit_with_moss.ViViT']
MOSS_ENTRY = parity.BY_NAME['vivit_with_moss.MOSS']
MEAN_CAUSAL, CLS_NON_CAUSAL, CLS_CAUSAL_EXPLICIT, MEAN_NO_ORDERS = VIVIT.configs
TORCH = converters.import_vit_pytorch('vit_pytorch.vivit_with_moss')


def torch_forward(torch_model, video, mask=None):
    """vit-pytorch's exact answer (its float64 reference) on a channels-last video, without gradients."""
    with torch.no_grad():
        return float64_reference(torch_model)(nchw(video), mask=None if mask is None else torch.from_numpy(mask))


def video_for(config, batch=2, seed=0, frames=None):
    height, width = (config['image_size'],) * 2 if isinstance(config['image_size'], int) else config['image_size']
    return images((batch, frames or config['frames'], height, width, config.get('channels', 3)), seed=seed)


def randomised(torch_module, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in torch_module.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return torch_module.eval()


def test_readme_example_shapes():
    """vit-pytorch's example, swapped to Flax: (2, 8, 256, 256, 3) -> (2, 1000); MOSS keeps its input's shape."""
    vivit = ViViT(dim=512, spatial_depth=2, temporal_depth=2, heads=4, mlp_dim=2048, image_size=256,
                  image_patch_size=32, frames=8, frame_patch_size=2, num_classes=1000, moss_causal=True)
    video = jnp.zeros((2, 8, 256, 256, 3))
    shapes = jax.eval_shape(vivit.init, jax.random.key(0), video)
    assert jax.eval_shape(lambda v: vivit.apply(v, video), shapes).shape == (2, 1000)
    assert shapes['params']['moss']['encoders_1']['conv_4']['gamma'].shape == (1, 64, 1, 1)

    moss = MOSS(dim=512, local_time=3, local_height=3, local_width=3, hidden_dim=64, orders=2, causal=True)
    tokens = jnp.zeros((2, 8, 16, 16, 512))
    moss_shapes = jax.eval_shape(moss.init, jax.random.key(0), tokens)
    assert jax.eval_shape(lambda v: moss.apply(v, tokens), moss_shapes).shape == (2, 8, 16, 16, 512)


def test_causal_cls_logits_do_not_depend_on_the_video():
    """vit-pytorch's quirk, kept: with moss_causal (the temporal transformer causal too) and pool='cls', the temporal
    cls token comes first and attends only to itself, so every video gets the same logits, in both libraries."""
    config = {**MEAN_CAUSAL, 'pool': 'cls'}
    model, variables, torch_model = converted_pair(VIVIT, config)
    videos = np.concatenate([video_for(config, 1, seed) for seed in (1, 2, 3)])
    out = apply(model, variables, videos)
    np.testing.assert_allclose(out, np.broadcast_to(out[:1], out.shape), atol=1e-6)
    torch_out = torch_forward(torch_model, videos)
    assert_close_outputs(out, torch_out, VIVIT.tolerance)
    np.testing.assert_allclose(torch_out, torch_out[:1].expand(3, -1), atol=1e-12)


MEAN_MASKED = {**MEAN_NO_ORDERS, 'temporal_depth': 1}


@pytest.mark.parametrize('config', [
    CLS_NON_CAUSAL,  # flash attention; the temporal cls token stays visible; frame patches of 2 frames
    # explicit attention: a fully masked video attends evenly to all frame patches
    pytest.param(MEAN_MASKED, marks=pytest.mark.slow),
    # flash attention: a fully masked video gets zero attention output
    pytest.param({**MEAN_MASKED, 'use_flash_attn': True}, marks=pytest.mark.slow),
], ids=['cls-flash', 'mean-explicit', 'mean-flash'])
def test_masks_match_torch(config):
    model, variables, torch_model = converted_pair(VIVIT, config)
    video, mask = video_for(config, batch=3), frame_masks(config['frames'], np.random.default_rng(0))
    out = apply(model, variables, video, mask)
    assert np.isfinite(np.asarray(out)).all()
    assert_close_outputs(out, torch_forward(torch_model, video, mask), VIVIT.tolerance)
    # the mask matters where some frames are hidden, and nowhere else
    unmasked = apply(model, variables, video)
    assert not np.allclose(out[0], unmasked[0])
    np.testing.assert_allclose(out[1], unmasked[1], atol=1e-5)


@pytest.mark.slow
def test_fewer_frames_slice_the_position_embedding():
    model, variables, torch_model = converted_pair(VIVIT, MEAN_CAUSAL)
    video = video_for(MEAN_CAUSAL, frames=2)
    assert_close_outputs(apply(model, variables, video), torch_forward(torch_model, video), VIVIT.tolerance)


@pytest.mark.slow
@pytest.mark.parametrize('use_flash_attn', [True, False])
def test_attention_cache_matches_torch(use_flash_attn):
    """A causal attention run on 3 tokens, then on 2 more with the (k, v) cache of the first call: outputs and caches
    as vit-pytorch's. Its flash path (scaled_dot_product_attention's is_causal) aligns the causal mask top-left over
    the cache, the explicit path bottom-right, and both are kept: they differ on the second call."""
    torch_attention = randomised(TORCH.Attention(8, heads=2, dim_head=4, use_flash_attn=use_flash_attn, causal=True))
    attention = Attention(8, heads=2, dim_head=4, use_flash_attn=use_flash_attn, causal=True)
    first, second = images((2, 3, 8), seed=1), images((2, 2, 8), seed=2)
    variables = converters.from_torch(attention, torch_attention.state_dict(), example_inputs=(first,))

    out, cache = attention.apply(variables, first, return_cache=True)
    more, more_cache = attention.apply(variables, second, cache=cache, return_cache=True)
    exact = float64_reference(torch_attention)
    with torch.no_grad():
        torch_out, torch_cache = exact(torch.from_numpy(first).double(), return_cache=True)
        torch_more, torch_more_cache = exact(torch.from_numpy(second).double(), cache=torch_cache, return_cache=True)
    assert_close_outputs((out, cache, more, more_cache), (torch_out, torch_cache, torch_more, torch_more_cache), 2e-5)
    assert more_cache[0].shape == (2, 2, 5, 4)

    # the other path on the same weights: the first call agrees (no cache), the second does not
    other = Attention(8, heads=2, dim_head=4, use_flash_attn=not use_flash_attn, causal=True)
    np.testing.assert_allclose(other.apply(variables, first), out, atol=1e-6)
    assert not np.allclose(other.apply(variables, second, cache=cache), more)


def test_transformer_cache_entries_are_one_per_layer():
    """vit-pytorch zips the layers with the cache entries, so a shorter cache would skip layers: refused."""
    transformer = Transformer(8, depth=2, heads=2, dim_head=4, mlp_dim=8, causal=True, use_flash_attn=False)
    x = jnp.zeros((1, 3, 8))
    variables = jax.eval_shape(transformer.init, jax.random.key(0), x)
    _, caches = jax.eval_shape(lambda v: transformer.apply(v, x, return_cache=True), variables)
    assert len(caches) == 2 and caches[1][0].shape == (1, 2, 3, 4)
    with pytest.raises(ValueError, match='cache has 1 entries for 2 layers'):
        jax.eval_shape(lambda v: transformer.apply(v, x, cache=caches[:1]), variables)


@pytest.mark.slow
def test_moss_cache_streams_a_causal_moss_and_matches_torch():
    """A causal MOSS on 5 frames equals the same MOSS on 2 frames, then 3 more with the cache of the first call, and
    the caches are vit-pytorch's (channels-last here: (batch, local_time - 1, height, width, dim))."""
    config = MOSS_ENTRY.configs[1]  # causal, local_time 5, one order
    model, variables, torch_model = converted_pair(MOSS_ENTRY, config)
    tokens = images((2, 5, 3, 4, config['dim']), seed=3)
    whole = model.apply(variables, tokens)
    start, cache = model.apply(variables, tokens[:, :2], return_cache=True)
    rest, next_cache = model.apply(variables, tokens[:, 2:], cache=cache, return_cache=True)
    np.testing.assert_allclose(np.concatenate([start, rest], axis=1), whole, atol=2e-5)
    assert next_cache[0].shape == (2, 4, 3, 4, config['dim'])

    exact = float64_reference(torch_model)
    with torch.no_grad():
        torch_start, torch_cache = exact(torch.from_numpy(tokens[:, :2]).double(), return_cache=True)
        torch_rest, torch_next = exact(torch.from_numpy(tokens[:, 2:]).double(), cache=torch_cache, return_cache=True)
    channels_last = lambda caches: tuple(c.permute(0, 2, 3, 4, 1) for c in caches)  # noqa: E731
    assert_close_outputs((start, cache, rest, next_cache),
                         (torch_start, channels_last(torch_cache), torch_rest, channels_last(torch_next)), 2e-5)


def test_moss_caches_are_refused_where_they_cannot_apply():
    causal = MOSS(dim=4, hidden_dim=2, orders=2, causal=True)
    tokens = jnp.zeros((1, 2, 3, 3, 4))
    variables = jax.eval_shape(causal.init, jax.random.key(0), tokens)
    def run(model, variables, **kwargs):
        return jax.eval_shape(lambda v: model.apply(v, tokens, **kwargs), variables)

    _, cache = run(causal, variables, return_cache=True)
    assert [c.shape for c in cache] == [(1, 2, 3, 3, 4)] * 2
    with pytest.raises(ValueError, match=r'cache has 1 entries for 2 orders'):
        run(causal, variables, cache=cache[:1])
    with pytest.raises(ValueError, match=r'must be \(batch, local_time - 1, height, width, dim\) = '
                                         r'\(1, 2, 3, 3, 4\), got shape \(1, 1, 3, 3, 4\)'):
        run(causal, variables, cache=tuple(jnp.zeros((1, 1, 3, 3, 4)) for _ in cache))
    with pytest.raises(ValueError, match='cache cannot be passed in if MOSS is not causal'):
        run(MOSS(dim=4, hidden_dim=2, orders=2), variables, cache=cache)

    # local_time=1 keeps every frame in its "cache" (vit-pytorch's padded_x[..., -0:, ...]), which cannot go back in
    single = MOSS(dim=4, local_time=1, hidden_dim=2, orders=1, causal=True)
    single_variables = jax.eval_shape(single.init, jax.random.key(0), tokens)
    _, (single_cache,) = run(single, single_variables, return_cache=True)
    assert single_cache.shape == (1, 2, 3, 3, 4)
    with pytest.raises(ValueError, match=r'= \(1, 0, 3, 3, 4\), got shape \(1, 2, 3, 3, 4\)'):
        run(single, single_variables, cache=(jnp.zeros(single_cache.shape),))


@pytest.mark.slow
def test_dropout_only_in_training_and_reproducible():
    model, variables, _ = converted_pair(VIVIT, CLS_CAUSAL_EXPLICIT)  # dropout 0.1, emb_dropout 0.1
    video = video_for(CLS_CAUSAL_EXPLICIT, batch=3)
    eval_out = apply(model, variables, video)
    train = lambda seed: apply(model, variables, video, train=True, rngs={'dropout': jax.random.key(seed)})  # noqa
    np.testing.assert_array_equal(train(1), train(1))
    assert not np.allclose(train(1), train(2))
    assert not np.allclose(train(1), eval_out)
    with pytest.raises(Exception, match='dropout'):
        jax.eval_shape(lambda v: model.apply(v, video, train=True), variables)  # no 'dropout' rng stream given


@pytest.mark.parametrize('config, message', [
    (dict(image_size=10), r'divisible by the patch size: image_size=\(10, 10\), patch_size=\(4, 4\)'),
    (dict(frames=5), 'Frames must be divisible by the frame patch size: frames=5, frame_patch_size=2'),
    (dict(pool='max'), "pool='max'"),
    (dict(moss_local_time=2), 'ViViT: moss_local_time=2 must be a positive odd integer'),
    (dict(moss_local_width=0), 'ViViT: moss_local_width=0 must be a positive odd integer'),
    (dict(moss_hidden_dim=0), 'ViViT: moss_hidden_dim=0 must be a positive integer'),
    (dict(moss_orders=-1), 'ViViT: moss_orders=-1 must be a non-negative integer'),
])
def test_bad_configs_fail_at_construction(config, message):
    with pytest.raises(ValueError, match=message):
        ViViT(**{**MEAN_CAUSAL, **config})


@pytest.mark.parametrize('config', [dict(local_height=4), dict(local_time=0), dict(hidden_dim=0), dict(orders=-1)])
def test_bad_moss_configs_fail_at_construction(config):
    (key, value), = config.items()
    with pytest.raises(ValueError, match=f'^MOSS: {key}={value} must be'):
        MOSS(dim=4, **config)


@pytest.mark.parametrize('config, shape, mask_shape, message', [
    (MEAN_CAUSAL, (1, 4, 8, 4, 3), None, r'gives 2 image patches; MOSS reshapes them to the 2 x 2 grid'),
    (MEAN_CAUSAL, (1, 4, 8, 8, 2), None, r'expected 3 channels \(channels-last input\), got shape \(1, 4, 8, 8, 2\)'),
    (MEAN_CAUSAL, (1, 4, 8, 8, 3), (1, 4), 'mask cannot be passed if MOSS is causal'),
    (MEAN_NO_ORDERS, (2, 3, 4, 4, 3), (2, 2), r'a mask of shape \(batch, frames\) = \(2, 3\) .* got shape \(2, 2\)'),
])
def test_bad_inputs_name_the_shape(config, shape, mask_shape, message):
    model = ViViT(**config)
    args = (jnp.zeros(shape),) if mask_shape is None else (jnp.zeros(shape), jnp.ones(mask_shape, bool))
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(model.init, jax.random.key(0), *args)


def test_moss_refuses_tokens_of_another_width():
    with pytest.raises(ValueError, match=r'MOSS takes tokens of shape \(batch, frames, height, width, dim=4\), got '
                                         r'shape \(1, 2, 3, 3, 5\)'):
        jax.eval_shape(MOSS(dim=4).init, jax.random.key(0), jnp.zeros((1, 2, 3, 3, 5)))
