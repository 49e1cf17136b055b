"""Parity with vit_pytorch.efficient: the test configurations of `efficient.ViT`."""

from parity.spec import Spec
from vit_flax import vit

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
    ),
}
