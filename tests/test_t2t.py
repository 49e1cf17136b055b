"""T2TViT beyond the registry configs: the soft split against torch's Unfold, the module tree, external
transformers, vit-pytorch's quirks, dropout, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import parity
from vit_flax import converters
from tests.conftest import apply, assert_close_outputs, converted_pair, images, nchw, torch_class, torch_forward
from vit_flax import deepvit, vit
from vit_flax.layers import Linear
from vit_flax.layers import unfold
from vit_flax.t2t import T2TViT

ENTRY = parity.BY_NAME['t2t.T2TViT']
TINY = dict(image_size=16, num_classes=10, dim=32, depth=2, heads=4, mlp_dim=64, dim_head=8,
            t2t_layers=((3, 2), (3, 2)))


def torch_unfold(x, kernel_size, stride, padding):
    """vit-pytorch's soft split, nn.Unfold + Rearrange('b c n -> b n c'), on channels-last numpy input: it moves
    values without arithmetic, so its float64 run holds the float32 input's values exactly."""
    return torch.nn.Unfold(kernel_size, stride=stride, padding=padding)(nchw(x)).transpose(1, 2).numpy()


@pytest.mark.parametrize('shape, kernel_size, stride, padding', [
    ((2, 16, 16, 3), 7, 4, 2),
    ((2, 9, 11, 3), 3, 2, 1),
    ((1, 8, 5, 2), 2, 2, 1),
    ((3, 7, 7, 1), 3, 1, 0),
    ((1, 6, 10, 4), 4, 3, 1),
    ((2, 5, 5, 5), 5, 1, 0),
    ((1, 4, 4, 2), 1, 1, 0),
])
def test_soft_split_is_torch_unfold_in_c_kh_kw_order(shape, kernel_size, stride, padding):
    """Bit-equal to torch's Unfold on random input (every value distinct, so any permutation would show)."""
    x = images(shape, seed=kernel_size * 10 + stride)
    expected = torch_unfold(x, kernel_size, stride, padding)
    out = np.asarray(unfold(jnp.asarray(x), kernel_size, stride, padding))
    assert out.shape == expected.shape == (shape[0], expected.shape[1], shape[-1] * kernel_size**2)
    np.testing.assert_array_equal(out, expected)
    # the feature order is (c kh kw): feature c * k * k + i * k + j of window (0, 0) is padded pixel (i, j) of c
    padded = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    c, i, j = shape[-1] - 1, kernel_size - 1, 0
    np.testing.assert_array_equal(out[:, 0, c * kernel_size**2 + i * kernel_size + j], padded[:, i, j, c])
    # and it is the order of lax.conv_general_dilated_patches on channels-last input
    patches = jax.lax.conv_general_dilated_patches(
        jnp.asarray(x), (kernel_size,) * 2, (stride,) * 2, ((padding, padding),) * 2,
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=jax.lax.Precision.HIGHEST)
    np.testing.assert_array_equal(np.asarray(patches).reshape(out.shape), expected)


def test_soft_split_is_exact_in_bfloat16():
    x = images((2, 9, 9, 3))
    bf16 = jnp.asarray(x, jnp.bfloat16)
    expected = torch_unfold(np.asarray(bf16.astype(jnp.float32)), 3, 2, 1)
    out = unfold(bf16, 3, 2, 1)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(out.astype(jnp.float32)), expected)


def test_parameter_tree_mirrors_torch():
    config = dict(image_size=32, num_classes=7, dim=24, depth=1, heads=3, mlp_dim=32, dim_head=5, channels=2,
                  t2t_layers=((3, 2), (2, 2), (3, 1), (1, 1)))
    model = T2TViT(**config)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 2)))
    params = variables['params']
    # split i's transformer at 4i+3 (none after the last split), the Linear at 4 * len(t2t_layers)
    assert {k for k in params if k.startswith('to_patch_embedding')} == {
        'to_patch_embedding_3', 'to_patch_embedding_7', 'to_patch_embedding_11', 'to_patch_embedding_16'}
    first = params['to_patch_embedding_3']
    assert first['layers_0_0']['to_qkv']['kernel'].shape == (18, 54)
    assert 'to_out_0' not in first['layers_0_0']  # one head with dim_head == dim: no output projection
    assert first['layers_0_1']['net_1']['kernel'].shape == (18, 18) and 'norm' in first
    assert params['to_patch_embedding_11']['norm']['scale'].shape == (648,)
    assert params['to_patch_embedding_16']['kernel'].shape == (648, 24)
    # 32 -> 16 -> 9 -> 7 -> 7 pixels: torch's int((size - k + 2 * (s // 2)) / s + 1) at each split
    assert params['pos_embedding'].shape == (1, 7 * 7 + 1, 24) and params['cls_token'].shape == (1, 1, 24)

    torch.manual_seed(0)
    torch_state = torch_class(ENTRY)(**config).state_dict()
    flax_state = converters.to_torch(model, jax.tree_util.tree_map(jnp.zeros_like, variables), as_numpy=True)
    assert {k: tuple(v.shape) for k, v in flax_state.items()} == {k: tuple(v.shape) for k, v in torch_state.items()}


