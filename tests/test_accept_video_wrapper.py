"""AcceptVideoWrapper beyond the registry configs: vit-pytorch's example (an Extractor's outputs, eval_with_no_grad)
with gradients, CvT's channels-first feature maps, the time embedding along the channel axis, torch's pytree order,
one-element outputs, training mode and refusals."""

import collections

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch.utils._pytree import tree_flatten as torch_tree_flatten
from torch.utils._pytree import tree_unflatten as torch_tree_unflatten

import parity
from tests.conftest import (apply, assert_close_gradients, assert_close_outputs, converted_pair, float64_reference,
                            images, nchw, randomised_torch_model)
from vit_flax import converters
from vit_flax.accept_video_wrapper import AcceptVideoWrapper, tree_flatten
from vit_flax.cvt import CvT
from vit_flax.extractor import Extractor
from vit_flax.vit import ViT

ENTRY = parity.BY_NAME['accept_video_wrapper.AcceptVideoWrapper']
VIT_TOKENS, EXTRACTOR_EXAMPLE, *_ = ENTRY.configs
TINY_VIT, TINY_CVT = parity.accept_video_wrapper.TINY_VIT, parity.accept_video_wrapper.TINY_CVT


def exact_outputs_and_gradients(torch_model, video, weights_seed=7, **kwargs):
    """vit-pytorch's float64 outputs on a channels-last video, the weights w of sum(output * w) and its gradients
    (zeros for parameters it does not reach)."""
    exact = float64_reference(torch_model)
    out = exact(nchw(video), **kwargs)
    outs = out if isinstance(out, tuple) else (out,)
    weights = [np.random.default_rng(weights_seed + i).standard_normal(tuple(t.shape)) for i, t in enumerate(outs)]
    sum((t * torch.from_numpy(w)).sum() for t, w in zip(outs, weights)).backward()
    grads = {name: np.zeros(p.shape) if p.grad is None else p.grad.numpy() for name, p in exact.named_parameters()}
    return out, weights, grads


def flax_outputs_and_gradients(model, variables, video, weights, **kwargs):
    """Our outputs and gradients of sum(output * w), the gradients in torch's layout, from one jitted program."""
    def run(params):
        def forward(params):
            return model.apply({**variables, 'params': params}, video, **kwargs)

        out, pullback = jax.vjp(forward, params)
        cotangent = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out),
                                                 [jnp.asarray(w, jnp.float32) for w in weights])
        return out, pullback(cotangent)[0]

    out, grads = jax.jit(run)(variables['params'])
    return out, converters.to_torch(model, {**variables, 'params': grads}, example_inputs=(video,), as_numpy=True)


def test_readme_example_shapes():
    """vit-pytorch's example, swapped to Flax: an Extractor of a ViT-L-sized model on 7 frames of 256 x 256, the
    embeddings projected to 512 with a time embedding and a causal MOSS."""
    v = Extractor(ViT(image_size=256, patch_size=32, num_classes=1000, dim=1024, depth=6, heads=16, mlp_dim=2048,
                      dropout=0.1, emb_dropout=0.1))
    moss_kwargs = dict(dim=512, local_time=3, local_height=3, local_width=3, hidden_dim=64, orders=2, causal=True)
    video_acceptor = AcceptVideoWrapper(v, add_time_pos_emb=True, output_pos_add_pos_emb=1, time_seq_len=12,
                                        dim_emb=1024, proj_embed_to_dim=512, moss=moss_kwargs)
    videos = jnp.zeros((1, 7, 256, 256, 3))
    shapes = jax.eval_shape(video_acceptor.init, jax.random.key(0), videos)
    logits, embeddings = jax.eval_shape(lambda v: video_acceptor.apply(v, videos, eval_with_no_grad=True), shapes)
    assert logits.shape == (1, 7, 1000) and embeddings.shape == (1, 7, 65, 512)
    assert shapes['params']['pos_emb'].shape == (12, 512)
    assert set(shapes['params']) == {'image_net', 'embed_proj', 'pos_emb', 'moss'}
    assert 'transformer' in shapes['params']['image_net']['vit']


