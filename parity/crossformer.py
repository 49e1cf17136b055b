"""Parity with vit_pytorch.crossformer: the test configurations of `crossformer.CrossFormer`."""

from parity.spec import Spec

SPECS = {
    'CrossFormer': Spec(
        # every window is 1 x 1; windowed attention (parity, gradients) is tested in tests/test_crossformer.py
        configs=(
            dict(dim=32, depth=(1, 0, 0, 0), global_window_size=1, local_window_size=1,
                 cross_embed_kernel_sizes=((4, 8), (1, 3), (2, 4), (1, 3)), cross_embed_strides=(4, 1, 2, 1),
                 num_classes=10),
            dict(dim=(48, 40, 16, 64), depth=(0, 1, 0, 0), global_window_size=1, local_window_size=1,
                 cross_embed_kernel_sizes=((4, 6, 8, 12), (2, 4), (3, 5), (1, 3)), cross_embed_strides=(4, 2, 1, 1),
                 num_classes=7, channels=1, attn_dropout=0.1, ff_dropout=0.1),
            dict(dim=32, depth=(0, 0, 1, 0), global_window_size=1, local_window_size=1,
                 cross_embed_kernel_sizes=((4, 8, 16, 32), (2, 4), (2, 4), (1, 3)), cross_embed_strides=(4, 2, 2, 1),
                 num_classes=0, channels=2),
        ),
        notes='cross-scale conv embeddings, short / long distance windowed attention with a dynamic position bias '
              '(MLP), conv feed-forward, channel LayerNorm; dim_head fixed at 32; any image size the windows divide',
    ),
}
