"""The README's architecture table, from the registry and the parity specs.

    python -m parity.readme_table                    # print it
    python -m parity.readme_table --write README.md  # replace the table between the README's markers
"""

from __future__ import annotations

import argparse
from pathlib import Path

import parity

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
    return '\n'.join(rows) + '\n'


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