def test_readme_example_with_eval_with_no_grad_matches_torch():
    """The example's call, `eval_with_no_grad=True`, at a small size: the same outputs and the same gradients as
    vit-pytorch's, which reach the projection, the time embedding and MOSS but not the image model."""
    model, variables, torch_model = converted_pair(ENTRY, EXTRACTOR_EXAMPLE)
    video = images((2, 4, 8, 8, 3), seed=1)
    torch_out, weights, exact_grads = exact_outputs_and_gradients(torch_model, video, eval_with_no_grad=True)
    out, grads = flax_outputs_and_gradients(model, variables, video, weights, eval_with_no_grad=True)
    assert_close_outputs(out, tuple(t.detach() for t in torch_out), ENTRY.tolerance)
    assert_close_gradients(grads, exact_grads)
    assert all(not grads[name].any() for name in grads if name.startswith('image_net.'))
    assert all(grads[name].any() for name in ('pos_emb', 'embed_proj.weight', 'moss.to_out.weight'))


@pytest.mark.slow
def test_cvt_feature_maps_take_embed_is_channel_first_in_their_own_layout():
    """CvT's `layers` (feature maps) with a time embedding: vit-pytorch's maps are channels-first and take
    `embed_is_channel_first=True`; vit-flax's are channels-last and take False. Same outputs (up to moving the
    channel axis) and gradients."""
    keywords = dict(forward_function='layers', add_time_pos_emb=True, dim_emb=12, time_seq_len=3)
    model = AcceptVideoWrapper(CvT(num_classes=4, **TINY_CVT), embed_is_channel_first=False, **keywords)
    torch_model = randomised_torch_model(ENTRY, dict(image_net=model.image_net, embed_is_channel_first=True,
                                                     **keywords))
    variables = converters.from_torch(model, torch_model.state_dict())
    video = images((2, 3, 12, 8, 3), seed=2)
    torch_out, weights, exact_grads = exact_outputs_and_gradients(torch_model, video)
    assert torch_out.shape == (2, 3, 12, 3, 2)  # (b, t, c, h, w)
    out, grads = flax_outputs_and_gradients(model, variables, video, [np.moveaxis(weights[0], 2, -1)])
    assert out.shape == (2, 3, 3, 2, 12)  # (b, t, h, w, c)
    assert_close_outputs(out, np.moveaxis(torch_out.detach().numpy(), 2, -1), ENTRY.tolerance)
    assert_close_gradients(grads, exact_grads)


@pytest.mark.slow
def test_embed_is_channel_first_adds_along_the_axis_after_time():
    """On the same layout both sides: ViT tokens (b, t, n, d) with n == d, the time embedding added along the
    tokens, as vit-pytorch's reshape to (1, t, d, 1) does."""
    config = dict(image_net=ViT(num_classes=0, **{**TINY_VIT, 'dim': 5, 'heads': 1, 'dim_head': 4}),
                  add_time_pos_emb=True, dim_emb=5, time_seq_len=3, embed_is_channel_first=True)
    model, variables, torch_model = converted_pair(ENTRY, config)
    video = images((2, 3, 8, 8, 3), seed=3)
    torch_out, weights, exact_grads = exact_outputs_and_gradients(torch_model, video)
    out, grads = flax_outputs_and_gradients(model, variables, video, weights)
    assert_close_outputs(out, torch_out.detach(), ENTRY.tolerance)
    assert_close_gradients(grads, exact_grads)
    last_axis = AcceptVideoWrapper(**{**config, 'embed_is_channel_first': False})
    assert not np.allclose(apply(last_axis, variables, video), torch_out.detach().numpy(), atol=1e-4)


def test_outputs_flatten_in_torch_pytree_order():
    """Leaves and structure as torch.utils._pytree's: None is a leaf, dicts keep their insertion order, namedtuples
    and dict classes come back."""
    Pair = collections.namedtuple('Pair', 'first second')
    tree = (None, {'b': 1, 'a': [2, (3,)]}, Pair(4, collections.OrderedDict(z=5, y=None)), [])
    leaves, rebuild = tree_flatten(tree)
    torch_leaves, spec = torch_tree_flatten(tree)
    assert leaves == torch_leaves == [None, 1, 2, 3, 4, 5, None]
    doubled = [None if leaf is None else 2 * leaf for leaf in leaves]
    assert rebuild(doubled) == torch_tree_unflatten(doubled, spec)
    assert type(rebuild(doubled)[2]) is Pair and type(rebuild(doubled)[2].second) is collections.OrderedDict


