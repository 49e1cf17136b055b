"""`make demo`: a Flax ViT exported to vit-pytorch and back, with outputs compared on the same images.

    python -m vit_flax.demo --out demo_out

(The training job replaces this with train -> export -> check once the trainer lands.)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import numpy as np

import converters
from vit_flax import ViT


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', type=Path, default=Path('demo_out'), help='folder for the exported weights')
    args = parser.parse_args(argv)
    jax.config.update('jax_default_matmul_precision', 'highest')

    model = ViT(image_size=64, patch_size=8, num_classes=10, dim=128, depth=4, heads=4, mlp_dim=256, dim_head=32)
    images = np.random.default_rng(0).standard_normal((8, 64, 64, 3), dtype=np.float32)
    start = time.perf_counter()
    variables = jax.jit(model.init)(jax.random.key(0), images[:1])
    flax_logits = np.asarray(jax.jit(model.apply)(variables, images))
    n_params = sum(leaf.size for leaf in jax.tree_util.tree_leaves(variables))
    print(f'Flax ViT: {n_params:,} parameters, logits {flax_logits.shape} ({time.perf_counter() - start:.1f} s)')

    path = converters.save_torch(args.out / 'vit.safetensors', model, variables)
    print(f'exported {path} and {path.with_suffix(".json").name}')

    import torch

    torch_model = converters.load_torch(path)
    with torch.no_grad():
        torch_logits = torch_model(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    error = float(np.abs(flax_logits - torch_logits).max())
    tolerance = 2e-5 * max(1.0, float(np.abs(torch_logits).max()))
    print(f'vit-pytorch {type(torch_model).__module__}.{type(torch_model).__name__} loaded with strict=True; '
          f'max |flax - torch| = {error:.2e} (tolerance {tolerance:.2e})')
    print(f'same predicted classes: {np.array_equal(flax_logits.argmax(-1), torch_logits.argmax(-1))}')

    _, back = converters.load_flax(path)
    exact = all(np.array_equal(np.asarray(a), np.asarray(b))
                for a, b in zip(jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(back)))
    print(f'imported back into Flax bit-exactly: {exact}')
    if error > tolerance or not exact:
        raise SystemExit('demo FAILED: the exported model does not match')
    print('demo OK')


if __name__ == '__main__':
    main()
