"""learnable_memory_vit beyond the registry configs: the Adapter's variables and mask, the frozen backbone, several
adapters on one backbone (trained with optax), vit-pytorch's quirks, dropout, bad configs and input."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import parity
from vit_flax import converters
from tests.conftest import (apply, assert_close_outputs, converted_pair, float64_reference, images, init_variables,
                            nchw, new_torch_model, randomised_torch_model, torch_class, torch_forward)
from vit_flax import vit
from vit_flax.learnable_memory_vit import Adapter, ViT, memory_attention_mask

VIT_ENTRY = parity.BY_NAME['learnable_memory_vit.ViT']
ADAPTER_ENTRY = parity.BY_NAME['learnable_memory_vit.Adapter']
TINY = VIT_ENTRY.configs[0]  # image_size=16, patch_size=4, dim=32, depth=2: the registry's compiles are reused
ADAPTER = ADAPTER_ENTRY.configs[0]  # the same backbone, 3 memories per layer, 5 classes
X = images((2, 16, 16, 3), seed=3)


def noisy(tree, seed):
    """Floating leaves moved off their init (LayerNorm ones / zeros); the bool attention mask is kept."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda a: a + 0.1 * rng.standard_normal(a.shape, np.float32) if a.dtype == jnp.float32 else a, tree)


def test_adapter_variables_are_torch_state_dict_backbone_included():
    torch_adapter = randomised_torch_model(ADAPTER_ENTRY, ADAPTER)
    state = torch_adapter.state_dict()
    assert state['attn_mask'].dtype == torch.bool  # a persistent buffer: saved and loaded with the weights

    model = Adapter(**ADAPTER)
    variables = init_variables(model)
    assert set(variables) == {'params', 'buffers'}
    assert variables['buffers']['attn_mask'].dtype == jnp.bool_
    exported = converters.to_torch(model, variables)
    assert exported.keys() == state.keys()
    assert {key for key in state if not key.startswith('vit.')} == {
        'memory_cls_token', 'memories_per_layer', 'mlp_head.0.weight', 'mlp_head.0.bias', 'mlp_head.1.weight',
        'mlp_head.1.bias', 'attn_mask'}
    # the backbone's subtree is a plain ViT's variables, its unused head included
    assert {f'vit.{key}' for key in torch_adapter.vit.state_dict()} == {key for key in state if key.startswith('vit.')}
    backbone_shapes = jax.eval_shape(ViT(**TINY).init, jax.random.key(0), X)['params']
    assert jax.tree_util.tree_map(np.shape, variables['params']['vit']) == jax.tree_util.tree_map(
        np.shape, backbone_shapes)
    # the mask is the same as torch's freshly built one, and the Flax init builds it too
    np.testing.assert_array_equal(np.asarray(variables['buffers']['attn_mask']), state['attn_mask'].numpy())
    np.testing.assert_array_equal(exported['attn_mask'].numpy(), state['attn_mask'].numpy())
    np.testing.assert_array_equal(memory_attention_mask(17, 3), state['attn_mask'].numpy())
    with pytest.raises(Exception, match='attn_mask.* from collection "buffers"'):
        model.apply({'params': variables['params']}, X)  # the mask is part of the variables, as in torch


def test_mask_lets_only_the_memory_cls_token_see_memories():
    mask = memory_attention_mask(num_tokens=5, num_memories=3)  # rows: memory cls, cls, 4 patches
    assert mask.shape == (6, 9)
    assert mask[0].all()  # the memory cls token attends to everything
    assert not mask[1:, 0].any() and not mask[1:, 6:].any()  # nothing else sees it or the memories
    assert mask[1:, 1:6].all()  # the backbone's own tokens attend to each other as in the plain ViT


def test_flax_to_torch_with_the_real_mask():
    """The registry's Flax -> torch test adds noise to every leaf, mask included; here the mask stays as built."""
    model = Adapter(**ADAPTER)
    variables = noisy(init_variables(model), seed=1)
    torch_adapter = new_torch_model(ADAPTER_ENTRY, ADAPTER)
    torch_adapter.load_state_dict(converters.to_torch(model, variables), strict=True)
    assert_close_outputs(apply(model, variables, X), torch_forward(torch_adapter, X), ADAPTER_ENTRY.tolerance)


def test_backbone_gradient_is_exactly_zero_as_torch_freezes_it():
    model, variables, torch_adapter = converted_pair(ADAPTER_ENTRY, ADAPTER)
    exact = float64_reference(torch_adapter)
    assert all(not p.requires_grad for p in exact.vit.parameters())
    weights = images((2, 5), seed=7)
    (exact(nchw(X)) * torch.from_numpy(weights).double()).sum().backward()
    assert all(p.grad is None for p in exact.vit.parameters())

    grads = jax.jit(jax.grad(lambda p: (model.apply({**variables, 'params': p}, X) * weights).sum()))(
        variables['params'])
    assert all(not np.asarray(g).any() for g in jax.tree_util.tree_leaves(grads['vit']))
    own = {key: value for key, value in grads.items() if key != 'vit'}
    assert all(np.abs(np.asarray(g)).max() > 0 for g in jax.tree_util.tree_leaves(own))