def test_one_element_outputs_keep_their_shape():
    """vit-pytorch adds the time axis only to outputs of more than one element: one video of one frame of a
    one-class ViT gives logits (1, 1), not (1, 1, 1); two frames give (1, 2, 1)."""
    vit_config = dict(num_classes=1, **TINY_VIT)
    model = AcceptVideoWrapper(ViT(**vit_config))
    torch_model = converters.torch_model('accept_video_wrapper.AcceptVideoWrapper',
                                         dict(image_net=ViT(**vit_config))).eval()
    for frames, shape in ((1, (1, 1)), (2, (1, 2, 1))):
        video = jnp.zeros((1, frames, 8, 8, 3))
        variables = jax.eval_shape(model.init, jax.random.key(0), video)
        assert jax.eval_shape(lambda v: model.apply(v, video), variables).shape == shape
        with torch.no_grad():
            assert tuple(torch_model(torch.zeros(1, 3, frames, 8, 8)).shape) == shape


class LogitsAuxAndTokens(nn.Module):
    """An image model returning None and {'logits', 'aux_loss' (a scalar), 'tokens'}, as a custom model might."""

    @nn.compact
    def __call__(self, img, train: bool = False):
        tokens = nn.Dense(4, name='embed')(img.reshape(img.shape[0], -1, img.shape[-1]))
        return None, {'logits': tokens.mean(1), 'aux_loss': jnp.sum(tokens ** 2), 'tokens': tokens}


def test_custom_outputs_pass_through_and_are_indexed_as_torch_flattens_them():
    """An aux loss (a scalar) and None pass through unchanged; `output_pos_add_pos_emb` counts the leaves in torch's
    order (None first, then the dict's values in insertion order), here picking the tokens."""
    model = AcceptVideoWrapper(LogitsAuxAndTokens(), add_time_pos_emb=True, dim_emb=4, time_seq_len=2,
                               output_pos_add_pos_emb=3)
    video = images((2, 2, 2, 3, 1))
    variables = model.init(jax.random.key(0), video)
    nothing, out = model.apply(variables, video)
    plain = LogitsAuxAndTokens().apply({'params': variables['params']['image_net']},
                                       video.reshape(4, 2, 3, 1))[1]
    assert nothing is None and out['aux_loss'].shape == () and list(out) == ['logits', 'aux_loss', 'tokens']
    np.testing.assert_allclose(out['aux_loss'], plain['aux_loss'])
    np.testing.assert_allclose(out['logits'], plain['logits'].reshape(2, 2, 4))
    pos_emb = variables['params']['pos_emb']
    np.testing.assert_allclose(out['tokens'], plain['tokens'].reshape(2, 2, 6, 4) + pos_emb[None, :, None], atol=1e-6)


@pytest.mark.slow
def test_training_runs_the_image_model_in_training_mode_unless_eval_with_no_grad():
    model = AcceptVideoWrapper(ViT(num_classes=3, dropout=0.5, emb_dropout=0.5, **TINY_VIT))
    video = images((2, 2, 8, 8, 3))
    variables = model.init(jax.random.key(0), video)
    eval_out = model.apply(variables, video)
    train = lambda seed: model.apply(variables, video, train=True, rngs={'dropout': jax.random.key(seed)})  # noqa
    assert not np.allclose(train(1), eval_out) and not np.allclose(train(1), train(2))
    np.testing.assert_array_equal(model.apply(variables, video, train=True, eval_with_no_grad=True), eval_out)


def test_forward_kwargs_reach_the_image_model():
    model = AcceptVideoWrapper(Extractor(ViT(num_classes=3, **TINY_VIT)))
    video = jnp.zeros((1, 2, 8, 8, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), video)
    embeddings = jax.eval_shape(
        lambda v: model.apply(v, video, forward_kwargs=dict(return_embeddings_only=True)), variables)
    assert embeddings.shape == (1, 2, 5, 16)
    missing = AcceptVideoWrapper(Extractor(ViT(num_classes=3, **TINY_VIT), layer_name='decoder'))
    with pytest.raises(ValueError, match="layer 'decoder' whose embeddings to take was not found in ViT"):
        jax.eval_shape(missing.init, jax.random.key(0), video)


