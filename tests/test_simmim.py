"""simmim.py beyond the registry configs: loss and gradients against vit-pytorch under shared masks (vit-pytorch's
2-D pos_embedding breakage patched on the torch side only), also on the parity spec's random configurations, the
encoder's variables being a plain ViT's, bad configurations and modes."""

import jax
import numpy as np
import pytest

import parity
from tests.conftest import apply, images, init_variables, randomised_torch_model, torch_forward
from tests.objective_helpers import (
    check_encoder_exports, check_encoder_tree, check_gradients_on_random_configurations, check_loss_and_gradients,
    input_shape,
)
from vit_flax import simple_vit, vit
from vit_flax.simmim import SimMIM

ENTRY = parity.BY_NAME['simmim.SimMIM']
CLS, MEAN = ENTRY.configs

# beyond the registry: single-head attention without output projection, non-square patches, the default ratio
BEYOND = dict(encoder=vit.ViT(image_size=(8, 12), patch_size=(2, 4), num_classes=4, dim=16, depth=2, heads=1,
                              mlp_dim=16, dim_head=16, channels=1))


# parity with vit-pytorch


def test_loss_and_gradients_match_torch_beyond_the_registry():
    check_loss_and_gradients(ENTRY, BEYOND, seed=3)


def test_mean_pool_smaller_input_takes_the_first_position_rows():
    """A mean-pool encoder on 8 of its 12 patches: its first 8 rows (torch: after the zero row standing in for the
    cls row it lacks)."""
    check_loss_and_gradients(ENTRY, MEAN, x=images((2, 8, 8, 2), seed=1), seed=1)


@pytest.mark.parametrize('config', [CLS, MEAN], ids=['cls', 'mean'])
def test_torch_simmim_fails_on_its_vit_without_the_patch(config):
    torch_model = randomised_torch_model(ENTRY, config)
    with pytest.raises(RuntimeError):
        torch_forward(torch_model, images(input_shape(SimMIM(**config), batch=1)))


@pytest.mark.parametrize('config', [CLS, MEAN], ids=['cls', 'mean'])
def test_encoder_variables_have_a_plain_vits_tree(config):
    check_encoder_tree(SimMIM(**config))


def test_encoder_variables_export_to_torchs_vit():
    check_encoder_exports(SimMIM(**CLS))


# modes


def test_masks_come_from_the_masking_stream_and_dropout_only_in_training():
    model = SimMIM(encoder=BEYOND['encoder'].clone(dropout=0.5))
    x = images(input_shape(model), seed=5)
    variables = init_variables(model)
    run = lambda masking, dropout, train: apply(  # noqa: E731
        model, variables, x, train=train, rngs={'masking': masking, 'dropout': dropout})
    k = jax.random.split(jax.random.key(1), 3)

    eval_loss = run(k[0], k[1], False)
    assert run(k[0], k[2], False) == eval_loss  # eval: no dropout, the masks alone decide
    assert run(k[1], k[1], False) != eval_loss  # another masking key, other masks
    train_loss = run(k[0], k[1], True)
    assert train_loss != eval_loss and run(k[0], k[2], True) != train_loss
    assert run(k[0], k[1], True) == train_loss
    noise = model.apply({}, x, rngs={'masking': k[0]}, method=SimMIM.masking_noise)
    assert noise.shape == (2, 12) and float(noise.min()) >= 0 and float(noise.max()) < 1


def test_defaults_are_vit_pytorchs():
    assert SimMIM(encoder=CLS['encoder']).masking_ratio == 0.5
    assert SimMIM.rng_streams == ('masking',)


# bad configurations and inputs


@pytest.mark.parametrize('ratio', [0, 1, -0.5, 1.5])
def test_masking_ratio_outside_zero_one_is_refused(ratio):
    with pytest.raises(ValueError, match=f'masking_ratio={ratio}'):
        SimMIM(encoder=CLS['encoder'], masking_ratio=ratio)


def test_encoder_must_be_a_vit():
    encoder = simple_vit.SimpleViT(image_size=16, patch_size=4, num_classes=3, dim=16, depth=1, heads=2, mlp_dim=16)
    with pytest.raises(ValueError, match='vit_flax.simple_vit.SimpleViT'):
        SimMIM(encoder=encoder)


def test_masking_no_patch_and_too_large_inputs_are_refused():
    model = SimMIM(encoder=vit.ViT(image_size=8, patch_size=4, num_classes=0, dim=8, depth=1, heads=1, mlp_dim=8,
                                   dim_head=8), masking_ratio=0.2)
    with pytest.raises(ValueError, match=r'int\(0.2 \* 4\) = 0 of the 4 patches'):
        jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 8, 8, 3), np.float32))
    model = SimMIM(**CLS)
    with pytest.raises(ValueError, match=r'input of size \(20, 16\) gives 20 patches, more than the 16'):
        jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 20, 16, 3), np.float32))


# the parity spec's random configurations (slow): tests/test_random_configurations.py compares their loss, this the
# gradients too


@pytest.mark.slow
def test_gradients_match_torch_on_random_configurations():
    check_gradients_on_random_configurations(ENTRY)