def test_adapters_share_a_backbone_and_leave_it_unchanged():
    """The user workflow: one trained ViT, several adapters (task heads) on it, each trained with optax.

    vit-pytorch: `Adapter(vit=vit, ...)` twice on the same `vit` module. Flax: each adapter's variables hold the
    same backbone params under 'vit'; a training step changes the adapter's own parameters only.
    """
    backbone = ViT(**TINY)
    torch_vit = randomised_torch_model(VIT_ENTRY, TINY)
    vit_params = converters.from_torch(backbone, torch_vit.state_dict())['params']
    vit_logits = apply(backbone, {'params': vit_params}, X)

    adapters = {'a': Adapter(**ADAPTER), 'b': Adapter(vit=backbone, num_memories_per_layer=2, num_classes=3)}
    torch_adapter_class = torch_class(ADAPTER_ENTRY)
    labels = {'a': jnp.array([1, 4]), 'b': jnp.array([2, 0])}
    for seed, (task, adapter) in enumerate(adapters.items()):
        variables = init_variables(adapter, seed=seed)
        variables = {**variables, 'params': {**variables['params'], 'vit': vit_params}}  # the shared backbone

        # the same as torch's adapter on the same torch backbone
        torch.manual_seed(seed)
        torch_adapter = torch_adapter_class(vit=torch_vit, num_memories_per_layer=adapter.num_memories_per_layer,
                                            num_classes=adapter.num_classes).eval()
        own_state = {k: v for k, v in converters.to_torch(adapter, variables).items() if not k.startswith('vit.')}
        torch_adapter.load_state_dict(own_state, strict=False)
        torch_loss = torch.nn.functional.cross_entropy(torch_forward(torch_adapter, X),
                                                       torch.from_numpy(np.asarray(labels[task], np.int64)))

        def loss_fn(params, adapter=adapter, variables=variables, task=task):
            logits = adapter.apply({**variables, 'params': params}, X)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels[task]).mean()

        # adapter a: Adam on the whole tree (the backbone's gradient is zero, so is its update); adapter b: AdamW,
        # which would decay the backbone, so the backbone is frozen in the optimizer too
        optimizer = optax.adam(1e-2) if task == 'a' else optax.multi_transform(
            {'adapter': optax.adamw(1e-2, weight_decay=0.1), 'frozen': optax.set_to_zero()},
            {key: 'frozen' if key == 'vit' else 'adapter' for key in variables['params']})

        @jax.jit
        def step(params, loss_fn=loss_fn, optimizer=optimizer):
            loss, grads = jax.value_and_grad(loss_fn)(params)
            new = optax.apply_updates(params, optimizer.update(grads, optimizer.init(params), params)[0])
            return new, loss, loss_fn(new)

        params = variables['params']
        new, loss, new_loss = step(params)
        assert_close_outputs(loss, torch_loss, ADAPTER_ENTRY.tolerance)
        jax.tree_util.tree_map(np.testing.assert_array_equal, new['vit'], vit_params)
        assert all(np.asarray(a != b).any() for key in new if key != 'vit'
                   for a, b in zip(jax.tree_util.tree_leaves(new[key]), jax.tree_util.tree_leaves(params[key])))
        assert new_loss < loss

    # the backbone itself still classifies as before
    np.testing.assert_array_equal(apply(backbone, {'params': vit_params}, X), vit_logits)


def test_image_tokens_ignore_memories():
    """Inside an adapter the backbone's own tokens come out as in the plain ViT, whatever the memories."""
    backbone = ViT(**TINY)
    params = noisy(init_variables(backbone), seed=2)['params']
    mask = jnp.asarray(memory_attention_mask(17, 4))

    def tokens(module, img, memories, memory_cls, attn_mask):
        x = module.img_to_tokens(img)
        x = jnp.concatenate((jnp.broadcast_to(memory_cls, (x.shape[0], 1, x.shape[-1])), x), axis=1)
        return module.transformer(x, memories=memories, attn_mask=attn_mask)[:, 1:]

    @jax.jit
    def run(memories, memory_cls):
        plain = backbone.apply({'params': params}, X, method=lambda m, img: m.transformer(m.img_to_tokens(img)))
        masked = backbone.apply({'params': params}, X, memories, memory_cls, mask, method=tokens)
        unmasked = backbone.apply({'params': params}, X, memories, memory_cls, None, method=tokens)
        return plain, masked, unmasked

    memories, memory_cls = jnp.asarray(images((2, 4, 32), seed=0)), jnp.asarray(images((32,), seed=5))
    plain, masked, unmasked = run(memories, memory_cls)
    np.testing.assert_allclose(masked, plain, rtol=1e-5, atol=1e-5)
    assert not np.allclose(unmasked, plain, atol=1e-3)  # without the mask the memories do leak in
    _, masked_again, _ = run(2 * memories + 1, -memory_cls)
    np.testing.assert_allclose(masked_again, plain, rtol=1e-5, atol=1e-5)


