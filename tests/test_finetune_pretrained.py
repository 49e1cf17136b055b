"""Fine-tuning pretrained ViTs with the trainer (issue 20, item 4): `config.init_from` a timm hub directory that timm
itself wrote, new heads and resampled position embeddings, layer-wise learning-rate decay (unrolled and scanned),
a frozen backbone, `vit-flax export --format=timm` read back by timm, and the refusals, before anything is
written."""

import json

import jax
import ml_collections
import numpy as np
import pytest
import torch

timm = pytest.importorskip('timm')
from timm.models._hub import save_for_hf  # noqa: E402

from vit_flax import converters, data, pretrained, registry  # noqa: E402
from vit_flax.__main__ import main as cli_main  # noqa: E402
from vit_flax.configs import digits, digits_timm, finetune as finetune_config  # noqa: E402
from vit_flax.train import build_model, train_and_evaluate  # noqa: E402
from vit_flax.training import finetune  # noqa: E402
from vit_flax.training.checkpoint import restore_variables  # noqa: E402
from vit_flax.training.optim import make_optimizer  # noqa: E402
from tests.conftest import float64_reference, nchw  # noqa: E402
from tests.train_helpers import overridden, tiny_config  # noqa: E402

MEAN, STD = (0.4,), (0.3,)  # the checkpoints' normalisation, not the digits' own
TINY = dict(img_size=8, patch_size=4, embed_dim=32, depth=2, num_heads=2)


def timm_hub(directory, num_classes=10, in_chans=1):
    """A small timm ViT saved by timm's own hub writer (config.json + pytorch_model.bin), with its normalisation
    in pretrained_cfg; returns the model, in eval mode."""
    torch.manual_seed(0)
    model = timm.create_model('vit_tiny_patch16_224', pretrained=False, num_classes=num_classes, in_chans=in_chans,
                              **TINY)
    model.pretrained_cfg = {**model.pretrained_cfg, 'mean': MEAN * in_chans, 'std': STD * in_chans,
                            'input_size': (in_chans, 8, 8)}
    save_for_hf(model, directory)
    return model.eval()


@pytest.fixture(scope='module')
def hubs(tmp_path_factory):
    """{classes: (directory, timm model)}: 10 classes as the digits have, and 5 (a new head)."""
    root = tmp_path_factory.mktemp('hubs')
    return {classes: (root / f'{classes}', timm_hub(root / f'{classes}', classes)) for classes in (10, 5)}


def fine_tune_config(hub, **overrides):
    """vit_flax/configs/finetune.py from `hub`, a few steps on the digits."""
    config = finetune_config.get_config()
    config.update(init_from=str(hub), batch_size=32, eval_batch_size=64, total_steps=3, log_every=1, eval_every=3,
                  checkpoint_every=3, warmup_steps=0, progress_bar=False)
    return overridden(config, **overrides)


def timm_state_dict(model):
    return {key: value.detach().numpy() for key, value in model.state_dict().items()}


def normalised_eval_images(config):
    images, labels = data.raw_eval_split(config)
    return ((images - np.float32(MEAN)) / np.float32(STD)).astype(np.float32), labels


