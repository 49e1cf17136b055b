"""mae.py beyond the registry configs: loss and gradients against vit-pytorch under shared masks (vit-pytorch's
2-D pos_embedding breakage patched on the torch side only), also on the parity spec's random configurations, the
encoder's variables being a plain ViT's, the reconstruction method, bad configurations and modes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import parity
from tests.conftest import apply, images, init_variables, randomised_torch_model, torch_forward
from tests.objective_helpers import (
    check_encoder_exports, check_encoder_tree, check_gradients_on_random_configurations, check_loss_and_gradients,
    input_shape,
)
from vit_flax import mae, simple_vit, vit
from vit_flax.mae import MAE

ENTRY = parity.BY_NAME['mae.MAE']
CLS, MEAN = ENTRY.configs

# beyond the registry: a two-layer decoder on a cls-pool encoder whose dim equals decoder_dim (no enc_to_dec),
# single-head attention without output projection, the default masking ratio
BEYOND = dict(
    encoder=vit.ViT(image_size=(8, 12), patch_size=4, num_classes=4, dim=16, depth=2, heads=1, mlp_dim=16,
                    dim_head=16, channels=1),
    decoder_dim=16, decoder_depth=2, decoder_heads=2, decoder_dim_head=8,
)


# parity with vit-pytorch


def test_loss_and_gradients_match_torch_beyond_the_registry():
    check_loss_and_gradients(ENTRY, BEYOND, seed=3)


def test_smaller_input_takes_the_first_position_rows_as_torch_does():
    """A cls-pool encoder on 4 of its 16 patches: the rows after the cls row, in torch as here."""
    check_loss_and_gradients(ENTRY, CLS, x=images((2, 8, 8, 3), seed=1), seed=1)


def test_torch_mae_fails_on_a_cls_pool_vit_without_the_patch():
    torch_model = randomised_torch_model(ENTRY, CLS)
    with pytest.raises(RuntimeError):
        torch_forward(torch_model, images((1, 16, 16, 3)))


@pytest.mark.parametrize('config', [CLS, MEAN], ids=['cls', 'mean'])
def test_encoder_variables_have_a_plain_vits_tree(config):
    check_encoder_tree(MAE(**config))


def test_encoder_variables_export_to_torchs_vit():
    check_encoder_exports(MAE(**CLS))


# the reconstruction, for notebooks


def test_reconstruct_gives_the_predicted_patches_and_their_indices():
    model = MAE(**CLS)  # 16 patches of 4 x 4 x 3, 12 masked
    x = images((3, 16, 16, 3), seed=2)
    variables = init_variables(model)
    rngs = {'masking': jax.random.key(4)}
    pred, masked_indices = jax.jit(
        lambda v, r, x: model.apply(v, x, rngs=r, method=MAE.reconstruct))(variables, rngs, x)
    assert pred.shape == (3, 12, 4 * 4 * 3) and pred.dtype == jnp.float32
    assert masked_indices.shape == (3, 12) and jnp.issubdtype(masked_indices.dtype, jnp.integer)
    for row in np.asarray(masked_indices):
        assert len(set(row.tolist())) == 12 and row.min() >= 0 and row.max() < 16

    # the loss of the same call is the mean squared error of exactly these predictions
    patches = vit.patchify(x, 4, 3)
    target = np.take_along_axis(np.asarray(patches), np.asarray(masked_indices)[..., None], axis=1)
    loss = apply(model, variables, x, rngs=rngs)
    np.testing.assert_allclose(float(loss), float(np.mean((np.asarray(pred) - target) ** 2)), rtol=1e-5)

    # pasted back: the masked patches are the predictions, the rest is the image
    shown = np.asarray(jax.jit(mae.paste_patches, static_argnums=3)(x, pred, masked_indices, 4))
    assert shown.shape == x.shape
    shown_patches = np.asarray(vit.patchify(shown, 4, 3))
    np.testing.assert_array_equal(np.take_along_axis(shown_patches, np.asarray(masked_indices)[..., None], 1), pred)
    visible = np.ones((3, 16), bool)
    np.put_along_axis(visible, np.asarray(masked_indices), False, axis=1)
    np.testing.assert_array_equal(shown_patches[visible], np.asarray(patches)[visible])


# modes


def test_masks_come_from_the_masking_stream_and_dropout_only_in_training():
    config = dict(BEYOND, encoder=BEYOND['encoder'].clone(dropout=0.5))
    model = MAE(**config)
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
    # the noise a call draws is the one `masking_noise` returns
    noise = model.apply({}, x, rngs={'masking': k[0]}, method=MAE.masking_noise)
    assert noise.shape == (2, 6) and float(noise.min()) >= 0 and float(noise.max()) < 1


def test_defaults_are_vit_pytorchs():
    model = MAE(encoder=CLS['encoder'], decoder_dim=8)
    assert (model.masking_ratio, model.decoder_depth, model.decoder_heads, model.decoder_dim_head) == (0.75, 1, 8, 64)
    assert MAE.rng_streams == ('masking',)


# bad configurations and inputs


@pytest.mark.parametrize('ratio', [0, 1, -0.5, 1.5])
def test_masking_ratio_outside_zero_one_is_refused(ratio):
    with pytest.raises(ValueError, match=f'masking_ratio={ratio}'):
        MAE(encoder=CLS['encoder'], decoder_dim=8, masking_ratio=ratio)


def test_encoder_must_be_a_vit():
    encoder = simple_vit.SimpleViT(image_size=16, patch_size=4, num_classes=3, dim=16, depth=1, heads=2, mlp_dim=16)
    with pytest.raises(ValueError, match='vit_flax.simple_vit.SimpleViT'):
        MAE(encoder=encoder, decoder_dim=8)


def test_masking_no_patch_and_too_large_inputs_are_refused():
    model = MAE(encoder=vit.ViT(image_size=8, patch_size=4, num_classes=0, dim=8, depth=1, heads=1, mlp_dim=8,
                                dim_head=8), decoder_dim=8, masking_ratio=0.2)
    with pytest.raises(ValueError, match=r'int\(0.2 \* 4\) = 0 of the 4 patches'):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    model = MAE(**CLS)
    with pytest.raises(ValueError, match=r'input of size \(16, 20\) gives 20 patches, more than the 16'):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 20, 3)))
    with pytest.raises(ValueError, match='expected 3 channels'):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 2)))


# the parity spec's random configurations (slow): tests/test_random_configurations.py compares their loss, this the
# gradients too


@pytest.mark.slow
def test_gradients_match_torch_on_random_configurations():
    check_gradients_on_random_configurations(ENTRY)
