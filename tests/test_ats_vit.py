"""ATS ViT behaviour beyond the registry configs: sampled token ids and their padding, the 'token_sampling' stream,
batch-dependent sampling, jit, AdaptiveTokenSampling alone, bad configs and input, what the random-configuration
sweep reaches.

vit-pytorch draws its Gumbel noise with `sample_gumbel`; every comparison here patches it to return the noise
the Flax model draws (parity/ats_vit.py: draws), so both sides sample the same tokens.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import parity
from tests.conftest import (apply, assert_close_outputs, converted_pair, float64_reference, images, nchw,
                            randomised_torch_model, torch_class)
from vit_flax import ats_vit, registry
from vit_flax.ats_vit import AdaptiveTokenSampling, Transformer, ViT

ENTRY = parity.BY_NAME['ats_vit.ViT']
TINY = ENTRY.configs[0]  # 16 patches, budgets (8, 4)
DYNAMIC = ENTRY.configs[2]  # 9 patches, budgets (6, 6, 4): the third layer samples only for some batches


_forwards = {}


def flax_forward(model, variables, x, rngs):
    """(logits, sampled token ids) under jit, one compile per configuration."""
    key = repr(sorted(registry.torch_kwargs(model).items()))
    if key not in _forwards:
        _forwards[key] = jax.jit(lambda v, x, r: model.apply(v, x, return_sampled_token_ids=True, rngs=r))
    logits, ids = _forwards[key](variables, x, rngs)
    return np.asarray(logits), np.asarray(ids)


def torch_forward_same_draws(torch_model, model, x, seed=0):
    """vit-pytorch's exact (float64) logits and its ids with the noise Flax draws for `seed`; also the rngs and the
    noise shapes torch asked for."""
    import vit_pytorch.ats_vit as module

    rngs, draws = ENTRY.same_draws(model, (x,), seed)
    asked = []
    with draws:
        same_noise = module.sample_gumbel

        def recording(shape, *args, **kwargs):
            asked.append(tuple(shape))
            return same_noise(shape, *args, **kwargs)

        module.sample_gumbel = recording
        try:
            with torch.no_grad():
                logits, ids = float64_reference(torch_model)(nchw(x), return_sampled_token_ids=True)
        finally:
            module.sample_gumbel = same_noise
    return logits.numpy(), ids.numpy(), rngs, asked


def assert_same_ids(flax_ids, torch_ids):
    """torch's ids are our first columns; the rest of ours is padding, -1 as torch pads."""
    width = torch_ids.shape[1]
    np.testing.assert_array_equal(flax_ids[:, :width], torch_ids)
    assert (flax_ids[:, width:] == -1).all(), flax_ids


def check_parity(model, variables, torch_model, x, seed=0):
    torch_logits, torch_ids, rngs, asked = torch_forward_same_draws(torch_model, model, x, seed)
    logits, ids = flax_forward(model, variables, x, rngs)
    assert_close_outputs(logits, torch_logits, ENTRY.tolerance)
    assert_same_ids(ids, torch_ids)
    return ids, torch_ids, asked


def test_parameter_tree_mirrors_torch():
    x = jnp.zeros((1, 16, 16, 3))
    variables = jax.eval_shape(lambda: ViT(**TINY).init(registry.init_rngs(jax.random.key(0)), x))
    params = variables['params']
    assert params['pos_embedding'].shape == (1, 17, 32) and params['cls_token'].shape == (1, 1, 32)
    layer = params['transformer']['layers_1_0']
    assert set(layer) == {'norm', 'to_qkv', 'to_out_0'}  # AdaptiveTokenSampling has no parameters
    assert set(params['transformer']) == {'layers_0_0', 'layers_0_1', 'layers_1_0', 'layers_1_1'}  # no final norm
    assert set(params['mlp_head_0']) == {'scale', 'bias'} and params['mlp_head_1']['kernel'].shape == (32, 10)


def test_sampled_token_ids_are_torch_ids_with_fixed_width_padding():
    """Budgets (8, 4) over 16 patches: 4 id columns; torch's are the batch's largest kept count, the rest -1."""
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    widths, padded = set(), False
    for seed in range(3):
        x = images((3, 16, 16, 3), seed=seed)
        ids, torch_ids, asked = check_parity(model, variables, torch_model, x, seed)
        assert ids.shape == (3, 4)
        assert [shape[:2] for shape in asked] == [(3, 8), (3, 4)] and asked[0][2] == 16
        widths.add(torch_ids.shape[1])
        padded |= bool((torch_ids == -1).any())
        for row in ids:  # kept patches in increasing order, then padding
            kept = row[row >= 0]
            assert (np.diff(kept) > 0).all() and (row[len(kept):] == -1).all()
    assert padded or min(widths) < 4, widths  # torch's own padding, or ours beyond its width, compared