def test_init_from_a_timm_hub_directory_starts_from_timms_model(hubs, tmp_path):
    """The checkpoint's keywords and normalisation reach the run's record; at learning rate 0 the run's model is
    timm's, and its eval accuracy timm's on the same normalised images. The run resumes (same resolved model)."""
    hub, timm_model = hubs[10]
    config = fine_tune_config(hub, total_steps=1, eval_every=1, learning_rate=0.0)
    metrics = train_and_evaluate(config, tmp_path / 'run')
    saved = json.loads((tmp_path / 'run' / 'config.json').read_text())
    assert saved['mean'] == list(MEAN) and saved['std'] == list(STD)
    assert {key: saved['model'][key] for key in TINY} == {**TINY, 'img_size': [8, 8], 'patch_size': [4, 4]}
    assert saved['model']['num_classes'] == 10 and saved['model']['in_chans'] == 1

    images, labels = normalised_eval_images(config)
    with torch.no_grad():
        expected = float64_reference(timm_model)(nchw(images)).numpy()
    model = build_model(ml_collections.ConfigDict(saved))
    logits = np.asarray(model.apply(restore_variables(tmp_path / 'run'), images))
    np.testing.assert_allclose(logits, expected, atol=1e-5 * max(1.0, np.abs(expected).max()))
    assert metrics['eval_accuracy'] == pytest.approx(float((expected.argmax(-1) == labels).mean()), abs=1e-6)

    resumed = train_and_evaluate(fine_tune_config(hub, total_steps=2, eval_every=1, learning_rate=0.0),
                                 tmp_path / 'run')
    assert resumed['eval_accuracy'] == metrics['eval_accuracy']


def test_a_new_head_for_other_classes_and_the_checkpoints_other_weights(hubs):
    hub, timm_model = hubs[5]
    config, variables = finetune.prepare(fine_tune_config(hub))
    assert config.model.num_classes == 10 and variables['params']['head']['kernel'].shape == (32, 10)
    model = build_model(config)
    ours = converters.to_torch(model, variables, as_numpy=True)
    theirs = timm_state_dict(timm_model)
    assert ours.keys() == theirs.keys()
    for key in theirs:
        if not key.startswith('head.'):
            np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
    np.testing.assert_array_equal(ours['head.bias'], np.zeros(10))
    assert 0.01 < ours['head.weight'].std() < 0.03  # timm's init: truncated normal, std 0.02


def test_another_image_size_resamples_the_position_embedding(hubs):
    hub, _ = hubs[10]
    config, variables = finetune.prepare(fine_tune_config(
        hub, dataset='synthetic', image_size=16, channels=1, num_classes=10, **{'model.scan_layers': True}))
    assert config.model.img_size == [16, 16] and config.model.scan_layers is True
    expected = pretrained.adapted(pretrained.read(hub), img_size=16).state_dict['pos_embed']
    np.testing.assert_array_equal(variables['params']['pos_embed'], expected)
    assert variables['params']['pos_embed'].shape == (1, 17, 32)
    assert variables['params']['blocks_scan']['attn']['qkv']['kernel'].shape == (2, 32, 96)


# layer-wise learning-rate decay: the first update's ratio to the undecayed one, per parameter

DECAY, DEPTH = 0.5, 3
TIMM_LIKE = dict(img_size=8, patch_size=4, in_chans=1, num_classes=10, embed_dim=16, depth=DEPTH, num_heads=2)
VIT = dict(image_size=8, patch_size=4, channels=1, num_classes=10, dim=16, depth=DEPTH, heads=2, dim_head=8,
           mlp_dim=32)


def expected_layer_scale(path: str, blocks: str, embeddings: tuple, block_index):
    """BEiT's rule written out: embeddings DECAY ** (DEPTH + 1), block i DECAY ** (DEPTH - i), the rest 1; stacked
    blocks one scale per row."""
    if path.startswith(embeddings):
        return DECAY ** (DEPTH + 1)
    if path.startswith(blocks + '_scan'):
        return DECAY ** (DEPTH - np.arange(DEPTH))
    if path.startswith(blocks + '_'):
        return DECAY ** (DEPTH - block_index(path))
    return 1.0


