"""Parity with vit_pytorch.cct_3d: the test configurations of `cct_3d.CCT`."""

from parity.spec import Spec

SPECS = {
    'CCT': Spec(
        # one token per config; multi-token configs (where `attention_pool.bias` gets no gradient) are tested in
        # tests/test_cct_3d.py
        configs=(
            dict(img_size=4, num_frames=2, embedding_dim=32, kernel_size=3, stride=2, padding=1, frame_stride=2,
                 num_layers=2, num_heads=4, mlp_ratio=2, num_classes=10),
            dict(img_size=(6, 10), num_frames=3, n_input_channels=1, frame_kernel_size=2, frame_padding=0,
                 frame_pooling_kernel_size=2, frame_pooling_stride=2, frame_pooling_padding=0, kernel_size=5,
                 stride=3, padding=2, pooling_kernel_size=4, pooling_stride=3, pooling_padding=1, embedding_dim=24,
                 num_layers=1, num_heads=3, mlp_ratio=1.5, num_classes=7, positional_embedding='learnable'),
            dict(img_size=5, num_frames=4, n_input_channels=2, n_conv_layers=0, frame_kernel_size=1, frame_stride=4,
                 kernel_size=4, stride=3, padding=0, pooling_kernel_size=1, pooling_stride=1, pooling_padding=0,
                 embedding_dim=20, num_layers=3, num_heads=5, mlp_ratio=1, num_classes=3,
                 positional_embedding='none', stochastic_depth_rate=0.3),
        ),
        notes='3-D conv tokenizer (Conv3d, ReLU, MaxPool3d), sequence pooling; sine (a buffer) / learnable / no '
              "position embedding; stochastic depth in training only (rng stream 'drop_path'); fixed "
              'dropout 0 and attention dropout 0.1; presets cct_2 ... cct_16',
    ),
}
