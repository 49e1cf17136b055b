"""The benchmarks run end to end on a tiny stream and model (their timings are not tested)."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import na_vit_packing, side_by_side
from vit_flax.training import allocator


def test_na_vit_packing_benchmark(tmp_path, capsys):
    path = tmp_path / 'results.json'
    results = na_vit_packing.main([
        '--num-images', '48', '--image-size', '32', '--patch-size', '8', '--dim', '16', '--depth', '1',
        '--heads', '2', '--dim-head', '8', '--mlp-dim', '16', '--max-seq-len', '32', '--rows', '4',
        '--max-images-per-seq', '8', '--repeats', '1', '--no-progress', '--json', str(path)])

    assert {'packed', 'padded', 'ratio_forward', 'ratio_train', 'max_abs_logit_diff', 'stream', 'args', 'machine',
            'date', 'command'} <= results.keys()
    for method in ('packed', 'padded'):
        assert {'token_efficiency', 'images_per_s_forward', 'images_per_s_train', 'rows', 'seq_len',
                'steps'} <= results[method].keys()
        assert results[method]['images_per_s_forward'] > 0 and results[method]['images_per_s_train'] > 0
    # same token positions per step, and the padded baseline computes the same logits as packing
    assert (results['packed']['rows'] * results['packed']['seq_len']
            == results['padded']['rows'] * results['padded']['seq_len'])
    assert results['max_abs_logit_diff'] < 1e-4
    # mixed sizes: padding every image to the largest wastes more token positions than packing
    assert results['packed']['token_efficiency'] > results['padded']['token_efficiency']
    assert json.loads(path.read_text())['packed'] == results['packed']
    assert '| NaViT packed |' in capsys.readouterr().out


def markdown_rows(text: str) -> dict[tuple[str, str], list[str]]:
    """{(model, variant): cells} of the table rows in `text` (header and separator left out)."""
    lines = [line for line in text.splitlines() if line.startswith('| ')]
    return {tuple(cells[:2]): cells for cells in (
        [cell.strip() for cell in line.strip('|').split('|')] for line in lines[1:])}


def numbers(cell: str) -> list[float]:
    """The numbers of a cell such as '12.3 (11.0)', '0.25 + 2.69 / 0.06 + 0.63' or '2.31x'."""
    return [float(token) for token in re.findall(r'-?\d+(?:\.\d+)?(?:e[-+]?\d+)?', cell.replace(',', ''))]


@pytest.mark.slow  # 45 s of the 20-minute `make test` budget; `make test-slow` runs it
def test_side_by_side_quick(tmp_path):
    """The whole harness on tiny models, as a user runs it; checks the table's rows and that its numbers make
    sense (never how fast anything is). vit-flax runs its ViTs scanned with fused attention, the GPU configuration,
    and still starts from torch's loss, under the trainer's XLA flags."""
    command = ['--quick', '--no-compile', '--markdown', '--scan-layers', '--attention-impl', 'xla',
               '--keep-freed-memory', 'both']
    result = subprocess.run([sys.executable, '-m', 'benchmarks.side_by_side', *command, '--json', tmp_path / 'r.json'],
                            capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr[-3000:]
    trainers = side_by_side.flax_xla_flags(side_by_side.parse_args([]))
    for model in json.loads((tmp_path / 'r.json').read_text())['models']:
        assert [model['variants']['flax'][phase]['xla_flags'] for phase in ('infer', 'train')] == [trainers] * 2
    rows = markdown_rows(result.stdout)
    titles = [side_by_side.MODELS[name].title for name in side_by_side.MODELS]
    assert set(rows) == {(title, variant) for title in titles for variant in ('flax', 'torch')}

    for (title, variant), cells in rows.items():
        train_ms, infer_ms, train_ratio, infer_ratio, rate, compile_s, memory, loss = cells[2:10]
        for cell in (train_ms, infer_ms, rate):
            values = numbers(cell)
            assert len(values) == 2 and all(math.isfinite(v) and v > 0 for v in values), (title, variant, cell)
        assert all(v >= 0 for v in numbers(memory)) and len(numbers(memory)) == 2, (title, variant, memory)
        if variant == 'flax':  # lower + compile, train and inference; the reference of the ratios
            assert len(numbers(compile_s)) == 4 and all(v > 0 for v in numbers(compile_s)), compile_s
            assert train_ratio == infer_ratio == '—'
        else:
            assert all(v > 0 for v in numbers(train_ratio) + numbers(infer_ratio)), (train_ratio, infer_ratio)
        # same weights, images and labels: the first losses agree between the frameworks
        flax_loss = numbers(rows[title, 'flax'][9])
        assert all(math.isfinite(v) and v > 0 for v in numbers(loss))
        assert max(abs(a - b) for a, b in zip(numbers(loss), flax_loss)) < 1e-4, (title, loss, flax_loss)
    assert f"Command: `python -m benchmarks.side_by_side {' '.join(command)} --json " in result.stdout
    assert "vit-flax with scan_layers=True, attention_impl='xla'" in result.stdout
    # the harness waited for the idle workers before every timed call, and says how much CPU they used meanwhile
    assert re.search(r'waited for every worker to go idle .*: median \d+ ms, longest \d+ ms', result.stdout)
    assert re.search(r'CPU time the idle workers used .*ViT-S/16: flax train \d+\.\d%', result.stdout)
    # both frameworks under the trainer's opt-in malloc setting
    assert re.search(r"Freed memory kept for reuse .*: flax: yes, torch: yes\.", result.stdout)
    assert re.search(r'Minor page faults per timed call, median .*ViT-S/16: flax train [\d,]+, flax infer', result.stdout)


@pytest.mark.slow  # 15 s
def test_side_by_side_times_a_variant_alone(tmp_path):
    """--variants flax: one worker, nothing alive beside it; its row has no ratios and the idle account is empty."""
    results = side_by_side.main(['--quick', '--models', 'vit_s16', '--variants', 'flax', '--markdown'])
    (model,) = results['models']
    assert list(model['variants']) == ['flax']
    assert all(model['variants']['flax'][phase]['median_s'] > 0 for phase in ('train', 'infer'))
    assert 'ratio' not in model['variants']['flax']['train']
    # by default vit-flax runs with its trainer's memory setting, where the trainer would apply it
    applies = sys.platform == 'linux' and not allocator.accelerator_expected() and not allocator.user_malloc_settings()
    assert model['variants']['flax']['keeps_freed_memory'] is applies


BUSY_THEN_IDLE = """
import subprocess, sys, time
if sys.argv[1] == 'parent':  # the work happens in a child, as in torch.compile's compile workers
    subprocess.run([sys.executable, '-c', sys.argv[2], 'child', sys.argv[2]])
