"""vat beyond the registry configs (which pass the conditioning positionally, as a prefix): the L1 loss and its
gradients (with and without a frozen ViT), `return_hiddens`, conditioning by keyword (tasks without an extra token,
an int advantage), one view without a view axis, all variables from a video-only init, the ViT's trajectory, dropout,
refusals, NaN for ids vit-pytorch refuses, and vit-pytorch's `__main__` example."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import parity
from tests.conftest import (apply, assert_close_gradients, assert_close_outputs, converted_pair, float64_reference,
                            init_variables, new_torch_model, torch_class)
from parity.vat import TINY_VIT
from vit_flax import converters, registry
from vit_flax import vit as plain_vit
from vit_flax.vat import VAT, ViT

VIT_ENTRY = parity.BY_NAME['vat.ViT']
ENTRY = parity.BY_NAME['vat.VAT']
FULL = ENTRY.configs[0]  # two views, tasks, extra token, advantages, self-attention; the registry's compiles


def double(a):
    t = torch.from_numpy(np.asarray(a))
    return t.double() if t.is_floating_point() else t.long()


def torch_video(video):
    """Channels-last views / videos as vit-pytorch takes them, float64."""
    return double(np.moveaxis(np.asarray(video), -1, 2))


def call(model, variables, *inputs, **keywords):
    """model.apply under jit, with keywords (Python flags, ints, arrays) held as constants of the program."""
    return jax.jit(lambda v, *xs: model.apply(v, *xs, **keywords))(variables, *inputs)


def inputs_of(model, batch=2, seed=0):
    return ENTRY.inputs.example(model, batch=batch, rng=np.random.default_rng(seed))


def flax_gradients(model, variables, loss):
    """d loss / d params in vit-pytorch's layout (numpy)."""
    others = {key: value for key, value in variables.items() if key != 'params'}
    grads = jax.jit(jax.grad(lambda p: loss({**others, 'params': p})))(variables['params'])
    return converters.to_torch(model, {**others, 'params': grads}, as_numpy=True)


def torch_gradients(exact):
    return {name: np.zeros(p.shape) if p.grad is None else p.grad.numpy() for name, p in exact.named_parameters()}


@pytest.mark.parametrize('freeze_vit', [pytest.param(False, marks=pytest.mark.slow), True], ids=['trained', 'frozen'])
def test_l1_loss_and_its_gradients_match_vit_pytorch(freeze_vit):
    """Given actions, the forward returns F.l1_loss; under `freeze_vit` (torch.no_grad around the ViT) the ViT's
    parameters get no gradient, in both."""
    model, variables, torch_model = converted_pair(ENTRY, FULL)
    video, extra, tasks, advantages = inputs_of(model)
    actions = np.random.default_rng(1).standard_normal((2, 3, 3), dtype=np.float32)

    exact = float64_reference(torch_model)
    expected = exact(torch_video(video), extra=double(extra), tasks=double(tasks), advantages=double(advantages),
                     actions=double(actions), freeze_vit=freeze_vit)
    expected.backward()
    loss = lambda v: model.apply(v, video, extra, tasks, advantages, actions, freeze_vit=freeze_vit)  # noqa: E731
    assert_close_outputs(jax.jit(loss)(variables), expected.detach(), ENTRY.tolerance)

    grads, exact_grads = flax_gradients(model, variables, loss), torch_gradients(exact)
    assert_close_gradients(grads, exact_grads)
    vit_grads = [np.abs(g).max() for name, g in grads.items() if name.startswith('vit.')]
    assert (max(vit_grads) == 0) == freeze_vit


def test_return_hiddens_and_keyword_conditioning_match_vit_pytorch():
    """`return_hiddens` gives the predictions and the token trajectory (depth + 1, batch, tokens, dim); tasks given
    without an extra token still FiLM every layer, and an int advantage is every row's."""
    model, variables, torch_model = converted_pair(ENTRY, FULL)
    video, _, tasks, _ = inputs_of(model, seed=2)
    out = call(model, variables, video, tasks=tasks, advantages=1, return_hiddens=True)
    with torch.no_grad():
        expected = float64_reference(torch_model)(torch_video(video), tasks=double(tasks), advantages=1,
                                                  return_hiddens=True)
    assert out[1].shape == (2, 2, 2 + 1 + 3, 16)  # registers, the advantage token, the actions
    assert_close_outputs(out, expected, ENTRY.tolerance)
    # the tasks did condition: without them (or with other ones) the actions differ
    assert not np.allclose(call(model, variables, video, tasks=(tasks + 1) % 3, advantages=1), out[0])