def test_a_layer_samples_only_when_the_batch_exceeds_its_budget():
    """vit-pytorch tests its padded length: a layer samples when the batch's largest kept count exceeds its
    budget. Both branches, with the same logits and ids as torch."""
    model, variables, torch_model = converted_pair(ENTRY, DYNAMIC)
    layers_sampled, torch_widths = set(), set()
    for seed in range(8):
        x = images((2, 12, 6, 1), seed=seed)
        ids, torch_ids, asked = check_parity(model, variables, torch_model, x, seed)
        assert [shape[1] for shape in asked] in ([6], [6, 4])  # never the second layer
        layers_sampled.add(len(asked))
        torch_widths.add(torch_ids.shape[1])
        assert ids.shape == (2, 4)
    assert layers_sampled == {1, 2}
    assert min(torch_widths) < 4, torch_widths  # our padding columns beyond torch's width compared too


def test_noise_layout_over_fixed_slots():
    """A layer that may sample gets (batch, budget, slots - 1); one whose budget is not below its slots (a repeated
    budget, or one above the patch count) gets none: it never samples. (Parity: registry configs 1 and 2, whose
    second layer repeats the first's budget.)"""
    model = ViT(**{**DYNAMIC, 'image_size': (12, 20), 'patch_size': 4, 'depth': 4,
                   'max_tokens_per_depth': (16, 10, 10, 3)})
    x = np.zeros((2, 12, 20, 1), np.float32)  # 15 patches
    noise = model.apply({}, x, rngs={'token_sampling': jax.random.key(0)}, method=ViT.token_sampling_noise)
    assert [None if n is None else n.shape for n in noise] == [None, (2, 10, 15), None, (2, 3, 10)]
    assert np.isfinite(np.asarray(noise[1])).all()


def test_noise_comes_from_the_token_sampling_stream():
    model, variables, _ = converted_pair(ENTRY, TINY)
    x = images((3, 16, 16, 3))
    run = lambda seed: flax_forward(model, variables, x, {'token_sampling': jax.random.key(seed)})
    np.testing.assert_array_equal(run(1)[1], run(1)[1])
    assert not np.array_equal(run(1)[1], run(2)[1])
    with pytest.raises(Exception, match='token_sampling'):
        jax.eval_shape(lambda: model.apply(variables, x))  # no stream: torch samples even in eval mode
    # init needs no such stream (Flax falls back on 'params'), nor does a model whose budgets never bind
    jax.eval_shape(lambda: ViT(**TINY).init(jax.random.key(0), jnp.zeros((1, 16, 16, 3))))
    never = ViT(**ENTRY.configs[1])
    jax.eval_shape(lambda: never.apply(never.init(jax.random.key(0), x[:, :, :8, :2]), x[:, :, :8, :2]))


def test_whole_forward_jits_once():
    model, variables, torch_model = converted_pair(ENTRY, DYNAMIC)
    jitted = jax.jit(lambda v, x, key: model.apply(v, x, return_sampled_token_ids=True,
                                                   rngs={'token_sampling': key}))
    for seed in range(3):  # different draws take different branches; one program
        x = images((2, 12, 6, 1), seed=seed)
        torch_logits, torch_ids, rngs, _ = torch_forward_same_draws(torch_model, model, x, seed)
        logits, ids = jitted(variables, x, rngs['token_sampling'])
        assert_close_outputs(logits, torch_logits, ENTRY.tolerance)
        assert_same_ids(np.asarray(ids), torch_ids)
    assert jitted._cache_size() == 1


def test_larger_input_is_refused_with_sizes():
    """(Smaller inputs slice the position embedding and the noise: see the random configurations.)"""
    model = ViT(**TINY)
    with pytest.raises(ValueError, match=r'input of size \(20, 16\) gives 21 tokens, more than the 17'):
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 20, 16, 3))))


