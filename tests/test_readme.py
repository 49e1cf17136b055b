"""The README stays true: its architecture table is the registry's, and its code runs."""

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import parity
from parity import readme_table
from vit_flax import converters, registry
from tests.conftest import (assert_close_gradients, assert_close_outputs, float64_reference, new_torch_model,
                            offline_hub_repo, torch_inputs)

README = Path(__file__).resolve().parents[1] / 'README.md'


def test_architecture_table_matches_registry():
    text = README.read_text()
    assert readme_table.readme_with_table(text) == text, 'README table is stale: run `make readme-table`'


def test_every_registered_class_is_importable_from_its_file():
    import importlib

    for entry in parity.ENTRIES:
        assert getattr(importlib.import_module(f'vit_flax.{entry.module}'), entry.class_name) is entry.flax_class


def test_install_section_installs_the_cpu_torch_before_the_extra():
    """PyPI's Linux torch is the CUDA build: a CPU-only install takes torch from PyTorch's CPU index first."""
    install = README.read_text().split('## Install', 1)[1].split('\n## ', 1)[0]
    commands = [line.split('#')[0].strip() for block in re.findall(r'```bash\n(.*?)```', install, flags=re.S)
                for line in block.splitlines()]
    cpu_torch = commands.index('pip install torch --index-url https://download.pytorch.org/whl/cpu')
    with_extra = next(i for i, command in enumerate(commands) if i > cpu_torch and "vit-flax[torch" in command)
    assert cpu_torch < with_extra


def test_readme_python_examples_run(tmp_path, monkeypatch):
    """Every Python block of the README, each alone in a fresh namespace as a reader would paste it (in a scratch
    folder); the checks below read the names each block defines (a name two blocks define holds the same value).
    The pretrained section's hub repository is a randomly initialised timm model of its architecture, put into a
    Hugging Face cache of the test's own: this machine has no network."""
    import timm
    import torch

    blocks = re.findall(r'```python\n(.*?)```', README.read_text(), flags=re.S)
    assert len(blocks) >= 2
    torch.manual_seed(0)
    timm_model = timm.create_model('vit_tiny_patch16_224', pretrained=False).eval()
    offline_hub_repo(monkeypatch, tmp_path / 'hub_cache', 'timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k', timm_model)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for block in blocks:
        alone = {}
        exec(compile(block, str(README), 'exec'), alone)
        namespace = {**alone, **namespace}  # the first block to define a name keeps it
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
    assert_mae_is_vit_pytorchs(namespace['mae'], namespace['mae_variables'], namespace['images'],
                               namespace['mae_loss'], namespace['mae_grads'])
    # Recorder and Extractor
    assert namespace['attns'].shape == (2, 3, 4, 17, 17) and namespace['embeddings'].shape == (2, 17, 64)
    assert namespace['small_scale'].shape == (2, 17, 32) and namespace['large_scale'].shape == (2, 5, 48)
    np.testing.assert_array_equal(namespace['recorded_preds'], namespace['small_vit'].apply(
        namespace['small_variables'], namespace['images']))
    # pretrained checkpoints: timm's outputs, and an export timm loads
    with torch.no_grad():
        timm_logits = timm_model(torch.from_numpy(np.array(namespace['pixels'])).permute(0, 3, 1, 2)).numpy()
    assert_close_outputs(namespace['pretrained_logits'], timm_logits, 2e-5)
    exported = timm.create_model(f"local-dir:{tmp_path / 'vit_tiny_timm'}", pretrained=True)
    assert exported.head.out_features == 10 and exported.pos_embed.shape == (1, 577, 192)
    assert set(namespace['pretrained_encoder']['params']) == set(
        namespace['encoder'].init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))['params'])


def assert_mae_is_vit_pytorchs(mae, variables, images, loss, grads):
    """The README's MAE loss, and its gradient for every parameter, are vit-pytorch's (its float64 reference, on the
    same weights, images and mask) within tests/test_parity.py's tolerances."""
    # the README masks with jax.random.key(seed): parity.mae.draws with that seed hands vit-pytorch the same mask
    seed = int(re.search(r"rngs = \{'masking': jax\.random\.key\((\d+)\)\}", README.read_text()).group(1))
    entry = parity.BY_NAME['mae.MAE']
    torch_model = new_torch_model(entry, registry.torch_kwargs(mae))
    torch_model.load_state_dict(converters.to_torch(mae, variables), strict=True)
    inputs = (np.asarray(images),)
    _, draws = entry.same_draws(mae, inputs, seed)
    exact = float64_reference(torch_model)
    with draws, entry.torch_context():
        exact_loss = exact(*torch_inputs(entry, inputs))
    exact_loss.backward()
    assert_close_outputs(loss, exact_loss, entry.tolerance)

    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(variables['params'])
    exact_grads = {name: np.zeros(p.shape) if p.grad is None else p.grad.numpy()
                   for name, p in exact.named_parameters()}
    assert_close_gradients(converters.to_torch(mae, {'params': grads}, as_numpy=True), exact_grads)


def test_top_level_names_are_vit_pytorchs():
    """`from vit_flax import MAE` as `from vit_pytorch import MAE`, LoopedViT included."""
    import vit_flax

    vit_pytorch = converters.import_vit_pytorch('vit_pytorch')
    torch_names = {name for name in dir(vit_pytorch) if name[0].isupper()}
    assert torch_names == set(vit_flax.__all__)
    for name in torch_names:
        assert getattr(vit_flax, name).__name__ == getattr(vit_pytorch, name).__name__