def test_one_view_without_a_view_axis():
    """(batch, height, width, channels) is one view; vit-pytorch's `rearrange(x, 'b 1 c h w')` raises on it, so its
    answer is that of the same view with the axis."""
    config = ENTRY.configs[2]  # num_views=1
    model, variables, torch_model = converted_pair(ENTRY, config)
    (video,) = inputs_of(model)
    assert video.shape == (2, 1, 8, 8, 3)
    out = apply(model, variables, video[:, 0])
    np.testing.assert_array_equal(out, apply(model, variables, video))
    with torch.no_grad():
        assert_close_outputs(out, float64_reference(torch_model)(torch_video(video)), ENTRY.tolerance)
        with pytest.raises(Exception):
            float64_reference(torch_model)(torch_video(video)[:, 0])


def test_a_video_only_init_has_every_variable_of_vit_pytorch():
    """FiLM, the extra token's projection, the advantage embedding and the ViT's head exist whether or not a call
    uses them, as in vit-pytorch's state dict (they are created at init)."""
    model = VAT(**FULL)
    (video,) = inputs_of(model)[:1]
    shapes = jax.eval_shape(model.init, registry.init_rngs(jax.random.key(0)), video)
    variables = jax.tree_util.tree_map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), shapes)
    state = converters.to_torch(model, variables, example_inputs=(video,))
    torch_state = new_torch_model(ENTRY, FULL).state_dict()
    assert {key: tuple(value.shape) for key, value in state.items()} == \
        {key: tuple(value.shape) for key, value in torch_state.items()}
    assert {'layers.0.0.to_gamma_beta.0.weight', 'to_extra_token.weight', 'advantage_emb.weight',
            'vit.mlp_head.weight'} <= state.keys()


def test_the_vit_returns_its_trajectory_as_vit_pytorch():
    model, variables, torch_model = converted_pair(VIT_ENTRY, VIT_ENTRY.configs[1])  # registers, mean pool
    x = np.random.default_rng(0).standard_normal((2, 12, 20, 1), np.float32)
    tokens, hiddens = call(model, variables, x, return_hiddens=True)
    assert tokens.shape == (2, 3 + 1 + 12, 24) and hiddens.shape == (1, 2, 16, 24)
    with torch.no_grad():
        expected = float64_reference(torch_model)(double(np.moveaxis(x, -1, 1)), return_hiddens=True)
    assert_close_outputs((tokens, hiddens), expected, VIT_ENTRY.tolerance)


@pytest.mark.slow
def test_dropout_acts_in_training_only():
    config = ENTRY.configs[2]  # dropout=0.1
    model = VAT(**config)
    variables = init_variables(model)
    (video,) = inputs_of(model)
    eval_out = apply(model, variables, video)
    one = apply(model, variables, video, train=True, rngs={'dropout': jax.random.key(1)})
    again = apply(model, variables, video, train=True, rngs={'dropout': jax.random.key(1)})
    other = apply(model, variables, video, train=True, rngs={'dropout': jax.random.key(2)})
    np.testing.assert_array_equal(one, again)
    assert not np.allclose(one, eval_out) and not np.allclose(one, other)


def test_ids_vit_pytorch_refuses_give_nan():
    """vit-pytorch raises on task ids past the table and advantages below -1; JAX cannot raise on values, so the
    embeddings are NaN rather than another row (a negative task id counts from the end, as in torch)."""
    model, variables, torch_model = converted_pair(ENTRY, FULL)
    video, extra, tasks, advantages = inputs_of(model)
    bad_tasks = apply(model, variables, video, extra, np.array([0, 3], np.int32), advantages)
    assert np.isfinite(bad_tasks[0]).all() and np.isnan(bad_tasks[1]).all()
    bad_advantages = apply(model, variables, video, extra, tasks, np.array([-2, 0], np.int32))
    assert np.isnan(bad_advantages[0]).all() and np.isfinite(bad_advantages[1]).all()
    with torch.no_grad():
        for kwargs in (dict(tasks=torch.tensor([0, 3])), dict(tasks=double(tasks), advantages=torch.tensor([-2, 0]))):
            with pytest.raises(IndexError):
                float64_reference(torch_model)(torch_video(video), extra=double(extra), **kwargs)
        negative = float64_reference(torch_model)(torch_video(video), extra=double(extra), tasks=torch.tensor([-1, 2]))
    assert_close_outputs(apply(model, variables, video, extra, np.array([-1, 2], np.int32)), negative, ENTRY.tolerance)