@pytest.mark.parametrize('model_name, keywords', [
    ('pretrained_vit.VisionTransformer', dict(TIMM_LIKE, reg_tokens=1, pre_norm=True, global_pool='avg')),
    ('pretrained_vit.VisionTransformer', dict(TIMM_LIKE, global_pool='map', scan_layers=True)),
    ('vit.ViT', VIT),
    ('vit.ViT', dict(VIT, scan_layers=True)),
], ids=['timm-unrolled', 'timm-scanned-map', 'vit-unrolled', 'vit-scanned'])
def test_layer_decay_scales_each_parameters_update(model_name, keywords):
    model = registry.build(model_name, keywords)
    params = model.init(registry.init_rngs(jax.random.key(0)), np.zeros((1, 8, 8, 1), np.float32))['params']
    grads = jax.tree_util.tree_map(np.ones_like, params)

    def first_update(layer_decay):
        config = digits.get_config()
        config.update(model_name=model_name, layer_decay=layer_decay, warmup_steps=0, weight_decay=0.1,
                      grad_clip_norm=0.0)
        tx, schedule = make_optimizer(config, lr_scale=finetune.lr_scale_fn(config, model))
        assert schedule(0) == config.learning_rate
        return tx.update(grads, tx.init(params), params)[0]

    decayed, plain = (jax.tree_util.tree_leaves_with_path(first_update(decay)) for decay in (DECAY, 1.0))
    if model_name == 'vit.ViT':
        rule = dict(blocks='transformer/layers', embeddings=('to_patch_embedding', 'cls_token', 'pos_embedding'),
                    block_index=lambda path: int(path.split('_')[1]))
    else:
        rule = dict(blocks='blocks', embeddings=('patch_embed', 'cls_token', 'reg_token', 'pos_embed', 'norm_pre'),
                    block_index=lambda path: int(path.split('/')[0].split('_')[1]))
    seen = set()
    for (path, ours), (_, reference) in zip(decayed, plain):
        name = '/'.join(key.key for key in path)
        scale = np.asarray(expected_layer_scale(name, **rule))
        seen.add(float(scale.min()))
        assert np.all(np.asarray(reference) != 0), name
        np.testing.assert_allclose(ours, reference * scale.reshape(scale.shape + (1,) * (reference.ndim - scale.ndim)),
                                   rtol=1e-6, err_msg=name)
    assert {DECAY ** (DEPTH + 1), DECAY ** DEPTH, 1.0} <= seen  # the embeddings, the first block and the top


# a frozen backbone, trained from the 5-class checkpoint: its export loads into timm

@pytest.fixture(scope='module')
def frozen_run(hubs, tmp_path_factory):
    workdir = tmp_path_factory.mktemp('frozen') / 'run'
    config = fine_tune_config(hubs[5][0], freeze_backbone=True, learning_rate=1e-2)  # with layer_decay 0.75
    train_and_evaluate(config, workdir)
    return workdir, config


def test_a_frozen_backbone_keeps_every_weight_but_the_heads(hubs, frozen_run):
    workdir, config = frozen_run
    _, start = finetune.prepare(config)
    saved = json.loads((workdir / 'config.json').read_text())
    model = build_model(ml_collections.ConfigDict(saved))
    trained = converters.to_torch(model, restore_variables(workdir), as_numpy=True)
    theirs = timm_state_dict(hubs[5][1])
    for key, value in trained.items():
        if key.startswith('head.'):
            assert not np.array_equal(value, converters.to_torch(model, start, as_numpy=True)[key]), key
        else:
            np.testing.assert_array_equal(value, theirs[key], err_msg=key)


def test_the_linear_probe_reads_a_timm_layout_runs_pooled_features(frozen_run):
    """vit_flax.probe on a pretrained_vit run: the features are the model's headless output (timm's pooling), which
    a logistic regression reads the digits from; the random-init probe runs too."""
    from vit_flax.probe import features, probe_workdir

    workdir, _ = frozen_run
    saved = ml_collections.ConfigDict(json.loads((workdir / 'config.json').read_text()))
    model, variables = build_model(saved), restore_variables(workdir)
    x = np.random.default_rng(0).standard_normal((3, 8, 8, 1), np.float32)
    np.testing.assert_allclose(features(model, variables, x), model.clone(num_classes=0).apply(variables, x),
                               rtol=1e-5, atol=1e-6)  # jitted or not: float32 round-off
    assert 0.5 < probe_workdir(workdir) <= 1.0
    assert 0.0 < probe_workdir(workdir, random=True) <= 1.0


