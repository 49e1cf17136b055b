"""mpp.MPP, the masked patch prediction objective, beyond the registry's parity tests: loss and gradients against
vit-pytorch under shared draws (ImageNet-style targets, a smaller input, training mode, the parity spec's random
configurations), the corruption's probabilities, the quantised targets against torch's MPPLoss, the 'masking'
stream, the encoder's parameters being a plain vit.ViT's, the converters' aliases, vit-pytorch's breakage, bad
configs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import parity
from vit_flax import converters
from tests.conftest import (assert_close_outputs, converted_pair, float64_reference, images, init_variables, nchw,
                            torch_class, torch_forward)
from tests.objective_helpers import check_gradients_on_random_configurations, check_loss_and_gradients
from vit_flax import mpp, registry, vit
from vit_flax.mpp import MPP

ENTRY = parity.BY_NAME['mpp.MPP']
# the weights vit-pytorch computes no gradient for but round-off get exactly none here
ZERO_BOUND = 0.0
TOL = ENTRY.tolerance
TINY = ENTRY.configs[0]  # 16x16x3 images, 4x4 patches (16), cls pool, bits 3 (512 classes), mask_prob 0.15
MEAN_POOL = ENTRY.configs[1]  # 8x12x1 images (6 patches), mean pool, bits 2, random patches, normalised targets


def torch_mpp():
    return converters.import_vit_pytorch('vit_pytorch.mpp')


IMAGENET = dict(
    transformer=vit.ViT(image_size=(8, 16), patch_size=4, num_classes=0, dim=16, depth=1, heads=2, mlp_dim=16,
                        dim_head=8),
    patch_size=4, dim=16, max_pixel_val=255.0, mean=(123.7, 116.3, 103.5), std=(58.4, 57.1, 57.4),
    mask_prob=0.4, replace_prob=0.2, random_patch_prob=0.3,
)


@pytest.mark.parametrize('config, size, train', [
    # targets in 0..255 after undoing an ImageNet-style normalisation; training mode (no dropout)
    (IMAGENET, (8, 16), True),
    # an input smaller than image_size (cls pool: the first 7 position embeddings)
    (TINY, (8, 12), False),
], ids=['imagenet-targets', 'smaller-input'])
def test_loss_and_gradients_match_torch_given_the_same_draws(config, size, train):
    x = images((3, *size, MPP(**config).channels), seed=1)
    check_loss_and_gradients(ENTRY, config, x, seed=4, train=train, zero_bound=ZERO_BOUND)


def test_corruption_has_the_stated_probabilities():
    """Of the chosen ceil(mask_prob * n) patches per image, replace_prob become the mask token, random_patch_prob
    another patch of the same image (or itself, 1 / n of those), the rest stay."""
    batch, n, mask_prob, replace_prob, random_patch_prob = 4000, 10, 0.5, 0.3, 0.45
    model = MPP(transformer=vit.ViT(image_size=(4, 40), patch_size=4, num_classes=0, dim=8, depth=1, heads=1,
                                    mlp_dim=8), patch_size=4, dim=8, channels=3)
    draws = model.apply({}, jnp.zeros((batch, 4, 40, 3)), rngs={'masking': jax.random.key(0)},
                        method=MPP.masking_draws)
    patches = jnp.broadcast_to(jnp.arange(n, dtype=jnp.float32)[None, :, None], (batch, n, 2))
    token = jnp.full((1, 1, 2), -1.0)
    corrupted, mask = jax.jit(mpp.corrupt_patches, static_argnums=(3, 4, 5))(
        patches, token, draws, mask_prob, replace_prob, random_patch_prob)
    corrupted, mask, patches = np.asarray(corrupted[..., 0]), np.asarray(mask), np.asarray(patches[..., 0])

    np.testing.assert_array_equal(mask.sum(axis=1), 5)
    np.testing.assert_array_equal(corrupted[~mask], patches[~mask])  # patches not chosen are never touched
    chosen, original = corrupted[mask], patches[mask]
    standard_error = np.sqrt(0.25 / chosen.size)
    assert abs((chosen == -1).mean() - replace_prob) < 5 * standard_error
    moved = (chosen != -1) & (chosen != original)
    assert abs(moved.mean() - random_patch_prob * (1 - 1 / n)) < 5 * standard_error


@pytest.mark.parametrize('bits, max_pixel_val, mean, std', [
    (3, 1.0, None, None),
    (2, 255.0, (120.0, 110.0), (60.0, 50.0)),
    (1, 0.7, (0.5,), (0.2,)),
    (3, 1.0, (0.5, 0.5), None),  # torch un-normalises only when both are given
])
def test_quantised_targets_and_loss_match_torch_mpp_loss(bits, max_pixel_val, mean, std):
    rng = np.random.default_rng(bits)
    b, p, c, h, w = 3, 2, 2, 6, 8
    n, classes = (h // p) * (w // p), 2 ** (bits * c)
    target = (rng.standard_normal((b, h, w, c), dtype=np.float32) * (max_pixel_val if mean is None else 1.0)
              + (0.5 * max_pixel_val if mean is None else 0.0))
    predicted = rng.standard_normal((b, n, classes), dtype=np.float32)
    mask = rng.random((b, n)) < 0.5
    mask[:, 0] = True

    loss = mpp.MPPLoss(p, c, bits, max_pixel_val, mean, std)
    flax_loss = loss.apply({}, predicted, target, mask)
    torch_loss_fn = torch_mpp().MPPLoss(p, c, bits, max_pixel_val, mean and list(mean), std and list(std))
    torch_loss = float64_reference(torch_loss_fn)(torch.from_numpy(predicted).double(), nchw(target),
                                                  torch.from_numpy(mask))
    assert_close_outputs(flax_loss, torch_loss, TOL)


def test_masking_stream_drives_every_draw_and_dropout_only_in_training():
    config = {**TINY, 'transformer': TINY['transformer'].clone(dropout=0.1, emb_dropout=0.1)}
    model, variables, _ = converted_pair(ENTRY, config)
    x = images((2, 16, 16, 3))
    run = jax.jit(lambda masking, dropout, train: model.apply(
        variables, x, train=train, rngs={'masking': jax.random.key(masking), 'dropout': jax.random.key(dropout)}),
        static_argnums=2)

    with pytest.raises(ValueError, match="'masking' rng stream"):
        model.apply(variables, x, rngs={'dropout': jax.random.key(0)})
    same = run(0, 5, False)
    assert run(0, 6, False) == same  # eval mode: the masks alone are random
    assert run(1, 5, False) != same
    trained = run(0, 5, True)
    assert trained != same and run(0, 6, True) != trained and run(0, 5, True) == trained
    assert MPP.rng_streams == ('masking',)


def test_encoder_params_are_a_plain_vit_and_export_to_torch():
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    encoder = TINY['transformer']
    plain = init_variables(encoder)
    assert jax.tree_util.tree_map(jnp.shape, variables['params']['transformer']) == \
        jax.tree_util.tree_map(jnp.shape, plain['params'])
    assert set(variables['params']) == {'transformer', 'mask_token', 'to_bits'}

    # params['transformer'] is what vit-pytorch's encoder inside MPP holds
    state_dict = converters.to_torch(encoder, {'params': variables['params']['transformer']})
    torch_vit = torch_class(parity.BY_NAME['vit.ViT'])(**registry.torch_kwargs(encoder)).eval()
    torch_vit.load_state_dict(state_dict, strict=True)
    for key, tensor in torch_model.transformer.state_dict().items():
        assert torch.equal(state_dict[key], tensor), key
    x = images((2, 16, 16, 3), seed=3)
    assert_close_outputs(jax.jit(encoder.apply)({'params': variables['params']['transformer']}, x),
                         torch_forward(torch_vit, x), TOL)


def test_converters_write_and_check_the_shared_patch_embedding():
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    state_dict = converters.to_torch(model, variables)
    assert state_dict.keys() == torch_model.state_dict().keys()
    for i in (1, 2, 3):
        for leaf in ('weight', 'bias'):
            assert torch.equal(state_dict[f'patch_to_emb.0.{i}.{leaf}'],
                               state_dict[f'transformer.to_patch_embedding.{i}.{leaf}'])

    without_aliases = {k: v for k, v in state_dict.items() if not k.startswith('patch_to_emb.')}
    back = converters.from_torch(model, without_aliases)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda a, b: bool((a == b).all()), back, variables))

    broken = dict(state_dict, **{'patch_to_emb.0.2.bias': state_dict['patch_to_emb.0.2.bias'] + 1})
    with pytest.raises(ValueError, match='patch_to_emb.0.2.bias .* transformer.to_patch_embedding.2.bias'):
        converters.from_torch(model, broken)


def test_vit_pytorch_fails_without_the_fix():
    """vit-pytorch 1.26.11's MPP cannot run on its own ViT (2-D cls_token); with pool='mean' its `[:, 1:]` also
    drops a patch's prediction. `torch_mpp_runs` is the smallest patch; it leaves the state dict alone."""
    _, _, torch_model = converted_pair(ENTRY, TINY)
    x = nchw(images((1, 16, 16, 3)), dtype=torch.float32)  # vit-pytorch's own failure, as users run it
    with pytest.raises(Exception, match='dim'):  # einops: '() n d' on a 2-D tensor
        torch_model(x)
    keys = list(torch_model.state_dict())
    with parity.mpp.torch_mpp_runs():
        assert torch.isfinite(torch_model(x))
    assert list(torch_model.state_dict()) == keys and 'cls_token' not in vars(torch_model.transformer)