def test_bad_configurations_are_refused_at_construction():
    vit = ViT(**parity.BY_NAME['vat.ViT'].configs[0])  # depth 2
    base = dict(vit=vit, dim=8, depth=2, heads=1, dim_head=8, dim_action=2, mlp_dim=8)
    for overrides, message in (
        (dict(depth=3), r'if the VAT depth is not equal to the ViT depth, .* depth=3, vit.depth=2'),
        (dict(depth=3, vit_layer_indices=(0, 1)), r'number of vit layer indices 2 does not match the VAT depth 3'),
        (dict(vit_layer_indices=(0, 3)), r'vit_layer_indices=\(0, 3\) holds 3; .* from -3 to 2'),
        (dict(depth=0, vit_layer_indices=()), r'VAT: depth=0 must be a positive integer'),
        (dict(vit=plain_vit.ViT(**parity.BY_NAME['vat.ViT'].configs[0])),
         r'vit must be a vit_flax.vat.ViT or a dict of its keywords, got vit_flax.vit.ViT'),
        (dict(dim_action=0), r'^VAT: dim_action=0 must be a positive integer'),
        (dict(time_seq_len=0), r'^VAT: time_seq_len=0 must be a positive integer'),
        (dict(num_advantage_bins=-1), r'^VAT: num_advantage_bins=-1 must be a non-negative integer'),
        (dict(self_attn_heads=0), r'^VAT: self_attn_heads=0 must be a positive integer'),
    ):
        with pytest.raises(ValueError, match=message):
            VAT(**{**base, **overrides})
    shallow = dict(image_size=8, patch_size=4, num_classes=2, dim=8, depth=0, heads=1, mlp_dim=8)
    with pytest.raises(ValueError, match=r'vit.depth=0 must be a positive integer'):
        VAT(**{**base, 'vit': shallow, 'vit_layer_indices': (0, -1)})


def test_a_dict_vit_is_the_vit_it_describes():
    config = dict(FULL, vit=dict(TINY_VIT))
    from_dict, from_module = VAT(**config), VAT(**FULL)
    assert from_dict.vit == from_module.vit == FULL['vit']
    hash(from_dict)  # a module of hashable fields, as Flax wants


def test_bad_inputs_are_refused():
    model = VAT(**FULL)
    video, extra, tasks, advantages = inputs_of(model)
    init = lambda *args, **kwargs: jax.eval_shape(  # noqa: E731
        lambda: model.init(registry.init_rngs(jax.random.key(0)), *args, **kwargs))
    for args, kwargs, error, message in (
        ((video[:, :1],), {}, ValueError, r'view_emb has 2 views, the input has 1'),
        ((video[:, :, None],), {}, ValueError, r'VAT with time_seq_len=1 takes images .* got shape \(2, 2, 1, 8, 8'),
        ((video[..., :2],), {}, ValueError, r'expected 3 channels'),
        ((video, extra[:, :4]), {}, ValueError, r'extra has shape \(2, 4\); its last axis must be dim_extra_token=5'),
        ((video, extra, tasks.astype(np.float32)), {}, TypeError, r'tasks has dtype float32; pass integer ids'),
        ((video,), dict(actions=np.zeros((2, 3, 2), np.float32)), ValueError, r'actions of shape \(2, 3, 2\)'),
    ):
        with pytest.raises(error, match=message):
            init(*args, **kwargs)
    plain = VAT(**dict(ENTRY.configs[1], num_tasks=None))  # three frames, no tasks
    (plain_video, plain_extra) = ENTRY.inputs.example(plain, batch=2, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match='`num_tasks` must be set on `VAT` for task conditioning'):
        jax.eval_shape(lambda: plain.init(registry.init_rngs(jax.random.key(0)), plain_video, tasks=tasks))
    with pytest.raises(ValueError, match=r'VAT with time_seq_len=3 takes videos'):
        jax.eval_shape(lambda: plain.init(registry.init_rngs(jax.random.key(0)), plain_video[:, :, 0]))
    with pytest.raises(ValueError, match=r'the videos have 2 frames, time_seq_len=3'):
        jax.eval_shape(lambda: plain.init(registry.init_rngs(jax.random.key(0)), plain_video[:, :, :2]))


