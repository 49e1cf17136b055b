"""mp3.MP3, the masked position prediction objective, beyond the registry's parity tests: loss and gradients
against vit-pytorch under shared masking draws (smaller inputs, no masked token, training mode), the masking
stream, the encoder's parameters being a plain mp3.ViT's, bad configs and inputs (random configurations:
parity.mp3)."""

import jax
import numpy as np
import pytest

import parity
from vit_flax import converters
from tests.conftest import apply, assert_close_outputs, images, init_variables, torch_class, torch_forward
from tests.objective_helpers import check_loss_and_gradients
from vit_flax import mp3, registry, vit
from vit_flax.mp3 import MP3, ViT

ENTRY = parity.BY_NAME['mp3.MP3']
# every weight of MP3 gets a gradient: none may be zero but for round-off
ZERO_BOUND = None
VIT_ENTRY = parity.BY_NAME['mp3.ViT']
TINY = ENTRY.configs[0]  # 16x16 images, 4x4 patches (16 tokens), dim 32, depth 2, masking_ratio 0.5


@pytest.mark.parametrize('config, size, train', [
    # another grid, one channel, no classes in the encoder's unused head; training mode (no dropout)
    (dict(vit=ViT(num_classes=0, image_size=(8, 12), patch_size=(2, 4), dim=12, depth=2, heads=3, mlp_dim=16,
                  dim_head=4, channels=1), masking_ratio=0.3), (8, 12), True),
    # an input smaller than image_size: 6 tokens, labels 0..5 of 16 classes
    (TINY, (8, 12), False),
    # int(0.05 * 16) = 0 masked tokens: every token is context
    ({**TINY, 'masking_ratio': 0.05}, (16, 16), False),
], ids=['grid', 'smaller-input', 'none-masked'])
def test_loss_and_gradients_match_torch_given_the_same_draw(config, size, train):
    x = images((3, *size, config['vit'].channels), seed=1)
    check_loss_and_gradients(ENTRY, config, x, seed=4, train=train, zero_bound=ZERO_BOUND)


def test_masking_stream_even_in_eval_mode():
    model = ENTRY.build(0)
    variables = init_variables(model)
    x = images((2, 16, 16, 3))
    loss = lambda seed: float(apply(model, variables, x, rngs={mp3.MASKING: jax.random.key(seed)}))
    assert loss(1) == loss(1) and loss(1) != loss(2)
    assert MP3.rng_streams == ('masking',)
    with pytest.raises(Exception, match='masking'):
        model.apply(variables, x)  # torch draws in every forward: so does the port, from its own stream

    # the draw needs no parameters: uniform noise (batch, tokens) whose argsort is the permutation
    noise = model.apply({}, x, rngs={mp3.MASKING: jax.random.key(1)}, method=MP3.masking_noise)
    assert noise.shape == (2, 16) and 0 <= noise.min() and noise.max() < 1
    assert len(np.unique(np.asarray(noise))) == 32


def test_dropout_only_in_training():
    model = ENTRY.build(1)  # the encoder has dropout=0.1
    variables = init_variables(model)
    x = images((2, 12, 16, 2))
    masking = {mp3.MASKING: jax.random.key(3)}
    eval_loss = apply(model, variables, x, rngs=masking)
    train = lambda seed: apply(model, variables, x, train=True, rngs={**masking, 'dropout': jax.random.key(seed)})
    np.testing.assert_array_equal(train(1), train(1))
    assert train(1) != train(2) and train(1) != eval_loss
    with pytest.raises(Exception, match='dropout'):
        model.apply(variables, x, train=True, rngs=masking)


def test_encoder_params_are_a_plain_vits_and_export_to_torch():
    model = ENTRY.build(0)
    variables = init_variables(model, seed=1)
    encoder = model.vit
    plain = jax.eval_shape(encoder.init, jax.random.key(0), np.zeros((1, 16, 16, 3), np.float32))['params']
    shapes = lambda tree: jax.tree_util.tree_map(lambda a: a.shape, tree)
    assert shapes(variables['params']['vit']) == shapes(plain)
    assert set(variables['params']) == {'vit', 'mlp_head_0', 'mlp_head_1'}
    assert variables['params']['mlp_head_1']['kernel'].shape == (32, 16)  # one class per position

    state_dict = converters.to_torch(encoder, {'params': variables['params']['vit']})
    torch_vit = torch_class(VIT_ENTRY)(**registry.torch_kwargs(encoder)).eval()
    torch_vit.load_state_dict(state_dict, strict=True)
    x = images((2, 16, 16, 3), seed=2)
    assert_close_outputs(apply(encoder, {'params': variables['params']['vit']}, x), torch_forward(torch_vit, x),
                         VIT_ENTRY.tolerance)
    # and it is the `vit.` part of the whole objective's state dict
    whole = converters.to_torch(model, variables)
    assert {f'vit.{key}' for key in state_dict} == {key for key in whole if key.startswith('vit.')}


@pytest.mark.parametrize('ratio', [0, 1, -0.5, 1.5])
def test_masking_ratio_outside_zero_one_is_refused(ratio):
    with pytest.raises(AssertionError):  # as torch's assert
        torch_class(ENTRY)(vit=converters.torch_keywords(dict(vit=TINY['vit']))['vit'], masking_ratio=ratio)
    with pytest.raises(ValueError, match=f'masking_ratio={ratio}'):
        MP3(vit=TINY['vit'], masking_ratio=ratio)


def test_encoder_must_be_an_mp3_vit():
    other = vit.ViT(image_size=16, patch_size=4, num_classes=10, dim=32, depth=1, heads=4, mlp_dim=64)
    with pytest.raises(ValueError, match='vit_flax.vit.ViT'):
        MP3(vit=other, masking_ratio=0.5)


@pytest.mark.parametrize('shape, message', [
    ((1, 20, 16, 3), r'shape \(1, 20, 16, 3\) has 20 patches, more than the 16 positions'),
    ((1, 16, 16, 1), r'expected 3 channels \(channels-last input\), got shape \(1, 16, 16, 1\)'),
    ((16, 16, 3), r'expected images of shape \(batch, height, width, channels\)'),
    ((1, 14, 16, 3), r'image of size \(14, 16\) is not divisible by patch size \(4, 4\)'),
])
def test_bad_inputs_name_the_shape(shape, message):
    with pytest.raises(ValueError, match=message):
        ENTRY.build(0).init(jax.random.key(0), np.zeros(shape, np.float32))


def test_more_patches_than_positions_fails_in_torch_too():
    torch_model = torch_class(ENTRY)(**converters.torch_keywords(TINY)).eval()
    with pytest.raises((IndexError, RuntimeError)):
        torch_forward(torch_model, images((1, 20, 16, 3)))  # labels up to 19 for 16 classes
