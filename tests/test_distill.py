"""distill.py beyond the registry configs: the distillation-token path (also on the parity spec's random
configurations), to_vit(), vit-pytorch's broken DistillableT2TViT / DistillableEfficientViT (parity as far as torch
allows), DistillWrapper's loss and gradients."""

import einops
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import parity
from vit_flax import converters
from tests.conftest import (
    apply, assert_close_outputs, converted_pair, float64_reference, images, init_variables, nchw, new_torch_model,
    randomised_torch_model, torch_forward, torch_inputs,
)
from vit_flax import distill, registry, vit
from vit_flax.distill import DistillableEfficientViT, DistillableT2TViT, DistillableViT, DistillWrapper

ENTRY = parity.BY_NAME['distill.DistillableViT']
WRAPPER = parity.BY_NAME['distill.DistillWrapper']
TOL = ENTRY.tolerance
TINY = ENTRY.configs[0]
MEAN = ENTRY.configs[1]
T2T = dict(image_size=16, num_classes=5, dim=16, depth=1, heads=2, mlp_dim=16, dim_head=8, t2t_layers=((3, 2), (3, 2)))
EFFICIENT = parity.BY_NAME['efficient.ViT'].configs[0]


def vit_pytorch_distill():
    return converters.import_vit_pytorch('vit_pytorch.distill')


def token(dim, n=1, seed=5):
    return images((n, dim), seed=seed)


# DistillableViT against vit-pytorch's own distillation path


@pytest.mark.parametrize('config', [TINY, MEAN], ids=['cls', 'mean'])
@pytest.mark.parametrize('n', [1, 2])
def test_distill_token_path_matches_torch(config, n):
    model, variables, torch_model = converted_pair(ENTRY, config)
    height, width = vit.pair(config['image_size'])
    x, t = images((2, height, width, config.get('channels', 3))), token(config['dim'], n)
    out, distill_tokens = apply(model, variables, x, t)
    with torch.no_grad():
        torch_out, torch_tokens = float64_reference(torch_model)(nchw(x), distill_token=torch.from_numpy(t).double())
    assert distill_tokens.shape == (2, config['dim'])
    assert_close_outputs((out, distill_tokens), (torch_out, torch_tokens), TOL)


def test_num_classes_zero_raises_like_torch_fails():
    config = {**TINY, 'num_classes': 0}
    torch_model = new_torch_model(ENTRY, config)
    with pytest.raises(TypeError):  # vit.ViT's mlp_head is None
        torch_model(torch.zeros(1, 3, 16, 16))
    model = DistillableViT(**config)
    with pytest.raises(ValueError, match='num_classes=0'):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    assert type(model.to_vit()) is vit.ViT and model.to_vit().num_classes == 0  # the plain ViT returns tokens


def test_mean_pool_on_a_smaller_input_works_where_torch_fails():
    model, variables, torch_model = converted_pair(ENTRY, MEAN)
    x = images((2, 16, 16, 1))  # 8 of the 12 patches
    with pytest.raises(RuntimeError):
        torch_forward(torch_model, x)
    plain = model.to_vit()
    np.testing.assert_array_equal(apply(model, variables, x), apply(plain, variables, x))


def test_bad_distill_token_is_refused():
    model, variables, _ = converted_pair(ENTRY, TINY)
    with pytest.raises(ValueError, match=r'distill_token must be \(n, dim=32\), got shape \(1, 1, 32\)'):
        model.apply(variables, images((1, 16, 16, 3)), images((1, 1, 32)))


def test_emb_dropout_covers_the_distill_token_and_follows_the_rng():
    config = {**TINY, 'emb_dropout': 0.5}
    model = DistillableViT(**config)
    variables = init_variables(model)
    x, t = images((2, 16, 16, 3)), token(32)
    runs = [apply(model, variables, x, t, train=True, rngs={'dropout': jax.random.key(s)}) for s in (1, 1, 2)]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    assert np.abs(np.asarray(runs[0][1]) - np.asarray(runs[2][1])).max() > 1e-3


