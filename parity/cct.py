"""Parity with vit_pytorch.cct: the test configurations and random-configuration sweep of `cct.CCT`."""

import numpy as np

from parity.spec import Spec
from vit_flax.cct import CCT


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random CCT (rectangular images, channels, 0 to 2 convs, kernel / stride / padding and pooling variants,
    0 to 2 layers, heads, fractional mlp ratios, every position embedding, class counts with 0) whose tokenizer
    yields at least one token, and images of img_size."""
    while True:
        heads = int(rng.integers(1, 5))
        pooling_kernel_size = int(rng.integers(1, 4))
        config = dict(
            img_size=(int(rng.integers(4, 17)), int(rng.integers(4, 17))),
            embedding_dim=heads * int(rng.integers(1, 7)), n_input_channels=int(rng.integers(1, 4)),
            n_conv_layers=int(rng.integers(0, 3)), kernel_size=int(rng.integers(1, 6)),
            stride=int(rng.integers(1, 3)), padding=int(rng.integers(0, 3)),
            pooling_kernel_size=pooling_kernel_size, pooling_stride=int(rng.integers(1, 3)),
            pooling_padding=int(rng.integers(0, pooling_kernel_size // 2 + 1)),
            num_layers=int(rng.integers(0, 3)), num_heads=heads, mlp_ratio=float(rng.choice([0.5, 1, 2.5])),
            num_classes=int(rng.integers(0, 5)),
            positional_embedding=str(rng.choice(['sine', 'learnable', 'none'])),
        )
        try:
            CCT(**config)  # refuses a tokenizer that yields no token
        except ValueError:
            continue
        shape = (2, *config['img_size'], config['n_input_channels'])
        return config, (rng.standard_normal(shape, dtype=np.float32),)


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
        random_configuration=random_configuration,
    ),
}
