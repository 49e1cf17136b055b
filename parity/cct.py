"""Parity with vit_pytorch.cct: the test configurations of `cct.CCT`."""

from parity.spec import Spec

SPECS = {
    'CCT': Spec(
        # one token per config; multi-token configs (where `attention_pool.bias` gets no gradient) are tested in
        # tests/test_cct.py
        configs=(
            dict(img_size=4, embedding_dim=32, kernel_size=3, stride=2, padding=1, num_layers=2, num_heads=4,
                 mlp_ratio=2, num_classes=10),
            dict(img_size=(6, 10), embedding_dim=24, n_input_channels=1, kernel_size=5, stride=3, padding=2,
                 pooling_kernel_size=4, pooling_stride=3, pooling_padding=1, num_layers=1, num_heads=3,
                 mlp_ratio=1.5, num_classes=7, positional_embedding='learnable'),
            dict(img_size=7, embedding_dim=20, n_input_channels=2, n_conv_layers=0, kernel_size=4, stride=3,
                 padding=0, pooling_kernel_size=2, pooling_stride=2, pooling_padding=0, num_layers=3, num_heads=5,
                 mlp_ratio=1, num_classes=3, positional_embedding='none'),
            dict(img_size=16, embedding_dim=16, n_conv_layers=3, num_layers=2, num_heads=1, mlp_ratio=2,
                 num_classes=5, dropout_rate=0.1, stochastic_depth_rate=0.3),
        ),
        notes='conv tokenizer (conv, ReLU, max pool), sequence pooling; sine / learnable / no position embedding; '
              "stochastic depth in training only (rng stream 'drop_path'); presets cct_2 ... cct_16",
    ),
}