# to_vit: the plain module, same variables, same outputs


def test_to_vit_gives_the_plain_module_with_the_same_variables():
    """(DistillableT2TViT's and DistillableEfficientViT's to_vit are checked in the parity test below.)"""
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    plain = model.to_vit()
    assert type(plain) is vit.ViT and registry.torch_kwargs(plain) == registry.torch_kwargs(model)
    x = images((2, 16, 16, 3))
    np.testing.assert_array_equal(apply(plain, variables, x), apply(model, variables, x))
    # as in vit-pytorch
    assert_close_outputs(apply(plain, variables, x), torch_forward(torch_model.to_vit(), x), TOL)


# DistillableT2TViT and DistillableEfficientViT: vit-pytorch's forward raises, so compare what torch allows


def torch_distill_forward(torch_model, img, distill_token):
    """vit-pytorch's DistillMixin.forward with its bug fixed (parameters flattened to 2-D), in torch."""
    x = torch_model.to_patch_embedding(img)
    b, n, d = x.shape
    x = torch.cat((torch_model.cls_token.reshape(-1, d).expand(b, -1, -1), x), dim=1)
    x = x + torch_model.pos_embedding.reshape(-1, d)[:(n + 1)]
    x = torch.cat((x, distill_token.expand(b, -1, -1)), dim=1)
    x = torch_model._attend(x)
    x, distill_tokens = x[:, :-1], x[:, -1]
    x = x.mean(dim=1) if torch_model.pool == 'mean' else x[:, 0]
    return torch_model.mlp_head(torch_model.to_latent(x)), distill_tokens