@pytest.mark.slow
def test_vit_pytorch_example():
    """vit-pytorch's `__main__` example: shapes at its size, for each of its advantage-bin counts; the loss with a
    frozen ViT and the trajectory on a scaled-down copy against vit-pytorch."""
    vit = ViT(image_size=256, patch_size=32, num_classes=1000, dim=256, heads=8, depth=4, mlp_dim=1024)
    for num_adv_bins in (0, 2, 10):
        vat = VAT(vit, dim=512, depth=9, heads=8, dim_head=64, mlp_dim=2048, dim_action=20, action_chunk_len=7,
                  time_seq_len=4, num_views=2, num_tasks=4, num_advantage_bins=num_adv_bins, add_self_attn=True,
                  dim_extra_token=33, vit_layer_indices=(0, 0, 1, 1, 2, 2, 3, 3, 4))
        images = jnp.zeros((2, 2, 4, 256, 256, 3))
        tasks, extra = jnp.zeros((2,), jnp.int32), jnp.zeros((2, 33))
        advantages = jnp.zeros((2,), jnp.int32) if num_adv_bins > 0 else None
        variables = jax.eval_shape(vat.init, registry.init_rngs(jax.random.key(0)), images, extra, tasks, advantages)
        loss = jax.eval_shape(lambda v: vat.apply(v, images, actions=jnp.zeros((2, 7, 20)), advantages=advantages,
                                                  tasks=tasks, extra=extra, freeze_vit=True), variables)
        pred_actions, hiddens = jax.eval_shape(lambda v: vat.apply(v, images, advantages=advantages, tasks=tasks,
                                                                   extra=extra, return_hiddens=True), variables)
        assert loss.shape == () and pred_actions.shape == (2, 7, 20)
        assert hiddens.shape == (10, 2, 4 + (num_adv_bins > 0) + 7 + 1, 512)

    # scaled down, against vit-pytorch
    vit = dict(image_size=16, patch_size=8, num_classes=10, dim=16, heads=2, depth=4, mlp_dim=32)
    config = dict(vit=ViT(**vit), dim=24, depth=9, heads=2, dim_head=8, mlp_dim=32, dim_action=5, action_chunk_len=7,
                  time_seq_len=4, num_views=2, num_tasks=4, num_advantage_bins=2, add_self_attn=True,
                  dim_extra_token=33, vit_layer_indices=(0, 0, 1, 1, 2, 2, 3, 3, 4))
    model, variables, torch_model = converted_pair(ENTRY, config)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((2, 2, 4, 16, 16, 3), np.float32)
    tasks, extra = rng.integers(0, 4, (2,)).astype(np.int32), rng.standard_normal((2, 33), np.float32)
    advantages, actions = np.array([-1, 1], np.int32), rng.standard_normal((2, 7, 5), np.float32)
    exact = float64_reference(torch_model)
    keywords = dict(advantages=double(advantages), tasks=double(tasks), extra=double(extra))
    expected_loss = exact(torch_video(images), actions=double(actions), freeze_vit=True, **keywords)
    with torch.no_grad():
        expected = exact(torch_video(images), return_hiddens=True, **keywords)
    loss = call(model, variables, images, extra, tasks, advantages, actions, freeze_vit=True)
    assert_close_outputs(loss, expected_loss.detach(), ENTRY.tolerance)
    assert_close_outputs(call(model, variables, images, extra, tasks, advantages, return_hiddens=True), expected,
                         ENTRY.tolerance)
    assert torch_class(ENTRY) is type(torch_model)
