"""levjepa beyond the registry configs: training mode against vit-pytorch's float64 reference on the same draws
(token dropping, BatchNorm's batch statistics and running ones, the per-video crops and augmentations), vit-pytorch's
own flex_attention forward, the pieces one by one (bicubic crops, torchvision's colour arithmetic, SIGReg, the rotary
helpers vit_flax/rotary.py shares, the block-causal mask against vit_nd_masking's, weight standardisation), quirks,
refusals, vit-pytorch's quick run, and the trainer's 'levjepa' objective on the digits (the encoder exports).

vit-pytorch's LeVJEPA is built and run under parity.levjepa's torchvision stand-in, which applies the draws of the
Flax call (`LeVJEPA.draws`), and on the dense form of its block-causal attention (parity/levjepa.py says why)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import parity
from parity import levjepa as parity_levjepa
from tests.conftest import (
    apply, assert_close_gradients, assert_close_outputs, converted_pair, float64_default, float64_reference,
    init_variables, nchw, torch_class,
)
from tests.objective_helpers import assert_same_gradients
from vit_flax import converters, layers, levjepa, registry, rotary
from vit_flax.levjepa import LeVJEPA, PhotometricAugment, VideoTransformer
from vit_flax.vit_nd_masking import nd_causal_mask

ENCODER_ENTRY = parity.BY_NAME['levjepa.VideoTransformer']
ENTRY = parity.BY_NAME['levjepa.LeVJEPA']
TINY = ENTRY.configs[0]  # 2 local views of 8 x 8 clips of 2 frames, BatchNorm projector, default augmentations
# flips only: the colour transforms compile for seconds (test_photometric_augment_is_torchvisions_arithmetic)
LIGHT = {**TINY, 'local_augment_fn': PhotometricAugment(color_jitter_prob=0.0, grayscale_prob=0.0)}


def torch_module():
    return converters.import_vit_pytorch('vit_pytorch.levjepa')


def clips(shape, seed=0):
    """Videos with pixels in [0, 1], what the colour transforms are written for."""
    return np.random.default_rng(seed).uniform(0.0, 1.0, shape).astype(np.float32)


def torch_videos(x):
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1))).double()


# training mode against vit-pytorch


def check_training_step(config, x, seed=0):
    """Loss, its parts, every gradient and the BatchNorm running statistics of a training call (token dropping,
    batch statistics, the augmentations' draws) against vit-pytorch's float64 reference on the same draws."""
    model, variables, torch_model = converted_pair(ENTRY, config, seed)
    rngs, draws = parity_levjepa.draws(model, (x,), seed=seed + 1, train=True)
    exact = float64_reference(torch_model).train()
    with draws, parity_levjepa.torch_context():
        loss, parts = exact(torch_videos(x), return_loss_breakdown=True)
    loss.backward()

    def loss_fn(params):
        out, updates = model.apply({**variables, 'params': params}, x, rngs=rngs, train=True,
                                   return_loss_breakdown=True, mutable=['batch_stats'])
        return out[0], (out, updates)

    (_, (out, updates)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(variables['params'])
    assert_close_outputs(out, (loss.detach(), tuple(p.detach() for p in parts)), ENTRY.tolerance)
    # a true zero (the bias before a training BatchNorm) within the parity suite's round-off bound
    assert_same_gradients(model, variables, grads, exact, zero_bound=1e-5)
    if model.use_batch_norm:
        for name, torch_name in (('mean', 'running_mean'), ('var', 'running_var')):
            np.testing.assert_allclose(np.asarray(updates['batch_stats']['projector_1'][name]),
                                       getattr(exact.projector[1], torch_name).numpy(), rtol=1e-5, atol=1e-6)
    return model, variables


def test_training_step_matches_torch():
    """Token dropping (half the patches), BatchNorm's batch statistics, the crops' and flips' draws."""
    check_training_step({**LIGHT, 'drop_ratio': 0.5}, clips((3, 2, 8, 8, 3), seed=1))


@pytest.mark.slow  # compiles for 10 s each
@pytest.mark.parametrize('index', [0, 1, 2])
def test_training_step_matches_torch_on_the_configurations(index):
    """Every configuration's augmentations (the default ones with colour jitter and grayscale, blur, one channel),
    weight standardisation and RMSNorm, in training."""
    config = ENTRY.configs[index]
    channels = config['encoder'].channels
    check_training_step({**config, 'drop_ratio': 0.3}, clips((2, 2, 10, 9, channels), seed=index), seed=index)


def test_encoder_token_dropping_matches_torch():
    """VideoTransformer's training forward with a drop ratio: the kept tokens (topk of the replayed torch.rand), their
    coordinates and the mask that follows them; outputs and gradients."""
    config = ENCODER_ENTRY.configs[1]  # 3 frames of 2 x 4 patches, two rotary frequencies
    model, variables, torch_model = converted_pair(ENCODER_ENTRY, {**config, 'dropout': 0.0, 'emb_dropout': 0.0})
    x = clips((2, 3, 6, 8, 1), seed=2)
    rngs = {'token_dropping': jax.random.key(3)}
    noise = model.apply({}, 2, 24, rngs=rngs, method=VideoTransformer.token_noise)
    exact = float64_reference(torch_model).train()
    with parity_levjepa.torch_rand_returning('rand', noise), parity_levjepa.dense_attention():
        out = exact(torch_videos(x), drop_ratio=0.6)
    assert tuple(out.shape) == (2, 1 + 9, 12)  # the class token and int(24 * 0.4) patches
    w = np.random.default_rng(4).standard_normal(tuple(out.shape), dtype=np.float32)
    (out * torch.from_numpy(w)).sum().backward()

    def forward(params):
        return model.apply({**variables, 'params': params}, x, drop_ratio=0.6, train=True, rngs=rngs)

    flax_out, pullback = jax.vjp(jax.jit(forward), variables['params'])
    assert_close_outputs(flax_out, out.detach(), ENCODER_ENTRY.tolerance)
    (grads,) = pullback(jnp.asarray(w))
    assert_close_gradients(converters.to_torch(model, {**variables, 'params': grads}, as_numpy=True),
                           {k: p.grad.numpy() for k, p in exact.named_parameters()})
    # eval mode drops nothing, whatever the drop ratio
    assert apply(model, variables, x).shape == (2, 25, 12)


@pytest.mark.filterwarnings('ignore:flex_attention called without torch.compile')
def test_vit_pytorchs_flex_attention_forward_agrees():
    """vit-pytorch's own flex_attention forward (its mask function uncompiled, so that create_block_mask takes it;
    no gradients, which flex_attention has none of on CPUs) gives our outputs; as shipped, it cannot run here."""
    model, variables, torch_model = converted_pair(ENCODER_ENTRY, ENCODER_ENTRY.configs[0])
    x = clips((2, 2, 8, 8, 3), seed=5)
    exact = float64_reference(torch_model)
    with torch.no_grad(), parity_levjepa.uncompiled():
        expected = exact(torch_videos(x))
    assert_close_outputs(apply(model, variables, x), expected, ENCODER_ENTRY.tolerance)
    with torch.no_grad(), pytest.raises(AssertionError, match='Expected 4 or 5 positional args'):
        exact(torch_videos(x))  # torch.compile's wrapper of the mask function
    with parity_levjepa.uncompiled(), pytest.raises(NotImplementedError, match='does not support backward on CPU'):
        exact(torch_videos(x)).sum().backward()


def test_return_embedding_is_the_encoders_class_token():
    model, variables, torch_model = converted_pair(ENTRY, TINY, seed=6)
    x = clips((2, 2, 8, 8, 3), seed=7)
    with torch.no_grad(), parity_levjepa.torch_context():
        expected = float64_reference(torch_model)(torch_videos(x), return_embedding=True)
    embedding = jax.jit(lambda v: model.apply(v, x, return_embedding=True))(variables)
    assert embedding.shape == (2, 16)
    assert_close_outputs(embedding, expected, ENTRY.tolerance)


@pytest.mark.slow  # compiles the learner's init and forward; the parity tests replay every stream's draws
def test_draws_come_from_the_named_streams():
    model = LeVJEPA(**LIGHT)
    x = clips((2, 2, 8, 8, 3))
    variables = init_variables(model)
    keys = lambda **seeds: {s: jax.random.key(seeds.get(s, 0)) for s in LeVJEPA.rng_streams}  # noqa: E731
    run = jax.jit(lambda r: model.apply(variables, x, rngs=r))
    base = float(run(keys()))
    assert base == float(run(keys())) == float(run(keys(token_dropping=1)))  # eval: no token dropping
    for stream in ('crop', 'augment', 'sigreg'):
        assert float(run(keys(**{stream: 1}))) != base, stream
    assert LeVJEPA.rng_streams == ('crop', 'augment', 'token_dropping', 'sigreg')
    draws = jax.jit(lambda r: model.apply({}, x, rngs=r, method=LeVJEPA.draws))(keys())
    assert draws['global_crop'].shape == (2, 4) and draws['local_crop'].shape == (4, 4)
    assert len({tuple(b) for b in np.asarray(draws['local_crop'])}) > 1  # every view its own box
    assert 'token_noise' not in draws and draws['sigreg'].shape == (8, 16)


# the pieces


def test_bicubic_crops_are_torchs_antialiased_interpolation():
    x = clips((4, 2, 20, 24, 3), seed=8)
    boxes = np.array([[0, 0, 20, 24], [3, 5, 7, 9], [1, 2, 18, 1], [10, 0, 1, 24]], np.int32)
    for size in ((16, 16), (12, 30), (5, 1), (1, 7)):
        out = np.asarray(jax.jit(lambda x, b, size=size: levjepa.resized_crop_videos(x, b, size))(x, boxes))
        assert out.shape == (4, 2, *size, 3)
        for video, crop, (top, left, h, w) in zip(x, out, boxes):
            frames = torch_videos(video[None])[0].transpose(0, 1)[..., top:top + h, left:left + w]
            expected = parity_levjepa.resize(frames, size).numpy()  # (frames, c, h, w)
            np.testing.assert_allclose(crop, np.moveaxis(expected, 1, -1), rtol=1e-5, atol=1e-5)
    # torch's own kernel is wrong for an output width of 1 (the stand-in transposes there): every row the first
    column = torch.arange(3, dtype=torch.float64).view(1, 1, 3, 1)
    wrong = torch.nn.functional.interpolate(column, size=(8, 1), mode='bicubic', align_corners=False, antialias=True)
    assert len(set(wrong.flatten().tolist())) == 1
    assert len(set(parity_levjepa.resize(column, (8, 1)).flatten().tolist())) == 8


@pytest.mark.parametrize('channels', [3, 1])
def test_photometric_augment_is_torchvisions_arithmetic(channels):
    """Flip, colour jitter (in a drawn order), grayscale, the 9 x 9 blur and normalisation, per video, against
    torchvision's tensor code (parity/levjepa.py) on the same draws."""
    augment = PhotometricAugment(color_jitter_prob=0.7, grayscale_prob=0.4, gaussian_blur_prob=0.5,
                                 mean=(0.4,) * channels, std=(0.3,) * channels)
    x = clips((12, 2, 9, 10, channels), seed=9)
    rngs = {'augment': jax.random.key(10)}
    out = jax.jit(lambda x: augment.apply({}, x, rngs=rngs))(x)
    draws = augment.apply({}, 12, rngs=rngs, method=PhotometricAugment.draws)
    chosen = {key: np.asarray(draws[key]) < p for key, p in (('jitter', 0.7), ('grayscale', 0.4), ('blur', 0.5))}
    assert all(0 < c.sum() < 12 for c in chosen.values())  # both branches of each
    frames = torch_videos(x).transpose(1, 2).reshape(24, channels, 9, 10)
    with parity_levjepa.torch_transforms():
        torch_augment = torch_module().PhotometricAugment(0.7, 0.4, 0.5, True, (0.4,) * channels, (0.3,) * channels)
        parity_levjepa._plan.update(parity_levjepa._augment_plan(augment, jax.tree_util.tree_map(np.asarray, draws)))
        try:
            expected = torch_augment.net(frames)
        finally:
            parity_levjepa._plan.clear()
    expected = np.moveaxis(expected.reshape(12, 2, channels, 9, 10).numpy(), 2, -1)
    assert_close_outputs(out, expected, 2e-5)


@pytest.mark.parametrize('shape', [(3, 5), (2, 4, 7), (4, 3, 2, 6)])
def test_sigreg_loss_is_vit_pytorchs(shape):
    x = np.random.default_rng(11).standard_normal(shape, dtype=np.float32) * 2
    key = jax.random.key(12)
    directions = levjepa.sigreg_directions(key, shape[-1], 40)
    loss = jax.jit(lambda x: levjepa.sigreg_loss(x, key, num_proj=40, knots=9))(x)
    with parity_levjepa.torch_rand_returning('randn', jax.random.normal(key, (shape[-1], 40))):
        with torch.no_grad(), float64_default():
            expected = torch_module().sigreg_loss(torch.from_numpy(x).double(), num_proj=40, knots=9)
    assert_close_outputs(loss, expected, 2e-5)
    assert directions.shape == (shape[-1], 40)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(directions), axis=0), 1.0, rtol=1e-6)


