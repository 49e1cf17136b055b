"""Linear probe: how well a logistic regression reads the classes off a trained encoder's frozen features.

    python -m vit_flax.probe --workdir=DIR            # the encoder of a training run (any objective)
    python -m vit_flax.probe --workdir=DIR --random   # the same architecture, freshly initialised

The features are the pooled transformer output (the cls token, or the mean over tokens for pool='mean'): what
the model's head reads. scikit-learn's LogisticRegression fits them on the dataset's train split and is scored
on its eval split. Works for the models whose `num_classes=0` form returns the transformer's tokens (vit.ViT
and its relatives with a `pool` keyword) or, as timm's, its pooled features (pretrained_vit.VisionTransformer).
"""

from __future__ import annotations

from vit_flax.extras import require

require('train', 'vit_flax.probe')

import argparse
import json
from pathlib import Path

import jax
import ml_collections
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from vit_flax import data, registry
from vit_flax.train import build_model
from vit_flax.training import checkpoint, objectives


def features(model, variables, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Pooled transformer features (N, dim) of normalised images (N, H, W, C)."""
    # timm's layout pools itself (token, mean, MAP head; fc_norm and pre-logits included): its headless output is
    # what the head reads
    pools_itself = hasattr(model, 'global_pool')
    if not pools_itself and not hasattr(model, 'pool'):
        raise ValueError(f'{type(model).__name__} has no `pool`: the probe reads a ViT-style pooled token')
    headless = model.clone(num_classes=0)
    run = jax.jit(lambda x: headless.apply(variables, x))
    out = []
    for start in range(0, len(images), batch_size):
        tokens = np.asarray(run(images[start:start + batch_size]))
        out.append(tokens if pools_itself else tokens.mean(axis=1) if model.pool == 'mean' else tokens[:, 0])
    return np.concatenate(out)


def linear_probe(config, variables) -> float:
    """Eval accuracy of a logistic regression on the frozen features of `variables` (the configured model's)."""
    model, info = build_model(config), data.dataset_info(config)
    normalise = lambda x: (x - np.asarray(info.mean, np.float32)) / np.asarray(info.std, np.float32)
    (train_images, train_labels), (eval_images, eval_labels) = (
        data.raw_eval_split(config, split) for split in ('train', 'eval'))
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    classifier.fit(features(model, variables, normalise(train_images)), train_labels)
    return float(classifier.score(features(model, variables, normalise(eval_images)), eval_labels))


def probe_workdir(workdir: str | Path, random: bool = False, seed: int = 0) -> float:
    workdir = Path(workdir)
    config = ml_collections.ConfigDict(json.loads((workdir / 'config.json').read_text()))
    if random:
        model = build_model(config)
        variables = model.init(registry.init_rngs(jax.random.key(seed)), *objectives.example_inputs(
            objectives.SUPERVISED, data.dataset_info(config)))
    else:
        variables = objectives.encoder_variables(config.get('objective', objectives.SUPERVISED),
                                                 checkpoint.restore_variables(workdir))
    return linear_probe(config, variables)


def main(argv=None):
    parser = argparse.ArgumentParser(prog='python -m vit_flax.probe', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--workdir', type=Path, required=True)
    parser.add_argument('--random', action='store_true', help='probe a freshly initialised encoder instead')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    accuracy = probe_workdir(args.workdir, random=args.random, seed=args.seed)
    print(json.dumps({'workdir': str(args.workdir), 'encoder': 'random' if args.random else 'trained',
                      'linear_probe_accuracy': accuracy}))


if __name__ == '__main__':
    main()
