"""extractor.Extractor against vit-pytorch's Extractor, on every layer of every architecture it can reach.

Feature maps and images (4-D and 5-D) come out channels-last here and channels-first from torch: the comparison
moves torch's channel axis last.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import parity
from vit_flax import converters
from tests.conftest import assert_close_outputs, converted_pair, float64_reference, same_draws, torch_inputs

from vit_flax.extractor import Extractor, flax_path
from vit_flax.vit import ViT

# vit-pytorch's top-level layers (`getattr(vit, layer_name)`) that have a Flax twin, per architecture. The others are
# nn.Sequential / nn.ModuleList containers, whose members vit-flax names `<layer>_<i>` (the parameter-tree rule), so
# they are reached by their members' names (or, for CvT's `layers`, by a method standing for the container).
EXTRACTABLE = {
    'vit.ViT': ('transformer', 'to_latent', 'mlp_head'),
    'simple_vit.SimpleViT': ('transformer', 'to_latent', 'linear_head'),
    'parallel_vit.ViT': ('transformer', 'to_latent'),
    'deepvit.DeepViT': ('transformer', 'to_latent'),
    'vit_for_small_dataset.ViT': ('to_patch_embedding', 'transformer', 'to_latent'),
    'cait.CaiT': ('patch_transformer', 'cls_transformer'),
    'vit_with_patch_merger.ViT': ('transformer',),
    'vit_with_patch_merger.PatchMerger': ('norm',),
    't2t.T2TViT': ('transformer', 'to_latent', 'mlp_head'),
    'cct.CCT': ('tokenizer', 'classifier'),
    'mp3.ViT': ('to_patch_embedding', 'transformer'),
    'cross_vit.CrossViT': ('sm_image_embedder', 'lg_image_embedder', 'multi_scale_encoder'),
    'efficient.ViT': ('transformer', 'to_latent'),
    'distill.DistillableViT': ('transformer', 'to_latent', 'mlp_head'),
    'distill.DistillableT2TViT': ('transformer', 'to_latent', 'mlp_head'),
    'distill.DistillableEfficientViT': ('transformer', 'to_latent'),
    'cvt.CvT': ('layers', 'to_logits'),
    'ats_vit.ViT': ('transformer',),
    'learnable_memory_vit.ViT': ('transformer',),
    'levit.LeViT': ('mlp_head',),
    'scalable_vit.ScalableViT': ('to_patches',),
    'xcit.XCiT': ('xcit_transformer', 'final_norm', 'cls_transformer'),
    'regionvit.RegionViT': ('local_encoder',),
    'vit_3d.ViT': ('transformer', 'to_latent'),
    'simple_vit_3d.SimpleViT': ('transformer', 'to_latent', 'linear_head'),
    'cct_3d.CCT': ('tokenizer', 'classifier'),
    'vivit.ViT': ('spatial_transformer', 'temporal_transformer', 'to_latent', 'mlp_head'),
}
FAST = ('vit.ViT', 'cross_vit.CrossViT', 'cvt.CvT', 'cct.CCT')

# vit-pytorch's hook reads a layer's inputs after its forward ran: CCT's classifier adds its position embedding to
# its input in place (`x += self.positional_emb`), so torch reports the sum; vit-flax gives the input as it was
# (test_cct_classifier_input_is_the_tokenizer_output)
TORCH_INPUT_UPDATED_IN_PLACE = {('cct.CCT', 'classifier'), ('cct_3d.CCT', 'classifier')}


def torch_extract(torch_model, inputs, layer=None, **kwargs):
    """vit-pytorch's Extractor on the model's float64 reference (`layer`: a dotted submodule name, found in it)."""
    torch_model = float64_reference(torch_model)
    if layer is not None:
        kwargs['layer'] = torch_model.get_submodule(layer)
    extractor = converters.import_vit_pytorch('vit_pytorch.extractor').Extractor(torch_model, **kwargs)
    with torch.no_grad():
        result = extractor(*inputs)
    extractor.eject()  # the hooks stay on the model otherwise
    return result


def in_flax_layout(torch_tree, flax_tree):
    """torch's channels-first feature maps and images in vit-flax's channels-last layout, where the two differ (a
    4-D token grid, such as MP3's patch embedding, is (b, h, w, d) on both sides)."""
    def move(t, f):
        t = t.detach().numpy()
        return np.moveaxis(t, 1, -1) if t.ndim >= 4 and t.shape != np.shape(f) else t

    if isinstance(torch_tree, tuple):
        return tuple(move(t, f) for t, f in zip(torch_tree, flax_tree))
    return move(torch_tree, flax_tree)


def test_every_registered_architecture_is_listed():
    assert set(EXTRACTABLE) <= set(parity.BY_NAME)


@pytest.mark.parametrize('name', [
    pytest.param(name, marks=[] if name in FAST else [pytest.mark.slow]) for name in EXTRACTABLE
])
def test_extractor_matches_vit_pytorch(name):
    entry = parity.BY_NAME[name]
    model, variables, torch_model = converted_pair(entry, entry.configs[0])
    inputs = entry.inputs.example(model, 2, np.random.default_rng(0))
    rngs, torch_draws = same_draws(entry, model, inputs)
    for layer_name in EXTRACTABLE[name]:
        for save_input in (False, True):
            if save_input and (name, layer_name) in TORCH_INPUT_UPDATED_IN_PLACE:
                continue
            extractor = Extractor(model, layer_name=layer_name, layer_save_input=save_input)
            logits, embeddings = jax.jit(extractor.apply)(variables, *inputs, rngs=rngs)
            with torch_draws:
                torch_logits, torch_embeddings = torch_extract(
                    torch_model, torch_inputs(entry, inputs), layer_name=layer_name, layer_save_input=save_input)
            assert type(embeddings) is type(torch_embeddings) or not isinstance(torch_embeddings, tuple), layer_name
            assert_close_outputs((logits, embeddings), (torch_logits, in_flax_layout(torch_embeddings, embeddings)),
                                 entry.tolerance)
            if hasattr(entry.inputs, 'randomness'):  # a draw serves one call
                rngs, torch_draws = same_draws(entry, model, inputs)


def test_cross_vit_gives_both_scales_as_in_the_readme():
    entry = parity.BY_NAME['cross_vit.CrossViT']
    model, variables, torch_model = converted_pair(entry, entry.configs[0])
    (images,) = entry.inputs.example(model, 1, np.random.default_rng(0))
    logits, (small, large) = Extractor(model, layer_name='multi_scale_encoder').apply(variables, images)
    torch_logits, torch_scales = torch_extract(torch_model, torch_inputs(entry, (images,)),
                                               layer_name='multi_scale_encoder')
    assert isinstance(torch_scales, tuple) and len(torch_scales) == 2
    assert_close_outputs((logits, small, large), (torch_logits, *torch_scales), entry.tolerance)
    assert small.shape[-1] == model.sm_dim and large.shape[-1] == model.lg_dim


def test_cct_classifier_input_is_the_tokenizer_output():
    """vit-pytorch reports CCT's classifier input after the classifier added its position embedding in place."""
    entry = parity.BY_NAME['cct.CCT']
    model, variables, torch_model = converted_pair(entry, entry.configs[0])
    (images,) = entry.inputs.example(model, 2, np.random.default_rng(0))
    tokens = Extractor(model, layer_name='tokenizer', return_embeddings_only=True).apply(variables, images)
    (classifier_input,) = Extractor(model, layer_name='classifier', layer_save_input=True,
                                    return_embeddings_only=True).apply(variables, images)
    np.testing.assert_array_equal(classifier_input, tokens)
    (torch_input,) = torch_extract(torch_model, torch_inputs(entry, (images,)), layer_name='classifier',
                                   layer_save_input=True, return_embeddings_only=True)
    positional = variables['params']['classifier']['positional_emb']
    assert_close_outputs(tokens + positional, torch_input, entry.tolerance)


VIT = parity.BY_NAME['vit.ViT']


def vit_pair():
    model, variables, torch_model = converted_pair(VIT, VIT.configs[0])
    (images,) = VIT.inputs.example(model, 2, np.random.default_rng(0))
    return model, variables, torch_model, images


def test_nested_layers_by_torch_or_flax_path():
    """'transformer.layers.1.0' (torch's dotted name, which vit-pytorch reaches with `layer=`) and Flax's path."""
    model, variables, torch_model, images = vit_pair()
    for save_input in (False, True):
        expected = torch_extract(torch_model, torch_inputs(VIT, (images,)), layer='transformer.layers.1.0',
                                 layer_save_input=save_input, return_embeddings_only=True)
        for layer_name in ('transformer.layers.1.0', 'transformer/layers_1_0'):
            found = Extractor(model, layer_name=layer_name, layer_save_input=save_input,
                              return_embeddings_only=True).apply(variables, images)
            assert_close_outputs(found, expected, VIT.tolerance)


def test_flax_path_follows_the_parameter_naming_rule():
    assert flax_path('transformer.layers.0.1') == ('transformer', 'layers_0_1')
    assert flax_path('transformer/layers_0_1') == ('transformer', 'layers_0_1')
    assert flax_path('mlp_head') == ('mlp_head',)


def test_return_embeddings_only_and_detach():
    model, variables, _, images = vit_pair()
    both = Extractor(model).apply(variables, images)
    only = Extractor(model, return_embeddings_only=True).apply(variables, images)
    asked = Extractor(model).apply(variables, images, return_embeddings_only=True)
    np.testing.assert_array_equal(only, both[1])
    np.testing.assert_array_equal(asked, both[1])

    def gradient(detach):
        extractor = Extractor(model, detach=detach, return_embeddings_only=True)
        return jax.grad(lambda p: extractor.apply({'params': p}, images).sum())(variables['params'])

    assert not any(np.any(np.asarray(g)) for g in jax.tree_util.tree_leaves(gradient(True)))
    assert any(np.any(np.asarray(g)) for g in jax.tree_util.tree_leaves(gradient(False)))


def test_a_layer_called_twice_gives_its_last_call():
    class Twice(nn.Module):
        @nn.compact
        def __call__(self, x):
            layer = nn.Dense(4, name='transformer')
            return layer(layer(x))

    x = jnp.ones((1, 4))
    model = Twice()
    variables = model.init(jax.random.key(0), x)
    logits, embeddings = Extractor(model, layer_save_input=True).apply(variables, x)
    (last_input,) = embeddings
    kernel, bias = variables['params']['transformer']['kernel'], variables['params']['transformer']['bias']
    np.testing.assert_allclose(last_input, x @ kernel + bias, rtol=1e-6)


def test_unknown_layer_names_the_layers_there_are():
    model, variables, _, images = vit_pair()
    with pytest.raises(ValueError, match=r"layer 'transformers' .* not found in ViT; its layers: .*transformer"):
        Extractor(model, layer_name='transformers').apply(variables, images)
    with pytest.raises(ValueError, match='layer_name must name a layer'):
        Extractor(model, layer_name='transformer//layers_0_0')


def test_mutable_collections_pass_through_and_no_variables_added():
    entry = parity.BY_NAME['cvt.CvT']
    model, variables, _ = converted_pair(entry, entry.configs[0])
    (images,) = entry.inputs.example(model, 2, np.random.default_rng(0))
    extractor = Extractor(model, layer_name='layers')
    (logits, latents), state = extractor.apply(variables, images, train=True, mutable=['batch_stats'])
    _, expected_state = model.apply(variables, images, train=True, mutable=['batch_stats'])
    assert set(state) == {'batch_stats'}
    jax.tree_util.tree_map(np.testing.assert_array_equal, state, expected_state)
    assert latents.ndim == 4 and latents.shape[-1] == model.s3_emb_dim
    assert jax.tree_util.tree_structure(extractor.init(jax.random.key(0), images)) == \
        jax.tree_util.tree_structure(model.init(jax.random.key(0), images))
    assert extractor.eject() is model


def test_readme_example_shapes():
    """vit-pytorch's README example, at a smaller width: the transformer's tokens (batch, patches + 1, dim)."""
    v = ViT(image_size=256, patch_size=32, num_classes=1000, dim=64, depth=6, heads=16, mlp_dim=128)
    img = jnp.zeros((1, 256, 256, 3))
    logits, embeddings = jax.eval_shape(Extractor(v).apply, jax.eval_shape(v.init, jax.random.key(0), img), img)
    assert logits.shape == (1, 1000) and embeddings.shape == (1, 65, 64)
