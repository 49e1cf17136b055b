"""Parity with vit_pytorch.vaat: the test configurations and random-configuration sweeps of `vaat.AST` (the audio
tower alone) and `vaat.VAAT`, and the patched vit-pytorch forward the comparison runs.

vit-pytorch's vaat.py imports torchaudio's Spectrogram, which the development environment has from
parity/torchaudio_stand_in (torchaudio's own code on torch.stft; see its pyproject.toml). tests/test_vaat.py checks
vit_flax.vaat.spectrogram against it over the spectrogram's keywords.

vit-pytorch's `VAAT.forward(video_or_image, audio_or_spec, *, extra, tasks, advantages, actions, ...)` takes the
conditioning as keywords only, while the parity tests call every model with positional inputs
(registry.VisionAudioActionInputs), and it adds the audio view embedding as (views, 1, 1, d) to the audio trajectory
(layers, batch, views, tokens, d), which lines its views up with the batch (vit_flax/vaat.py's docstring). The
reference runs under `positional_conditioning_and_audio_views`: the shipped forward, given the positional inputs as
its keywords, with that one reshape made (views, 1, d). The state dict and everything else are untouched.
"""

import contextlib
from unittest import mock

import numpy as np

from parity.spec import Spec
from parity.vat import TINY_VIT, keywords_forward, random_action_keywords, random_conditioning, random_video
from parity.vat import random_vit_keywords
from vit_flax import converters, vaat
from vit_flax.layers import pair


@contextlib.contextmanager
def positional_conditioning_and_audio_views():
    module = converters.import_vit_pytorch('vit_pytorch.vaat')
    shipped_rearrange = module.rearrange
    shipped_forward = keywords_forward(module.VAAT.forward, leading=2)

    def forward(self, *inputs, **keywords):
        fixed = []

        def rearrange(tensor, pattern, **axes):
            # vit-pytorch's `rearrange(self.audio_view_emb, 'v d -> v 1 1 d')`: one embedding per audio view
            if self.audio_view_emb is not None and tensor is self.audio_view_emb:
                if pattern != 'v d -> v 1 1 d':
                    raise AssertionError(f'vit-pytorch reshapes the audio view embedding with {pattern!r}, not the '
                                         'pattern this patch fixes')
                fixed.append(pattern)
                pattern = 'v d -> v 1 d'
            return shipped_rearrange(tensor, pattern, **axes)

        with mock.patch.object(module, 'rearrange', rearrange):
            out = shipped_forward(self, *inputs, **keywords)
        if self.audio_view_emb is not None and not fixed:
            raise AssertionError("vit-pytorch's VAAT no longer reshapes its audio view embedding as this patch expects")
        return out

    with mock.patch.object(module.VAAT, 'forward', forward):
        yield


def random_ast_keywords(rng: np.random.Generator, min_depth: int = 1) -> dict:
    """A random AST: rectangular or int patches, a sin-cos width (a multiple of 4, at least 8), register tokens,
    classes or none; waveform input with every spectrogram keyword at random (n_fft with as many bins as a patch is
    tall at least, windows up to n_fft or its default, hops, padding, centring and every pad mode, powers), or
    spectrogram input."""
    patch = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
    heads = int(rng.integers(1, 4))
    config = dict(dim=4 * int(rng.integers(2, 6)), depth=int(rng.integers(min_depth, 3)),
                  mlp_dim=int(rng.integers(1, 25)),
                  num_classes=None if rng.random() < 0.3 else int(rng.integers(0, 5)),
                  patch_size=patch if rng.random() < 0.7 else patch[0], dim_head=int(rng.integers(1, 9)),
                  heads=heads, num_register_tokens=int(rng.integers(0, 4)), accept_spec=bool(rng.random() < 0.3))
    n_fft = int(rng.integers(max(2 * patch[0] - 2, 1), 21))
    config.update(spec_n_fft=n_fft,
                  spec_win_length=None if rng.random() < 0.3 else int(rng.integers(1, n_fft + 1)),
                  spec_hop_length=None if rng.random() < 0.3 else int(rng.integers(1, 6)),
                  spec_pad=int(rng.integers(0, 3)), spec_center=bool(rng.random() < 0.7),
                  spec_pad_mode=str(rng.choice(list(vaat.PAD_MODES))),
                  spec_power=float(rng.choice([1.0, 2.0, 1.5, 3.0])))
    if config['spec_hop_length'] is None and (config['spec_win_length'] or n_fft) < 2:
        config['spec_hop_length'] = 1  # torchaudio's default hop, win_length // 2, would be 0
    return config


