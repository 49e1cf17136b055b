"""The README's architecture table, from the registry and the parity specs.

    python -m parity.readme_table                    # print it
    python -m parity.readme_table --write README.md  # replace the table between the README's markers
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
from pathlib import Path

import parity

# vit-pytorch's files that are not a model (the package's own)
NOT_MODULES = ('__init__',)
# vit-pytorch's modules that hold no model, mirrored without a registry entry: its tools (tests/test_recorder.py,
# tests/test_extractor.py) and the N-D masks vit_nd's models share (tests/test_vit_nd_masking.py)
TOOLS = ('recorder', 'extractor', 'vit_nd_masking')


def vit_pytorch_modules() -> list[str]:
    """Every module of the installed vit-pytorch (the version constraints.txt pins)."""
    package = importlib.util.find_spec('vit_pytorch')
    return sorted(path.stem for path in Path(package.origin).parent.glob('*.py') if path.stem not in NOT_MODULES)


def coverage_line() -> str:
    """How many of vit-pytorch's modules vit-flax mirrors (a registry entry of that file, or a tool), and which not
    yet."""
    modules = vit_pytorch_modules()
    covered = {entry.module for entry in parity.ENTRIES} | set(TOOLS)
    missing = [name for name in modules if name not in covered]
    line = (f'vit-flax mirrors {len(modules) - len(missing)} of the {len(modules)} modules of vit-pytorch '
            f"{importlib.metadata.version('vit-pytorch')}")
    return line + (f"; not yet: {', '.join(f'`{name}`' for name in missing)}." if missing else '.')

MARKERS = ('<!-- registry-table:start -->\n', '<!-- registry-table:end -->')


def markdown_table() -> str:
    rows = [
        '| vit-flax | vit-pytorch | paper | parity tests | Recorder | notes |',
        '|---|---|---|---|---|---|',
    ]
    for entry in parity.ENTRIES:
        recorder = 'yes' if entry.recordable else f'no: {entry.not_recordable}'
        rows.append(
            f'| `vit_flax.{entry.name}` | `{entry.torch_module}.{entry.torch_class_name}` | {entry.paper} | '
            f'torch->Flax, Flax->torch (strict), round trip, gradients; {len(entry.configs)} configs | {recorder} | '
            f'{entry.notes} |'
        )
    return coverage_line() + '\n\n' + '\n'.join(rows) + '\n'


def readme_with_table(readme: str) -> str:
    """`readme` with the text between the markers replaced by `markdown_table()`."""
    start, end = MARKERS
    head, rest = readme.split(start, 1)
    _, tail = rest.split(end, 1)
    return head + start + markdown_table() + end + tail


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description='Print the architecture table, or write it into a README.')
    parser.add_argument('--write', type=Path, metavar='README', help='update the table in this file')
    args = parser.parse_args()
    if args.write:
        args.write.write_text(readme_with_table(args.write.read_text()))
    else:
        print(markdown_table(), end='')
