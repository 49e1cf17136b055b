"""Parity with vit_pytorch.t2t: the test configurations of `t2t.T2TViT`."""

from parity.spec import Spec

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
    ),
}