@pytest.mark.parametrize('keywords, message', [
    (dict(proj_embed_to_dim=8), '`dim_emb` must be passed in with proj_embed_to_dim=8'),
    (dict(add_time_pos_emb=True, dim_emb=16), r'`dim_emb` and `time_seq_len` must be set .* time_seq_len=None'),
    (dict(time_seq_len=0), 'AcceptVideoWrapper: time_seq_len=0 must be a positive integer'),
    (dict(forward_function='embed'), "ViT has no method forward_function='embed'"),
    (dict(image_net=CvT(num_classes=3, **TINY_CVT), moss=dict(dim=3)), '`patch_size` must be provided'),
    (dict(image_net=Extractor(ViT(num_classes=3, **TINY_VIT)), forward_function='layers'),
     "an Extractor is called through its forward, got forward_function='layers'"),
    (dict(moss=dict(dim=16, local_time=2)), 'MOSS: local_time=2 must be a positive odd integer'),
])
def test_bad_configs_fail_at_construction(keywords, message):
    with pytest.raises(ValueError, match=message):
        AcceptVideoWrapper(**{'image_net': ViT(num_classes=0, **TINY_VIT), **keywords})


def test_an_image_net_that_is_no_flax_model_is_refused():
    with pytest.raises(TypeError, match='wraps a Flax image model or an extractor.Extractor of one, got image_net '
                                        'of type function'):
        AcceptVideoWrapper(lambda x: x)


@pytest.mark.parametrize('keywords, shape, message', [
    (dict(add_time_pos_emb=True, dim_emb=16, time_seq_len=2), (1, 3, 8, 8, 3),
     r'received video with 3 frames but `time_seq_len` \(2\) is too low'),
    (dict(output_pos_add_pos_emb=1, add_time_pos_emb=True, dim_emb=16, time_seq_len=2), (1, 2, 8, 8, 3),
     'output_pos_add_pos_emb=1 picks the output to add the time embedding to, but the image net gives 1 outputs'),
    (dict(dim_emb=8, proj_embed_to_dim=4), (1, 2, 8, 8, 3),
     r'the output to project has shape \(1, 2, 5, 16\), whose last axis is not dim_emb=8'),
    (dict(image_net=ViT(num_classes=3, **TINY_VIT), moss=dict(dim=3)), (1, 2, 8, 8, 3),
     r'MOSS runs on tokens \(batch, frames, tokens, dim\) .* output 0 has shape \(1, 2, 3\)'),
    (dict(moss=dict(dim=16)), (1, 2, 8, 8),
     r'expected videos of shape \(batch, frames, height, width, channels\), got shape \(1, 2, 8, 8\)'),
])
def test_bad_inputs_name_the_values(keywords, shape, message):
    model = AcceptVideoWrapper(**{'image_net': ViT(num_classes=0, **TINY_VIT), **keywords})
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))


def test_a_wrapper_with_moss_keywords_round_trips_through_files(tmp_path):
    """The `moss` dict is JSON data of the sidecar (files.DICT_KEYWORDS): the file loads into both frameworks, and
    vit-pytorch's model gives the Flax model's outputs on the saved weights."""
    config = ENTRY.configs[5]  # a mean-pool ViT's tokens with MOSS from a dict of keywords
    model = AcceptVideoWrapper(**config)
    video = images((2, 3, 8, 8, 1), seed=3)
    variables = model.init(jax.random.key(0), video)
    path = converters.save_torch(tmp_path / 'wrapper.safetensors', model, variables)
    loaded, loaded_variables = converters.load_flax(path)
    assert loaded.moss == config['moss']
    torch_model = converters.load_torch(path)
    with torch.no_grad():
        expected = float64_reference(torch_model)(nchw(video))
    assert_close_outputs(apply(loaded, loaded_variables, video), expected, ENTRY.tolerance)


def test_a_wrapper_of_an_extractor_is_refused_a_sidecar_by_name(tmp_path):
    model = AcceptVideoWrapper(**EXTRACTOR_EXAMPLE)
    variables = model.init(jax.random.key(0), images((1, 2, 8, 8, 3)))
    with pytest.raises(ValueError, match=r'^image_net: an Extractor of ViT has no sidecar form'):
        converters.save_torch(tmp_path / 'wrapper.safetensors', model, variables)
    assert not list(tmp_path.iterdir())
