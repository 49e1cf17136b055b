"""The last step of `make demo`: check an exported model in PyTorch against Flax on the same test split.

    python -m vit_flax.train --config=vit_flax/configs/digits.py --workdir=demo_out/digits
    python -m vit_flax export --workdir=demo_out/digits --out=demo_out/digits.safetensors
    python -m vit_flax.demo --weights=demo_out/digits.safetensors

The PyTorch side uses only the exported file and its sidecar: the vit-pytorch class and keywords, and the
input normalisation recorded there.
"""

from __future__ import annotations

from vit_flax.extras import require

require('train', 'vit_flax.demo')
require('torch', 'vit_flax.demo')

import argparse
import json
from pathlib import Path

import jax
import ml_collections
import numpy as np
import torch

from vit_flax import converters
from vit_flax import data


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--weights', type=Path, required=True, help='an exported .safetensors or .pt file')
    parser.add_argument('--min-accuracy', type=float, default=0.96)
    args = parser.parse_args(argv)

    sidecar = json.loads(args.weights.with_suffix('.json').read_text())
    spec = sidecar['input']
    images, labels = data.raw_eval_split(ml_collections.ConfigDict({'dataset': spec['dataset']}))
    normalised = ((images - np.float32(spec['mean'])) / np.float32(spec['std'])).astype(np.float32)

    model, variables = converters.load_flax(args.weights)
    flax_logits = np.asarray(jax.jit(model.apply)(variables, normalised))

    torch_model = converters.load_torch(args.weights)
    with torch.no_grad():
        torch_logits = torch_model(torch.from_numpy(normalised).permute(0, 3, 1, 2)).numpy()

    flax_accuracy = float((flax_logits.argmax(-1) == labels).mean())
    torch_accuracy = float((torch_logits.argmax(-1) == labels).mean())
    difference = float(np.abs(flax_logits - torch_logits).max())
    print(f'test split: {len(labels)} images of {spec["dataset"]}')
    print(f'Flax    {sidecar["vit_flax_class"]}: accuracy {flax_accuracy:.4f}')
    print(f'PyTorch {sidecar["module"]}.{sidecar["class"]} (strict load): accuracy {torch_accuracy:.4f}')
    print(f'max |flax - torch| logit difference: {difference:.2e}')
    tolerance = 2e-5 * max(1.0, float(np.abs(torch_logits).max()))
    if difference > tolerance or min(flax_accuracy, torch_accuracy) < args.min_accuracy:
        raise SystemExit(f'demo FAILED: logit difference above {tolerance:.1e} or accuracy below {args.min_accuracy}')
    print('demo OK')


if __name__ == '__main__':
    main()
