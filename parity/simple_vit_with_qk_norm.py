"""Parity with vit_pytorch.simple_vit_with_qk_norm: the test configurations and random-configuration sweep of
`simple_vit_with_qk_norm.SimpleViT`, and the patched vit-pytorch class the comparison builds.

vit-pytorch 1.26.11's `linear_head` is a bare `LayerNorm(dim)`: the model returns (batch, dim) features and never
uses `num_classes` (the file copied simple_vit.py's head while it had lost its Linear; vit-pytorch's commit 950c901
restored `nn.Linear(dim, num_classes)` in simple_vit.py only). vit-flax's head is simple_vit.py's Linear
(vit_flax/simple_vit_with_qk_norm.py); the reference is vit-pytorch's SimpleViT built with that Linear in place of
the LayerNorm, everything else vit-pytorch's own.
"""

import contextlib
from unittest import mock

from torch import nn

from parity.simple_vit import random_configuration as random_simple_vit
from parity.spec import Spec
from vit_flax import converters


@contextlib.contextmanager
def torch_linear_head():
    """A context under which vit-pytorch's SimpleViT is built with `linear_head = nn.Linear(dim, num_classes)`."""
    torch_class = converters.import_vit_pytorch('vit_pytorch.simple_vit_with_qk_norm').SimpleViT
    released_init = torch_class.__init__

    def init_with_linear_head(self, *, num_classes, dim, **kwargs):
        released_init(self, num_classes=num_classes, dim=dim, **kwargs)
        self.linear_head = nn.Linear(dim, num_classes)

    with mock.patch.object(torch_class, '__init__', init_with_linear_head):
        yield


SPECS = {
    'SimpleViT': Spec(
        configs=(
            dict(image_size=16, patch_size=4, num_classes=10, dim=32, depth=1, heads=4, mlp_dim=32, dim_head=8),
            dict(image_size=(24, 16), patch_size=(8, 4), num_classes=5, dim=24, depth=2, heads=2, mlp_dim=32,
                 dim_head=12, channels=1),
            dict(image_size=16, patch_size=4, num_classes=0, dim=16, depth=2, heads=1, mlp_dim=16, dim_head=16,
                 channels=2),
        ),
        notes="per-head RMSNorm of queries and keys (gamma 1 / sqrt(dim_head)), no attention scale; vit-pytorch's head "
              'is a bare LayerNorm(dim) that returns features and ignores num_classes: fixed to Linear(dim, '
              'num_classes) as in simple_vit, the reference patched the same way',
        torch_construction=torch_linear_head,
        random_configuration=random_simple_vit,
        sweep_draws=6,
    ),
}
