"""Every registered model refuses what would compute wrong or crash with no value named, generically over
parity.ENTRIES (issue 19, items 2 and 10):

- integer or boolean images (uint8 pixels, as PIL gives them): a TypeError naming the model, the argument and the
  dtype, raised before anything is computed (float inputs are the parity tests' business);
- a numeric keyword that breaks its rule (layers.KEYWORD_RULES: positive sizes, non-negative depths and class
  counts, dropout probabilities in [0, 1) ...): a ValueError naming the class, the keyword and the value, raised at
  construction, before any JAX computation; while every parity configuration and random-configuration draw, which
  vit-pytorch accepts, passes.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import parity
from vit_flax import layers, registry

INTEGER_DTYPES = ('int32', 'uint8', 'bool')

# values each rule refuses: at and just past its bounds
REFUSED = {
    layers.POSITIVE_INTEGER: (0, -1),
    layers.NON_NEGATIVE_INTEGER: (-1,),
    layers.POSITIVE_NUMBER: (0, -1.0),
    layers.NON_NEGATIVE_NUMBER: (-0.5,),
    layers.DROPOUT_PROBABILITY: (-0.1, 1.0),
    layers.PROBABILITY: (-0.1, 1.1),
    layers.OPEN_FRACTION: (0.0, 1.0),
}


def test_every_rule_has_refused_values():
    assert set(layers.KEYWORD_RULES.values()) <= set(REFUSED)


def _as_dtype(inputs, dtype):
    """The example inputs with every floating array (images, videos, tokens; each image of NaViT's lists) cast to
    `dtype`; integer inputs (labels) stay as they are."""
    if isinstance(inputs, (list, tuple)):
        return type(inputs)(_as_dtype(item, dtype) for item in inputs)
    return inputs.astype(dtype) if np.issubdtype(inputs.dtype, np.floating) else inputs


@pytest.mark.parametrize('dtype', INTEGER_DTYPES)
@pytest.mark.parametrize('entry', parity.ENTRIES, ids=lambda entry: entry.name)
def test_integer_inputs_are_refused(entry, dtype):
    model = entry.build(0)
    inputs = _as_dtype(registry.example_inputs(model), dtype)
    rngs = {name: jax.random.key(0) for name in ('params', 'dropout', *getattr(model, 'rng_streams', ()))}
    # abstract evaluation: the check comes before any computation, so nothing is traced past it
    with pytest.raises(TypeError, match=rf'^{type(model).__name__}: \S+ has dtype {dtype}; pass floating-point'):
        jax.eval_shape(lambda: model.init(rngs, *inputs))


@pytest.mark.parametrize('dtype', [jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64])
def test_floating_inputs_pass_the_check(dtype):
    module = layers.LayerNorm()
    layers.check_floating_input(module, 'img', np.zeros((1, 2), dtype))
    layers.check_floating_input(module, 'images', [[np.zeros((1, 2), dtype)], [np.zeros((2, 1), dtype)]])


def test_the_message_names_an_image_of_a_list():
    images = [[np.zeros((2, 2, 3), np.float32)], [np.zeros((2, 2, 3), np.float32), np.zeros((2, 2, 3), np.uint8)]]
    with pytest.raises(TypeError, match=r'^LayerNorm: batched_images\[1\]\[1\] has dtype uint8'):
        layers.check_floating_input(layers.LayerNorm(), 'batched_images', images)


def test_navit_packing_refuses_integer_images():
    """NaViT's other ways in: its host-side packer (na_vit.pack, packed_dataset) and a PackedBatch."""
    pytest.importorskip('grain')
    from vit_flax.na_vit import pack

    model = parity.BY_NAME['na_vit.NaViT'].build(0)
    images = [np.zeros((8, 16, 3), np.float32), np.zeros((8, 8, 3), np.uint8)]
    with pytest.raises(TypeError, match=r'^NaViT: record 1 has dtype uint8'):
        pack(model, images, max_seq_len=4, max_images_per_seq=2)
    batch, _, _ = pack(model, images[:1], max_seq_len=4, max_images_per_seq=2)
    integer_batch = batch.replace(patches=np.asarray(batch.patches).astype(np.int32))
    with pytest.raises(TypeError, match=r'^NaViT: batched_images.patches has dtype int32'):
        jax.eval_shape(lambda: model.init(registry.init_rngs(jax.random.key(0)), integer_batch))


def _keyword_cases() -> list:
    cases = []
    for entry in parity.ENTRIES:
        for field in dataclasses.fields(entry.flax_class):
            rule = layers.keyword_rule(field.name)
            for value in REFUSED[rule] if rule else ():
                cases.append(pytest.param(entry, field.name, value, id=f'{entry.name}-{field.name}={value!r}'))
    return cases


@pytest.mark.parametrize('entry, keyword, value', _keyword_cases())
def test_bad_keywords_are_refused_at_construction(entry, keyword, value):
    expected = re.escape(f'{entry.flax_class.__name__}: {keyword}={value!r} ')
    with pytest.raises(ValueError, match=f'^{expected}'):
        entry.build(0, **{keyword: value})


def test_a_tuple_names_its_refused_entry():
    with pytest.raises(ValueError, match=re.escape('PiT: depth=(1, -1) holds -1; each entry must be a non-negative')):
        parity.BY_NAME['pit.PiT'].build(0, depth=(1, -1))


@pytest.mark.parametrize('entry', parity.ENTRIES, ids=lambda entry: entry.name)
def test_parity_configurations_pass_the_keyword_rules(entry):
    """What the parity suite hands vit-pytorch (every configuration and every sweep draw) builds here too."""
    draws = entry.random_configurations() if entry.spec.random_configuration else ()
    for config in (*entry.configs, *(config for config, _ in draws)):
        model = entry.flax_class(**config)
        layers.check_keywords(model)
