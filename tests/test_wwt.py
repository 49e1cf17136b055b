"""wwt.py beyond the registry configs: vit-pytorch's quick run, `return_embeddings` and the return structures against
vit-pytorch, the SIGReg loss and its stream, AutoencodingHead with a decoder of its own against vit-pytorch's, task
heads without a twin, dropout, refusals, and the trainer's objective 'wwt' (WWTAutoencoder, vit-flax's own) against
a hand computation from vit-pytorch's pieces, and trained on the digits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from einops import rearrange

import parity
from parity.wwt import torch_randn_replays
from tests.conftest import (_cached, _model_key, apply, assert_close_gradients, assert_close_outputs, converted_pair,
                            float64_reference, images, init_variables, nchw)
from vit_flax import converters, layers, lejepa, registry, wwt
from vit_flax.wwt import (AutoencodingHead, FeedForward, WWT, WWTAutoencoder, WWTFeatureReturn, WWTReturn)

ENTRY = parity.BY_NAME['wwt.WWT']
TINY = ENTRY.configs[0]
TORCH_WWT = converters.import_vit_pytorch('vit_pytorch.wwt')

# two query groups (5-D masks), registers, return_tokens, SIGReg on two of three levels, no task heads
GROUPS = dict(image_size=8, patch_size=2, num_classes=3, dim=8, depth=1, num_slots=(5, 3, 2),
              sigreg_slots=(True, False, True), interactions=((0, 1), (1, 2), (0, 3)), heads=2, dim_head=4, mlp_dim=16,
              channels=2, return_tokens=True, token_softmax_over_slots=True, num_register_tokens=2,
              num_register_slots=(1, 0, 2))


def torch_run(torch_model, x, directions=(), **kwargs):
    """vit-pytorch's float64 answer on channels-last `x`, its torch.randn replaying `directions`."""
    with torch.no_grad(), torch_randn_replays(directions):
        return float64_reference(torch_model)(nchw(x), **kwargs)


def embeddings(model, variables, x):
    """`model.apply(..., return_embeddings=True)` under jit, compiled once per configuration in this module."""
    run = _cached((*_model_key(model), 'embeddings'),
                  lambda: jax.jit(lambda v, x: model.apply(v, x, return_embeddings=True)))
    return run(variables, x)


# vit-pytorch's example


@pytest.mark.parametrize('token_softmax_over_slots, project_mask_groups, channel_first',
                         [(False, False, False), (True, False, False), (True, True, True)])
def test_vit_pytorch_quick_run(token_softmax_over_slots, project_mask_groups, channel_first):
    """vit_pytorch/wwt.py's `__main__`, at its sizes (shapes only)."""
    autoencoding_head = AutoencodingHead(image_size=256, patch_size=32, pathways=((3, 2, 0), (0, 2, 3)),
                                         channel_first=channel_first)
    model = WWT(image_size=256, patch_size=32, num_classes=1000, dim=256, depth=2, num_slots=(64, 32, 16),
                sigreg_slots=(True, False, True), interactions=((0, 1), (0, 2), (1, 2), (2, 3)), heads=4, mlp_dim=512,
                return_tokens=True, l1norm_after_tokens_softmax=True,
                token_softmax_over_slots=token_softmax_over_slots, project_mask_groups=project_mask_groups,
                num_register_tokens=4, num_register_slots=(4, 4, 2), task_heads=autoencoding_head)
    img = jax.ShapeDtypeStruct((1, 256, 256, 3), jnp.float32)
    rngs = {'params': jax.random.key(0), 'sigreg': jax.random.key(1)}
    variables = jax.eval_shape(model.init, rngs, img)
    out, dense_feature_maps, sreg_loss = jax.eval_shape(
        lambda v, x: model.apply(v, x, rngs={'sigreg': jax.random.key(1)}), variables, img)
    slot_preds, token_preds = out
    assert isinstance(out, WWTReturn) and slot_preds.shape == token_preds.shape == (1, 1000)
    assert isinstance(dense_feature_maps, tuple) and len(dense_feature_maps) == 2
    dense_320, dense_023 = dense_feature_maps
    assert dense_320.shape == ((1, 256, 8, 8) if channel_first else (1, 8, 8, 256))
    assert dense_023.shape == (1, 16, 256)
    assert sreg_loss.shape == ()