def test_rotary_pieces_are_vit_pytorchs():
    torch_levjepa = torch_module()
    for dim_head, max_freq in ((12, 10.0), (64, 10.0), (20, 7.5), (5, 10.0)):
        rotary_module = levjepa.VideoRotaryEmbedding(dim_head, max_freq)
        buffers = jax.jit(rotary_module.init)(jax.random.key(0), jnp.zeros((1, 2, 3)))
        np.testing.assert_array_equal(buffers['buffers']['scales'],
                                      torch_levjepa.VideoRotaryEmbedding(dim_head, max_freq).scales.numpy())
    # vit_flax/rotary.py's rotation is levjepa's apply_rotary (on the leading features, the rest passed on)
    rng = np.random.default_rng(13)
    q, k = (rng.standard_normal((2, 3, 5, 16)) for _ in range(2))
    coords = np.asarray(levjepa.normalised_coords((2, 2, 1)))[None]
    torch_rotary = torch_levjepa.VideoRotaryEmbedding(16)
    torch_sin, torch_cos = torch_rotary.double()(torch.from_numpy(coords).double())
    expected_q, expected_k = torch_levjepa.apply_rotary(torch.from_numpy(q), torch.from_numpy(k), torch_sin, torch_cos)
    variables = {'buffers': {'scales': jnp.asarray(torch_rotary.scales.numpy(), jnp.float32)}}
    sin, cos = jax.jit(levjepa.VideoRotaryEmbedding(16).apply)(variables, jnp.asarray(coords))
    assert sin.shape == (1, 5, 12)  # 2 frequencies per axis: 12 of 16 features rotated
    np.testing.assert_allclose(np.asarray(sin), torch_sin.numpy(), rtol=0, atol=2e-6)
    np.testing.assert_allclose(np.asarray(cos), torch_cos.numpy(), rtol=0, atol=2e-6)
    for t, expected in ((q, expected_q), (k, expected_k)):
        got = jax.jit(rotary.apply_rotary)(jnp.asarray(t, jnp.float32), sin[:, None], cos[:, None])
        np.testing.assert_allclose(np.asarray(got), expected.numpy(), rtol=0, atol=2e-5)


