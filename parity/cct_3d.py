"""Parity with vit_pytorch.cct_3d: the test configurations and random-configuration sweep of `cct_3d.CCT`."""

import numpy as np

from parity.spec import Spec
from vit_flax.cct_3d import CCT
from vit_flax.layers import pair


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random video CCT (frame and spatial convs, pooling and paddings, conv layers, heads, MLP ratios, stochastic
    depth, each position embedding, classes; drawn until its tokenizer yields at least one token, as vit-pytorch
    needs) and videos of its frames and image size."""
    while True:
        heads = int(rng.integers(1, 4))
        pooling_kernel_size = int(rng.integers(1, 4))
        frame_pooling_kernel_size = int(rng.integers(1, 3))
        config = dict(
            img_size=(int(rng.integers(3, 10)), int(rng.integers(3, 10))), num_frames=int(rng.integers(1, 6)),
            embedding_dim=heads * int(rng.integers(1, 6)), n_input_channels=int(rng.integers(1, 4)),
            n_conv_layers=int(rng.integers(0, 3)),
            frame_kernel_size=int(rng.integers(1, 4)), frame_stride=int(rng.integers(1, 3)),
            frame_padding=rng.choice([None, 0, 1]), frame_pooling_kernel_size=frame_pooling_kernel_size,
            frame_pooling_stride=int(rng.integers(1, 3)),
            frame_pooling_padding=rng.choice([None, *range(frame_pooling_kernel_size // 2 + 1)]),
            kernel_size=int(rng.integers(1, 5)), stride=int(rng.integers(1, 3)), padding=int(rng.integers(0, 3)),
            pooling_kernel_size=pooling_kernel_size, pooling_stride=int(rng.integers(1, 3)),
            pooling_padding=int(rng.integers(0, pooling_kernel_size // 2 + 1)),
            num_layers=int(rng.integers(0, 3)), num_heads=heads, mlp_ratio=float(rng.choice([0.5, 1, 2.5])),
            num_classes=int(rng.integers(0, 5)), stochastic_depth_rate=float(rng.choice([0.0, 0.3])),
            positional_embedding=str(rng.choice(['sine', 'learnable', 'none'])),
        )
        config = {k: int(v) if isinstance(v, np.integer) else v for k, v in config.items()}
        try:
            CCT(**config)
        except ValueError:
            continue
        shape = (2, config['num_frames'], *pair(config['img_size']), config['n_input_channels'])
        return config, (rng.standard_normal(shape, dtype=np.float32),)


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
        random_configuration=random_configuration,
        sweep_draws=6,
    ),
}