def test_the_fixed_torch_forward_reproduces_torch_distillable_vit():
    """The helper above is vit-pytorch's own forward where vit-pytorch works (in float64, as the test below uses it)."""
    exact = float64_reference(randomised_torch_model(ENTRY, TINY))
    x, t = nchw(images((2, 16, 16, 3))), torch.from_numpy(token(32)).double()
    with torch.no_grad():
        for a, b in zip(torch_distill_forward(exact, x, t), exact(x, distill_token=t)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def distillable_cases():
    # (vit-pytorch distillable class, its plain class, Flax class, config); torch keywords built afresh each time
    return [
        ('DistillableT2TViT', ('vit_pytorch.t2t', 'T2TViT'), DistillableT2TViT, T2T),
        ('DistillableEfficientViT', ('vit_pytorch.efficient', 'ViT'), DistillableEfficientViT, EFFICIENT),
    ]


@pytest.mark.parametrize('name, plain, cls, config', distillable_cases(), ids=lambda v: v if isinstance(v, str) else '')
def test_broken_torch_distillables_parity_as_far_as_torch_allows(name, plain, cls, config):
    torch_class = getattr(vit_pytorch_distill(), name)
    plain_class = getattr(converters.import_vit_pytorch(plain[0]), plain[1])
    torch.manual_seed(0)
    torch_model = torch_class(**converters.torch_keywords(config)).eval()
    with torch.no_grad():
        for parameter in torch_model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    x, t = images((2, 16, 16, 3)), token(16 if cls is DistillableT2TViT else 32)

    # vit-pytorch's forward fails, with or without a distillation token
    with pytest.raises(einops.EinopsError, match='expected 2 dims'):
        torch_forward(torch_model, x)

    model = cls(**config)
    example = (jnp.zeros((1, 16, 16, 3)),)
    variables = converters.from_torch(model, torch_model.state_dict(), example_inputs=example)

    # without a token: the plain vit-pytorch class (same state dict, strict) is the oracle
    plain_torch = plain_class(**converters.torch_keywords(config)).eval()
    plain_torch.load_state_dict(torch_model.state_dict(), strict=True)
    out = jax.jit(model.apply)(variables, x)
    assert_close_outputs(out, torch_forward(plain_torch, x), TOL)
    # to_vit(): the plain Flax module, the same variables, the same outputs
    plain_flax = model.to_vit()
    assert type(plain_flax) is cls.__mro__[2]
    np.testing.assert_array_equal(jax.jit(plain_flax.apply)(variables, x), out)

    # with a token: vit-pytorch's forward with its bug fixed
    with torch.no_grad():
        torch_out = torch_distill_forward(float64_reference(torch_model), nchw(x), torch.from_numpy(t).double())
    flax_out = jax.jit(lambda v, x, t: model.apply(v, x, distill_token=t))(variables, x, t)
    assert_close_outputs(flax_out, torch_out, TOL)

    # Flax -> torch loads strictly into vit-pytorch's float32 distillable class, and back bit-exact
    state = converters.to_torch(model, variables, example_inputs=example)
    torch_class(**converters.torch_keywords(config)).load_state_dict(state, strict=True)
    back = converters.from_torch(model, state, example_inputs=example)
    jax.tree_util.tree_map(np.testing.assert_array_equal, back, variables)


# DistillWrapper: loss and gradients against vit-pytorch's


def wrapper_pair(index):
    model, variables, torch_model = converted_pair(WRAPPER, WRAPPER.configs[index])
    return model, variables, torch_model


def wrapper_inputs(model, seed=0, batch=3):
    return WRAPPER.inputs.example(model, batch=batch, rng=np.random.default_rng(seed))


def torch_loss(exact, inputs, **kwargs):
    """The loss of `exact`, a vit-pytorch DistillWrapper's float64 reference."""
    return exact(*torch_inputs(WRAPPER, inputs), **kwargs)


_compiled = {}


def flax_loss(model):
    """The wrapper's loss (temperature and alpha traced: one compile per model)."""
    key = ('loss', repr(model))
    if key not in _compiled:
        _compiled[key] = jax.jit(
            lambda v, img, labels, T, alpha: model.apply(v, img, labels, temperature=T, alpha=alpha))
    return _compiled[key]


def flax_grad(model):
    key = ('grad', repr(model))
    if key not in _compiled:
        def loss(params, variables, img, labels, T, alpha):
            return model.apply({**variables, 'params': params}, img, labels, temperature=T, alpha=alpha)

        _compiled[key] = jax.jit(jax.grad(loss))
    return _compiled[key]


@pytest.mark.parametrize('index', [0, 1], ids=['soft', 'hard-layernorm'])
@pytest.mark.parametrize('temperature, alpha', [(1.0, 0.5), (3.0, 0.9), (0.5, 0.1)])
def test_loss_and_gradients_match_torch(index, temperature, alpha):
    model, variables, torch_model = wrapper_pair(index)
    exact = float64_reference(torch_model)
    inputs = wrapper_inputs(model, seed=index)
    loss = torch_loss(exact, inputs, temperature=temperature, alpha=alpha)
    loss.backward()
    T, a = jnp.float32(temperature), jnp.float32(alpha)
    assert_close_outputs(flax_loss(model)(variables, *inputs, T, a), loss, TOL)

    grads = flax_grad(model)(variables['params'], variables, *inputs, T, a)
    flax_grads = converters.to_torch(model, {**variables, 'params': grads}, as_numpy=True)
    for name, parameter in exact.named_parameters():
        if name.startswith('teacher.'):
            assert parameter.grad is None and not flax_grads[name].any(), name  # the teacher is not trained
            continue
        expected = parameter.grad.numpy()
        scale = float(np.abs(expected).max(initial=0.0))
        np.testing.assert_allclose(flax_grads[name], expected, rtol=1e-4, atol=1e-4 * scale, err_msg=name)


def test_soft_and_hard_and_layernorm_both_ways_match_torch():
    """Both distillation modes with and without the LayerNorm on the distillation MLP (the registry covers
    soft without / hard with)."""
    base = WRAPPER.configs[0]
    for hard, layernorm in [(True, False), (False, True)]:
        config = {**base, 'hard': hard, 'mlp_layernorm': layernorm}
        model, variables, torch_model = converted_pair(WRAPPER, config)
        assert ('distill_mlp_0' in variables['params']) == layernorm
        inputs = wrapper_inputs(model, seed=2)
        with torch.no_grad():
            expected = torch_loss(float64_reference(torch_model), inputs)
        assert_close_outputs(apply(model, variables, *inputs), expected, TOL)


def test_ignored_labels_match_torch():
    model, variables, torch_model = wrapper_pair(0)
    img, labels = wrapper_inputs(model, seed=4)
    labels = labels.copy()
    labels[1] = -100
    with torch.no_grad():
        expected = torch_loss(float64_reference(torch_model), (img, labels), temperature=1.0, alpha=0.5)
    assert_close_outputs(flax_loss(model)(variables, img, labels, jnp.float32(1.0), jnp.float32(0.5)), expected, TOL)


def test_teacher_may_be_any_callable():
    model, variables, _ = wrapper_pair(0)
    teacher_variables = {'params': variables['params']['teacher']}
    teacher = WRAPPER.configs[0]['teacher']
    callable_teacher = DistillWrapper(
        teacher=lambda img: teacher.apply(teacher_variables, img), student=WRAPPER.configs[0]['student'],
        temperature=2.0, alpha=0.3,
    )
    own = {'params': {k: v for k, v in variables['params'].items() if k != 'teacher'}}
    inputs = wrapper_inputs(model, seed=3)
    T, a = jnp.float32(2.0), jnp.float32(0.3)
    np.testing.assert_allclose(
        flax_loss(callable_teacher)(own, *inputs, T, a), flax_loss(model)(variables, *inputs, T, a), rtol=1e-6)


def test_wrapper_distils_into_the_t2t_and_efficient_students():
    """vit-pytorch cannot (its DistillableT2TViT / DistillableEfficientViT fail); here the loss equals the
    fixed torch forward composed with torch's loss."""
    teacher = WRAPPER.configs[0]['teacher']
    student = DistillableEfficientViT(**{**EFFICIENT, 'num_classes': 5, 'transformer': vit.Transformer(
        dim=32, depth=1, heads=2, dim_head=8, mlp_dim=16)})
    model = DistillWrapper(teacher=teacher, student=student, temperature=2.0, alpha=0.3)
    img, labels = wrapper_inputs(model, seed=1)
    variables = jax.jit(model.init)(jax.random.key(0), img, labels)
    loss = jax.jit(model.apply)(variables, img, labels)
    assert loss.shape == () and np.isfinite(float(loss))

    @jax.jit
    def from_the_parts(params):
        teacher_logits = teacher.apply({'params': params['teacher']}, img)
        logits, tokens = student.apply({'params': params['student']}, img, distill_token=params['distillation_token'])
        distill_logits = tokens @ params['distill_mlp_1']['kernel'] + params['distill_mlp_1']['bias']
        return 0.7 * distill.cross_entropy(logits, labels) + 0.3 * 4 * distill.kl_div_batchmean(
            jax.nn.log_softmax(distill_logits / 2), jax.nn.softmax(teacher_logits / 2))

    np.testing.assert_allclose(loss, from_the_parts(variables['params']), rtol=1e-5)


def test_student_must_be_distillable():
    with pytest.raises(ValueError, match='student must be a vision transformer .* got ViT'):
        DistillWrapper(teacher=WRAPPER.configs[0]['teacher'], student=WRAPPER.configs[0]['teacher'])


# the distillation-token path on the parity spec's random configurations (tests/test_random_configurations.py
# runs them without a token)


def test_distill_token_path_matches_torch_on_random_configurations():
    for config, (x,) in ENTRY.random_configurations():
        model, variables, torch_model = converted_pair(ENTRY, config)
        t = token(config['dim'])
        with torch.no_grad():
            expected = float64_reference(torch_model)(nchw(x), distill_token=torch.from_numpy(t).double())
        try:
            assert_close_outputs(apply(model, variables, x, t), expected, TOL)
        except AssertionError as error:
            raise AssertionError(f'{config}: {error}') from None
