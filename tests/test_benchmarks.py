"""The benchmarks run end to end on a tiny stream and model (their timings are not tested)."""

import json

from benchmarks import na_vit_packing


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
