"""python -m vit_flax.data digits --out=DIR [--classes=01234]: the embedded digits written as an image folder
(root/{train,val}/<class>/<i>.png), all ten classes or some, for runs that want an image folder of them (make
finetune-demo pretrains on 0-4 and fine-tunes on all ten)."""

import argparse

from vit_flax.data import digits

if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('dataset', choices=['digits'])
    parser.add_argument('--out', required=True, help='the folder to write (train/ and val/ inside)')
    parser.add_argument('--classes', default=''.join(digits.CLASS_NAMES), help='the digits to keep, e.g. 01234')
    args = parser.parse_args()
    print(f'wrote {digits.write_image_folder(args.out, tuple(args.classes))}')