def test_block_causal_mask_is_vit_pytorchs_and_differs_from_vit_nd_maskings_at_the_class_token():
    frames, per_frame = 3, 4
    frame_idx = np.concatenate(([-1], np.repeat(np.arange(frames), per_frame)))
    mask = np.asarray(levjepa.block_causal_mask(jnp.asarray(frame_idx)[None, :, None]))[0]
    with parity_levjepa.uncompiled():
        fn = torch_module().create_block_causal_mask_fn(torch.from_numpy(frame_idx)[None])
        expected = parity_levjepa.dense_block_mask(fn, 1, 1, len(frame_idx))[0].numpy()
    np.testing.assert_array_equal(mask, expected)
    # vit_nd_masking's mask of the same grid (causal along frames, with a class token) lets every patch see the
    # class token, which levjepa's does not; the rest is the same
    nd = nd_causal_mask((frames, 2, 2), (0,), has_cls=True)
    np.testing.assert_array_equal(nd[:, 1:], mask[:, 1:])
    assert nd[:, 0].all() and not mask[1:, 0].any() and mask[0].all()


def test_weight_standardized_linear_is_vit_pytorchs():
    torch.manual_seed(0)
    torch_linear = torch_module().WeightStandardizedLinear(6, 5, eps=0.5)
    with torch.no_grad():
        torch_linear.weight[0] = 0.01 * torch_linear.weight[0]  # a row whose variance the eps clamps
        torch_linear.bias.normal_()
    linear = levjepa.WeightStandardizedLinear(6, 5, eps=0.5)
    variables = {'params': {'weight': jnp.asarray(torch_linear.weight.detach().numpy()),
                            'bias': jnp.asarray(torch_linear.bias.detach().numpy())}}
    x = np.random.default_rng(14).standard_normal((3, 6), dtype=np.float32)
    with torch.no_grad():
        expected = float64_reference(torch_linear)(torch.from_numpy(x).double())
    assert_close_outputs(linear.apply(variables, x), expected, 2e-5)
    init = linear.init(jax.random.key(0), x)['params']
    assert init['weight'].shape == (5, 6) and not np.asarray(init['bias']).any()