def random_audio(rng: np.random.Generator, ast: dict, views: tuple, batch: int) -> np.ndarray:
    """Audio the AST takes: waveforms of one to three patch columns and a few samples more, or spectrograms of one
    to three patches and a remainder each way."""
    model = vaat.AST(**ast)
    patch_height, patch_width = pair(model.patch_size)
    if model.accept_spec:
        shape = (int(rng.integers(1, 4)) * patch_width + int(rng.integers(0, patch_width)),
                 int(rng.integers(1, 4)) * patch_height + int(rng.integers(0, patch_height)))
    else:
        shape = (model.waveform_length(int(rng.integers(1, 4))) + int(rng.integers(0, 3)),)
    return rng.standard_normal((batch, *views, *shape), dtype=np.float32)


def random_ast(rng: np.random.Generator) -> tuple[dict, tuple]:
    config = random_ast_keywords(rng, min_depth=0)
    return config, (random_audio(rng, config, (), 2),)


def random_vaat(rng: np.random.Generator) -> tuple[dict, tuple]:
    """A random VAAT on a random ViT and AST (each given as a module or as a dict of its keywords), with image and
    audio views (a view axis or not for one audio view), frames, and random conditioning."""
    vit, _ = random_vit_keywords(rng)
    ast = random_ast_keywords(rng)
    config = random_action_keywords(rng, {'vit': vit['depth'], 'ast': ast['depth']})
    config['num_image_views'] = [None, 1, 2][int(rng.integers(0, 3))]
    config['num_audio_views'] = [None, 1, 2, 3][int(rng.integers(0, 4))]
    config['vit'] = vit if rng.random() < 0.3 else vaat.ViT(**vit)
    config['ast'] = ast if rng.random() < 0.3 else vaat.AST(**ast)
    image_views = config['num_image_views'] if config['num_image_views'] == 2 else int(rng.integers(1, 3))
    audio_views = config['num_audio_views'] if config['num_audio_views'] and config['num_audio_views'] > 1 else 1
    batch = int(rng.integers(1, 4))
    video = random_video(rng, vit, image_views, config['time_seq_len'], batch)
    audio = random_audio(rng, ast, (audio_views,) if audio_views > 1 or rng.random() < 0.5 else (), batch)
    return config, (video, audio, *random_conditioning(rng, config, batch))


TINY_AST = dict(dim=16, depth=2, mlp_dim=16, num_classes=4, patch_size=(4, 3), dim_head=8, heads=2, spec_n_fft=14,
                spec_win_length=10, num_register_tokens=1)

