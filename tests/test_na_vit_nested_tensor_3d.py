"""na_vit_nested_tensor_3d.NaViT beyond the registry configs: parameter tree, token dropout under shared draws,
`token_dropout_prob=None` in training, vit-pytorch's untrained parameters (nested_tensor), the fused attention,
bad configurations and inputs."""

from unittest import mock

import jax
import numpy as np
import pytest
import torch

import parity
from tests.conftest import (apply, assert_close_outputs, converted_pair, float64_reference, init_variables,
                            randomised_torch_model, run_torch, torch_inputs)
from vit_flax import converters, na_vit
from vit_flax.na_vit_nested_tensor_3d import NaViT, patch_positions, to_patches


ENTRY = parity.BY_NAME['na_vit_nested_tensor_3d.NaViT']
TINY = ENTRY.configs[0]  # image_size (8, 12), max_frames 4, patches 2 x 4 x 4, 2 registers


def volumes(shapes, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((*shape, channels), dtype=np.float32) for shape in shapes]


SHAPES = [(4, 8, 12), (2, 4, 12), (2, 8, 4), (4, 4, 4)]


def test_parameter_tree_mirrors_torch():
    model = NaViT(**TINY)
    variables = jax.eval_shape(model.init, jax.random.key(0), volumes(SHAPES[:2]))
    params = variables['params']
    assert params['pos_embed_frame'].shape == (2, 16)
    assert params['pos_embed_height'].shape == (2, 16) and params['pos_embed_width'].shape == (3, 16)
    assert params['register_tokens'].shape == (2, 16) and params['attn_pool_queries'].shape == (16,)
    assert set(params['to_patch_embedding_0']) == {'scale', 'bias'}  # with bias: 3 * 2 * 4 * 4 features
    assert params['to_patch_embedding_0']['scale'].shape == (96,)
    assert set(params['transformer']['layers_0_0']['norm']) == {'scale'}  # torch's LayerNorm(bias=False)
    assert set(params['mlp_head_1']) == {'kernel'}


def test_patches_and_positions_follow_torch():
    """vit-pytorch's `c (f pf) (h p1) (w p2) -> f h w (c pf p1 p2)` and its (f, h, w) meshgrid."""
    from einops import rearrange

    (volume,) = volumes([(4, 8, 12)])
    expected = rearrange(np.moveaxis(volume, -1, 0), 'c (f pf) (h p1) (w p2) -> (f h w) (c pf p1 p2)', pf=2, p1=4, p2=4)
    np.testing.assert_array_equal(to_patches(volume, 4, 2), expected)
    positions = patch_positions(2, 2, 3)
    assert positions.shape == (12, 3) and tuple(positions[7]) == (1, 0, 1)


def test_token_dropout_matches_torch_given_the_same_draws():
    config = {**TINY, 'token_dropout_prob': 0.3}
    model, variables, torch_model = converted_pair(ENTRY, config)
    inputs = volumes(SHAPES, seed=2)
    rngs = {na_vit.TOKEN_DROPOUT: jax.random.key(5)}
    draws = model.apply(variables, inputs, rngs=rngs, method=NaViT.token_dropout_draws)
    queue = [torch.from_numpy(np.array(d)) for d in draws]

    def randn(shape, device=None, **kwargs):
        draw = queue.pop(0)
        assert tuple(shape) == tuple(draw.shape)
        return draw

    torch_model.train()  # dropout rates are 0: only token dropout is random
    with torch.no_grad(), mock.patch.object(torch, 'randn', randn), ENTRY.torch_context():
        expected = float64_reference(torch_model)(*torch_inputs(ENTRY, (inputs,)))
    assert not queue
    trained = jax.jit(lambda v, x: model.apply(v, x, train=True, rngs=rngs))(variables, inputs)
    assert_close_outputs(trained, expected, ENTRY.tolerance)
    assert not np.allclose(trained, apply(model, variables, inputs), atol=1e-3)  # tokens were dropped


