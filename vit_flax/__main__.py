"""Command line: trained checkpoints to vit-pytorch files or pretrained-ViT formats, and vit-pytorch files to
checkpoints.

    vit-flax export --workdir=DIR --out=model.safetensors   # or model.pt; writes model.json too
    vit-flax export --workdir=DIR --out=HUB_DIR             # a timm-layout ViT (pretrained_vit.VisionTransformer):
                                                            # a timm hub directory, --format=hf / npz for the others
    vit-flax import --weights=model.safetensors --out=DIR   # an orbax checkpoint to fine-tune from
                                                            # (--config.init_from=DIR)

`--format` defaults to the model's own: 'vit-pytorch' for vit-pytorch's models, 'timm' for
pretrained_vit.VisionTransformer, which vit-pytorch has no layout for ('vit-pytorch' is refused with the reason).
'timm', 'hf' and 'npz' (vit_flax.pretrained.export) record the run's preprocessing: input size, mean and std, the
resize (bilinear, aspect ratio not kept: timm's crop_mode 'squash' with crop_pct 1) and the class names.

(`python -m vit_flax export ...` is the same.) It joins the trainer's workdirs and the converters, so it needs both
the [train] and the [torch] extras.
"""

from __future__ import annotations

from vit_flax.extras import require

require('train', 'vit-flax (the command line)')
require('torch', 'vit-flax (the command line)')

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import ml_collections
from absl import logging

from vit_flax import converters, data, pretrained, registry
from vit_flax.train import build_model, input_spec
from vit_flax.training import objectives
from vit_flax.training.checkpoint import CheckpointError, restore_variables, save_variables
from vit_flax.training.finetune import PRETRAINED_MODEL


def export(workdir: Path, out: Path, format: str | None = None, overwrite: bool = False) -> Path:
    """The latest checkpoint of a training workdir in `format` (None: the model's own, see the module docstring):
    the configured model's, also after self-supervised pretraining or distillation (the objective's own parts stay
    behind). 'vit-pytorch' writes a state dict with its sidecar; 'timm', 'hf' and 'npz' a timm-layout ViT, refusing
    an existing `out` unless `overwrite`."""
    if format is not None and format not in pretrained.FORMATS:
        raise ValueError(f'--format={format}: one of {", ".join(pretrained.FORMATS)}')
    config_path = workdir / 'config.json'
    if not config_path.is_file():
        raise FileNotFoundError(f'{workdir} has no config.json: is it a `python -m vit_flax.train` workdir?')
    config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
    timm_layout = config.model_name == PRETRAINED_MODEL
    format = format or ('timm' if timm_layout else 'vit-pytorch')
    if format != 'vit-pytorch' and not timm_layout:
        raise ValueError(f"--format={format} writes a timm-layout ViT (config.model_name='{PRETRAINED_MODEL}'); "
                         f'{workdir} trained {config.model_name}: export it with --format=vit-pytorch')
    model = build_model(config)
    if format == 'vit-pytorch' and timm_layout:
        return pretrained.export(model, {}, out, format=format)  # refused, with the reason
    if format != 'vit-pytorch' and out.exists() and not overwrite:
        raise FileExistsError(f'{out} exists: pass --overwrite to replace it, or choose another --out')
    info = data.dataset_info(config)
    variables = objectives.encoder_variables(config.get('objective', objectives.SUPERVISED), restore_variables(workdir))
    if format == 'vit-pytorch':
        return converters.save_torch(out, model, variables, input_spec=input_spec(config, info))
    preprocessing = {'input_size': (info.channels, *info.image_size), 'interpolation': 'bilinear', 'crop_pct': 1.0,
                     'crop_mode': 'squash', 'mean': info.mean, 'std': info.std, 'num_classes': info.num_classes,
                     'label_names': list(info.class_names)}
    return pretrained.export(model, variables, out, format=format, preprocessing=preprocessing, overwrite=overwrite)


def import_(weights: Path, out: Path, overwrite: bool = False) -> Path:
    """A vit-pytorch file with its sidecar as an orbax checkpoint, with the model it holds in model.json.

    The checkpoint is written next to `out` and renamed into place once complete: `out` holds the old checkpoint
    or the new one, never a mix (orbax would keep an existing step 0 and report success). An existing `out` is
    refused unless `overwrite`."""
    if out.exists() and not overwrite:
        raise FileExistsError(f'{out} exists: pass --overwrite to replace it, or choose another --out')
    model, variables = converters.load_flax(weights)
    written = out.with_name(f'.{out.name}.{os.getpid()}.tmp')
    try:
        save_variables(written, variables)
        # what the checkpoint holds, for the config of the run that fine-tunes from it
        (written / 'model.json').write_text(json.dumps(
            {'model_name': registry.entry_for(model).name, 'model': registry.torch_kwargs(model)}, indent=2) + '\n')
        if out.exists():
            replaced = out.with_name(f'.{out.name}.{os.getpid()}.old')
            out.rename(replaced)
            written.rename(out)
            shutil.rmtree(replaced)
        else:
            written.rename(out)
    finally:
        shutil.rmtree(written, ignore_errors=True)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(prog='vit-flax', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest='command', required=True)
    export_parser = commands.add_parser('export', help='training workdir -> vit-pytorch .safetensors / .pt, or a '
                                                        'timm / Hugging Face directory or big_vision .npz')
    export_parser.add_argument('--workdir', type=Path, required=True)
    export_parser.add_argument('--out', type=Path, required=True)
    export_parser.add_argument('--format', choices=pretrained.FORMATS,
                               help="default: the model's own ('timm' for pretrained_vit.VisionTransformer)")
    export_parser.add_argument('--overwrite', action='store_true', help='timm, hf, npz: replace an existing --out')
    import_parser = commands.add_parser('import', help='vit-pytorch file with sidecar -> orbax checkpoint')
    import_parser.add_argument('--weights', type=Path, required=True)
    import_parser.add_argument('--out', type=Path, required=True)
    import_parser.add_argument('--overwrite', action='store_true', help='replace an existing --out')
    args = parser.parse_args(argv)
    logging.set_verbosity(logging.WARNING)  # orbax narrates every restore at INFO
    try:
        if args.command == 'export':
            path = export(args.workdir, args.out, args.format, args.overwrite)
            if path.is_dir() or path.suffix == '.npz':  # a pretrained-ViT checkpoint
                print(f'wrote {path}: fine-tune from it with --config.init_from={path}')
            else:
                print(f'wrote {path} and {path.with_suffix(".json")}')
        else:
            path = import_(args.weights, args.out, args.overwrite)
            print(f'wrote {path}: train from it with --config.init_from={path}')
    except (OSError, ValueError, KeyError, CheckpointError) as error:
        sys.exit(f'error: {error}')


if __name__ == '__main__':
    main()
