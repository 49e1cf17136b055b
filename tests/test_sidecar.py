"""A sidecar is data from outside: loading one builds only classes vit-flax mirrors, with JSON keywords they take,
and refuses anything else before it imports or calls it (naming the field and the value)."""

import json

import numpy as np
import pytest

from vit_flax import converters
from vit_flax.efficient import ViT as EfficientViT
from vit_flax.vit import Transformer, ViT
from tests.conftest import init_variables

TINY = dict(image_size=8, patch_size=4, num_classes=3, dim=8, depth=1, heads=2, mlp_dim=8, dim_head=4)


@pytest.fixture
def saved(tmp_path):
    model = ViT(**TINY)
    return converters.save_torch(tmp_path / 'vit.safetensors', model, init_variables(model))


def with_sidecar(path, change):
    sidecar = json.loads(path.with_suffix('.json').read_text())
    change(sidecar)
    path.with_suffix('.json').write_text(json.dumps(sidecar))
    return path


def command(marker):
    return {'module': 'subprocess', 'class': 'run', 'kwargs': {'args': ['touch', str(marker)]}}


HOSTILE = {
    'a foreign module': (lambda s, m: s.update(command(m)), r"sidecar.module='subprocess'"),
    'a vit_pytorch function': (lambda s, m: s.update({'class': 'pair'}), r"sidecar.class='pair': vit_flax.vit mirrors"),
    'a private name': (lambda s, m: s.update({'class': '__class__'}), r"sidecar.class='__class__'"),
    'a module keyword from elsewhere': (lambda s, m: s['kwargs'].update(dim=command(m)), r"kwargs.dim.module='subprocess'"),
    'an unknown keyword': (lambda s, m: s['kwargs'].update(evil=1), r"takes no keyword 'evil'"),
    'an object value': (lambda s, m: s['kwargs'].update(pool={'eval': 'x'}), r"kwargs.pool: a keyword value must be"),
    'an unregistered Flax class': (lambda s, m: s.update(vit_flax_class='vit_flax.vit.Transformer'),
                                   r"vit_flax_class='vit_flax.vit.Transformer' is not a registered"),
    'an unknown Flax option': (lambda s, m: s.update(flax_kwargs={'parent': 'x'}), r"sidecar.flax_kwargs="),
    'a list, not an object': (lambda s, m: s.clear() or s.update({'module': [], 'class': [], 'kwargs': []}),
                              r"sidecar.module=\[\]"),
}


@pytest.mark.parametrize('load', [converters.load_torch, converters.load_flax], ids=['load_torch', 'load_flax'])
@pytest.mark.parametrize('name', sorted(HOSTILE))
def test_a_hostile_sidecar_is_refused_before_anything_runs(saved, tmp_path, load, name):
    marker = tmp_path / 'PWNED'
    change, message = HOSTILE[name]
    with_sidecar(saved, lambda sidecar: change(sidecar, marker))
    with pytest.raises(ValueError, match=message):
        load(saved)
    assert not marker.exists()


def test_a_nested_module_from_elsewhere_is_refused(tmp_path):
    """A plugged-in transformer is built from its sidecar entry only if vit-flax mirrors its class."""
    transformer = Transformer(dim=8, depth=1, heads=2, dim_head=4, mlp_dim=8)
    model = EfficientViT(image_size=8, patch_size=4, num_classes=3, dim=8, transformer=transformer)
    path = converters.save_torch(tmp_path / 'efficient.safetensors', model, init_variables(model))
    assert converters.load_torch(path) is not None  # the honest file loads
    marker = tmp_path / 'PWNED'
    with_sidecar(path, lambda sidecar: sidecar['kwargs']['transformer'].update(command(marker)))
    for load in (converters.load_torch, converters.load_flax):
        with pytest.raises(ValueError, match=r"kwargs.transformer.module='subprocess'"):
            load(path)
    assert not marker.exists()


def test_honest_sidecars_still_load(saved):
    model, variables = converters.load_flax(saved)
    torch_model = converters.load_torch(saved)
    assert isinstance(model, ViT) and type(torch_model).__name__ == 'ViT'
    assert np.asarray(variables['params']['mlp_head']['kernel']).shape == (8, 3)


def test_a_dict_keyword_holds_only_json_data():
    """simple_vit_orthog_residual_update's `orthog_residual_update_kwargs` is a dict (files.DICT_KEYWORDS): its
    entries are decoded as keyword values are, so an object inside it is refused as one anywhere else."""
    from vit_flax.converters import files

    keywords = {'orthog_residual_update_kwargs': {'eps': 1e-6, 'double_precision': False}}
    assert files._flax_kwargs_from_sidecar(keywords) == keywords
    with pytest.raises(ValueError, match=r'^kwargs.orthog_residual_update_kwargs.eps: a keyword value must be'):
        files._flax_kwargs_from_sidecar({'orthog_residual_update_kwargs': {'eps': {'eval': 'x'}}})
