"""simple_flash_attn_vit_3d.SimpleViT beyond the registry configs: vit-pytorch's broken `use_flash_attn=False`
(fixed here), the fused path against vit-pytorch's F.scaled_dot_product_attention on other video sizes, the bare
Linear head, bad keywords and inputs."""

import jax
import jax.numpy as jnp
import pytest
import torch

import parity
from tests.conftest import apply, assert_close_outputs, converted_pair, images, nchw, run_torch
from vit_flax.simple_flash_attn_vit_3d import SimpleViT


ENTRY = parity.BY_NAME['simple_flash_attn_vit_3d.SimpleViT']
TINY = ENTRY.configs[0]  # 4 frames in pairs, 8 x 8 images in 4 x 4 patches, dim 24


def test_vit_pytorchs_use_flash_attn_false_cannot_run_and_ours_computes_its_attention():
    model, variables, torch_model = converted_pair(ENTRY, {**TINY, 'use_flash_attn': False})
    x = images((2, 4, 8, 8, 3))
    with pytest.raises(NameError, match='einsum'), torch.no_grad():
        torch_model(nchw(x, torch.float32))  # as released, outside the parity spec's fix
    assert_close_outputs(apply(model, variables, x), run_torch(ENTRY, torch_model, (x,)), ENTRY.tolerance)


def test_fused_path_on_another_video_size():
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    assert set(variables['params']['linear_head']) == {'kernel', 'bias'}  # a bare Linear, no LayerNorm
    fused = SimpleViT(**TINY, attention_impl='xla')
    x = images((2, 6, 4, 12, 3))  # the embedding follows the input's grid
    assert_close_outputs(apply(fused, variables, x), run_torch(ENTRY, torch_model, (x,)), ENTRY.tolerance)


def test_bad_keywords_and_inputs_are_named():
    with pytest.raises(ValueError, match="SimpleViT: use_flash_attn=1 must be True or False"):
        SimpleViT(**{**TINY, 'use_flash_attn': 1})
    with pytest.raises(ValueError, match='needs dim >= 12 .* got dim=8'):
        SimpleViT(**{**TINY, 'dim': 8})
    with pytest.raises(ValueError, match='Frames must be divisible by the frame patch size: frames=3'):
        SimpleViT(**{**TINY, 'frames': 3})
    with pytest.raises(ValueError, match=r'video of size \(3, 8, 8\) is not divisible by patch size \(2, 4, 4\)'):
        jax.eval_shape(SimpleViT(**TINY).init, jax.random.key(0), jnp.zeros((1, 3, 8, 8, 3)))