@pytest.mark.parametrize('size', [(10, 10), (16, 12), (2, 2)])
def test_smaller_and_non_square_inputs_match_torch(size):
    """(16, 12) is refolded after the first split as a 6 x 8 grid, not 8 x 6: torch's int(sqrt(n)) rows."""
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    x = images((2, *size, 3))
    assert_close_outputs(apply(model, variables, x), torch_forward(torch_model, x), ENTRY.tolerance)


def test_tokens_that_do_not_fold_are_refused_like_torch():
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    x = images((1, 16, 8, 3))  # 8 x 4 = 32 tokens after the first split, int(sqrt(32)) = 5 rows
    with pytest.raises(Exception):
        torch_forward(torch_model, x)
    with pytest.raises(ValueError, match=r'32 tokens cannot be folded into 5 rows'):
        jax.eval_shape(model.apply, variables, x)


def test_larger_input_is_refused_with_sizes():
    model, variables, _ = converted_pair(ENTRY, TINY)
    with pytest.raises(ValueError, match=r'input of size \(20, 20\) gives 26 tokens, more than the 17'):
        jax.eval_shape(model.apply, variables, images((1, 20, 20, 3)))


def test_num_classes_zero_gives_empty_logits():
    model, variables, torch_model = converted_pair(ENTRY, {**TINY, 'num_classes': 0})
    x = images((2, 16, 16, 3))
    out = apply(model, variables, x)
    assert out.shape == (2, 0)
    assert_close_outputs(out, torch_forward(torch_model, x), ENTRY.tolerance)


# external transformers


def external_pair(config, flax_transformer, torch_transformer, seed=0):
    """(Flax T2TViT with `flax_transformer`, its variables, randomised vit-pytorch T2TViT with `torch_transformer`)."""
    torch.manual_seed(seed)
    torch_model = torch_class(ENTRY)(**config, transformer=torch_transformer).eval()
    with torch.no_grad():
        for parameter in torch_model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    model = T2TViT(**config, transformer=flax_transformer)
    return model, converters.from_torch(model, torch_model.state_dict()), torch_model


EXTERNAL = dict(image_size=16, num_classes=6, dim=20, t2t_layers=((3, 2), (3, 2)))


@pytest.mark.parametrize('kind', ['vit', 'deepvit', 'linear'])
def test_external_transformer_matches_torch(kind):
    """A Flax module as `transformer`: its variables sit under `transformer`, like torch's state dict keys."""
    import vit_pytorch.deepvit
    import vit_pytorch.vit

    flax_transformer, torch_transformer = {
        'vit': lambda: (vit.Transformer(20, 3, 5, 4, 12), vit_pytorch.vit.Transformer(20, 3, 5, 4, 12)),
        'deepvit': lambda: (deepvit.Transformer(20, 2, 4, 6, 16), vit_pytorch.deepvit.Transformer(20, 2, 4, 6, 16)),
        # no `train` keyword: called as transformer(x)
        'linear': lambda: (Linear(20), torch.nn.Linear(20, 20)),
    }[kind]()
    model, variables, torch_model = external_pair(EXTERNAL, flax_transformer, torch_transformer)
    assert 'transformer' in variables['params']
    x = images((2, 16, 16, 3))
    assert_close_outputs(apply(model, variables, x), torch_forward(torch_model, x), ENTRY.tolerance)
    # and back: Flax -> torch loads strictly
    exported = converters.to_torch(model, variables)
    assert set(exported) == set(torch_model.state_dict())
    torch_model.load_state_dict(exported, strict=True)


def test_external_transformer_ignores_depth_heads_and_mlp_dim():
    a = T2TViT(**EXTERNAL, transformer=vit.Transformer(20, 1, 2, 4, 8))
    b = T2TViT(**EXTERNAL, depth=5, heads=7, mlp_dim=99, dim_head=3, transformer=vit.Transformer(20, 1, 2, 4, 8))
    x = jnp.zeros((1, 16, 16, 3))
    shapes = lambda m: jax.tree_util.tree_map(lambda s: s.shape, jax.eval_shape(m.init, jax.random.key(0), x))
    assert shapes(a) == shapes(b)


def test_external_transformer_gets_train_and_dropout_rng():
    """Only the external transformer has dropout here, so train=True must reach it to change the output."""
    import vit_pytorch.vit

    config = dict(image_size=8, num_classes=6, dim=20, t2t_layers=((3, 2),))
    model, variables, torch_model = external_pair(
        config, vit.Transformer(20, 1, 2, 4, 8, dropout=0.5), vit_pytorch.vit.Transformer(20, 1, 2, 4, 8, 0.5))
    x = images((2, 8, 8, 3))
    eval_out = apply(model, variables, x)
    assert_close_outputs(eval_out, torch_forward(torch_model, x), ENTRY.tolerance)
    train = lambda seed: apply(model, variables, x, train=True, rngs={'dropout': jax.random.key(seed)})
    np.testing.assert_array_equal(train(1), train(1))
    assert not np.allclose(train(1), train(2)) and not np.allclose(train(1), eval_out)


