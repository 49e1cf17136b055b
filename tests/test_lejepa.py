"""LeJEPA beyond the registry configs: `sigreg_loss` against vit-pytorch's, the use_ema / use_sigreg flag resolution
against vit-pytorch's constructor, loss and gradients against vit-pytorch under shared crops and SIGReg directions
(SIGReg and EMA targets, train mode, SIGReg switched off by its weight), the EMA (`after_step`) against
`learner.update_moving_average()`, the optimiser mask (`trainable_mask`) with optax, `return_embedding`, the rng
streams, bad configs, vit-pytorch's quick run, and training on the digits through the trainer (random
configurations: parity.lejepa).

torchvision cannot load here: vit-pytorch's LeJEPA is built and run under `parity.lejepa.torch_transforms`, the
stand-in whose RandomResizedCrop cuts the boxes the Flax call draws (`LeJEPA.crop_boxes`), and its `torch.randn` gives
SIGReg's draws of the Flax call (`LeJEPA.sigreg_draws`); both sides get identity augmentations.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import parity
from parity.dino import IDENTITY_AUGMENTS as IDENTITY
from parity.lejepa import torch_randn_returns, torch_transforms
from tests.conftest import (assert_close_outputs, converted_pair, float64_default, float64_reference, images,
                            init_variables, nchw, torch_class)
from tests.objective_helpers import check_loss_and_gradients
from tests.test_objectives_training import SMALL_PROJECTOR, assert_exports_as_the_model, objective_config
from tests.train_helpers import losses
from vit_flax import converters, dino, lejepa
from vit_flax.lejepa import LeJEPA
from vit_flax.train import train_and_evaluate
from vit_flax.vit import ViT

ENTRY = parity.BY_NAME['lejepa.LeJEPA']
SIGREG_CONFIG, _, BOTH_CONFIG, _ = ENTRY.configs  # SIGReg alone; the EMA target and SIGReg on the transformer's tokens
VIT = ViT(image_size=16, patch_size=8, num_classes=5, dim=16, depth=1, heads=2, mlp_dim=16, dim_head=8)
# the EMA target on the tiny ViT: a decay resolves to it (the parity configuration 1 is a deeper ViT)
EMA = dict(SIGREG_CONFIG, moving_average_decay=0.7)


def torch_sigreg_loss():
    return converters.import_vit_pytorch('vit_pytorch.lejepa').sigreg_loss


# SIGReg


@pytest.mark.parametrize('shape, kwargs', [
    ((6, 10), {}),
    ((2, 3, 7), dict(num_slices=5, domain=(-3.0, 2.0), num_knots=9)),  # leading axes flattened as torch's (...)
])
def test_sigreg_loss_and_its_gradient_match_torch(shape, kwargs):
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    key = jax.random.key(1)
    num_slices = kwargs.get('num_slices', 1024)
    draws = np.asarray(lejepa.sigreg_slice_draws(key, num_slices, shape[-1]))
    loss, grad = jax.jit(jax.value_and_grad(lambda x: lejepa.sigreg_loss(x, key, **kwargs)))(x)

    exact_x = torch.from_numpy(x).double().requires_grad_()
    with float64_default(), torch_randn_returns(draws):
        exact = torch_sigreg_loss()(exact_x, **kwargs)
    exact.backward()
    assert exact.item() > 1e-3  # far from zero: random embeddings are no standard normal sample
    assert_close_outputs(loss, exact.detach(), ENTRY.tolerance)
    scale = float(exact_x.grad.abs().max())
    np.testing.assert_allclose(np.asarray(grad), exact_x.grad.numpy(), rtol=1e-4, atol=1e-4 * scale)


def test_sigreg_loss_is_small_for_gaussian_embeddings():
    """What SIGReg measures: isotropic standard normal embeddings score near 0, scaled ones far from it."""
    x = np.random.default_rng(0).standard_normal((4096, 8), dtype=np.float32)
    loss = jax.jit(lambda x: lejepa.sigreg_loss(x, jax.random.key(1), num_slices=64))
    assert float(loss(x)) < 1e-3
    assert float(loss(3 * x)) > 2e-2


# which target


def torch_learner(**kwargs):
    """vit-pytorch's LeJEPA on the tiny ViT (its constructor runs a forward, with SIGReg or the EMA target)."""
    with torch_transforms():
        return torch_class(ENTRY)(**converters.torch_keywords(dict(
            net=VIT, image_size=16, hidden_layer='to_latent', projection_hidden_size=8, projection_layers=2,
            num_classes_K=8, sigreg_loss_kwargs=dict(num_slices=4), **IDENTITY, **kwargs)))