SPECS = {
    'AST': Spec(
        configs=(
            # waveforms: n_fft 14 gives 8 bins, two patch rows; a 10-sample window (zero-padded to 14), hop 5
            TINY_AST,
            # spectrogram input (batch, time, freq), cropped to whole patches; no head; no register tokens
            dict(dim=12, depth=1, mlp_dim=8, patch_size=4, dim_head=6, heads=2, accept_spec=True,
                 num_register_tokens=0),
            # magnitude (power 1), no centring, zero padding, an odd n_fft, a given hop, one head of width dim
            dict(dim=8, depth=2, mlp_dim=16, num_classes=2, patch_size=(3, 2), dim_head=8, heads=1, spec_n_fft=9,
                 spec_win_length=8, spec_power=1, spec_hop_length=3, spec_pad=2, spec_center=False),
            # power 3, replicate padding, the default window (n_fft) and hop (half of it); no classes
            dict(dim=8, depth=1, mlp_dim=8, num_classes=0, patch_size=2, dim_head=4, heads=2, spec_n_fft=8,
                 spec_win_length=None, spec_power=3, spec_pad_mode='replicate', num_register_tokens=2),
            # a fractional power and circular padding
            dict(dim=8, depth=1, mlp_dim=8, num_classes=3, patch_size=(2, 3), dim_head=4, heads=2, spec_n_fft=6,
                 spec_win_length=5, spec_hop_length=2, spec_power=1.5, spec_pad_mode='circular'),
        ),
        notes="torchaudio's Spectrogram in JAX (its window a buffer), cropped to whole patches, sin-cos 2-D position "
              'embedding, register tokens, per-head output gates, mean pooling; waveform or spectrogram input; '
              '`return_hiddens`',
        random_configuration=random_ast,
    ),
    'VAAT': Spec(
        configs=(
            # every kind of token and conditioning: two image and two audio views (each audio view its own
            # embedding), tasks (FiLM), an extra token, advantages, registers, self-attention. One layer, as VAT's
            # first configuration (parity/vat.py): in a second, FiLM-collapsed tokens make the self-attention's query
            # gradients cancel, where vit-pytorch's own float32 run is 3e-4 (relative) off its float64 reference and
            # ours in float64 agrees with it to 1e-13 (the sin-cos table computed in float64 too)
            dict(vit=vaat.ViT(**TINY_VIT), ast=vaat.AST(**TINY_AST), dim=16, depth=1, heads=2, dim_head=8,
                 dim_action=3, mlp_dim=16, num_image_views=2, num_audio_views=2, num_tasks=3, dim_extra_token=5,
                 num_register_tokens=2, action_chunk_len=3, self_attn_heads=2, self_attn_dim_head=4,
                 vit_layer_indices=(2,), ast_layer_indices=(1,), num_advantage_bins=2),
            # spectrogram input, frames, the ViT and the AST as dicts, deeper than both (repeated and negative
            # indices, their outputs), FiLM in every layer, no self-attention, no register tokens
            dict(vit=dict(TINY_VIT, image_size=(8, 12), channels=1),
                 ast=dict(dim=12, depth=1, mlp_dim=8, patch_size=4, dim_head=6, heads=2, accept_spec=True),
                 dim=12, depth=3, heads=3, dim_head=4, dim_action=2, mlp_dim=8, num_tasks=2, dim_extra_token=3,
                 num_register_tokens=0, action_chunk_len=2, time_seq_len=2, add_self_attn=False,
                 vit_layer_indices=(2, 0, -2), ast_layer_indices=(1, -1, 0)),
            # one head of width dim (no output projection), one view of each, no conditioning, dropout (eval mode)
            dict(vit=vaat.ViT(**TINY_VIT), ast=vaat.AST(**dict(TINY_AST, depth=1)), dim=8, depth=1, heads=1,
                 dim_head=8, dim_action=4, mlp_dim=8, num_image_views=1, num_audio_views=1, num_tasks=2,
                 num_register_tokens=1, action_chunk_len=4, dropout=0.1, self_attn_heads=1, self_attn_dim_head=8,
                 vit_layer_indices=(2,), ast_layer_indices=(0,), num_advantage_bins=3),
        ),
        notes="VAT with a second cross attention per layer, over an AST's trajectory of waveforms or spectrograms; "
              "vit-pytorch's audio view embedding (which lines views up with the batch) fixed to one per view, and "
              'its keyword-only forward called positionally, by the patched reference; `freeze_ast`',
        torch_context=positional_conditioning_and_audio_views,
        random_configuration=random_vaat,
        sweep_draws=6,
    ),
}