else:
    end = time.perf_counter() + 0.4
    while time.perf_counter() < end:
        pass
    time.sleep(30)
"""


def test_settle_waits_while_a_worker_or_its_children_compute():
    from benchmarks.machine import process_cpu_seconds

    process = subprocess.Popen([sys.executable, '-c', BUSY_THEN_IDLE, 'parent', BUSY_THEN_IDLE])
    try:
        waited = side_by_side.settle([process.pid], timeout=5.0)
        assert 0.2 < waited < 4.0  # the child's 0.4 s busy loop, less its start-up
        used = process_cpu_seconds(process.pid)
        assert used > 0.2  # the child's CPU time is counted with its parent's
        assert side_by_side.settle([process.pid]) < 0.2  # idle now: one 20 ms window or two
        assert process_cpu_seconds(process.pid) - used < 0.05
    finally:
        process.kill()
        process.wait()
    assert process_cpu_seconds(process.pid) is None


def test_side_by_side_options_go_to_the_models_that_take_them():
    args = side_by_side.parse_args(['--scan-layers', '--remat-policy', 'dots_saveable', '--attention-impl', 'cudnn'])
    assert side_by_side.flax_options('vit.ViT', args) == {
        'scan_layers': True, 'remat_policy': 'dots_saveable', 'attention_impl': 'cudnn'}
    assert side_by_side.flax_options('cvt.CvT', args) == {'remat_policy': 'dots_saveable'}  # its one JAX-only option
    assert side_by_side.flax_options('vit.ViT', side_by_side.parse_args([])) == {}


@pytest.mark.parametrize('flag', [['--attention-impl', 'flash'], ['--remat-policy', 'save_everything']])
def test_side_by_side_refuses_unknown_options_before_running(flag):
    with pytest.raises(SystemExit, match=f"unknown {flag[0][2:].replace('-', '_')}='{flag[1]}'"):
        side_by_side.main(['--quick', *flag])


def test_vit_flop_count_against_xla():
    """The analytic matmul count of a ViT is XLA's count less the elementwise work (norms, softmax, GELU): a few
    percent at these widths. Its 3x rule for a training step holds to the same few percent."""
    import jax
    import jax.numpy as jnp
    import optax

    from vit_flax.vit import ViT

    config = dict(image_size=16, patch_size=8, num_classes=10, dim=256, depth=1, heads=4, mlp_dim=512, dim_head=64)
    model = ViT(**config)
    images = jnp.ones((2, 16, 16, 3))
    params = model.init(jax.random.key(0), images)['params']

    def xla_flops(f, *args):
        cost = jax.jit(f).lower(*args).compile().cost_analysis()
        return (cost[0] if isinstance(cost, list) else cost)['flops']

    def loss(params):
        logits = model.apply({'params': params}, images)
        return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.zeros(2, jnp.int32)).mean()

    forward = side_by_side.vit_forward_flops(config, batch=2)
    assert 0.9 < forward / xla_flops(lambda p: model.apply({'params': p}, images), params) <= 1.0
    assert 0.9 < 3 * forward / xla_flops(jax.grad(loss), params) < 1.05


def test_side_by_side_readme_markers():
    start, end = side_by_side.README_MARKERS
    readme = f'# title\n\n{start}\nold table\n{end}\n\nrest\n'
    assert side_by_side.readme_with_results(readme, '| new |') == f'# title\n\n{start}\n| new |\n{end}\n\nrest\n'
    with pytest.raises(SystemExit, match='markers'):
        side_by_side.readme_with_results('# no markers\n', '| new |')


def test_the_report_names_the_kernel_and_thread_settings():
    """XLA flags and OpenMP waiting change the numbers: the machine line says which were set (and 'none'), and the
    huge page mode ('unknown' in results from before it was recorded)."""
    from benchmarks import machine

    environ = {'XLA_FLAGS': '--xla_cpu_enable_concurrency_optimized_scheduler=false', 'OMP_WAIT_POLICY': 'PASSIVE',
               'KMP_BLOCKTIME': '', 'HOME': '/root'}
    assert machine.kernel_settings(environ) == {'XLA_FLAGS': environ['XLA_FLAGS'], 'OMP_WAIT_POLICY': 'PASSIVE'}
    results = {'args': vars(side_by_side.parse_args(['--quick'])), 'models': [], 'date': '2026-12-07', 'command': 'c',
               'machine': {'cpu': 'AMD EPYC', 'cpu_count': 2, 'gpu': None, 'load_average': (1.0, 1.0, 1.0),
                           'python': '3.11.7', 'jax': '0.10.2', 'torch': '2.13.0', 'vit_pytorch': '1.26.11',
                           'settings': machine.kernel_settings(environ), 'flax_xla_flags': '--a=1 --b=2'}}
    line = side_by_side.notes(results)[-2]
    assert ("kernel, thread and allocator settings "
            "XLA_FLAGS='--xla_cpu_enable_concurrency_optimized_scheduler=false', OMP_WAIT_POLICY='PASSIVE'; "
            "vit-flax's XLA_FLAGS '--a=1 --b=2' (the trainer's); transparent huge pages unknown;") in line
    results['machine']['settings'] = {}
    results['args']['xla_flags_as_set'] = True
    results['machine']['transparent_huge_pages'] = 'madvise'
    assert ("kernel, thread and allocator settings none; vit-flax's XLA_FLAGS '--a=1 --b=2' (as set); transparent "
            "huge pages madvise;") in side_by_side.notes(results)[-2]


def test_the_report_names_allocator_settings_and_the_huge_page_mode(tmp_path):
    """glibc's malloc tunables and the kernel's transparent huge pages change what a step's fresh temporaries cost
    (benchmarks/README.md, Page faults): the machine line records them."""
    from benchmarks import machine

    environ = {'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1', 'MALLOC_ARENA_MAX': '1', 'LD_PRELOAD': 'libtcmalloc.so'}
    assert machine.kernel_settings(environ) == environ
    setting = tmp_path / 'enabled'
    for text, mode in (('always [madvise] never\n', 'madvise'), ('[always] madvise never\n', 'always'),
                       ('always madvise [never]\n', 'never'), ('always madvise never\n', None)):
        setting.write_text(text)
        assert machine.transparent_huge_pages(str(setting)) == mode
    assert machine.transparent_huge_pages(str(tmp_path / 'missing')) is None


@pytest.mark.parametrize('as_set', [False, True])
def test_flax_worker_runs_with_the_trainers_xla_flags(as_set, monkeypatch):
    from vit_flax.training.xla_flags import TRAINER_XLA_FLAGS

    monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_use_onednn=true')
    args = side_by_side.parse_args(['--quick', *(['--xla-flags-as-set'] if as_set else [])])
    expected = '--xla_cpu_use_onednn=true' + ('' if as_set else ' ' + ' '.join(TRAINER_XLA_FLAGS))
    assert side_by_side.flax_xla_flags(args) == expected


def test_ops_benchmark_times_every_form(monkeypatch, capsys):
    """benchmarks/ops.py on tiny shapes: every case has its three forms (the JAX forms checked equal inside), with
    positive times."""
    from benchmarks import ops

    monkeypatch.setenv('XLA_FLAGS', os.environ.get('XLA_FLAGS', ''))  # it adds the trainer's flags to the process's
    rows = ops.main(['--quick', '--markdown'])
    products = [row['variant'] for row in rows if row['op'] == 'bfloat16 attention product']
    assert [variant.split(' (')[0] for variant in products] == [
        'S = Q K^T', 'O = P V', 'dP = dO V^T', 'dQ = dS K', 'dV = P^T dO', 'dK = dS^T Q']
    assert all(variant.endswith(("XLA: bfloat16 operands)", "XLA: float32 copies)")) for variant in products)
    forms = {(row['op'], row['variant']) for row in rows if row['op'] != 'bfloat16 attention product'}
    assert forms == {
        ('depth-wise 3x3 convolution', 'lax.conv_general_dilated'), ('depth-wise 3x3 convolution', 'vit-flax'),
        ('depth-wise 3x3 convolution', 'torch'), ('1x1 convolution', 'lax.conv_general_dilated'),
        ('1x1 convolution', 'vit-flax'), ('1x1 convolution', 'torch'), ('attention', 'jax.nn.softmax'),
        ('attention', 'vit-flax (layers.softmax)'), ('attention', 'torch'),
        ('bfloat16 linear', 'jnp.dot (bfloat16 result)'), ('bfloat16 linear', 'vit-flax (layers.matmul)'),
        ('bfloat16 linear', 'torch'), ('bfloat16 attention', 'jnp.einsum (bfloat16 results)'),
        ('bfloat16 attention', 'vit-flax (layers.einsum)'), ('bfloat16 attention', 'torch'),
        ('matmul', 'jax'), ('matmul', 'torch')}
    assert all(row['forward_ms'] > 0 and row.get('both_ms', 1) > 0 for row in rows)
    out = capsys.readouterr().out
    assert sum(line.startswith('| ') for line in out.splitlines()) == len(rows) + 1 and 'Command: `python -m benchmarks.ops --quick --markdown`' in out


def test_input_pipeline_benchmark_times_both_loaders(tmp_path, capsys):
    """A tiny run of the grain / torch DataLoader comparison: both loaders draw their batches and the table says
    so (never how fast anything is)."""
    from benchmarks import input_pipeline

    out = tmp_path / 'results.json'
    results = input_pipeline.main(['--images', '12', '--file-size', '40', '--image-size', '16', '--batch', '4',
                                   '--batches', '1', '--warmup', '1', '--repeats', '1', '--workers', '0',
                                   '--json', str(out)])
    (row,) = results['rows']
    assert row['workers'] == 0 and all(math.isfinite(row[key]) and row[key] > 0 for key in ('grain', 'torch'))
    assert row['ratio'] == pytest.approx(row['grain'] / row['torch'])
    assert json.loads(out.read_text())['rows'] == results['rows']
    assert '| 0 |' in capsys.readouterr().out


def test_the_torch_side_of_the_input_benchmark_does_the_grain_pipelines_work(tmp_path):
    """Record for record, the torch Dataset decodes, resizes and normalises as the trainer's pipeline does (with
    the random augmentations off, so both are deterministic), and with them on gives records of the same shape."""
    from benchmarks import input_pipeline
    from vit_flax import data
    from vit_flax.data import augment

    root = input_pipeline.write_jpegs(tmp_path, 12, 40)
    config = input_pipeline.pipeline_config(root, 16, 0)
    config.augment = {'random_resized_crop': False, 'flip': False, 'randaugment_ops': 0}
    dataset = input_pipeline.SameWorkDataset(config)
    source, _, info = data._load(config)
    for index in (0, 5, 11):
        expected = data.Normalize(info.mean, info.std).map(source[index])
        np.testing.assert_array_equal(dataset[index]['image'], expected['image'])
        assert dataset[index]['label'] == expected['label']
    augmented = input_pipeline.SameWorkDataset(input_pipeline.pipeline_config(root, 16, 0))
    assert isinstance(augmented.operations[0], augment.RandomResizedCrop) and augmented.source.keep_file_size
    assert augmented[3]['image'].shape == (16, 16, 3)
    batch = next(input_pipeline.grain_batches(input_pipeline.pipeline_config(root, 16, 0), 4))
    assert batch['image'].shape == (4, 16, 16, 3)