# return structures against vit-pytorch


def test_return_embeddings_and_the_spread_return_match_torch():
    """`return_embeddings`: the slots, tokens and both query groups' masks (registers cut off); and with
    return_tokens and SIGReg but no task heads, vit-pytorch's `(*WWTReturn, loss)`: a plain 3-tuple."""
    model, variables, torch_model = converted_pair(ENTRY, GROUPS)
    x = images((2, 8, 8, 2), seed=1)
    features = embeddings(model, variables, x)
    expected = torch_run(torch_model, x, return_embeddings=True)
    assert isinstance(features, WWTFeatureReturn) and isinstance(features.slots, tuple)
    assert [s.shape for s in features.slots] == [(2, 5, 8), (2, 3, 8), (2, 2, 8)]
    assert features.tokens.shape == (2, 16, 8)
    assert [m.shape for m in features.masks] == [(2, 2, 2, 16, 5), (2, 2, 2, 5, 3), (2, 2, 2, 16, 2)]
    assert_close_outputs(tuple(features), tuple(expected), ENTRY.tolerance)

    rngs = {lejepa.SIGREG: jax.random.key(2)}
    out = apply(model, variables, x, rngs=rngs)
    directions = model.apply({}, x, rngs=rngs, method=WWT.sigreg_directions)
    assert type(out) is tuple and len(out) == 3 and out[2].shape == ()
    expected = torch_run(torch_model, x, directions)
    assert type(expected) is tuple and len(expected) == 3
    assert_close_outputs(out, expected, ENTRY.tolerance)

    # without return_tokens, no tokens come back
    plain = model.clone(return_tokens=False)
    shapes = jax.eval_shape(lambda v: plain.apply(v, x, return_embeddings=True),
                            {'params': {k: v for k, v in variables['params'].items() if 'mlp_head_tokens' not in k}})
    assert shapes.tokens is None


def test_sigreg_is_lejepas_loss_of_the_selected_levels_drawn_from_its_stream():
    """The last output is lejepa.sigreg_loss summed over the levels sigreg_slots selects, each with its own key of the
    'sigreg' stream (one make_rng per selected level, in level order); another key, another loss; none, an error."""
    model, variables, _ = converted_pair(ENTRY, GROUPS)
    x = images((2, 8, 8, 2), seed=3)
    key, other = jax.random.split(jax.random.key(5))
    slots = embeddings(model, variables, x).slots
    level_keys = model.apply({}, x, rngs={lejepa.SIGREG: key},
                             method=lambda module, x: wwt.sigreg_keys(module, module.resolved_sigreg_slots()))
    assert len(level_keys) == 2
    by_hand = jax.jit(lambda s0, s2, k0, k2: lejepa.sigreg_loss(s0, k0) + lejepa.sigreg_loss(s2, k2))(
        slots[0], slots[2], *level_keys)
    loss = apply(model, variables, x, rngs={lejepa.SIGREG: key})[-1]
    np.testing.assert_allclose(loss, by_hand, rtol=1e-6)
    assert apply(model, variables, x, rngs={lejepa.SIGREG: other})[-1] != loss
    directions = model.apply({}, x, rngs={lejepa.SIGREG: key}, method=WWT.sigreg_directions)
    for draw, level_key in zip(directions, level_keys):
        np.testing.assert_array_equal(draw, lejepa.sigreg_slice_draws(level_key, 1024, 8))
    with pytest.raises(Exception, match='sigreg'):
        jax.eval_shape(model.apply, variables, x)


def test_init_builds_the_whole_tree_also_with_return_embeddings():
    """vit-pytorch's `return_embeddings` skips the heads; at init they run here anyway, so that the variables are the
    whole model's (an objective initialises its encoder through return_embeddings)."""
    model = ENTRY.build(1)  # heads, token head, a task head with a decoder
    x = jnp.zeros((1, 16, 16, 3))
    shapes = lambda tree: jax.tree_util.tree_map(jnp.shape, tree)  # noqa: E731
    whole = jax.eval_shape(model.init, jax.random.key(0), x)
    assert shapes(jax.eval_shape(lambda: model.init(jax.random.key(0), x, return_embeddings=True))) == shapes(whole)
    assert {'mlp_head_0', 'mlp_head_1', 'mlp_head_tokens_1', 'task_heads_0'} <= set(whole['params'])
    assert set(whole['params']['task_heads_0']['decoder']) == {'0', '1', '4'}


