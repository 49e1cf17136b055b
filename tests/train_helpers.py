"""The trainer tests' shared set-up (tests/test_train.py, tests/test_objectives_training.py): a few-second digits
config, the logged losses, and a fresh interpreter with N CPU devices. It imports no test module and leaves JAX's
settings alone: the multi-device runs import it in a subprocess."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from vit_flax.configs import digits
from vit_flax.training.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]


def tiny_config(**overrides):
    """A few-second digits run: a one-layer ViT on 2x2 patches' worth of tokens. Overrides may be dotted
    (`'model.dim': 24`)."""
    config = digits.get_config()
    config.model.update(patch_size=4, dim=16, depth=1, heads=2, dim_head=8, mlp_dim=32)
    config.update(batch_size=32, eval_batch_size=64, total_steps=6, log_every=1, eval_every=6,
                  checkpoint_every=3, warmup_steps=2, progress_bar=False)
    return overridden(config, **overrides)


def overridden(config, **overrides):
    """`config` with `overrides` set, in place; keys may be dotted (`'model.dim': 24`)."""
    for key, value in overrides.items():
        target = config
        *parents, leaf = key.split('.')
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return config


def write_class_folders(root, classes=('cats', 'dogs'), per_class=6, size=(12, 10), mode='RGB'):
    """root/{train,val}/<class>/<i>.png: noisy images whose brightness tells the class (class i near 150 * i),
    RGB or grey-scale ('L'), from a fixed seed. Returns root."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ('train', 'val'):
        for label, name in enumerate(classes):
            folder = Path(root) / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 100, (*size, 3 if mode == 'RGB' else 1)) + 150 * label
                Image.fromarray(pixels.astype(np.uint8).squeeze(-1) if mode == 'L' else pixels.astype(np.uint8),
                                mode).save(folder / f'{i}.png')
    return root


def losses(workdir):
    """The train losses a run logged, in step order."""
    return [m['train_loss'] for m in read_metrics(workdir) if 'train_loss' in m]


def run_python(code: str, devices: int = 1, timeout: int = 300) -> str:
    """Run code in a fresh interpreter with `devices` CPU devices (the count is fixed at JAX start-up)."""
    env = {**os.environ, 'JAX_NUM_CPU_DEVICES': str(devices), 'JAX_PLATFORMS': 'cpu'}
    result = subprocess.run([sys.executable, '-c', textwrap.dedent(code)], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout
