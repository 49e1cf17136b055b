"""Parity with vit_pytorch.mpp: the test configurations and random-configuration sweep of `mpp.MPP`."""

import contextlib
from unittest import mock

import jax
import numpy as np
import torch
import torch.nn.functional as F

from parity.spec import Spec
from vit_flax import mpp
from vit_flax.converters import import_vit_pytorch
from vit_flax.vit import ViT


def torch_draws(model: mpp.MPP, draws: mpp.MaskingDraws):
    """A context under which vit-pytorch's MPP (of this configuration) makes `draws` instead of its own: the
    module's `torch.rand` / `torch.randint` and `prob_mask_like`'s uniform noise are replaced, nothing else."""
    module = import_vit_pytorch('vit_pytorch.mpp')
    as_tensor = lambda a, dtype: torch.from_numpy(np.array(a)).to(dtype)
    uniforms = [draws.replace_noise]
    if model.random_patch_prob > 0:
        uniforms.insert(0, draws.random_patch_noise)
    uniforms = iter(uniforms)

    def expect(size, like):
        assert tuple(size) == tuple(like.shape), (tuple(size), like.shape)

    class TorchWithDraws:
        def __getattr__(self, name):
            return getattr(torch, name)

        @staticmethod
        def rand(size, device=None):
            expect(size, draws.mask_noise)
            return as_tensor(draws.mask_noise, torch.float32).to(device)

        @staticmethod
        def randint(low, high, size, device=None):
            expect(size, draws.random_patches)
            assert (low, high) == (0, draws.random_patches.shape[1]), (low, high)
            return as_tensor(draws.random_patches, torch.int64).to(device)

    def prob_mask_like(t, prob):
        noise = next(uniforms)
        expect(t.shape[:2], noise)
        return as_tensor(noise, torch.float32) < prob

    stack = contextlib.ExitStack()
    stack.enter_context(mock.patch.object(module, 'torch', TorchWithDraws()))
    stack.enter_context(mock.patch.object(module, 'prob_mask_like', prob_mask_like))
    return stack


def torch_mpp_runs():
    """A context under which vit-pytorch 1.26.11's MPP runs and computes what it was written to: during its
    forward the encoder's 2-D `cls_token` / `pos_embedding` read as (1, ...) views of the same parameters (so
    gradients reach them), and with pool='mean' (no cls token) `to_bits` gets a dummy first token for
    `cls_logits[:, 1:]` to drop. Parameters and state dict are untouched."""
    module = import_vit_pytorch('vit_pytorch.mpp')
    forward = module.MPP.forward

    def patched_forward(self, input, **kwargs):
        encoder, shadowed = self.transformer, []
        # instance attributes shadow the parameters (still registered) for this call only
        for owner, name, value in (
            (encoder, 'cls_token', encoder.cls_token[None]),
            (encoder, 'pos_embedding', encoder.pos_embedding[None]),
            *(((self, 'to_bits', lambda x, to_bits=self.to_bits: F.pad(to_bits(x), (0, 0, 1, 0))),)
              if encoder.pool == 'mean' else ()),
        ):
            owner.__dict__[name] = value
            shadowed.append((owner, name))
        try:
            return forward(self, input, **kwargs)
        finally:
            for owner, name in shadowed:
                del owner.__dict__[name]

    return mock.patch.object(module.MPP, 'forward', patched_forward)


def draws(model, inputs: tuple, seed: int = 0):
    """MPP chooses and corrupts patches in every call: the Flax rngs for a call on `inputs`, and a context under
    which vit-pytorch's MPP makes the very draws of the Flax call (`MPP.masking_draws`: chosen patches,
    random-patch decisions and indices, mask-token decisions)."""
    rngs = {mpp.MASKING: jax.random.key(seed)}
    return rngs, torch_draws(model, model.apply({}, *inputs, rngs=rngs, method=type(model).masking_draws))


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random MPP (patch size, grid, channels, either pool, target bits and range, mask / replace /
    random-patch probabilities, with or without random patches, normalised targets or not) and images of its
    image_size."""
    patch = int(rng.choice([2, 3, 4]))
    rows, columns = (int(v) for v in rng.integers(1, 4, size=2))
    channels, dim = int(rng.integers(1, 4)), int(rng.choice([8, 12, 16]))
    pool = str(rng.choice(['cls', 'mean']))
    replace_prob = float(rng.choice([0.0, 0.3, 0.5, 0.8]))
    random_patch_prob = float(rng.choice([0.0, round(0.9 * (1 - replace_prob), 2)]))
    normalised = bool(rng.integers(2))
    config = dict(
        transformer=ViT(image_size=(rows * patch, columns * patch), patch_size=patch,
                        num_classes=int(rng.integers(0, 4)), dim=dim, depth=int(rng.integers(1, 3)),
                        heads=int(rng.integers(1, 3)), mlp_dim=16, dim_head=int(rng.choice([4, 8])),
                        channels=channels, pool=pool),
        patch_size=patch, dim=dim, channels=channels, output_channel_bits=int(rng.integers(1, 4)),
        max_pixel_val=float(rng.choice([1.0, 2.0])), mask_prob=float(rng.choice([0.15, 0.5, 1.0])),
        replace_prob=replace_prob, random_patch_prob=random_patch_prob,
        mean=tuple(rng.random(channels).round(2).tolist()) if normalised else None,
        std=tuple((0.2 + rng.random(channels)).round(2).tolist()) if normalised else None,
    )
    return config, (rng.standard_normal((2, rows * patch, columns * patch, channels), dtype=np.float32),)


SPECS = {
    'MPP': Spec(
        configs=(
            dict(transformer=ViT(image_size=16, patch_size=4, num_classes=5, dim=16, depth=1, heads=2, mlp_dim=16,
                                 dim_head=8), patch_size=4, dim=16),
            # mean pool (no cls token), no head, one channel, un-normalised targets
            dict(transformer=ViT(image_size=(8, 12), patch_size=4, num_classes=0, dim=12, depth=2, heads=3,
                                 mlp_dim=24, dim_head=4, channels=1, pool='mean'),
                 patch_size=4, dim=12, channels=1, output_channel_bits=2, max_pixel_val=2.0, mask_prob=0.5,
                 replace_prob=0.3, random_patch_prob=0.4, mean=(0.5,), std=(0.25,)),
            # no random patches: every chosen patch becomes the mask token
            dict(transformer=ViT(image_size=12, patch_size=3, num_classes=3, dim=16, depth=1, heads=1, mlp_dim=16,
                                 dim_head=16, channels=2),
                 patch_size=3, dim=16, channels=2, output_channel_bits=1, mask_prob=0.25, replace_prob=1.0,
                 random_patch_prob=0.0, mean=(0.1, -0.2), std=(0.5, 2.0)),
        ),
        draws=draws,
        torch_context=torch_mpp_runs,
        random_configuration=random_configuration,
        sweep_draws=6,
        notes="masked patch prediction loss (rng stream 'masking', even in eval mode): chosen patches replaced by a "
              "mask token or a random patch, their mean colours predicted as quantised classes; "
              "`params['transformer']` is a plain vit.ViT's; vit-pytorch fails on the 2-D cls_token / "
              "pos_embedding and on pool='mean' (fixed here)",
    ),
}