@pytest.mark.parametrize('use_ema, use_sigreg, moving_average_decay, sigreg_loss_weight', [
    *itertools.product((None, True, False), (None, True, False), (None, 0.9), (1.0,)),
    (None, None, None, 0.0), (True, True, None, -1.0),
])
def test_flags_resolve_as_vit_pytorch(use_ema, use_sigreg, moving_average_decay, sigreg_loss_weight):
    kwargs = dict(use_ema=use_ema, use_sigreg=use_sigreg, moving_average_decay=moving_average_decay,
                  sigreg_loss_weight=sigreg_loss_weight)
    learner = torch_learner(**kwargs)
    model = LeJEPA(net=VIT, image_size=16, hidden_layer='to_latent', projection_hidden_size=8, projection_layers=2,
                   num_classes_K=8, sigreg_loss_kwargs=dict(num_slices=4), **IDENTITY, **kwargs)
    assert model.target == (learner.use_ema, learner.use_sigreg)
    assert model.has_sigreg_loss == learner.has_sigreg_loss
    if learner.use_ema:
        assert model.ema_decay == learner.target_ema_updater.beta
    assert learner.use_ema == any(key.startswith('target_encoder.') for key in learner.state_dict())


def test_the_variable_tree_has_a_target_with_the_ema_only():
    shapes = lambda model: jax.eval_shape(  # noqa: E731
        lambda: model.init({'params': jax.random.key(0)}, jnp.zeros((2, 16, 16, 3))))['params']
    assert set(shapes(ENTRY.build(0))) == {'encoder'}
    assert set(shapes(ENTRY.build(0, use_sigreg=False))) == {'encoder', 'target_encoder'}


# loss and gradients against vit-pytorch


CONFIGS = {  # beyond the registry's: the first are fast tests, the rest run with `make test-slow`
    # the EMA target (a decay alone resolves to it), its parameters apart from the encoder's (randomised apart)
    'ema': EMA,
    # SIGReg switched off by its weight: the MSE against the online encoder alone (torch's has_sigreg_loss)
    'sigreg-weight-zero': dict(SIGREG_CONFIG, sigreg_loss_weight=0.0),
    # the EMA target and SIGReg in one learner, on a block's output
    'both-block': dict(SIGREG_CONFIG, hidden_layer='transformer.layers.0.1', projection_hidden_size=8,
                       use_ema=True, use_sigreg=True, sigreg_loss_kwargs=dict(num_slices=7, num_knots=5)),
}
FAST = ('ema',)


@pytest.mark.parametrize('name', [*FAST, *(pytest.param(name, marks=pytest.mark.slow) for name in CONFIGS
                                           if name not in FAST)])
def test_loss_and_gradients_match_torch(name):
    """Every weight's gradient, the encoder's through the local crops; the target's is zero (EMA) or the online
    encoder's own target is gradient-stopped (SIGReg), as torch's no_grad. Images of another size than the crops."""
    check_loss_and_gradients(ENTRY, CONFIGS[name], x=images((3, 20, 18, 3), seed=4), seed=3)


@pytest.mark.slow  # compiles for 5-10 s
def test_train_mode_matches_torch():
    """train=True (the encoder has no dropout; the target also runs in training mode in torch)."""
    check_loss_and_gradients(ENTRY, BOTH_CONFIG, x=images((2, 16, 16, 3), seed=5), seed=6, train=True)


@pytest.mark.slow  # compiles for 5-10 s
def test_return_embedding_matches_torch():
    model, variables, torch_model = converted_pair(ENTRY, BOTH_CONFIG)
    x = images((2, 16, 16, 3), seed=6)
    exact = float64_reference(torch_model)
    with torch_transforms(), torch.no_grad():
        torch_projection, torch_embedding = exact(nchw(x), return_embedding=True)
        torch_embedding_only = exact(nchw(x), return_embedding=True, return_projection=False)
    projection, embedding = model.apply(variables, x, return_embedding=True)
    embedding_only = model.apply(variables, x, return_embedding=True, return_projection=False)
    assert embedding.shape == (2, 5 * 16)  # the transformer's tokens, flattened
    assert_close_outputs((projection, embedding, embedding_only),
                         (torch_projection, torch_embedding, torch_embedding_only), ENTRY.tolerance)


# the EMA target


def test_after_step_is_torchs_update_moving_average():
    model, variables, torch_model = converted_pair(ENTRY, EMA, seed=7)
    kernel = lambda name: np.asarray(variables['params'][name]['projector']['net_0']['kernel'])  # noqa: E731
    assert not np.array_equal(kernel('encoder'), kernel('target_encoder'))  # randomised apart

    exact = float64_reference(torch_model)
    assert exact.target_ema_updater.beta == 0.7
    with torch.no_grad():
        exact.update_moving_average()
    state = converters.to_torch(model, jax.jit(model.after_step)(variables))
    expected = exact.state_dict()
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        assert state[key].dtype == torch.float32, key
        torch.testing.assert_close(state[key].double(), value, rtol=1e-6, atol=1e-7, msg=key)

    # torch's lerp, not dino's decay * old + (1 - decay) * new, at both branches of its formula
    old, new = jnp.float32(0.1), jnp.float32(0.7)
    for weight in (0.3, 0.5, 0.99):
        expected = torch.lerp(torch.tensor(0.1), torch.tensor(0.7), weight)
        assert float(lejepa.lerp(old, new, weight)) == expected.item()