# AutoencodingHead and task heads


@pytest.mark.parametrize('pathways, channel_first', [(((3, 2, 0), (0, 2, 3)), False), (None, True), (((1,),), False)])
def test_autoencoding_head_with_a_decoder_of_its_own_matches_vit_pytorchs(pathways, channel_first):
    """A standalone head (any Flax decoder, here a Linear) against vit-pytorch's with nn.Linear, on random features
    and 4-D and 5-D masks."""
    rng = np.random.default_rng(0)
    interactions = ((0, 1), (0, 2), (1, 2), (2, 3))
    lengths = (6, 4, 3, 2)  # a 2 x 3 patch grid of 2 x 2 patches, then the slot levels
    features = tuple(rng.standard_normal((2, n, 8), dtype=np.float32) for n in lengths)
    masks = [rng.standard_normal((2, 2, 3, lengths[i], lengths[j]) if k % 2 else (2, 3, lengths[i], lengths[j]),
                                 dtype=np.float32) for k, (i, j) in enumerate(interactions)]
    decoder = layers.Linear(5)
    head = AutoencodingHead(image_size=(4, 6), patch_size=2, pathways=pathways, channel_first=channel_first,
                            decoder=decoder if not channel_first else None)
    variables = head.init(jax.random.key(0), features, masks, interactions)
    out = jax.jit(lambda v, f, m: head.apply(v, f, m, interactions))(variables, features, masks)

    torch_decoder = None
    if not channel_first:
        torch_decoder = torch.nn.Linear(8, 5).double()
        torch_decoder.load_state_dict(converters.to_torch(layers.Linear(5), {'params': variables['params']['decoder']},
                                                          example_inputs=(features[0],)))
    torch_head = TORCH_WWT.AutoencodingHead(image_size=(4, 6), patch_size=2, pathways=pathways,
                                            channel_first=channel_first, decoder=torch_decoder)
    as_torch = lambda arrays: [torch.from_numpy(a).double() for a in arrays]  # noqa: E731
    with torch.no_grad():
        expected = torch_head(as_torch(features), as_torch(masks), interactions)
    assert_close_outputs(out, expected, ENTRY.tolerance)
    if pathways is None:  # the default pathways: every level the patches interact with, down to the patches
        assert [o.shape for o in out] == [(2, 8, 2, 3), (2, 8, 2, 3)]


