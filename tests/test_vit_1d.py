"""vit_1d.ViT beyond the registry configs: the registry's Series input, shorter series, vit-pytorch's own example,
scan == unrolled, bad configs and inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import parity
from tests.conftest import apply, assert_close_outputs, converted_pair, images, run_torch
from vit_flax import converters, registry
from vit_flax.vit_1d import ViT


ENTRY = parity.BY_NAME['vit_1d.ViT']
TINY = ENTRY.configs[0]  # seq_len 32 in patches of 4, 3 channels


def test_series_are_channels_last_and_torch_takes_them_channels_first():
    model = ViT(**TINY)
    (series,) = registry.example_inputs(model, batch=2, rng=np.random.default_rng(0))
    assert series.shape == (2, 32, 3)
    (torch_series,) = ENTRY.inputs.to_torch_layout((series,))
    np.testing.assert_array_equal(torch_series, np.moveaxis(series, -1, 1))


@pytest.mark.parametrize('length', [4, 20])
def test_a_shorter_series_slices_the_position_embedding(length):
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    x = images((2, length, 3))
    assert_close_outputs(apply(model, variables, x), run_torch(ENTRY, torch_model, (x,)), ENTRY.tolerance)


def test_vit_pytorchs_example():
    """vit_1d.py's `__main__`: 4 series of 3 channels and 256 steps, (4, 1000) logits."""
    model = ViT(seq_len=256, patch_size=16, num_classes=1000, dim=1024, depth=6, heads=8, mlp_dim=2048, dropout=0.1,
                emb_dropout=0.1)
    series = jnp.zeros((4, 256, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), series)
    assert jax.eval_shape(lambda v: model.apply(v, series), variables).shape == (4, 1000)
    torch.manual_seed(0)
    torch_state = converters.torch_model('vit_1d.ViT', registry.torch_kwargs(model)).state_dict()
    assert set(converters.to_torch(model, jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), variables))) \
        == set(torch_state)


def test_scanned_equals_unrolled_in_training():
    config = ENTRY.configs[1]  # dropout 0.1
    model, variables, _ = converted_pair(ENTRY, config)
    scanned = ViT(**config, scan_layers=True)
    scanned_variables = converters.from_torch(scanned, converters.to_torch(model, variables))
    x = images((2, 24, 1))
    assert_close_outputs(apply(scanned, scanned_variables, x), np.asarray(apply(model, variables, x)), 1e-6)
    train = lambda m, v, seed: apply(m, v, x, train=True, rngs={'dropout': jax.random.key(seed)})
    np.testing.assert_array_equal(train(scanned, scanned_variables, 1), train(scanned, scanned_variables, 1))
    assert not np.allclose(train(scanned, scanned_variables, 1), train(scanned, scanned_variables, 2))


def test_bad_configs_fail_at_construction():
    with pytest.raises(ValueError, match='seq_len must be divisible by the patch size: seq_len=30, patch_size=4'):
        ViT(**{**TINY, 'seq_len': 30})
    with pytest.raises(ValueError, match='ViT: seq_len=0 must be a positive integer'):
        ViT(**{**TINY, 'seq_len': 0})


@pytest.mark.parametrize('shape, message', [
    ((1, 36, 3), r'series of length 36 gives more patches than the position embedding of seq_len=32'),
    ((1, 30, 3), 'series of length 30 is not divisible by patch size 4'),
    ((1, 32, 1), r'expected 3 channels \(channels-last input\), got shape \(1, 32, 1\)'),
    ((1, 32, 32, 3), r'expected series of shape \(batch, seq_len, channels\)'),
])
def test_bad_inputs_name_the_shape(shape, message):
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(ViT(**TINY).init, jax.random.key(0), jnp.zeros(shape))