def test_init_copies_the_encoder_and_the_mask_freezes_the_target():
    params = init_variables(ENTRY.build(0, use_ema=True))['params']
    jax.tree_util.tree_map(np.testing.assert_array_equal, params['target_encoder'], params['encoder'])
    mask = lejepa.trainable_mask(params)
    assert not any(jax.tree_util.tree_leaves(mask['target_encoder']))
    assert all(jax.tree_util.tree_leaves(mask['encoder']))
    moved = {'params': {**params, 'target_encoder': jax.tree_util.tree_map(lambda a: a + 1, params['target_encoder'])}}
    reset = lejepa.reset_moving_average(moved)['params']
    jax.tree_util.tree_map(np.testing.assert_array_equal, reset['target_encoder'], params['encoder'])


@pytest.mark.slow  # compiles for 5-10 s
def test_an_optax_step_moves_the_encoder_only_and_the_ema_the_target():
    """One AdamW step (weight decay would move every masked-in leaf) moves the encoder only; the EMA then moves the
    target towards it. vit-pytorch's quick run with the EMA target, on a tiny ViT."""
    model = ENTRY.build(0, use_ema=True)  # decay 0.99, vit-pytorch's default
    x = images((2, 16, 16, 3))
    params = init_variables(model)['params']
    optimizer = optax.masked(optax.adamw(1e-2, weight_decay=0.5), model.trainable_mask(params))
    rngs = {'augment': jax.random.key(1), 'crop': jax.random.key(2), 'sigreg': jax.random.key(3)}

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(lambda p: model.apply({'params': p}, x, rngs=rngs, train=True))(params)
        changes, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, changes), grads

    new, grads = step(params, optimizer.init(params))
    for leaf in jax.tree_util.tree_leaves(grads['target_encoder']):
        np.testing.assert_array_equal(np.asarray(leaf), 0.0)
    jax.tree_util.tree_map(np.testing.assert_array_equal, new['target_encoder'], params['target_encoder'])
    moved = jax.tree_util.tree_map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), new['encoder'],
                                   params['encoder'])
    assert all(jax.tree_util.tree_leaves(moved))

    after = model.after_step({'params': new})['params']
    expected = jax.tree_util.tree_map(lambda t, s: t + 0.01 * (s - t), params['target_encoder'], new['encoder'])
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                           after['target_encoder'], expected)


def test_without_an_ema_target_after_step_leaves_the_variables_and_every_parameter_trains():
    model = ENTRY.build(0)
    variables = {'params': {'encoder': {'w': jnp.ones(2)}}}
    assert model.after_step(variables) is variables
    assert model.trainable_mask(variables['params']) == {'encoder': {'w': True}}
    with pytest.raises(ValueError, match='use_ema is set to False'):
        model.update_moving_average(variables)
    with pytest.raises(ValueError, match='target_encoder'):
        lejepa.update_moving_average(variables)


# rng streams and configuration


@pytest.mark.slow  # compiles for 5-10 s
def test_draws_come_from_the_named_streams():
    """The default augmentation (RGB in [0, 1]) from 'augment', the crops from 'crop', SIGReg's directions from
    'sigreg' (and nothing from it without SIGReg)."""
    x = np.random.default_rng(0).random((2, 16, 16, 3), dtype=np.float32)
    def keys(augment, crop, sigreg):
        return {'augment': jax.random.key(augment), 'crop': jax.random.key(crop), 'sigreg': jax.random.key(sigreg)}

    for model, uses_sigreg in ((LeJEPA(net=VIT, image_size=16, hidden_layer='to_latent', projection_hidden_size=8,
                                       projection_layers=2, num_classes_K=8), True),
                               (ENTRY.build(0, use_sigreg=False), False)):
        variables = init_variables(model)
        run = jax.jit(lambda r: model.apply(variables, x, rngs=r))  # noqa: B023
        base = float(run(keys(1, 2, 3)))
        assert np.isfinite(base) and base == float(run(keys(1, 2, 3)))
        assert (base != float(run(keys(1, 2, 4)))) == uses_sigreg
        assert base != float(run(keys(1, 5, 3)))
        if model.augment_fn is None:
            assert base != float(run(keys(6, 2, 3)))
    assert LeJEPA.rng_streams == ('augment', 'crop', 'sigreg')
    tiny = ENTRY.build(0)
    with pytest.raises(Exception, match='sigreg'):
        jax.eval_shape(lambda: tiny.apply(init_variables(tiny), x, rngs={'augment': jax.random.key(0),
                                                                         'crop': jax.random.key(0)}))