def test_pool_is_ignored_and_transposed_inputs_with_the_same_patch_count_run():
    config = dict(VIT_ENTRY.configs[1])  # image_size=(12, 20), patch_size=(4, 5), pool='mean'
    model, variables, torch_model = converted_pair(VIT_ENTRY, config)
    x = images((2, 12, 20, 1))
    out = apply(model, variables, x)
    assert_close_outputs(out, torch_forward(torch_model, x), VIT_ENTRY.tolerance)
    np.testing.assert_array_equal(out, apply(ViT(**{**config, 'pool': 'cls'}), variables, x))  # the cls token
    x = images((2, 4, 60, 1))  # a 1 x 12 grid: 12 patches like the 3 x 4 of image_size, so torch accepts it
    assert_close_outputs(apply(model, variables, x), torch_forward(torch_model, x), VIT_ENTRY.tolerance)


def test_other_patch_counts_are_refused_with_sizes():
    model, variables, torch_model = converted_pair(VIT_ENTRY, TINY)
    with pytest.raises(RuntimeError):
        torch_forward(torch_model, images((1, 8, 16, 3)))  # torch cannot add its position embedding either
    with pytest.raises(ValueError, match=r'input of size \(8, 16\) gives 8 patches, but image_size=16 .* has 16'):
        model.apply(variables, images((1, 8, 16, 3)))
    adapter_variables = init_variables(Adapter(**ADAPTER))
    with pytest.raises(ValueError, match=r'input of size \(20, 16\) gives 20 patches'):
        Adapter(**ADAPTER).apply(adapter_variables, images((1, 20, 16, 3)))


def test_no_memories_and_no_classes():
    backbone = ViT(**{**TINY, 'depth': 1})
    config = dict(vit=backbone, num_memories_per_layer=0, num_classes=0)
    model, variables, torch_model = converted_pair(ADAPTER_ENTRY, config)
    assert variables['params']['memories_per_layer'].shape == (1, 0, 32)
    assert variables['buffers']['attn_mask'].shape == (18, 18)
    out = apply(model, variables, X)
    assert out.shape == (2, 0)
    assert_close_outputs(out, torch_forward(torch_model, X), ADAPTER_ENTRY.tolerance)


def test_dropout_only_in_training_and_reproducible():
    """Backbone dropout acts inside the adapter in training (torch freezes weights, not the train mode)."""
    config = dict(ADAPTER, vit=ViT(**{**TINY, 'dropout': 0.5, 'emb_dropout': 0.5}))
    model = Adapter(**config)
    variables = init_variables(Adapter(**ADAPTER))  # dropout owns no variables
    eval_out = apply(model, variables, X)
    np.testing.assert_array_equal(eval_out, apply(Adapter(**ADAPTER), variables, X))

    train = lambda seed: apply(model, variables, X, train=True, rngs={'dropout': jax.random.key(seed)})
    np.testing.assert_array_equal(train(1), train(1))
    assert not np.allclose(train(1), train(2))
    assert not np.allclose(train(1), eval_out)
    with pytest.raises(Exception, match='dropout'):
        model.apply(variables, X, train=True)  # no 'dropout' rng stream given


def test_adapter_saves_and_loads_with_its_backbone(tmp_path):
    model, variables, torch_model = converted_pair(ADAPTER_ENTRY, ADAPTER)
    path = converters.save_torch(tmp_path / 'adapter.safetensors', model, variables)
    loaded = converters.load_torch(path)
    assert isinstance(loaded.vit, torch_class(VIT_ENTRY))
    assert_close_outputs(apply(model, variables, X), torch_forward(loaded, X), ADAPTER_ENTRY.tolerance)
    flax_model, flax_variables = converters.load_flax(path)
    assert flax_model == model
    jax.tree_util.tree_map(np.testing.assert_array_equal, flax_variables, variables)


@pytest.mark.parametrize('config, message', [
    (dict(image_size=18), r'divisible by the patch size: image_size=\(18, 18\), patch_size=\(4, 4\)'),
    (dict(pool='max'), "pool='max'"),
    (dict(heads=0), 'heads=0'),
    (dict(dim_head=0), 'dim_head=0'),
    (dict(depth=-1), 'depth=-1'),
    (dict(num_classes=-1), 'num_classes=-1'),
    (dict(channels=0), 'channels=0 must be a positive integer'),
])
def test_bad_vit_configs_fail_at_construction(config, message):
    with pytest.raises(ValueError, match=message):
        ViT(**{**TINY, **config})


@pytest.mark.parametrize('config, message', [
    (dict(vit=vit.ViT(**TINY)), r'vit must be a vit_flax.learnable_memory_vit.ViT, got vit=vit_flax.vit.ViT'),
    (dict(num_memories_per_layer=-1), 'num_memories_per_layer=-1'),
    (dict(num_classes=-2), 'num_classes=-2'),
])
def test_bad_adapter_configs_fail_at_construction(config, message):
    with pytest.raises(ValueError, match=message):
        Adapter(**{**ADAPTER, **config})