# dropout, errors


def test_dropout_only_in_training_and_reproducible():
    """Dropout in the t2t transformers, after the position embedding and in the ViT transformer."""
    config = {**TINY, 'image_size': 8, 'depth': 1, 'dropout': 0.5, 'emb_dropout': 0.5}
    model, variables, torch_model = converted_pair(ENTRY, config)
    x = images((2, 8, 8, 3))
    eval_out = apply(model, variables, x)
    assert_close_outputs(eval_out, torch_forward(torch_model, x), ENTRY.tolerance)  # torch in eval mode

    train = lambda seed: apply(model, variables, x, train=True, rngs={'dropout': jax.random.key(seed)})
    np.testing.assert_array_equal(train(1), train(1))
    assert not np.allclose(train(1), train(2))
    assert not np.allclose(train(1), eval_out)
    with pytest.raises(Exception, match='dropout'):
        jax.eval_shape(lambda: model.apply(variables, x, train=True))  # no 'dropout' rng stream given


@pytest.mark.parametrize('config, message', [
    (dict(pool='max'), "pool='max'"),
    (dict(image_size=(16, 16)), r'single int image_size .* got image_size=\(16, 16\)'),
    (dict(t2t_layers=()), r't2t_layers must list at least one .* got t2t_layers=\(\)'),
    (dict(t2t_layers=((3,),)), r't2t_layers\[0\]=\(3,\) must be a \(kernel_size, stride\) pair'),
    (dict(t2t_layers=((3, 2), (3, 0))), r't2t_layers=\(\(3, 2\), \(3, 0\)\) holds 0; each entry must be'),
    (dict(t2t_layers=(3, 2)), r't2t_layers\[0\]=\(3,\) must be a \(kernel_size, stride\) pair'),
    (dict(image_size=4, t2t_layers=((7, 1),)), r't2t_layers\[0\]=\(7, 1\): kernel_size 7 is larger than the 4-pixel'),
    (dict(image_size=8, t2t_layers=((3, 2), (3, 1), (3, 1))), r't2t_layers\[2\]=\(3, 1\): kernel_size 3 is larger '
                                                              r'than the 2-pixel'),
    (dict(depth=None), 'depth, heads, and mlp_dim must be supplied .* missing depth'),
    (dict(heads=None, mlp_dim=None), 'missing heads, mlp_dim'),
    (dict(channels=0), 'channels=0'),
    (dict(num_classes=-1), 'num_classes=-1'),
    (dict(transformer='vit'), 'transformer must be a Flax linen Module, got str'),
])
def test_bad_configs_fail_at_construction(config, message):
    with pytest.raises(ValueError, match=message):
        T2TViT(**{**TINY, **config})


def test_t2t_layers_from_json_lists_become_tuples():
    model = T2TViT(**{**TINY, 't2t_layers': [[3, 2], [3, 2]]})
    assert model.t2t_layers == ((3, 2), (3, 2)) and hash(model.t2t_layers)


def test_asserts_shared_with_torch():
    cls = torch_class(ENTRY)
    for config in (dict(pool='max'), dict(depth=None)):
        with pytest.raises(AssertionError):
            cls(**{**TINY, **config})


@pytest.mark.parametrize('shape, message', [
    ((1, 16, 16, 1), r'expected 3 channels \(channels-last input\), got shape \(1, 16, 16, 1\)'),
    ((1, 3, 16, 16), r'expected 3 channels \(channels-last input\), got shape \(1, 3, 16, 16\)'),
    ((16, 16, 3), r'expected images of shape \(batch, height, width, channels\), got shape \(16, 16, 3\)'),
])
def test_bad_inputs_name_the_shape(shape, message):
    with pytest.raises(ValueError, match=message):
        T2TViT(**TINY).init(jax.random.key(0), jnp.zeros(shape))


def test_too_small_input_is_refused_like_torch():
    config = dict(image_size=9, num_classes=5, dim=20, depth=1, heads=5, mlp_dim=16, dim_head=4, channels=1,
                  t2t_layers=((3, 1), (2, 2), (3, 1)))
    model, variables, torch_model = converted_pair(ENTRY, config)
    x = images((1, 2, 2, 1))
    with pytest.raises(Exception):
        torch_forward(torch_model, x)
    with pytest.raises(ValueError, match=r'input of size \(2, 2\) is too small: soft split 0 \(kernel_size=3'):
        jax.eval_shape(model.apply, variables, x)


# random configurations
