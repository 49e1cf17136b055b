"""Parity with vit_pytorch.efficient: the test configurations and random-configuration sweep of `efficient.ViT`."""

import numpy as np

from parity.spec import Spec
from vit_flax import vit


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random efficient.ViT around a random vit.Transformer (rectangular images, int patches, channels, both
    pools, dim_head == dim sometimes) and images of image_size."""
    patch = int(rng.choice([2, 4]))
    heads = int(rng.integers(1, 4))
    dim = int(rng.choice([8, 12, 16]))
    image_size = (patch * int(rng.integers(1, 4)), patch * int(rng.integers(1, 4)))
    config = dict(
        image_size=image_size, patch_size=patch, num_classes=int(rng.integers(1, 5)), dim=dim,
        channels=int(rng.integers(1, 4)), pool=str(rng.choice(['cls', 'mean'])),
        transformer=vit.Transformer(dim=dim, depth=int(rng.integers(1, 3)), heads=heads,
                                    dim_head=int(rng.choice([4, dim])), mlp_dim=int(rng.integers(4, 20))),
    )
    return config, (rng.standard_normal((2, *image_size, config['channels']), dtype=np.float32),)


SPECS = {
    'ViT': Spec(
        configs=(
            dict(image_size=16, patch_size=4, num_classes=10, dim=32,
                 transformer=vit.Transformer(dim=32, depth=2, heads=4, dim_head=8, mlp_dim=64)),
            dict(image_size=(16, 24), patch_size=8, num_classes=7, dim=24, channels=1, pool='mean',
                 transformer=vit.Transformer(dim=24, depth=1, heads=3, dim_head=5, mlp_dim=32)),
            dict(image_size=12, patch_size=4, num_classes=3, dim=16, channels=2,
                 transformer=vit.Transformer(dim=16, depth=1, heads=1, dim_head=16, mlp_dim=16)),
        ),
        notes='external `transformer` module (any Flax module; vit.Transformer has a torch twin; '
              'efficient.LinearTransformer is our own linear attention); int patch_size; pool cls/mean',
        random_configuration=random_configuration,
        sweep_draws=4,
    ),
}