def test_shared_pieces_are_dinos():
    assert lejepa.NetWrapper is dino.NetWrapper and lejepa.MLP is dino.MLP and lejepa.L2Norm is dino.L2Norm
    assert lejepa.RandomApply is dino.RandomApply and lejepa.DefaultAugment is dino.DefaultAugment
    assert ENTRY.build(0).torch_aliases() == {'net.': 'encoder.net.'}
    assert LeJEPA.encoder_path == ('encoder', 'net')


@pytest.mark.parametrize('overrides, message', [
    (dict(image_size=(16, 16)), r'image_size=\(16, 16\)'),
    (dict(projection_layers=0), 'projection_layers=0'),
    (dict(num_classes_K=0), 'num_classes_K=0'),
    (dict(local_upper_crop_scale=0.01), '0.01'),
    (dict(global_lower_crop_scale=1.5), '1.5'),
    (dict(moving_average_decay=2.0), 'moving_average_decay=2.0'),
    (dict(hidden_layer=7), 'hidden_layer=7'),
    (dict(augment_fn='flip'), "'flip'"),
    (dict(use_ema='yes'), "use_ema='yes'"),
    (dict(use_sigreg=1), 'use_sigreg=1'),
    (dict(sigreg_loss_weight=None), 'sigreg_loss_weight=None'),
    (dict(target_loss_weight='1'), "target_loss_weight='1'"),
    (dict(sigreg_loss_kwargs=dict(num_slice=8)), 'num_slice'),
    (dict(sigreg_loss_kwargs=dict(num_slices=0)), "'num_slices'.*0"),
    (dict(sigreg_loss_kwargs=dict(num_knots=2.5)), "'num_knots'.*2.5"),
    (dict(sigreg_loss_kwargs=dict(domain=(-5,))), r"'domain'.*\(-5,\)"),
])
def test_bad_configs_name_the_value(overrides, message):
    with pytest.raises(ValueError, match=message):
        ENTRY.build(0, **overrides)


def test_bad_inputs_are_refused():
    x = images((1, 16, 16, 3))
    init = lambda model, x: jax.eval_shape(lambda: model.init({'params': jax.random.key(0)}, x))  # noqa: E731
    with pytest.raises(ValueError, match=r'\(16, 16, 3\)'):
        init(ENTRY.build(0), x[0])
    with pytest.raises(ValueError, match="'no_such_layer'"):
        init(ENTRY.build(0, hidden_layer='no_such_layer'), x)
    with pytest.raises(ValueError, match='projection_hidden_size=8'):  # the pooled embedding has 16 features
        init(ENTRY.build(0, projection_layers=1, projection_hidden_size=8), x)


# training through the trainer


# SIGReg's value for projections collapsed to one point (every slice's empirical characteristic function is 1):
# the integral of (1 - exp(-t^2 / 2))^2 exp(-t^2 / 2) over the real line
COLLAPSED_SIGREG = float(np.sqrt(2 * np.pi) - 2 * np.sqrt(np.pi) + np.sqrt(2 * np.pi / 3))


def test_pretraining_lowers_the_loss_and_exports_the_encoder(tmp_path):
    """SIGReg (the default target) on the digits through the trainer: the loss falls below the collapsed value,
    and the encoder exports to vit-pytorch's ViT.

    At vit-pytorch's weights (1 and 1) a run this short only falls to that value: the invariance term pulls the
    projections together faster than SIGReg spreads them (the projector's L2 normalisation before its last Linear
    bounds their spread by that Linear's norm, small at init). With the invariance term weighted down
    (target_loss_weight=0.05) and a larger learning rate, SIGReg spreads the projections within 30 steps."""
    steps = 30
    config = objective_config('lejepa', total_steps=steps, eval_every=steps, checkpoint_every=steps,
                              learning_rate=3e-2, warmup_steps=10, log_every=1,
                              objective_kwargs=dict(SMALL_PROJECTOR, target_loss_weight=0.05))
    metrics = train_and_evaluate(config, tmp_path)
    curve = losses(tmp_path)
    assert set(metrics) == {'eval_loss'} and np.isfinite(metrics['eval_loss'])
    first, last = np.mean(curve[:5]), np.mean(curve[-5:])  # single steps' losses are noisy
    assert last < 0.8 * first and last < 0.9 * COLLAPSED_SIGREG, curve
    assert_exports_as_the_model(config, tmp_path)