def test_adaptive_token_sampling_alone_matches_torch():
    """Padded input tokens (mask False) are never sampled; the kept rows, mask and ids are torch's first columns."""
    b, h, n, d, k = 3, 2, 9, 4, 5
    rng = np.random.default_rng(0)
    attn = jax.nn.softmax(jnp.asarray(rng.standard_normal((b, h, n, n), dtype=np.float32)), axis=-1)
    value = jnp.asarray(rng.standard_normal((b, h, n, d), dtype=np.float32))
    mask = jnp.asarray(np.arange(n) < np.array([[9], [7], [4]]))
    noise = ats_vit.sample_gumbel(jax.random.key(0), (b, k, n - 1))
    new_attn, new_mask, ids = jax.jit(AdaptiveTokenSampling(k).apply)({}, attn, value, mask, noise)
    assert new_attn.shape == (b, h, k + 1, n) and new_mask.shape == ids.shape == (b, k + 1)

    import vit_pytorch.ats_vit as module

    original = module.sample_gumbel
    module.sample_gumbel = lambda shape, device, dtype: torch.from_numpy(np.array(noise)).to(dtype)
    try:
        exact = float64_reference(module.AdaptiveTokenSampling(k))
        t_attn, t_mask, t_ids = exact(*(torch.from_numpy(np.array(a)) for a in (attn, value, mask)))
    finally:
        module.sample_gumbel = original
    width = t_ids.shape[1]
    np.testing.assert_array_equal(np.asarray(ids)[:, :width], t_ids.numpy())
    np.testing.assert_array_equal(np.asarray(new_mask)[:, :width], t_mask.numpy())
    np.testing.assert_array_equal(np.asarray(new_attn)[:, :, :width], t_attn.numpy())
    assert (np.asarray(ids)[:, width:] == 0).all() and not np.asarray(new_mask)[:, width:].any()
    assert (np.asarray(ids)[2] < 4).all()  # the third row has 3 real tokens after cls


def test_dropout_only_in_training_and_reproducible():
    model, variables, torch_model = converted_pair(ENTRY, DYNAMIC)  # dropout 0.1, emb_dropout 0.1
    x = images((2, 12, 6, 1))
    sampling = {'token_sampling': jax.random.key(0)}
    eval_out = apply(model, variables, x, rngs=sampling)

    train = lambda seed: apply(model, variables, x, train=True, rngs={**sampling, 'dropout': jax.random.key(seed)})
    np.testing.assert_array_equal(train(1), train(1))
    assert not np.allclose(train(1), train(2))
    assert not np.allclose(train(1), eval_out)


@pytest.mark.parametrize('config, message', [
    (dict(max_tokens_per_depth=(8,)), r'equal to the depth .* max_tokens_per_depth=\(8,\) for depth=2'),
    (dict(max_tokens_per_depth=(4, 8)), r'decreasing order, got \(4, 8\)'),
    (dict(max_tokens_per_depth=(8, 0)), r'max_tokens_per_depth=\(8, 0\) holds 0; each entry must be a positive'),
    (dict(depth=0, max_tokens_per_depth=()), r'at least 1 token .* max_tokens_per_depth=\(\)'),
    (dict(image_size=18), r'divisible by the patch size: image_size=\(18, 18\), patch_size=\(4, 4\)'),
    (dict(channels=0), 'channels=0 must be a positive integer'),
    (dict(heads=0), 'heads=0'),
    (dict(dim_head=0), 'dim_head=0'),
    (dict(num_classes=-1), 'num_classes=-1'),
])
def test_bad_configs_fail_at_construction(config, message):
    with pytest.raises(ValueError, match=message):
        ViT(**{**TINY, **config})


def test_torch_refuses_the_same_budgets():
    for budgets in [(8,), (4, 8), (8, 0)]:
        with pytest.raises(AssertionError):
            torch_class(ENTRY)(**{**TINY, 'max_tokens_per_depth': budgets})
        with pytest.raises(ValueError):
            Transformer(dim=8, depth=2, max_tokens_per_depth=budgets, heads=1, dim_head=8, mlp_dim=8)
    with pytest.raises(ValueError):  # torch's min() of an empty tuple
        torch_class(ENTRY)(**{**TINY, 'depth': 0, 'max_tokens_per_depth': ()})


@pytest.mark.parametrize('shape, message', [
    ((1, 16, 16, 1), r'expected 3 channels \(channels-last input\), got shape \(1, 16, 16, 1\)'),
    ((16, 16, 3), r'expected images of shape \(batch, height, width, channels\), got shape \(16, 16, 3\)'),
    ((1, 14, 16, 3), r'image of size \(14, 16\) is not divisible by patch size \(4, 4\)'),
])
def test_bad_inputs_name_the_shape(shape, message):
    with pytest.raises(ValueError, match=message):
        ViT(**TINY).init(jax.random.key(0), jnp.zeros(shape))


def test_the_random_configurations_reach_no_sampling_two_sampling_layers_and_smaller_inputs():
    """The draws tests/test_random_configurations.py makes of parity/ats_vit.py's sweep (on the randomised
    vit-pytorch model it builds) include a configuration where vit-pytorch samples in no layer, one where it samples
    in two, and an input smaller than image_size on which it samples."""
    layers_sampled, smaller_inputs_sampled = [], 0
    for config, (x,) in ENTRY.random_configurations():
        *_, asked = torch_forward_same_draws(randomised_torch_model(ENTRY, config), ViT(**config), x)
        layers_sampled.append(len(asked))
        smaller_inputs_sampled += bool(asked) and x.shape[1:3] != config['image_size']
    assert 0 in layers_sampled and max(layers_sampled) >= 2 and smaller_inputs_sampled, layers_sampled
