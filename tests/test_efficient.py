"""efficient.ViT beyond the registry configs: the plugged-in transformer, vit-pytorch's quirks, bad configs, our
own linear-attention transformer (with a torch twin defined HERE, test-only code that is not part of
vit-pytorch)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn as tnn

import parity
from vit_flax import converters
from tests.conftest import (
    apply, assert_close_outputs, converted_pair, images, init_variables, torch_class, torch_forward,
)
from vit_flax import vit
from vit_flax.efficient import LinearAttention, LinearTransformer, ViT, linear_attention

ENTRY = parity.BY_NAME['efficient.ViT']
TINY = ENTRY.configs[0]


def test_parameter_tree_mirrors_torch():
    variables = init_variables(ViT(**TINY))
    params = variables['params']
    assert params['pos_embedding'].shape == (1, 17, 32) and params['cls_token'].shape == (1, 1, 32)
    assert set(params['mlp_head_0']) == {'scale', 'bias'} and params['mlp_head_1']['kernel'].shape == (32, 10)
    assert set(params['transformer']) == {'layers_0_0', 'layers_0_1', 'layers_1_0', 'layers_1_1', 'norm'}
    torch_keys = set(converters.torch_keywords(TINY)['transformer'].state_dict())
    assert {k.removeprefix('transformer.') for k in converters.to_torch(ViT(**TINY), variables) if
            k.startswith('transformer.')} == torch_keys


@pytest.mark.parametrize('size', [(8, 8), (16, 8), (4, 12)])
def test_smaller_inputs_slice_the_position_embedding(size):
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    x = images((2, *size, 3))
    assert_close_outputs(apply(model, variables, x), torch_forward(torch_model, x), ENTRY.tolerance)


def test_num_classes_zero_gives_empty_logits():
    model, variables, torch_model = converted_pair(ENTRY, {**TINY, 'num_classes': 0})
    x = images((2, 16, 16, 3))
    out = apply(model, variables, x)
    assert out.shape == (2, 0)
    assert_close_outputs(out, torch_forward(torch_model, x), ENTRY.tolerance)


@pytest.mark.parametrize('change, match', [
    (dict(patch_size=(4, 4)), r'single int patch_size, got patch_size=\(4, 4\)'),
    (dict(patch_size=5), r'divisible by the patch size: image_size=\(16, 16\), patch_size=\(5, 5\)'),
    (dict(pool='max'), r"pool='max'"),
    (dict(transformer=lambda x: x), r'transformer must be a Flax linen Module, got function'),
    (dict(num_classes=-1), r'num_classes=-1'),
])
def test_bad_configs_name_the_value(change, match):
    with pytest.raises(ValueError, match=match):
        ViT(**{**TINY, **change})


def test_larger_input_is_refused_with_sizes():
    model = ViT(**TINY)
    variables = init_variables(model)
    with pytest.raises(ValueError, match=r'input of size \(20, 16\) gives 21 tokens, more than the 17'):
        model.apply(variables, images((1, 20, 16, 3)))


def test_any_module_without_train_keyword_plugs_in():
    """A transformer that knows nothing of training is called as transformer(x)."""
    import flax.linen as nn

    class Mixer(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(x.shape[-1], name='mix')(x)

    model = ViT(image_size=8, patch_size=4, num_classes=2, dim=8, transformer=Mixer())
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    assert variables['params']['transformer']['mix']['kernel'].shape == (8, 8)
    assert jax.jit(lambda v, x: model.apply(v, x, train=True))(variables, images((2, 8, 8, 3))).shape == (2, 2)


def test_dropout_of_the_plugged_in_transformer_follows_the_rng():
    config = {**TINY, 'transformer': vit.Transformer(dim=32, depth=2, heads=4, dim_head=8, mlp_dim=64, dropout=0.5)}
    model = ViT(**config)
    variables = init_variables(model)
    x = images((2, 16, 16, 3))
    first = apply(model, variables, x, train=True, rngs={'dropout': jax.random.key(1)})
    again = apply(model, variables, x, train=True, rngs={'dropout': jax.random.key(1)})
    other = apply(model, variables, x, train=True, rngs={'dropout': jax.random.key(2)})
    np.testing.assert_array_equal(first, again)
    assert np.abs(np.asarray(first) - np.asarray(other)).max() > 1e-3


# our linear-attention transformer


LINEAR = dict(image_size=16, patch_size=4, num_classes=6, dim=24, pool='mean',
              transformer=LinearTransformer(dim=24, depth=2, heads=3, dim_head=8, mlp_dim=32))


def test_linear_attention_equals_the_quadratic_formula():
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((2, 3, 7, 5), dtype=np.float32)) for _ in range(3))
    fast = linear_attention(q, k, v, eps=1e-6)

    phi = lambda t: jnp.where(t > 0, t + 1, jnp.exp(t))  # elu(t) + 1, written out
    kernel = jnp.einsum('bhid,bhjd->bhij', phi(q), phi(k))  # the n x n "attention" matrix
    direct = jnp.einsum('bhij,bhjd->bhid', kernel, v) / (kernel.sum(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(fast, direct, rtol=1e-5, atol=1e-6)
    assert (kernel > 0).all()


def test_linear_transformer_runs_in_the_vit_and_jits():
    model = ViT(**LINEAR)
    variables = init_variables(model)
    layer = variables['params']['transformer']['layers_0_0']
    assert set(layer) == {'norm', 'to_qkv', 'to_out_0'} and layer['to_qkv']['kernel'].shape == (24, 72)
    out = apply(model, variables, images((3, 16, 16, 3)))
    assert out.shape == (3, 6) and np.isfinite(np.asarray(out)).all()
    # the cost is linear in the tokens: attention never builds an n x n array
    jaxpr = str(jax.make_jaxpr(lambda x: LinearAttention(24, 3, 8).apply(
        {'params': layer}, x))(jnp.zeros((1, 50, 24))))
    assert '50,50' not in jaxpr.replace(' ', '')


class TorchLinearAttention(tnn.Module):
    """Test-only torch twin of efficient.LinearAttention (not part of vit-pytorch), same state-dict names."""

    def __init__(self, dim, heads, dim_head, eps=1e-6):
        super().__init__()
        self.heads, self.eps = heads, eps
        self.norm = tnn.LayerNorm(dim)
        self.to_qkv = tnn.Linear(dim, heads * dim_head * 3, bias=False)
        self.to_out = tnn.Sequential(tnn.Linear(heads * dim_head, dim), tnn.Dropout(0.0))

    def forward(self, x):
        x = self.norm(x)
        b, n, _ = x.shape
        q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in self.to_qkv(x).chunk(3, dim=-1))
        q, k = torch.nn.functional.elu(q) + 1, torch.nn.functional.elu(k) + 1
        context = torch.einsum('bhnd,bhne->bhde', k, v)
        normaliser = torch.einsum('bhnd,bhd->bhn', q, k.sum(dim=-2))
        out = torch.einsum('bhnd,bhde->bhne', q, context) / (normaliser[..., None] + self.eps)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


def torch_linear_vit(config):
    """vit_pytorch.efficient.ViT around vit_pytorch.vit.Transformer with its attentions swapped for the twin."""
    t = config['transformer']
    kwargs = converters.torch_keywords({**config, 'transformer': vit.Transformer(t.dim, t.depth, t.heads, t.dim_head, t.mlp_dim)})
    for layer in kwargs['transformer'].layers:
        layer[0] = TorchLinearAttention(t.dim, t.heads, t.dim_head)
    return torch_class(ENTRY)(**kwargs).eval()


def test_linear_transformer_weights_round_trip_through_the_torch_twin():
    model = ViT(**LINEAR)
    torch_model = torch_linear_vit(LINEAR)
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in torch_model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    variables = converters.from_torch(model, torch_model.state_dict())
    x = images((2, 16, 16, 3))
    assert_close_outputs(apply(model, variables, x), torch_forward(torch_model, x), ENTRY.tolerance)

    fresh = torch_linear_vit(LINEAR)
    fresh.load_state_dict(converters.to_torch(model, variables), strict=True)
    assert_close_outputs(apply(model, variables, x), torch_forward(fresh, x), ENTRY.tolerance)


# a random-config sweep: torch -> Flax, forward only