def test_task_heads_run_any_flax_module_but_only_twins_convert():
    """A task head of one's own (here an AutoencodingHead whose decoder is a layers.Linear) runs, its variables under
    task_heads_0; the converters build vit-pytorch's model only from modules with a twin, and say which has none."""
    head = AutoencodingHead(image_size=8, patch_size=4, decoder=layers.Linear(3))
    model = WWT(**{**TINY, 'task_heads': [head]})
    x = jnp.zeros((1, 8, 8, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    assert jax.tree_util.tree_map(jnp.shape, variables['params']['task_heads_0']) == {
        'decoder': {'kernel': (16, 3), 'bias': (3,)}}
    logits, dense = jax.eval_shape(model.apply, variables, x)
    assert logits.shape == (1, 5) and dense.shape == (1, 2, 2, 3)
    with pytest.raises(ValueError, match='vit_flax.layers.Linear has no vit-pytorch twin'):
        converters.torch_keywords(registry.torch_kwargs(model))
    twin = converters.torch_keywords(registry.torch_kwargs(WWT(**{**TINY, 'task_heads': AutoencodingHead(
        image_size=8, patch_size=4, decoder=FeedForward(16, 4, out_dim=3))})))['task_heads']
    assert len(twin) == 1 and isinstance(twin[0], TORCH_WWT.AutoencodingHead)


# training mode


def test_dropout_acts_in_training_from_its_stream():
    """(In eval mode dropout does nothing: the parity configuration with dropout=0.1 matches vit-pytorch's eval.)"""
    model = WWT(**{**TINY, 'dropout': 0.5})
    x = images((2, 8, 8, 3), seed=4)
    variables = init_variables(model)
    k = jax.random.split(jax.random.key(1), 2)
    run = lambda key: apply(model, variables, x, train=True, rngs={'dropout': key})  # noqa: E731
    train_out = run(k[0])
    assert not np.allclose(run(k[1]), train_out)
    np.testing.assert_array_equal(run(k[0]), train_out)


def test_defaults_are_vit_pytorchs():
    model = WWT(image_size=8, patch_size=4, num_classes=2, dim=8, depth=1, num_slots=2)
    assert (model.heads, model.dim_head, model.mlp_dim, model.channels, model.dropout, model.gate_attention,
            model.num_register_tokens, model.num_register_slots, model.task_heads, model.sigreg_slots,
            model.interactions) == (8, 64, None, 3, 0.0, True, 0, 0, (), None, None)
    assert model.resolved_interactions() == ((0, 1),) and WWT.rng_streams == ('sigreg',)
    head = AutoencodingHead(image_size=8, patch_size=4)
    assert (head.decoder, head.pathways, head.patch_pathway_id, head.channel_first) == (None, None, 0, False)


# refusals


@pytest.mark.parametrize('change, match', [
    (dict(num_slots=(4, 4)), r'num_slots=\(4, 4\): to establish a part-whole hierarchy'),
    (dict(num_slots=(2, 3)), r'num_slots=\(2, 3\): to establish'),
    (dict(num_slots=()), r'num_slots=\(\) needs at least one slot level'),
    (dict(num_slots=(0,)), r'num_slots=\(0,\) holds 0; each entry must be a positive integer'),
    (dict(num_slots=(3, 2), sigreg_slots=(True,)), r'sigreg_slots=\(True,\) has 1 entries for the 2 slot levels'),
    (dict(num_slots=(3, 2), num_register_slots=(1, 1, 1)), r'num_register_slots=\(1, 1, 1\) has 3 entries'),
    (dict(num_register_slots=-1), r'num_register_slots=-1 must be a non-negative integer'),
    (dict(interactions=((0, 1), (0, 1))), 'must be unique'),
    (dict(interactions=((1, 0),)), r'interaction \(1, 0\) .* strictly ascending order, 0 <= i < j <= 1'),
    (dict(interactions=((0, 2),)), r'interaction \(0, 2\)'),
    (dict(interactions=((-1, 1),)), r'interaction \(-1, 1\)'),
    (dict(task_heads=(lambda *args: None,)), 'task_heads must be Flax linen Modules, got function'),
    (dict(image_size=10), 'Image dimensions must be divisible by the patch size'),
])
def test_bad_configurations_are_refused_with_the_value(change, match):
    with pytest.raises(ValueError, match=match):
        WWT(**{**TINY, **change})


@pytest.mark.parametrize('pathways, match', [
    (((3, 1, 2),), r'pathway \(3, 1, 2\) must be strictly directional'),
    (((0, 2, 1),), r'pathway \(0, 2, 1\) must be strictly directional'),
    (((),), 'holds an empty pathway'),
])
def test_pathways_that_turn_are_refused(pathways, match):
    with pytest.raises(ValueError, match=match):
        AutoencodingHead(image_size=8, patch_size=4, pathways=pathways)


def test_missing_interactions_and_pathways_and_bad_inputs_are_refused():
    x = jnp.zeros((1, 8, 8, 3))
    init = lambda model, x=x: jax.eval_shape(model.init, jax.random.key(0), x)  # noqa: E731
    with pytest.raises(ValueError, match=r'pathway \(2, 0\) needs interaction \(0, 2\), which is missing'):
        init(WWT(**{**TINY, 'num_slots': (2, 1), 'interactions': ((0, 1), (1, 2)),
                    'task_heads': AutoencodingHead(8, 4, pathways=((2, 0),))}))
    with pytest.raises(ValueError, match=r'no valid pathways found: no interaction of interactions=\(\(1, 2\),\)'):
        init(WWT(**{**TINY, 'num_slots': (2, 1), 'interactions': ((1, 2),), 'task_heads': AutoencodingHead(8, 4)}))
    with pytest.raises(ValueError, match=r'input of size \(8, 12\) gives 6 patches, but the position embedding'):
        init(WWT(**TINY), jnp.zeros((1, 8, 12, 3)))
    with pytest.raises(ValueError, match='expected 3 channels'):
        init(WWT(**TINY), jnp.zeros((1, 8, 8, 1)))
    with pytest.raises(ValueError, match=r'FeedForward\(dim=4\) got inputs of 16 features'):
        init(WWT(**{**TINY, 'task_heads': AutoencodingHead(8, 4, decoder=FeedForward(4, 4))}))


# the trainer's objective 'wwt' (vit-flax's own)

# two slot levels with the patches (two pathways to reconstruct through), SIGReg on the first, registers, channels
OBJECTIVE_ENCODER = dict(image_size=8, patch_size=2, num_classes=3, dim=8, depth=1, num_slots=(4, 2),
                         sigreg_slots=(True, False), heads=2, dim_head=4, mlp_dim=16, channels=2, num_register_tokens=1,
                         num_register_slots=(1, 0), l1norm_after_tokens_softmax=True)


class TorchAutoencoding(torch.nn.Module):
    """The objective written with vit-pytorch's pieces: its WWT's `return_embeddings`, its AutoencodingHead with an
    nn.Linear decoder, the MSE against the patches (b h w (p1 p2 c)), its lejepa.sigreg_loss."""

    def __init__(self, encoder, image_size, patch_size, pixels, sigreg_loss_weight):
        super().__init__()
        self.encoder = encoder
        self.head = TORCH_WWT.AutoencodingHead(image_size=image_size, patch_size=patch_size,
                                               decoder=torch.nn.Linear(encoder.pos_embedding.shape[-1], pixels))
        self.patch_size, self.sigreg_loss_weight = patch_size, sigreg_loss_weight

    def forward(self, img):
        slots, _, masks = self.encoder(img, return_embeddings=True)
        maps = self.head((None, *slots), masks, self.encoder.interactions)
        maps = maps if isinstance(maps, tuple) else (maps,)
        target = rearrange(img, 'b c (h p1) (w p2) -> b h w (p1 p2 c)', p1=self.patch_size, p2=self.patch_size)
        loss = sum(torch.nn.functional.mse_loss(m, target) for m in maps) / len(maps)
        sigreg_loss = converters.import_vit_pytorch('vit_pytorch.lejepa').sigreg_loss
        sreg = sum(sigreg_loss(s) for s, selected in zip(slots, self.encoder.sigreg_slots) if selected)
        return loss + self.sigreg_loss_weight * sreg


def test_objective_loss_and_gradients_equal_a_hand_computation_with_vit_pytorchs_pieces():
    _, _, torch_encoder = converted_pair(ENTRY, OBJECTIVE_ENCODER, seed=2)
    objective = WWTAutoencoder(encoder=WWT(**OBJECTIVE_ENCODER), sigreg_loss_weight=0.5)
    torch_objective = TorchAutoencoding(torch_encoder, 8, 2, 2 * 2 * 2, 0.5)
    x = images((2, 8, 8, 2), seed=6)
    # the state dict of the objective: the encoder's, and the decoder (torch's inside its head)
    state = {f'encoder.{k}': v for k, v in torch_encoder.state_dict().items()}
    state.update({k.removeprefix('head.'): v for k, v in torch_objective.state_dict().items() if k.startswith('head.')})
    variables = converters.from_torch(objective, state, example_inputs=(x,))
    assert set(variables['params']) == {'encoder', 'decoder'}

    rngs = {lejepa.SIGREG: jax.random.key(7)}
    directions = objective.apply({}, x, rngs=rngs, method=WWTAutoencoder.sigreg_directions)
    assert len(directions) == 1
    exact = float64_reference(torch_objective)
    with torch_randn_replays(directions):
        expected = exact(nchw(x))
    expected.backward()
    loss, grads = jax.jit(jax.value_and_grad(lambda p: objective.apply({'params': p}, x, rngs=rngs)))(
        variables['params'])
    assert_close_outputs(loss, expected.detach(), ENTRY.tolerance)
    flax_grads = converters.to_torch(objective, {'params': grads}, example_inputs=(x,), as_numpy=True)
    flax_grads = {(f'head.{k}' if k.startswith('decoder.') else k): v for k, v in flax_grads.items()}
    assert_close_gradients(flax_grads, {k: np.zeros(p.shape) if p.grad is None else p.grad.numpy()
                                        for k, p in exact.named_parameters()})


def test_objective_holds_a_plain_wwt_and_refuses_what_would_not_export():
    objective = WWTAutoencoder(encoder=WWT(**OBJECTIVE_ENCODER))
    x = jnp.zeros((1, 8, 8, 2))
    shapes = lambda tree: jax.tree_util.tree_map(jnp.shape, tree)  # noqa: E731
    variables = jax.eval_shape(objective.init, jax.random.key(0), x)
    assert shapes(variables['params']['encoder']) == shapes(
        jax.eval_shape(objective.encoder.init, jax.random.key(0), x)['params'])
    assert shapes(variables['params']['decoder']) == {'kernel': (8, 8), 'bias': (8,)}
    assert (WWTAutoencoder.encoder_keyword, WWTAutoencoder.encoder_path, WWTAutoencoder.rng_streams,
            WWTAutoencoder.takes_labels, objective.sigreg_loss_weight) == ('encoder', ('encoder',), ('sigreg',), False,
                                                                           1.0)

    with pytest.raises(ValueError, match='the encoder has 1 task_heads'):
        WWTAutoencoder(encoder=WWT(**{**OBJECTIVE_ENCODER, 'task_heads': AutoencodingHead(8, 2)}))
    with pytest.raises(ValueError, match=r'no slot level interacts with the patch tokens \(interactions=\(\(1, 2\),\)'):
        WWTAutoencoder(encoder=WWT(**{**OBJECTIVE_ENCODER, 'interactions': ((1, 2),)}))
    with pytest.raises(ValueError, match='sigreg_loss_weight=-1.0 must be a non-negative number'):
        WWTAutoencoder(encoder=WWT(**OBJECTIVE_ENCODER), sigreg_loss_weight=-1.0)
    with pytest.raises(ValueError, match='takes a vit_flax.wwt.WWT encoder, got encoder=vit_flax.wwt.FeedForward'):
        WWTAutoencoder(encoder=FeedForward(8, 8))


@pytest.mark.slow  # about 35 s on 2 shared cores: 60 steps and their compile
def test_objective_lowers_the_loss_on_the_digits_and_exports_the_wwt(tmp_path):
    from tests.test_objectives_training import assert_exports_as_the_model, pretrain

    config, metrics, curve = pretrain(tmp_path, 'wwt', steps=60)
    assert set(metrics) == {'eval_loss'} and np.isfinite(metrics['eval_loss'])
    assert np.mean(curve[-4:]) < 0.8 * np.mean(curve[:2]), curve
    # the SIGReg draws change no parameter: the export check compares the logits, which need none
    config.model.sigreg_slots = None
    assert_exports_as_the_model(config, tmp_path)


def test_a_task_head_with_a_decoder_travels_through_the_sidecar(tmp_path):
    """The sidecar names the task head and its FeedForward decoder (a function in vit-pytorch) as their vit-pytorch
    twins: vit-pytorch's model loads strictly, and vit-flax's is the same model."""
    model = ENTRY.build(1)
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(lambda: model.init(registry.init_rngs(jax.random.key(0)), *registry.example_inputs(model)))
    variables = jax.tree_util.tree_map(lambda leaf: rng.standard_normal(leaf.shape).astype(leaf.dtype), shapes)
    path = converters.save_torch(tmp_path / 'wwt.safetensors', model, variables)
    torch_model = converters.load_torch(path)
    assert isinstance(torch_model.task_heads[0].decoder, torch.nn.Sequential)
    expected = converters.to_torch(model, variables)
    assert torch_model.state_dict().keys() == expected.keys()
    assert all(torch.equal(tensor, expected[key]) for key, tensor in torch_model.state_dict().items())
    loaded_model, _ = converters.load_flax(path)
    assert loaded_model == model