def test_mean_pool_smaller_input_works_where_torch_fails():
    model, variables, _ = converted_pair(ENTRY, MEAN_POOL)
    loss = jax.jit(model.apply)(variables, images((2, 8, 8, 1)), rngs={'masking': jax.random.key(0)})
    assert np.isfinite(float(loss))


VALID = dict(transformer=TINY['transformer'], patch_size=4, dim=16)


@pytest.mark.parametrize('overrides, message', [
    (dict(transformer=parity.BY_NAME['simple_vit.SimpleViT'].build(0)), 'transformer must be a vit_flax.vit.ViT'),
    (dict(patch_size=8), r"patch_size must be the transformer's, got patch_size=8"),
    (dict(dim=32), r'got dim=32'),
    (dict(channels=1), r'got channels=1'),
    (dict(mask_prob=0.0), r'mask_prob=0.0'),
    (dict(mask_prob=1.5), r'mask_prob=1.5'),
    (dict(replace_prob=-0.1), r'replace_prob=-0.1'),
    (dict(random_patch_prob=-0.5), r'random_patch_prob=-0.5'),
    (dict(replace_prob=0.7, random_patch_prob=0.5), r'replace_prob=0.7, random_patch_prob=0.5'),
    (dict(replace_prob=1.0, random_patch_prob=1e-12), r'needs replace_prob < 1'),
    (dict(output_channel_bits=0), r'output_channel_bits=0'),
    (dict(max_pixel_val=0.0), r'max_pixel_val=0.0'),
    (dict(mean=(0.1, 0.2)), r'mean=\(0.1, 0.2\)'),
    (dict(std=0.5), r'std=0.5'),
])
def test_bad_configs_raise_naming_the_value(overrides, message):
    with pytest.raises(ValueError, match=message):
        MPP(**{**VALID, **overrides})


def test_bad_inputs_raise_naming_the_shape():
    model, variables, _ = converted_pair(ENTRY, TINY)
    loss_shape = lambda shape: jax.eval_shape(  # traced only: the checks run before anything is computed
        lambda x: model.apply(variables, x, rngs={'masking': jax.random.key(0)}),
        jax.ShapeDtypeStruct(shape, jnp.float32))
    assert loss_shape((1, 12, 8, 3)).shape == ()
    with pytest.raises(ValueError, match='expected 3 channels'):
        loss_shape((1, 16, 16, 1))
    with pytest.raises(ValueError, match='not divisible by patch size'):
        loss_shape((1, 16, 14, 3))
    with pytest.raises(ValueError, match='more than the 17 position embeddings'):
        loss_shape((1, 20, 16, 3))


# the parity spec's random configurations (slow): tests/test_random_configurations.py compares their loss, this the
# gradients too


@pytest.mark.slow
def test_gradients_match_torch_on_random_configurations():
    check_gradients_on_random_configurations(ENTRY, zero_bound=ZERO_BOUND)
