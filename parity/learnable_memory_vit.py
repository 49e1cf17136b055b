"""Parity with vit_pytorch.learnable_memory_vit: the test configurations of `learnable_memory_vit.ViT`, `learnable_memory_vit.Adapter`."""

from parity.spec import Spec
from vit_flax import learnable_memory_vit

SPECS = {
    'ViT': Spec(
        configs=(
            dict(image_size=16, patch_size=4, num_classes=10, dim=32, depth=2, heads=4, mlp_dim=64, dim_head=8),
            dict(image_size=(12, 20), patch_size=(4, 5), num_classes=7, dim=24, depth=1, heads=3, mlp_dim=32,
                 dim_head=12, channels=1, pool='mean'),
            dict(image_size=8, patch_size=2, num_classes=3, dim=16, depth=3, heads=1, mlp_dim=16, dim_head=16,
                 channels=2),
        ),
        notes='the backbone of learnable_memory_vit.Adapter; separate to_q / to_kv; always reads the cls token',
    ),
    'Adapter': Spec(
        configs=(
            dict(vit=learnable_memory_vit.ViT(image_size=16, patch_size=4, num_classes=10, dim=32, depth=2, heads=4,
                                              mlp_dim=64, dim_head=8), num_memories_per_layer=3, num_classes=5),
            dict(vit=learnable_memory_vit.ViT(image_size=(12, 20), patch_size=(4, 5), num_classes=7, dim=24, depth=1,
                                              heads=3, mlp_dim=32, dim_head=12, channels=1, pool='mean')),
            dict(vit=learnable_memory_vit.ViT(image_size=8, patch_size=2, num_classes=3, dim=16, depth=3, heads=1,
                                              mlp_dim=16, dim_head=16, channels=2), num_memories_per_layer=1,
                 num_classes=4),
        ),
        notes='learnable memories per layer + memory cls token + head on a frozen backbone `vit` (stop_gradient); '
              "persistent `attn_mask` in the 'buffers' collection",
    ),
}
