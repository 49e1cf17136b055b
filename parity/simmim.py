"""Parity with vit_pytorch.simmim: the test configurations and random-configuration sweep of `simmim.SimMIM`."""

import numpy as np

from parity.mae import draws, encoder_images, random_encoder, torch_uses_3d_pos_embedding
from parity.spec import Spec
from vit_flax.converters import import_vit_pytorch
from vit_flax.vit import ViT


def torch_runs_on_2d_pos_embedding():
    """A context under which vit-pytorch 1.26.11's SimMIM runs on its own ViT (see the module docstring)."""
    return torch_uses_3d_pos_embedding(import_vit_pytorch('vit_pytorch.simmim').SimMIM, pad_mean_pool=True)


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random SimMIM (masking ratio) on a random encoder (parity.mae's), and images of its image_size."""
    encoder = random_encoder(rng)
    return dict(encoder=encoder, masking_ratio=float(rng.uniform(0.3, 0.9))), (encoder_images(rng, encoder),)


SPECS = {
    'SimMIM': Spec(
        configs=(
            dict(encoder=ViT(image_size=16, patch_size=4, num_classes=10, dim=32, depth=1, heads=2, mlp_dim=32,
                             dim_head=8)),
            dict(encoder=ViT(image_size=(12, 8), patch_size=(4, 2), num_classes=0, dim=16, depth=2, heads=1, mlp_dim=24,
                             dim_head=16, channels=2, pool='mean'), masking_ratio=0.75),
        ),
        draws=draws,
        torch_context=torch_runs_on_2d_pos_embedding,
        random_configuration=random_configuration,
        sweep_draws=6,
        notes="masked image modelling loss (rng stream 'masking', even in eval mode): mask tokens in place of the "
              "masked patches, a linear head predicts their pixels (L1 / num_masked); `params['encoder']` is a plain "
              "vit.ViT's; vit-pytorch fails on its 2-D pos_embedding (fixed here)",
    ),
}