def test_kept_token_count_is_torchs():
    model = NaViT(**{**TINY, 'token_dropout_prob': 0.3})
    for n in (1, 2, 10, 12, 48):
        assert model.kept_tokens(n) == int(((1. - 0.3) * torch.tensor([n])).int().clamp(min=1))  # vit-pytorch's
    assert NaViT(**TINY).kept_tokens(12) is None


def test_training_without_token_dropout_keeps_every_token():
    """token_dropout_prob=None (the default): vit-pytorch raises a TypeError in training; here training with no
    dropout rates computes the eval-mode function."""
    model = NaViT(**TINY)
    inputs = volumes(SHAPES[:3])
    variables = init_variables(model)
    np.testing.assert_array_equal(apply(model, variables, inputs, train=True, rngs={'dropout': jax.random.key(0)}),
                                  apply(model, variables, inputs))
    torch_model = randomised_torch_model(ENTRY, TINY).train()
    with pytest.raises(TypeError):
        torch_model(*torch_inputs(ENTRY, (inputs,), dtype=torch.float32))


def test_vit_pytorch_as_released_leaves_the_embeddings_and_registers_untrained():
    """The documented fix: torch.nested.nested_tensor copies without autograd history."""
    torch_model = randomised_torch_model(ENTRY, TINY)
    torch_model(*torch_inputs(ENTRY, (volumes(SHAPES[:2]),), dtype=torch.float32)).sum().backward()
    untrained = {name for name, p in torch_model.named_parameters() if p.grad is None}
    assert {'register_tokens', 'pos_embed_frame', 'attn_pool_queries', 'to_patch_embedding.1.weight'} <= untrained
    assert 'mlp_head.1.weight' not in untrained


def test_fused_attention_matches_vit_pytorch():
    torch_model = randomised_torch_model(ENTRY, TINY)
    fused = NaViT(**TINY, attention_impl='xla')
    variables = converters.from_torch(fused, torch_model.state_dict())
    inputs = (volumes(SHAPES),)
    assert_close_outputs(jax.jit(fused.apply)(variables, *inputs), run_torch(ENTRY, torch_model, inputs), 2e-5)


@pytest.mark.parametrize('config, message', [
    (dict(max_frames=5), r'max_frames=5 must be divisible by frame_patch_size=2'),
    (dict(max_frames=0), r'NaViT: max_frames=0 must be a positive integer'),
    (dict(image_size=10), r'Image dimensions must be divisible by the patch size'),
    (dict(token_dropout_prob=lambda f, h, w: 0.1), r'takes a constant token_dropout_prob'),
    (dict(attention_impl='flash'), r"unknown attention_impl='flash'"),
])
def test_bad_configs_fail_at_construction(config, message):
    with pytest.raises(ValueError, match=message):
        NaViT(**{**TINY, **config})


@pytest.mark.parametrize('inputs, message', [
    ([np.zeros((6, 8, 12, 3), np.float32)], r'volume 0: size \(6, 8, 12\) exceeds \(max_frames, \*image_size\)'),
    ([np.zeros((2, 8, 8, 3), np.float32), np.zeros((3, 8, 8, 3), np.float32)],
     r'volume 1: frames 3 must be a positive multiple of frame_patch_size 2'),
    ([np.zeros((2, 8, 6, 3), np.float32)], r'volume 0: .* height and width \(8, 6\) positive multiples of patch_size'),
    ([np.zeros((2, 8, 8, 1), np.float32)], r'volume 0: expected a volume of shape \(frames, height, width, 3\)'),
    (np.zeros((2, 8, 8, 3), np.float32), r'takes a flat list of \(frames, height, width, channels\) volumes'),
    ([], r'takes a flat list'),
])
def test_bad_inputs_name_the_volume(inputs, message):
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(NaViT(**TINY).init, jax.random.key(0), inputs)
