"""simple_vit_with_patch_dropout.SimpleViT beyond the registry configs: patch dropout in training against
vit-pytorch (its `torch.randn` replaying the Flax draw), inputs of other patch grids, scan == unrolled with dropped
patches, bad configs and inputs. The draw itself (layers.patch_dropout) is tested in test_vit_with_patch_dropout.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import parity
from tests.conftest import apply, assert_close_outputs, converted_pair, images, torch_forward
from tests.test_vit_with_patch_dropout import assert_training_matches_torch
from vit_flax import converters
from vit_flax.simple_vit_with_patch_dropout import SimpleViT


ENTRY = parity.BY_NAME['simple_vit_with_patch_dropout.SimpleViT']
TINY = ENTRY.configs[0]  # 16 x 16 images, 4 x 4 patches: 16 patches, 8 kept at the default rate 0.5


def test_training_drops_the_patches_torch_drops():
    x = images((2, 16, 16, 3))
    model, variables = assert_training_matches_torch(ENTRY, TINY, x)
    assert not np.allclose(apply(model, variables, x, train=True, rngs={'patch_dropout': jax.random.key(0)}),
                           apply(model, variables, x))  # the comparison saw dropped patches


@pytest.mark.parametrize('index, overrides, shape', [(0, {}, (3, 8, 20, 3)), (1, {}, (2, 24, 16, 1)),
                                                     (0, dict(patch_dropout=0.9), (2, 16, 16, 3))])
def test_training_gradients_match_torch(index, overrides, shape):
    x = images(shape, seed=1)
    for seed in range(2):
        assert_training_matches_torch(ENTRY, {**ENTRY.configs[index], **overrides}, x, seed=seed, gradients=True)


@pytest.mark.parametrize('shape', [(2, 8, 20, 3), (1, 4, 4, 3)])
def test_any_divisible_input_gets_its_own_embedding(shape):
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    x = images(shape)
    assert_close_outputs(apply(model, variables, x), torch_forward(torch_model, x), ENTRY.tolerance)


def test_scanned_training_drops_the_same_patches():
    model, variables, _ = converted_pair(ENTRY, TINY)
    scanned = SimpleViT(**TINY, scan_layers=True)
    scanned_variables = converters.from_torch(scanned, converters.to_torch(model, variables))
    x = images((2, 16, 16, 3))
    rngs = {'patch_dropout': jax.random.key(5)}
    assert_close_outputs(apply(scanned, scanned_variables, x, train=True, rngs=rngs),
                         np.asarray(apply(model, variables, x, train=True, rngs=rngs)), 1e-6)


@pytest.mark.parametrize('config, message', [
    (dict(patch_dropout=-0.1), r'SimpleViT: patch_dropout=-0.1 must be a probability in \[0, 1\)'),
    (dict(dim=30), 'multiple of 4 for the sin-cos embedding, got dim=30'),
    (dict(image_size=18), r'divisible by the patch size: image_size=\(18, 18\), patch_size=\(4, 4\)'),
])
def test_bad_configs_fail_at_construction(config, message):
    with pytest.raises(ValueError, match=message):
        SimpleViT(**{**TINY, **config})


def test_bad_inputs_name_the_shape():
    with pytest.raises(ValueError, match=r'image of size \(16, 18\) is not divisible by patch size \(4, 4\)'):
        jax.eval_shape(SimpleViT(**TINY).init, jax.random.key(0), jnp.zeros((1, 16, 18, 3)))
