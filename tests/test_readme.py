"""The README stays true: its architecture table is the registry's, and its code runs."""

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import parity
from parity import readme_table
from vit_flax import registry

README = Path(__file__).resolve().parents[1] / 'README.md'


def test_architecture_table_matches_registry():
    text = README.read_text()
    assert readme_table.readme_with_table(text) == text, 'README table is stale: run `make readme-table`'


def test_every_registered_class_is_importable_from_its_file():
    import importlib

    for entry in parity.ENTRIES:
        assert getattr(importlib.import_module(f'vit_flax.{entry.module}'), entry.class_name) is entry.flax_class


def test_readme_python_examples_run(tmp_path, monkeypatch):
    """The quickstart and export blocks, run in order in one namespace (in a scratch folder)."""
    blocks = re.findall(r'```python\n(.*?)```', README.read_text(), flags=re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for block in blocks:
        exec(compile(block, str(README), 'exec'), namespace)
    assert namespace['preds'].shape == (1, 1000)
    assert np.isfinite(np.asarray(namespace['preds'])).all()
    assert type(namespace['torch_model']).__name__ == 'ViT'
    # distillation, plug-in transformer, adapter
    assert np.isfinite(float(namespace['loss']))
    assert namespace['student_preds'].shape == (2, 10)
    assert namespace['efficient_preds'].shape == (1, 10)
    assert namespace['adapter_preds'].shape == (2, 2)
    # video, NaViT (lists, auto-grouped, packed)
    assert namespace['video_preds'].shape == (2, 10)
    assert namespace['navit_preds'].shape == namespace['grouped_preds'].shape == (5, 10)
    np.testing.assert_allclose(namespace['packed_preds'], namespace['navit_preds'], atol=1e-5)
    # MAE: a loss, gradients for every parameter, the encoder's variables a plain ViT's
    assert np.isfinite(float(namespace['mae_loss']))
    # Recorder and Extractor
    assert namespace['attns'].shape == (2, 3, 4, 17, 17) and namespace['embeddings'].shape == (2, 17, 64)
    assert namespace['small_scale'].shape == (2, 17, 32) and namespace['large_scale'].shape == (2, 5, 48)
    np.testing.assert_array_equal(namespace['recorded_preds'], namespace['small_vit'].apply(
        namespace['small_variables'], namespace['images']))
    assert set(namespace['pretrained_encoder']['params']) == set(
        namespace['encoder'].init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))['params'])


def test_top_level_names_are_vit_pytorchs():
    """`from vit_flax import MAE` as `from vit_pytorch import MAE` (LoopedViT, newer than our scope, excepted)."""
    from vit_flax import converters
    import vit_flax

    vit_pytorch = converters.import_vit_pytorch('vit_pytorch')
    torch_names = {name for name in dir(vit_pytorch) if name[0].isupper()} - {'LoopedViT'}
    assert torch_names == set(vit_flax.__all__)
    for name in torch_names:
        assert getattr(vit_flax, name).__name__ == getattr(vit_pytorch, name).__name__
