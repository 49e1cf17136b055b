"""Parity with vit_pytorch.t2t: the test configurations and random-configuration sweep of `t2t.T2TViT`."""

import numpy as np

from parity.spec import Spec
from vit_flax.t2t import check_t2t_layers


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random T2TViT (1 to 3 soft splits of any kernel and stride, int image sizes, channels, heads, dim_head,
    both pools, class counts with 0) and images of image_size. Token widths are kept small: the soft splits
    multiply them by kernel area."""
    while True:
        channels = int(rng.integers(1, 4))
        t2t_layers = tuple((int(rng.integers(1, 5)), int(rng.integers(1, 4))) for _ in range(int(rng.integers(1, 4))))
        widths = np.cumprod([channels * kernel * kernel for kernel, _ in t2t_layers])
        if widths[:-1].max(initial=0) > 400 or widths[-1] > 2000:
            continue
        image_size = int(rng.integers(3, 17))
        try:
            check_t2t_layers(image_size, t2t_layers, channels)
        except ValueError:
            continue
        config = dict(image_size=image_size, num_classes=int(rng.integers(0, 5)), dim=int(rng.integers(2, 25)),
                      depth=int(rng.integers(1, 3)), heads=int(rng.integers(1, 6)), mlp_dim=int(rng.integers(1, 40)),
                      channels=channels, dim_head=int(rng.integers(1, 12)), pool=str(rng.choice(['cls', 'mean'])),
                      t2t_layers=t2t_layers)
        return config, (rng.standard_normal((2, image_size, image_size, channels), dtype=np.float32),)


SPECS = {
    'T2TViT': Spec(
        configs=(
            dict(image_size=16, num_classes=10, dim=32, depth=2, heads=4, mlp_dim=64, dim_head=8,
                 t2t_layers=((3, 2), (3, 2))),
            dict(image_size=32, num_classes=7, dim=24, depth=1, heads=3, mlp_dim=32, dim_head=5, channels=1,
                 pool='mean'),  # the default t2t_layers ((7, 4), (3, 2), (3, 2))
            dict(image_size=12, num_classes=3, dim=16, depth=2, heads=1, mlp_dim=32, dim_head=16, channels=2,
                 t2t_layers=((4, 4),)),
            dict(image_size=9, num_classes=5, dim=20, depth=1, heads=5, mlp_dim=16, dim_head=4, channels=1,
                 pool='mean', dropout=0.1, emb_dropout=0.1, t2t_layers=((3, 1), (2, 2), (3, 1))),
        ),
        notes='soft split (nn.Unfold, `(c kh kw)` order) + one-head transformers; any t2t_layers; '
              'external `transformer` module; single int image_size; pool cls/mean',
        random_configuration=random_configuration,
    ),
}