def test_norm_fn_builds_the_projectors_norm():
    """`norm_fn(projection_hidden)` gives the projector's norm, here a LayerNorm as torch's `norm_fn=nn.LayerNorm`:
    the state dict loads strictly into vit-pytorch's."""
    model = LeVJEPA(**{**LIGHT, 'norm_fn': lambda features: layers.LayerNorm()})
    variables = jax.eval_shape(model.init, {s: jax.random.key(0) for s in ('params', *LeVJEPA.rng_streams)},
                               jnp.zeros((1, 2, 8, 8, 3)))
    assert set(variables['params']['projector_1']) == {'scale', 'bias'} and 'batch_stats' not in variables
    state_dict = converters.to_torch(model, jax.tree_util.tree_map(lambda a: np.zeros(a.shape, a.dtype), variables))
    torch_encoder = torch_class(ENCODER_ENTRY)(**converters.torch_keywords(registry.torch_kwargs(model.encoder)))
    with parity_levjepa.torch_transforms():
        torch_model = torch_module().LeVJEPA(torch_encoder, image_size=8, local_size=8, num_local_views=2,
                                             num_classes_K=8, projection_hidden=8, norm_fn=torch.nn.LayerNorm)
    torch_model.load_state_dict(state_dict, strict=True)


# quirks and refusals


