"""The table of timm's ViT architectures that vit_flax.converters.timm reads (converters/timm_architectures.json),
generated from the installed timm so the library knows each architecture's keywords without importing timm.

    python -m parity.timm_architectures --write   # regenerate after a timm upgrade (tests check it is current)

Each `vit_*` / `deit*` architecture timm registers is built on the meta device (no memory, no download) and read
back into `pretrained_vit.VisionTransformer` keywords from its modules; one this family cannot hold exactly is listed
with the reason instead (another model class, block, MLP, activation or patch embedding)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TABLE = Path(__file__).resolve().parents[1] / 'converters' / 'timm_architectures.json'


def _unsupported(model) -> str | None:
    import timm.layers
    import torch
    from timm.models.vision_transformer import Attention, Block, VisionTransformer

    if type(model) is not VisionTransformer:
        return f'a timm {type(model).__name__}, not a VisionTransformer'
    block = model.blocks[0]
    if type(block) is not Block or type(block.attn) is not Attention or type(block.mlp) is not timm.layers.Mlp:
        return (f'its blocks are {type(block).__name__} ({type(getattr(block, "attn", None)).__name__}, '
                f'{type(getattr(block, "mlp", None)).__name__}), not Block (Attention, Mlp)')
    if not isinstance(block.norm1, torch.nn.LayerNorm):
        return f'its norms are {type(block.norm1).__name__}, not LayerNorm'
    if type(block.mlp.act) not in (torch.nn.GELU, timm.layers.GELUTanh):
        return f'its activation is {type(block.mlp.act).__name__}, not GELU (exact or tanh)'
    if type(model.patch_embed) is not timm.layers.PatchEmbed or not isinstance(model.patch_embed.proj, torch.nn.Conv2d):
        return f'its patch embedding is {type(model.patch_embed).__name__} (a hybrid CNN stem or other)'
    if model.patch_embed.dynamic_img_pad:
        return 'its patch embedding pads images to whole patches (dynamic_img_pad)'
    return None


def _keywords(model) -> dict:
    """pretrained_vit.VisionTransformer keywords read off a timm VisionTransformer's modules."""
    import torch

    block = model.blocks[0]
    approximate = getattr(block.mlp.act, 'approximate', 'none')
    has = lambda module: not isinstance(module, torch.nn.Identity)  # noqa: E731
    uses_fc_norm = has(model.fc_norm)
    return dict(
        img_size=list(model.patch_embed.img_size), patch_size=list(model.patch_embed.patch_size),
        in_chans=model.patch_embed.proj.in_channels, num_classes=model.num_classes, global_pool=model.global_pool,
        embed_dim=model.embed_dim, depth=len(model.blocks), num_heads=block.attn.num_heads,
        mlp_ratio=block.mlp.fc1.out_features / model.embed_dim, qkv_bias=block.attn.qkv.bias is not None,
        qk_norm=has(block.attn.q_norm), init_values=1e-5 if has(block.ls1) else None,
        class_token=model.cls_token is not None, no_embed_class=bool(model.no_embed_class),
        reg_tokens=model.num_reg_tokens, pre_norm=has(model.norm_pre), final_norm=has(model.norm) or uses_fc_norm,
        fc_norm=uses_fc_norm, act_layer='gelu' if type(block.mlp.act) is torch.nn.GELU and approximate == 'none'
        else 'gelu_tanh', norm_eps=block.norm1.eps, dynamic_img_size=bool(model.dynamic_img_size),
    )


def table() -> dict:
    import timm
    import torch

    supported, unsupported = {}, {}
    for name in sorted(set(timm.list_models('vit_*')) | set(timm.list_models('deit*'))):
        with torch.device('meta'):
            model = timm.create_model(name, pretrained=False)
        why = _unsupported(model)
        if why:
            unsupported[name] = why
        else:
            supported[name] = _keywords(model)
    return {'timm_version': timm.__version__, 'architectures': supported, 'unsupported': unsupported}


def text() -> str:
    """The table as JSON with one architecture per line, so a timm upgrade's diff reads per architecture."""
    data = table()
    lines = ['{', f' "timm_version": {json.dumps(data["timm_version"])},']
    for section in ('architectures', 'unsupported'):
        rows = [f'  {json.dumps(name)}: {json.dumps(value, sort_keys=True)}' for name, value in data[section].items()]
        lines += [f' {json.dumps(section)}: {{', ',\n'.join(rows), ' }' + (',' if section == 'architectures' else '')]
    return '\n'.join(lines) + '\n}\n'


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--write', action='store_true', help=f'write {TABLE.name} (else print it)')
    if parser.parse_args().write:
        TABLE.write_text(text())
    else:
        print(text(), end='')
