"""simple_vit_with_register_tokens.SimpleViT beyond the registry configs: the registers' parameter and attention
maps, layers.append_register_tokens / drop_register_tokens, scan == unrolled, bad configs and inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import parity
from tests.conftest import apply, assert_close_outputs, converted_pair, images
from vit_flax import converters, layers
from vit_flax.recorder import Recorder
from vit_flax.simple_vit_with_register_tokens import SimpleViT


ENTRY = parity.BY_NAME['simple_vit_with_register_tokens.SimpleViT']
TINY = ENTRY.configs[0]  # 16 patches, 4 registers


def test_registers_are_attended_with_and_dropped_before_pooling():
    model = SimpleViT(**TINY)
    x = jnp.zeros((2, 16, 16, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    assert variables['params']['register_tokens'].shape == (4, 32)
    _, maps = jax.eval_shape(lambda v: Recorder(model).apply(v, x), variables)
    assert maps.shape == (2, 1, 4, 20, 20)  # (batch, depth, heads, patches + registers, patches + registers)


def test_append_then_drop_is_the_identity():
    class Registers(layers.nn.Module):
        @layers.nn.compact
        def __call__(self, x):
            y = layers.append_register_tokens(self, x, 3)
            return y, layers.drop_register_tokens(y, 3)

    x = jnp.asarray(images((2, 5, 8)))
    (y, back), variables = Registers().init_with_output(jax.random.key(0), x)
    tokens = variables['params']['register_tokens']
    assert y.shape == (2, 8, 8) and tokens.shape == (3, 8)
    np.testing.assert_array_equal(back, x)
    np.testing.assert_array_equal(y[1, 5:], tokens)


def test_scanned_equals_unrolled():
    model, variables, _ = converted_pair(ENTRY, ENTRY.configs[1])
    scanned = SimpleViT(**ENTRY.configs[1], scan_layers=True)
    scanned_variables = converters.from_torch(scanned, converters.to_torch(model, variables))
    x = images((2, 24, 16, 1))
    assert_close_outputs(apply(scanned, scanned_variables, x), np.asarray(apply(model, variables, x)), 1e-6)


def test_bad_configs_fail_at_construction():
    with pytest.raises(ValueError, match='SimpleViT: num_register_tokens=-1 must be a non-negative integer'):
        SimpleViT(**{**TINY, 'num_register_tokens': -1})
    with pytest.raises(ValueError, match='multiple of 4 for the sin-cos embedding, got dim=30'):
        SimpleViT(**{**TINY, 'dim': 30})


def test_inputs_must_give_the_configured_patch_count():
    with pytest.raises(ValueError, match=r'input of size \(8, 16\) gives 8 patches, but the position embedding'):
        jax.eval_shape(SimpleViT(**TINY).init, jax.random.key(0), jnp.zeros((1, 8, 16, 3)))