def test_export_format_timm_loads_in_timm_with_the_same_outputs(frozen_run, tmp_path):
    workdir, config = frozen_run
    out = tmp_path / 'hub'
    cli_main(['export', f'--workdir={workdir}', f'--out={out}', '--format=timm'])
    loaded = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    assert list(loaded.pretrained_cfg['mean']) == list(MEAN) and list(loaded.pretrained_cfg['std']) == list(STD)
    assert tuple(loaded.pretrained_cfg['input_size']) == (1, 8, 8)
    images, _ = normalised_eval_images(config)
    saved = json.loads((workdir / 'config.json').read_text())
    ours = np.asarray(build_model(ml_collections.ConfigDict(saved)).apply(restore_variables(workdir), images))
    with torch.no_grad():
        theirs = float64_reference(loaded)(nchw(images)).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5 * max(1.0, np.abs(theirs).max()))
    # the default format of a timm-layout run is timm's; the export is itself a source to fine-tune from
    cli_main(['export', f'--workdir={workdir}', f'--out={tmp_path / "default"}'])
    assert json.loads((tmp_path / 'default' / 'config.json').read_text())['model_args']['embed_dim'] == 32
    assert finetune.prepare(fine_tune_config(tmp_path / 'default'))[0].model.depth == 2


@pytest.mark.parametrize('argv, fragment', [
    (['--format=vit-pytorch'], 'vit_pytorch.vit.ViT cannot hold a timm-layout ViT'),
    (['--format=hf', '--out={out}'], 'taken exists: pass --overwrite'),
])
def test_export_refusals_are_one_line(frozen_run, tmp_path, argv, fragment):
    workdir, _ = frozen_run
    (tmp_path / 'taken').mkdir()
    args = ['export', f'--workdir={workdir}', f'--out={tmp_path / "x"}', *argv]
    with pytest.raises(SystemExit) as raised:
        cli_main([arg.format(out=tmp_path / 'taken') for arg in args])
    message = str(raised.value)
    assert message.startswith('error: ') and '\n' not in message and fragment in message, message
    assert not (tmp_path / 'x').exists()


def test_a_vit_pytorch_run_is_not_exported_as_timm(tmp_path):
    (tmp_path / 'config.json').write_text(tiny_config().to_json())
    with pytest.raises(SystemExit, match=r"^error: --format=timm writes a timm-layout ViT .* --format=vit-pytorch$"):
        cli_main(['export', f'--workdir={tmp_path}', f'--out={tmp_path / "hub"}', '--format=timm'])


# refusals, before anything is written


def from_scratch(**overrides):
    config = digits_timm.get_config()
    config.update(total_steps=1, eval_every=1, progress_bar=False)
    return overridden(config, **overrides)


