"""Parity with vit_pytorch.accept_video_wrapper: the test configurations and random-configuration sweep of
`accept_video_wrapper.AcceptVideoWrapper`, wrapping vit.ViT, simple_vit.SimpleViT and cvt.CvT (plain, or through
an Extractor as vit-pytorch's example does: the converters build vit-pytorch's Extractor of the model's twin)."""

import numpy as np

from parity.spec import Spec
from parity.vivit_with_moss import random_moss_keywords
from vit_flax.cvt import CvT
from vit_flax.extractor import Extractor
from vit_flax.simple_vit import SimpleViT
from vit_flax.vit import ViT
from vit_flax.vivit_with_moss import MOSS


TINY_VIT = dict(image_size=8, patch_size=4, dim=16, depth=1, heads=2, mlp_dim=16, dim_head=8)
TINY_CVT = dict(s1_emb_dim=8, s1_emb_kernel=3, s1_emb_stride=2, s1_heads=1, s2_emb_dim=8, s2_heads=1, s2_depth=0,
                s3_emb_dim=12, s3_emb_stride=1, s3_heads=1, s3_depth=1, s3_kv_proj_stride=1)

CONFIGS = (
    # ViT's tokens (num_classes=0: the transformer's output), projected, with a time embedding and a causal MOSS
    dict(image_net=ViT(num_classes=0, **TINY_VIT), add_time_pos_emb=True, dim_emb=16, time_seq_len=4,
         proj_embed_to_dim=8, moss=MOSS(dim=8, hidden_dim=4, causal=True)),
    # vit-pytorch's example: an Extractor's (logits, embeddings), the embeddings (output 1) projected, with the time
    # embedding and MOSS from a dict of keywords
    dict(image_net=Extractor(ViT(num_classes=5, **TINY_VIT)), add_time_pos_emb=True, output_pos_add_pos_emb=1,
         time_seq_len=5, dim_emb=16, proj_embed_to_dim=12, moss=dict(dim=12, hidden_dim=4, orders=2, causal=True)),
    # SimpleViT's logits with a time embedding (no projection)
    dict(image_net=SimpleViT(num_classes=6, image_size=(8, 12), patch_size=4, dim=16, depth=1, heads=2, mlp_dim=16,
                             dim_head=8, channels=2),
         add_time_pos_emb=True, dim_emb=6, time_seq_len=3),
    # SimpleViT's transformer tokens through an Extractor (embeddings only): no cls token, MOSS over every token,
    # non-causal, the patch size read from the Extractor's model
    dict(image_net=Extractor(SimpleViT(num_classes=3, **TINY_VIT), return_embeddings_only=True),
         moss=dict(dim=16, local_time=3, local_height=1, local_width=3, hidden_dim=4, orders=1)),
    # CvT's logits, projected, with a time embedding
    dict(image_net=CvT(num_classes=4, **TINY_CVT), add_time_pos_emb=True, dim_emb=4, time_seq_len=6,
         proj_embed_to_dim=8),
    # a mean-pool ViT's tokens (no cls token) with MOSS at an explicit patch size, no time embedding; and a plain
    # ViT's logits (nothing but the time axis). (hidden_dim=2 would leave each channel LayerNorm two values, which
    # it maps to about +-1: the true gradient of the Linear bias before it falls to 1e-6 of the model's largest,
    # where float32 keeps 3 digits; float64 on both sides agrees to 4e-12 there)
    dict(image_net=ViT(num_classes=0, pool='mean', channels=1, **{**TINY_VIT, 'patch_size': (4, 2)}),
         patch_size=(4, 2), moss=dict(dim=16, hidden_dim=5, orders=3)),
    dict(image_net=ViT(num_classes=3, **TINY_VIT)),
)


def random_image_net(rng: np.random.Generator):
    """(a random vit.ViT, simple_vit.SimpleViT or cvt.CvT, or an Extractor of one, the index of its output that
    holds (batch, tokens, dim) tokens or None, that output's feature width)."""
    kind = str(rng.choice(['vit_tokens', 'vit', 'simple_vit', 'cvt']))
    patch = (int(rng.choice([2, 4])), int(rng.choice([2, 4])))
    dim = 4 * int(rng.integers(2, 5))
    sizes = dict(image_size=(patch[0] * int(rng.integers(1, 3)), patch[1] * int(rng.integers(1, 3))),
                 patch_size=patch, dim=dim, depth=1, heads=int(rng.integers(1, 3)), mlp_dim=8,
                 dim_head=int(rng.choice([4, 8])), channels=int(rng.integers(1, 4)))
    num_classes = int(rng.integers(1, 5))
    if kind == 'vit_tokens':
        return ViT(num_classes=0, pool=str(rng.choice(['cls', 'mean'])), **sizes), 0, dim
    if kind == 'vit':
        return Extractor(ViT(num_classes=num_classes, pool=str(rng.choice(['cls', 'mean'])), **sizes)), 1, dim
    if kind == 'simple_vit':
        return Extractor(SimpleViT(num_classes=num_classes, **sizes)), 1, dim
    return CvT(num_classes=num_classes, channels=sizes['channels'], **TINY_CVT), None, num_classes


def random_configuration(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random wrapper of a random ViT (tokens, or an Extractor's logits and tokens), SimpleViT (an Extractor's) or
    CvT (logits): the time embedding, projection and MOSS each half the time (MOSS on tokens only), and three videos
    of up to four frames of the image model's size."""
    image_net, tokens_at, dim = random_image_net(rng)
    config = dict(image_net=image_net)
    output = tokens_at if tokens_at is not None else 0
    if output:
        config['output_pos_add_pos_emb'] = output
    if rng.random() < 0.5:
        config.update(dim_emb=dim, proj_embed_to_dim=int(rng.integers(2, 13)))
        dim = config['proj_embed_to_dim']
    frames = int(rng.integers(1, 5))
    if rng.random() < 0.5:
        config.update(add_time_pos_emb=True, dim_emb=config.get('dim_emb', dim),
                      time_seq_len=frames + int(rng.integers(0, 3)))
    if tokens_at is not None and rng.random() < 0.6:
        moss = random_moss_keywords(rng)
        config['moss'] = dict(dim=dim, **moss) if rng.random() < 0.5 else MOSS(dim=dim, **moss)
    model = image_net.vit if isinstance(image_net, Extractor) else image_net
    size = model.image_size if not isinstance(model, CvT) else (int(rng.integers(4, 13)), int(rng.integers(4, 13)))
    videos = rng.standard_normal((3, frames, *size, model.channels), dtype=np.float32)
    return config, (videos,)


SPECS = {
    'AcceptVideoWrapper': Spec(
        configs=CONFIGS,
        notes='any image model on every frame, with a time embedding, projection and MOSS on one of its outputs '
              '(tested with ViT, SimpleViT and CvT, plain or through an Extractor); `eval_with_no_grad`',
        random_configuration=random_configuration,
        # twelve draws of the sweep's seed reach every image model (ViT's tokens with both pools, Extractors of ViT
        # and SimpleViT, CvT), MOSS as a module and as a dict, one to four frames, projections and time embeddings
        sweep_draws=12,
    ),
}