def test_frames_is_unused_and_any_frame_count_or_size_runs():
    model, variables, torch_model = converted_pair(ENCODER_ENTRY, ENCODER_ENTRY.configs[0])
    x = clips((1, 4, 12, 4, 3), seed=15)  # 4 frames of 3 x 1 patches where the config says 2 frames of 2 x 2
    with torch.no_grad(), parity_levjepa.dense_attention():
        expected = float64_reference(torch_model)(torch_videos(x))
    assert_close_outputs(apply(model, variables, x), expected, ENCODER_ENTRY.tolerance)


@pytest.mark.parametrize('overrides, message', [
    (dict(local_size=4), r'LeVJEPA: local_size=4 differs from image_size=8: vit-pytorch concatenates'),
    (dict(num_local_views=0), r'num_local_views=0 must be a positive integer'),
    (dict(drop_ratio=1.5), r'drop_ratio=1.5 must be None or in \[0, 1\]'),
    (dict(sigreg_loss_kwargs=dict(num_slices=8)), r"sigreg_loss_kwargs has 'num_slices'"),
    (dict(sigreg_loss_kwargs=dict(knots=0)), r"sigreg_loss_kwargs\['knots'\]=0 must be a positive integer"),
    (dict(local_crop_scale=(0.5, 0.2)), r'local_crop_scale=\(0.5, 0.2\) must be a pair \(low, high\)'),
    (dict(projection_hidden=0), r'projection_hidden=0 must be a positive integer'),
    (dict(image_size=(8, 0), local_size=(8, 0)), r'image_size=\(8, 0\) holds 0'),
])
def test_bad_learner_configurations_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        LeVJEPA(**{**TINY, **overrides})


def test_bad_encoder_configurations_and_inputs_are_refused():
    with pytest.raises(ValueError, match=r'divisible by the patch size: image_size=10, patch_size=4'):
        VideoTransformer(**{**ENCODER_ENTRY.configs[0], 'image_size': 10})
    model = ENCODER_ENTRY.build(0)
    init = lambda shape: jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))  # noqa: E731
    with pytest.raises(ValueError, match=r'takes videos \(batch, frames, height, width, channels=3\)'):
        init((1, 8, 8, 3))
    with pytest.raises(ValueError, match=r'channels=3\) \(channels-last\), got shape \(1, 2, 8, 8, 1\)'):
        init((1, 2, 8, 8, 1))
    with pytest.raises(ValueError, match='frames of 8 x 6 are not divisible by the patch size 4 x 4'):
        init((1, 2, 8, 6, 3))