REFUSALS = [
    ('layer_decay 0', lambda hubs: tiny_config(layer_decay=0.0), r'config.layer_decay=0.0: must be in \(0, 1\]'),
    ('layer_decay 1.5', lambda hubs: tiny_config(layer_decay=1.5), r'config.layer_decay=1.5: must be in \(0, 1\]'),
    ('no such checkpoint', lambda hubs: fine_tune_config('/nonexistent/hub'),
     "config.init_from='/nonexistent/hub': no checkpoint file or directory at /nonexistent/hub"),
    ('no such trainer checkpoint', lambda hubs: tiny_config(init_from='/nonexistent/run'),
     "config.init_from='/nonexistent/run': no such file or directory"),
    ('not a trainer checkpoint', lambda hubs: tiny_config(init_from=str(hubs[10][0].parent)),
     "config.init_from='.*' is no trainer workdir or `vit-flax import` folder"),
    ('no keywords from anywhere', lambda hubs: fine_tune_config(''), 'config.model is empty and config.init_from unset'),
    ('pretrained into vit.ViT', lambda hubs: tiny_config(init_from=str(hubs[10][0])),
     "with config.model_name='pretrained_vit.VisionTransformer', not 'vit.ViT'"),
    ('contradicting keyword', lambda hubs: fine_tune_config(hubs[10][0], **{'model.embed_dim': 64}),
     r"config.model.embed_dim=64 but config.init_from='.*' holds embed_dim=32: leave config.model.embed_dim out"),
    ('layer_decay unknown layers', lambda hubs: tiny_config(layer_decay=0.75, model_name='simple_vit.SimpleViT',
                                                            model=simple_vit()),
     'this trainer knows the layers and head of pretrained_vit.VisionTransformer and vit.ViT, not of '
     'simple_vit.SimpleViT'),
    ('freeze with mae', lambda hubs: tiny_config(freeze_backbone=True, objective='mae'),
     "config.freeze_backbone=True fine-tunes a classifier: config.objective must be 'supervised', not 'mae'"),
    ('scratch img_size', lambda hubs: from_scratch(**{'model.img_size': 16}),
     r'config.model.img_size=16 but dataset images are \(8, 8\)'),
    ('scratch in_chans default', lambda hubs: from_scratch(model=ml_collections.ConfigDict(dict(TINY, num_classes=10))),
     "config.model.in_chans=3 \\(its default\\) but dataset 'digits' has 1 channels"),
]


def simple_vit():
    return ml_collections.ConfigDict(dict(image_size=8, patch_size=4, num_classes=10, channels=1, dim=16, depth=1,
                                          heads=2, dim_head=8, mlp_dim=32))


@pytest.mark.parametrize('make_config, message', [case[1:] for case in REFUSALS], ids=[case[0] for case in REFUSALS])
def test_bad_fine_tuning_configs_are_refused_before_anything_is_written(hubs, tmp_path, make_config, message):
    with pytest.raises(ValueError, match=message):
        train_and_evaluate(make_config(hubs), tmp_path / 'run')
    assert not (tmp_path / 'run').exists()


def test_a_checkpoint_for_other_channels_is_refused(tmp_path):
    timm_hub(tmp_path / 'rgb', in_chans=3)
    with pytest.raises(ValueError, match="holds a model for 3-channel images but dataset 'digits' has 1-channel"):
        train_and_evaluate(fine_tune_config(tmp_path / 'rgb'), tmp_path / 'run')
    assert not (tmp_path / 'run').exists()


@pytest.mark.slow
def test_fine_tuning_on_an_fsdp_mesh_equals_one_device(hubs, tmp_path):
    """The scanned timm-layout ViT fine-tuned from a hub directory with layer-wise decay: 8 devices, the batch over
    'data' and the larger arrays split over 'fsdp', log the losses one device logs."""
    from tests.train_helpers import losses, run_python

    runs = {'one': (1, {}), 'fsdp': (8, {'mesh.data': 2, 'mesh.fsdp': 4, 'mesh.fsdp_min_size': 64})}
    for name, (devices, mesh) in runs.items():
        run_python(f"""
            import jax
            from tests.test_finetune_pretrained import fine_tune_config
            from vit_flax.train import Trainer, build_model, train_and_evaluate
            from vit_flax.training import finetune
            config = fine_tune_config({str(hubs[5][0])!r}, total_steps=6, **{{'model.scan_layers': True, **{mesh!r}}})
            train_and_evaluate(config, {str(tmp_path / name)!r})
            if {devices} == 8:  # the stacked blocks really are split over 'fsdp'
                prepared, _ = finetune.prepare(config)
                trainer = Trainer(prepared, build_model(prepared), (jax.numpy.zeros((1, 8, 8, 1)),), 6)
                specs = [s.spec for s in jax.tree_util.tree_leaves(trainer.state_shardings.params)]
                assert any('fsdp' in spec for spec in specs), specs
        """, devices=devices)
    assert len(losses(tmp_path / 'one')) == 6
    np.testing.assert_allclose(losses(tmp_path / 'fsdp'), losses(tmp_path / 'one'), rtol=1e-5)
