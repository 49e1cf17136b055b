"""mae.py beyond the registry configs: loss and gradients against vit-pytorch under shared masks (vit-pytorch's
2-D pos_embedding breakage patched on the torch side only), the encoder's variables being a plain ViT's, the
reconstruction method, bad configurations and modes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import parity
from vit_flax import converters
from tests.conftest import (apply, float64_reference, images, init_variables, nchw, randomised_torch_model,
                            torch_forward, truly_zero)
from vit_flax import mae, registry, simple_vit, vit
from vit_flax.layers import pair
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


def input_shape(model, batch=2):
    return (batch, *pair(model.image_size), model.channels)


def torch_loss_and_grads(entry, torch_model, x, draws):
    """vit-pytorch's exact (float64) loss and parameter gradients on `x` under the masks `draws` makes."""
    exact = float64_reference(torch_model)
    with draws, entry.torch_context():
        loss = exact(nchw(x))
    loss.backward()
    grads = {name: np.zeros(p.shape) if p.grad is None else p.grad.numpy() for name, p in exact.named_parameters()}
    return float(loss.detach()), grads


def check_loss_and_gradients(entry, config, x=None, seed=0):
    """The objective's loss and its gradients for every weight equal vit-pytorch's exact ones under the same masks
    (the registry's tolerance; gradients relative 1e-4, truly-zero gradients told apart as tests/test_parity.py
    does). Returns the Flax model and variables."""
    torch_model = randomised_torch_model(entry, config, seed)
    model = entry.flax_class(**config)
    variables = converters.from_torch(model, torch_model.state_dict())
    x = images(input_shape(model), seed) if x is None else x
    rngs, draws = entry.same_draws(model, (x,), seed)
    torch_loss, expected = torch_loss_and_grads(entry, torch_model, x, draws)

    loss_fn = lambda params: model.apply({**variables, 'params': params}, x, rngs=rngs)  # noqa: E731
    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(variables['params'])
    assert abs(float(loss) - torch_loss) <= entry.tolerance * max(1.0, abs(torch_loss)), (float(loss), torch_loss)

    flax_grads = converters.to_torch(model, {**variables, 'params': grads}, as_numpy=True)
    largest = max(float(np.abs(g).max(initial=0.0)) for g in expected.values())
    for name, expected_grad in expected.items():
        if truly_zero(expected_grad, largest):  # unused, or removed by a norm
            assert np.abs(flax_grads[name]).max(initial=0.0) <= 1e-5 * largest, name
            continue
        scale = float(np.abs(expected_grad).max())
        np.testing.assert_allclose(flax_grads[name], expected_grad, rtol=1e-4, atol=1e-4 * scale, err_msg=name)
    return model, variables


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


def check_encoder_tree(model):
    """params['encoder'] has a plain vit.ViT's tree (its head and cls token included)."""
    x = jnp.zeros(input_shape(model, batch=1))
    variables = jax.eval_shape(model.init, registry.init_rngs(jax.random.key(0)), x)
    plain = jax.eval_shape(model.encoder.init, jax.random.key(0), x)
    shapes = lambda tree: jax.tree_util.tree_map(lambda a: a.shape, tree)  # noqa: E731
    assert shapes(variables['params']['encoder']) == shapes(plain['params'])


@pytest.mark.parametrize('config', [CLS, MEAN], ids=['cls', 'mean'])
def test_encoder_variables_have_a_plain_vits_tree(config):
    check_encoder_tree(MAE(**config))


def check_encoder_exports(model):
    """params['encoder'] loads strict into vit-pytorch's ViT with the same logits, and equals the encoder part of
    the objective's own export (where torch's second names of the patch embedding, `patch_to_emb`, hold the same)."""
    x = images(input_shape(model, batch=2))
    variables = init_variables(model)
    encoder, encoder_variables = model.encoder, {'params': variables['params']['encoder']}
    state_dict = converters.to_torch(encoder, encoder_variables)
    torch_encoder = converters.import_vit_pytorch('vit_pytorch.vit').ViT(**registry.torch_kwargs(encoder)).eval()
    torch_encoder.load_state_dict(state_dict, strict=True)
    out, torch_out = np.asarray(apply(encoder, encoder_variables, x)), torch_forward(torch_encoder, x).numpy()
    np.testing.assert_allclose(out, torch_out, rtol=0, atol=2e-5 * max(1.0, float(np.abs(torch_out).max())))

    full = converters.to_torch(model, variables)
    for key, tensor in state_dict.items():
        assert torch.equal(full[f'encoder.{key}'], tensor), key
    for i in range(3):
        assert torch.equal(full[f'patch_to_emb.{i}.weight'], full[f'encoder.to_patch_embedding.{i + 1}.weight'])


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
    assert mae.RNG_STREAMS == ('masking',)


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


# random configurations (slow)


def random_encoder(rng):
    """A random small vit.ViT of either pool, 4 to 9 patches of 1 to 3 pixels a side."""
    patch = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    grid = (int(rng.integers(2, 4)), int(rng.integers(2, 4)))
    return vit.ViT(image_size=(grid[0] * patch[0], grid[1] * patch[1]), patch_size=patch,
                   num_classes=int(rng.integers(0, 5)), dim=int(rng.integers(4, 25)), depth=int(rng.integers(1, 3)),
                   heads=int(rng.integers(1, 4)), mlp_dim=int(rng.integers(4, 33)), dim_head=int(rng.integers(2, 9)),
                   channels=int(rng.integers(1, 4)), pool=('cls', 'mean')[int(rng.integers(2))])


def random_config(rng):
    return dict(encoder=random_encoder(rng), decoder_dim=int(rng.integers(4, 25)),
                masking_ratio=float(rng.uniform(0.3, 0.9)),
                decoder_depth=int(rng.integers(1, 3)), decoder_heads=int(rng.integers(1, 4)),
                decoder_dim_head=int(rng.integers(2, 9)))


@pytest.mark.parametrize('seed', range(6))
def test_parity_on_random_configurations(seed):
    check_loss_and_gradients(ENTRY, random_config(np.random.default_rng(seed)), seed=seed)