@pytest.mark.parametrize('augment, shape, message', [
    (PhotometricAugment(), (1, 2, 8, 8, 2), 'colour jitter and grayscale take 1 or 3 channels'),
    (PhotometricAugment(gaussian_blur_prob=0.5), (1, 2, 4, 8, 3), 'reflection by 4, which torchvision cannot do'),
    (PhotometricAugment(color_jitter_prob=0.0, grayscale_prob=0.0), (1, 2, 8, 8, 2),
     r'mean=\(0.485, 0.456, 0.406\) has 3 entries for videos of 2 channels'),
    (levjepa.NormalizeVideo(), (1, 2, 8, 8, 1), r'has 3 entries for videos of 1 channels'),
])
def test_augmentations_refuse_what_torchvision_cannot_do(augment, shape, message):
    with pytest.raises(ValueError, match=message):
        augment.apply({}, jnp.zeros(shape), rngs={'augment': jax.random.key(0)})


def test_bad_augmentation_settings_are_refused():
    with pytest.raises(ValueError, match=r'grayscale_prob=1.5 must be a probability'):
        PhotometricAugment(grayscale_prob=1.5)
    with pytest.raises(ValueError, match=r'std=\(1.0, 0.0\) has a zero'):
        levjepa.NormalizeVideo(mean=(0.0, 0.0), std=(1.0, 0.0))


# vit-pytorch's quick run


@pytest.mark.slow  # 96 x 96 clips of 8 frames: compiles and runs for about 20 s
def test_vit_pytorch_quick_run():
    encoder = VideoTransformer(image_size=96, patch_size=16, frames=8, dim=256, depth=3, heads=8, mlp_dim=512)
    learner = LeVJEPA(encoder, image_size=96)
    video = jnp.asarray(clips((2, 8, 96, 96, 3)))
    rngs = {stream: jax.random.key(i) for i, stream in enumerate(('params', *LeVJEPA.rng_streams))}
    variables = jax.jit(learner.init)(rngs, video)

    def loss_fn(params):
        return learner.apply({**variables, 'params': params}, video, train=True, rngs=rngs, mutable=['batch_stats'])

    (loss, updates), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(variables['params'])
    assert loss.shape == () and np.isfinite(float(loss))
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(grads))
    assert float(jnp.abs(grads['encoder']['cls_token']).max()) > 0
    assert set(updates) == {'batch_stats'}
    embed = jax.jit(lambda v: learner.apply(v, video, return_embedding=True))(variables)
    assert embed.shape == (2, 256)


# the trainer's objective


@pytest.mark.slow  # about 25 s: 30 steps on the digits as clips through train_and_evaluate, then the export
def test_levjepa_pretrains_on_the_digits_and_the_encoder_exports(tmp_path):
    from tests.test_objectives_training import objective_config
    from tests.train_helpers import losses
    from vit_flax.__main__ import export
    from vit_flax.probe import probe_workdir
    from vit_flax.train import build_model, train_and_evaluate
    from vit_flax.training import checkpoint, objectives

    config = objective_config('levjepa', total_steps=30, eval_every=30, checkpoint_every=30, learning_rate=3e-3,
                              warmup_steps=5, log_every=2)
    metrics = train_and_evaluate(config, tmp_path)
    curve = losses(tmp_path)
    assert set(metrics) == {'eval_loss'} and np.isfinite(metrics['eval_loss'])
    assert np.mean(curve[-3:]) < 0.85 * np.mean(curve[:2]), curve

    # the checkpoint's encoder is a plain VideoTransformer: it loads strictly into vit-pytorch's and gives our outputs
    out = export(tmp_path, tmp_path / 'encoder.safetensors')
    torch_model = torch_class(ENCODER_ENTRY)(**converters.torch_keywords(config.model.to_dict())).eval()
    torch_model.load_state_dict(load_file(out), strict=True)
    encoder = objectives.encoder_variables('levjepa', checkpoint.restore_variables(tmp_path))
    videos = clips((2, config.model.frames, 8, 8, 1))
    with torch.no_grad(), parity_levjepa.dense_attention():
        expected = float64_reference(torch_model)(nchw(videos))
    assert_close_outputs(build_model(config).apply(encoder, videos), expected, ENCODER_ENTRY.tolerance)

    # the linear probe reads ViT-style pooled tokens of images: it refuses a video encoder
    with pytest.raises(ValueError, match='VideoTransformer has no `pool`'):
        probe_workdir(tmp_path)
