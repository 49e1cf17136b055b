"""simple_vit_with_specialized_cls.SimpleViT beyond the registry configs: which layers give the class token its own
projections (vit-pytorch's quick test), the fused attention path and bad inputs."""

import jax
import jax.numpy as jnp
import pytest

import parity
from tests.conftest import apply, assert_close_outputs, converted_pair, images, torch_forward
from vit_flax.simple_vit_with_specialized_cls import SimpleViT


ENTRY = parity.BY_NAME['simple_vit_with_specialized_cls.SimpleViT']
TINY = ENTRY.configs[0]  # 16 x 16 images in 8 x 8 patches, depth 2, the first layer's q, k, v specialized


def test_vit_pytorch_quick_test_specializes_the_first_third():
    v = SimpleViT(image_size=256, patch_size=32, num_classes=1000, dim=1024, depth=6, heads=16, mlp_dim=2048)
    out, variables = jax.eval_shape(lambda: v.init_with_output(jax.random.key(0), jnp.zeros((1, 256, 256, 3))))
    assert out.shape == (1, 1000)
    transformer = variables['params']['transformer']
    specialized = [i for i in range(6) if 'fns_0' in transformer[f'layers_{i}_0']['to_qkv']]
    assert specialized == [0, 1]
    assert set(transformer['norm']) == {'fns_0', 'fns_1'}
    assert set(transformer['layers_3_1']['norm']) == {'fns_0', 'fns_1'}


def test_fused_attention_matches_vit_pytorch():
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    x = images((2, 16, 16, 3))
    fused = SimpleViT(**TINY, attention_impl='xla')
    assert_close_outputs(apply(fused, variables, x), torch_forward(torch_model, x), ENTRY.tolerance)


@pytest.mark.parametrize('shape, message', [
    ((1, 16, 16, 1), r'expected 3 channels \(channels-last input\), got shape \(1, 16, 16, 1\)'),
    ((1, 16, 24, 3), r'input of size \(16, 24\) gives 6 patches, but the position embedding of image_size=16 has 4'),
])
def test_bad_inputs_name_the_shape(shape, message):
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(SimpleViT(**TINY).init, jax.random.key(0), jnp.zeros(shape))
