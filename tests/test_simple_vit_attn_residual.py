"""simple_vit_attn_residual.SimpleViTAttnResidual beyond the registry configs: vit-pytorch's `return_history` and
`history` arguments (its file's example), the disabled first residual, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import parity
from tests.conftest import assert_close_outputs, converted_pair, float64_reference, images, nchw
from vit_flax.simple_vit_attn_residual import SimpleViTAttnResidual


ENTRY = parity.BY_NAME['simple_vit_attn_residual.SimpleViTAttnResidual']
TINY = ENTRY.configs[0]  # 16 x 16 images in 8 x 8 patches, dim 16, one layer


def test_history_holds_the_embedding_and_two_entries_per_layer():
    model = SimpleViTAttnResidual(**TINY)
    x = jnp.zeros((2, 16, 16, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    assert 'learned_query' not in variables['params']['transformer']['layers_0_0']  # disabled: `fn` only
    assert set(variables['params']['transformer']['layers_0_0']) == {'fn'}
    out, history = jax.eval_shape(lambda v: model.apply(v, x, return_history=True), variables)
    assert out.shape == (2, 5) and [h.shape for h in history] == [(2, 4, 16)] * 3
    out, history = jax.eval_shape(lambda v, h: model.apply(v, x, history=h, return_history=True), variables, history)
    assert len(history) == 6


@pytest.mark.parametrize('learned_query', [True, False])
def test_history_round_trip_matches_vit_pytorch(learned_query):
    """The file's example: a call returning its history, then a call continuing from it, as vit-pytorch's."""
    config = {**TINY, 'depth': 2, 'learned_query': learned_query}
    model, variables, torch_model = converted_pair(ENTRY, config)
    x = images((2, 16, 16, 3))
    exact = float64_reference(torch_model)
    with torch.no_grad():
        torch_out, torch_history = exact(nchw(x), return_history=True)
        torch_again, torch_history_again = exact(nchw(x), history=torch_history, return_history=True)
    run = jax.jit(lambda v, x, h: model.apply(v, x, history=h, return_history=True))
    out, history = run(variables, x, None)
    assert_close_outputs((out, history), (torch_out, torch_history), ENTRY.tolerance)
    again, history_again = run(variables, x, [np.asarray(h, np.float32) for h in torch_history])
    assert_close_outputs((again, history_again), (torch_again, torch_history_again), ENTRY.tolerance)


def test_another_patch_count_is_refused():
    with pytest.raises(ValueError, match=r'input of size \(8, 16\) gives 2 patches, but the position embedding'):
        jax.eval_shape(SimpleViTAttnResidual(**TINY).init, jax.random.key(0), jnp.zeros((1, 8, 16, 3)))
