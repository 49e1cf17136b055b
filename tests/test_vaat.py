"""vaat beyond the registry configs: the JAX spectrogram against torchaudio's (the stand-in, float64) over its
keywords and against the definition, the stand-in itself, the Hann window, AST's trajectory, a loaded window, short
inputs and bad configurations; VAAT's loss and gradients with a frozen AST, the audio view embedding vit-pytorch
lines up with the batch, views given or implied, refusals, and vit-pytorch's `__main__` example."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import parity
from parity.vaat import TINY_AST, positional_conditioning_and_audio_views
from tests.conftest import (assert_close_gradients, assert_close_outputs, converted_pair, float64_reference,
                            new_torch_model)
from tests.test_vat import call, double, flax_gradients, torch_gradients, torch_video
from vit_flax import converters, registry
from vit_flax.vaat import AST, VAAT, Spectrogram, ViT, hann_window

AST_ENTRY = parity.BY_NAME['vaat.AST']
ENTRY = parity.BY_NAME['vaat.VAAT']
FULL = ENTRY.configs[0]  # two image and two audio views, tasks, extra token, advantages; the registry's compiles


def stand_in():
    import torchaudio

    assert getattr(torchaudio, 'STAND_IN', False), 'these tests check the stand-in, parity/torchaudio_stand_in'
    return torchaudio


# (keywords of torchaudio's Spectrogram, waveform shape): every n_fft parity, windows shorter than n_fft (zero-padded
# in the middle), hops shorter and longer than the window, constant padding, centring in every pad mode, powers and
# the complex spectrum, both normalisations, two-sided spectra, and leading shapes of none to two axes
SPECTROGRAMS = [
    (dict(), (2, 1000)),
    (dict(n_fft=128, win_length=24), (3, 300)),
    (dict(n_fft=16, win_length=10, hop_length=3, pad=2, pad_mode='constant', power=1.0), (2, 3, 37)),
    (dict(n_fft=9, win_length=8, hop_length=3, pad=2, center=False, power=1), (2, 14)),
    (dict(n_fft=8, hop_length=1, pad_mode='replicate', power=3), (1, 9)),
    (dict(n_fft=12, hop_length=5, pad=1, pad_mode='circular', power=0.5), (2, 5)),
    (dict(n_fft=10, win_length=7, hop_length=4, power=None), (2, 33)),
    (dict(n_fft=16, hop_length=4, normalized=True), (41,)),
    (dict(n_fft=16, win_length=11, hop_length=4, pad=3, center=False, normalized='frame_length'), (2, 40)),
    (dict(n_fft=15, win_length=11, hop_length=4, normalized='window', onesided=False, power=1.0), (2, 40)),
    (dict(n_fft=6, hop_length=8, power=2.0), (2, 50)),
    (dict(n_fft=1, hop_length=1, center=False), (2, 3)),
]


def spectrogram_pair(keywords, shape, seed=0):
    """(the stand-in's float64 spectrogram, ours under jax_enable_x64) of one random waveform, and the stand-in."""
    torch_spec = stand_in().transforms.Spectrogram(**keywords).double()
    waveform = np.random.default_rng(seed).standard_normal(shape)
    expected = torch_spec(torch.from_numpy(waveform)).numpy()
    ours = Spectrogram(**keywords)
    with jax.enable_x64(True):
        variables = {'buffers': {'window': jnp.asarray(torch_spec.window.numpy())}}
        out = np.asarray(jax.jit(ours.apply)(variables, jnp.asarray(waveform)))
    return expected, out, torch_spec


@pytest.mark.parametrize('keywords, shape', SPECTROGRAMS, ids=lambda v: repr(v) if isinstance(v, dict) else str(v))
def test_spectrogram_is_torchaudios_in_float64(keywords, shape):
    expected, out, torch_spec = spectrogram_pair(keywords, shape)
    n_fft = keywords.get('n_fft', 400)
    bins = n_fft // 2 + 1 if keywords.get('onesided', True) else n_fft
    assert out.shape == expected.shape and out.shape[:-1] == (*shape[:-1], bins)
    assert out.dtype == (np.complex128 if keywords.get('power', 2.0) is None else np.float64)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-11 * np.abs(expected).max())
    # torchaudio's defaults: the window is n_fft long, the hop half the window
    assert torch_spec.win_length == keywords.get('win_length') or n_fft
    assert torch_spec.hop_length == keywords.get('hop_length') or torch_spec.win_length // 2


@pytest.mark.parametrize('power, pad_mode', [(2.0, 'reflect'), (1.0, 'circular'), (1.5, 'replicate')])
def test_spectrogram_gradients_are_torchaudios(power, pad_mode):
    """d sum(spec * w) / d waveform (through the padding, the framing and the magnitude), float64."""
    keywords = dict(n_fft=12, win_length=9, hop_length=4, pad=1, power=power, pad_mode=pad_mode)
    rng = np.random.default_rng(1)
    waveform = rng.standard_normal((2, 30))
    torch_spec = stand_in().transforms.Spectrogram(**keywords).double()
    x = torch.from_numpy(waveform).requires_grad_()
    out = torch_spec(x)
    w = rng.standard_normal(tuple(out.shape))
    (out * torch.from_numpy(w)).sum().backward()
    with jax.enable_x64(True):
        variables = {'buffers': {'window': jnp.asarray(torch_spec.window.numpy())}}
        grad = jax.grad(lambda a: (Spectrogram(**keywords).apply(variables, a) * w).sum())(jnp.asarray(waveform))
    np.testing.assert_allclose(np.asarray(grad), x.grad.numpy(), rtol=0, atol=1e-11 * np.abs(x.grad.numpy()).max())


def test_bfloat16_waveforms_are_transformed_in_float32():
    """XLA has no bfloat16 FFT: the spectrogram of bfloat16 audio is computed in float32 and returned in bfloat16."""
    spec = Spectrogram(n_fft=16, hop_length=4)
    waveform = np.random.default_rng(0).standard_normal((2, 40)).astype(np.float32)
    variables = spec.init(jax.random.key(0), waveform)
    out = spec.apply(variables, jnp.asarray(waveform, jnp.bfloat16))
    assert out.dtype == jnp.bfloat16
    exact = spec.apply(variables, jnp.asarray(waveform, jnp.bfloat16).astype(jnp.float32))
    np.testing.assert_allclose(np.asarray(out, np.float32), exact, rtol=1e-2, atol=1e-2 * np.abs(exact).max())


def definition(waveform, window, n_fft, hop, pad, center, pad_mode, power, window_norm, onesided):
    """The spectrogram by its definition, in numpy, for one waveform (time,): frame m is the padded signal from
    m * hop, times the window centred in n_fft, and bin k sums x[n] exp(-2 pi i k n / n_fft) over it."""
    x = np.pad(waveform, pad)
    if center:
        x = np.pad(x, n_fft // 2, mode={'reflect': 'reflect', 'constant': 'constant', 'replicate': 'edge'}[pad_mode])
    left = (n_fft - len(window)) // 2
    full_window = np.zeros(n_fft)
    full_window[left:left + len(window)] = window
    frames = [x[m * hop:m * hop + n_fft] * full_window for m in range(1 + (len(x) - n_fft) // hop)]
    bins = n_fft // 2 + 1 if onesided else n_fft
    n = np.arange(n_fft)
    spec = np.array([[np.sum(frame * np.exp(-2j * np.pi * k * n / n_fft)) for frame in frames] for k in range(bins)])
    if window_norm:
        spec = spec / np.sqrt(np.sum(window**2))
    return spec if power is None else np.abs(spec) ** power


@pytest.mark.parametrize('keywords', [
    dict(n_fft=8, win_length=5, hop_length=3, pad=1, power=2.0),
    dict(n_fft=7, hop_length=2, pad_mode='constant', power=1.0, normalized=True, onesided=False),
    dict(n_fft=6, win_length=6, hop_length=4, center=False, pad=2, power=None),
    dict(n_fft=10, win_length=4, hop_length=3, pad_mode='replicate', power=1.5),
], ids=str)
def test_the_stand_in_computes_the_definition(keywords):
    """parity/torchaudio_stand_in follows torchaudio's code on torch.stft; here it meets the definition (numpy's own
    loops, no FFT), so the oracle of vaat's spectrogram is the spectrogram, whatever torch.stft's conventions."""
    torch_spec = stand_in().transforms.Spectrogram(**keywords).double()
    waveform = np.random.default_rng(2).standard_normal(23)
    expected = definition(waveform, torch_spec.window.numpy(), torch_spec.n_fft, torch_spec.hop_length,
                          keywords.get('pad', 0), keywords.get('center', True), keywords.get('pad_mode', 'reflect'),
                          keywords.get('power', 2.0), keywords.get('normalized', False), keywords.get('onesided', True))
    np.testing.assert_allclose(torch_spec(torch.from_numpy(waveform)).numpy(), expected, rtol=0,
                               atol=1e-12 * np.abs(expected).max())


def test_the_stand_in_has_torchaudios_buffer_and_raises_for_the_rest():
    torchaudio = stand_in()
    spec = torchaudio.transforms.Spectrogram(n_fft=32, win_length=20)
    assert list(spec.state_dict()) == ['window']  # persistent, as torchaudio registers it
    np.testing.assert_array_equal(spec.window.numpy(), torch.hann_window(20).numpy())
    assert (spec.n_fft, spec.win_length, spec.hop_length) == (32, 20, 10)
    with pytest.warns(UserWarning, match='`return_complex` argument is now deprecated'):
        torchaudio.transforms.Spectrogram(return_complex=True)
    with pytest.raises(RuntimeError, match=r'torchaudio.transforms.MelSpectrogram is not available: .*stand-in'):
        torchaudio.transforms.MelSpectrogram(sample_rate=16000)
    with pytest.raises(RuntimeError, match=r'torchaudio.load is not available: .*stand-in'):
        torchaudio.load('speech.wav')
    with pytest.raises(RuntimeError, match=r'torchaudio.functional.melscale_fbanks is not available'):
        torchaudio.functional.melscale_fbanks(201, 0.0, 8000.0, 64, 16000)


@pytest.mark.parametrize('win_length', [1, 2, 24, 400, 401])
def test_hann_window_is_torchs(win_length):
    """To a float32 step of the window's top (torch's vectorised cosine may round its last bit otherwise)."""
    np.testing.assert_allclose(hann_window(win_length), torch.hann_window(win_length).numpy(), rtol=0, atol=6e-8)


def test_spectrogram_refusals():
    with pytest.raises(ValueError, match=r'0 < win_length <= n_fft\), got win_length=24, n_fft=16'):
        Spectrogram(n_fft=16, win_length=24)
    with pytest.raises(ValueError, match=r"pad_mode='mirror' must be one of reflect, constant, replicate, circular"):
        Spectrogram(pad_mode='mirror')
    with pytest.raises(ValueError, match=r'hop_length=0 must be a positive integer'):
        Spectrogram(n_fft=1)  # torchaudio's default hop, win_length // 2
    with pytest.raises(ValueError, match=r"Invalid normalized parameter: 'energy'"):
        Spectrogram(normalized='energy')
    with pytest.raises(ValueError, match=r'power=0 must be a positive number'):
        Spectrogram(power=0)
    spec = Spectrogram(n_fft=16)
    variables = init_variables_of(spec, np.zeros((1, 9), np.float32))
    with pytest.raises(ValueError, match=r'a reflect pad of n_fft // 2 = 8 samples needs a longer signal than 8'):
        spec.apply(variables, np.zeros((1, 8), np.float32))
    with pytest.raises(RuntimeError):  # torch.stft's reflect pad refuses it too
        stand_in().transforms.Spectrogram(n_fft=16)(torch.zeros(1, 8))
    with pytest.raises(ValueError, match=r'10 samples \(after padding\) are fewer than n_fft=16'):
        Spectrogram(n_fft=16, center=False, pad=1).apply(variables, np.zeros((1, 8), np.float32))


def init_variables_of(module, *inputs):
    return module.init(jax.random.key(0), *inputs)


def test_ast_returns_its_trajectory_as_vit_pytorch():
    """return_hiddens: the twice normed tokens (registers included) and the stacked layer inputs."""
    model, variables, torch_model = converted_pair(AST_ENTRY, AST_ENTRY.configs[0])
    (audio,) = AST_ENTRY.inputs.example(model, batch=2, rng=np.random.default_rng(3))
    out = call(model, variables, audio, return_hiddens=True)
    assert out[0].shape == (2, 1 + 2 * 2, 16) and out[1].shape == (2, 2, 5, 16)
    with torch.no_grad():
        assert_close_outputs(out, float64_reference(torch_model)(double(audio), return_hiddens=True),
                             AST_ENTRY.tolerance)


def test_ast_computes_with_the_window_it_loads():
    """The window is a buffer of the state dict: another window (torch's Hamming) loaded on both sides is the one
    both compute with; accept_spec_time_first, stored and unused by vit-pytorch, changes nothing."""
    model, _, torch_model = converted_pair(AST_ENTRY, AST_ENTRY.configs[0])
    state = torch_model.state_dict()
    state['spec.window'] = torch.hamming_window(10)
    torch_model.load_state_dict(state)
    variables = converters.from_torch(model, state)
    np.testing.assert_array_equal(np.asarray(variables['buffers']['spec']['window']), torch.hamming_window(10))
    (audio,) = AST_ENTRY.inputs.example(model, batch=2, rng=np.random.default_rng(4))
    out = call(model, variables, audio)
    with torch.no_grad():
        assert_close_outputs(out, float64_reference(torch_model)(double(audio)), AST_ENTRY.tolerance)
    flipped = AST(**dict(AST_ENTRY.configs[0], accept_spec_time_first=False))
    np.testing.assert_array_equal(call(flipped, variables, audio), out)


def test_ast_init_window_is_torchaudios():
    """AST's `spec` starts with torchaudio's window (AST's 10-sample one here); a spectrogram-input AST holds it too,
    as vit-pytorch's does."""
    model = AST(**AST_ENTRY.configs[0])
    spec = Spectrogram(**model.spectrogram_keywords())
    window = np.asarray(spec.init(jax.random.key(0), np.zeros((1, 40), np.float32))['buffers']['window'])
    torch_window = new_torch_model(AST_ENTRY, AST_ENTRY.configs[0]).state_dict()['spec.window'].numpy()
    np.testing.assert_allclose(window, torch_window, rtol=0, atol=6e-8)
    spec_model = AST(**AST_ENTRY.configs[1])
    shapes = jax.eval_shape(spec_model.init, jax.random.key(0), *registry.example_inputs(spec_model))
    assert shapes['buffers']['spec']['window'].shape == (24,)


@pytest.mark.slow
def test_a_spectrogram_smaller_than_a_patch_leaves_registers_alone():
    """No patch token: vit-pytorch pools nothing (NaN), and its trajectory holds the register tokens alone."""
    model, variables, torch_model = converted_pair(AST_ENTRY, AST_ENTRY.configs[1])  # 4 x 4 patches, no registers
    spec = np.random.default_rng(0).standard_normal((2, 3, 9), np.float32)  # 3 time steps: no patch column
    with torch.no_grad():
        expected = float64_reference(torch_model)(double(spec))
    assert np.isnan(expected.numpy()).all() and np.isnan(call(model, variables, spec)).all()
    registered = AST(**dict(AST_ENTRY.configs[1], num_register_tokens=2))
    tokens, hiddens = jax.eval_shape(lambda: registered.init_with_output(jax.random.key(0), spec,
                                                                         return_hiddens=True)[0])
    assert tokens.shape == (2, 2, 12) and hiddens.shape == (1, 2, 2, 12)


def test_ast_refusals():
    base = dict(dim=16, depth=1, mlp_dim=8)
    for overrides, message in (
        (dict(dim=6), r'feature dimension must be a multiple of 4'),
        (dict(dim=4), r'the sin-cos embedding needs dim >= 8'),
        (dict(spec_power=None), r'spec_power=None gives a complex spectrogram'),
        (dict(spec_n_fft=16), r'got spec_win_length=24, spec_n_fft=16'),
        (dict(spec_pad_mode='edge'), r"spec_pad_mode='edge' must be one of"),
        (dict(spec_hop_length=0), r'^AST: spec_hop_length=0 must be a positive integer'),
    ):
        with pytest.raises(ValueError, match=message):
            AST(**{**base, **overrides})
    model = AST(**base)
    with pytest.raises(ValueError, match=r'AST with accept_spec=False takes waveforms \(batch, samples\)'):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 2, 500)))
    with pytest.raises(TypeError, match=r'raw_audio_or_spec has dtype int32; pass floating-point audio'):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 500), jnp.int32))


def inputs_of(model, batch=2, seed=0):
    return ENTRY.inputs.example(model, batch=batch, rng=np.random.default_rng(seed))


@pytest.mark.slow  # VAT's frozen-ViT loss and gradients run in make test (tests/test_vat.py): the same code
@pytest.mark.parametrize('freeze', ['vit', 'ast'])
def test_l1_loss_and_its_gradients_match_vit_pytorch(freeze):
    """Given actions, the L1 loss; a frozen tower (torch.no_grad around it) gets no gradient, in both."""
    model, variables, torch_model = converted_pair(ENTRY, FULL)
    video, audio, extra, tasks, advantages = inputs_of(model)
    actions = np.random.default_rng(1).standard_normal((2, 3, 3), dtype=np.float32)
    flags = {f'freeze_{freeze}': True}

    exact = float64_reference(torch_model)
    with positional_conditioning_and_audio_views():
        expected = exact(torch_video(video), double(audio), extra=double(extra), tasks=double(tasks),
                         advantages=double(advantages), actions=double(actions), **flags)
    expected.backward()
    loss = lambda v: model.apply(v, video, audio, extra, tasks, advantages, actions, **flags)  # noqa: E731
    assert_close_outputs(jax.jit(loss)(variables), expected.detach(), ENTRY.tolerance)

    grads, exact_grads = flax_gradients(model, variables, loss), torch_gradients(exact)
    assert_close_gradients(grads, exact_grads)
    for tower in ('vit', 'ast'):
        largest = max(np.abs(grads[name]).max() for name in exact_grads if name.startswith(f'{tower}.'))
        assert (largest == 0) == (tower == freeze)


def test_audio_views_get_their_own_embeddings():
    """vit-pytorch adds the audio view embedding as (views, 1, 1, d) to (layers, batch, views, tokens, d): with a
    batch of neither 1 nor num_audio_views it fails, and with num_audio_views rows it adds view j's embedding to
    batch row j. Here audio view j gets embedding j: swapping the two views' audio and embeddings together leaves
    the output as it was."""
    model, variables, torch_model = converted_pair(ENTRY, FULL)
    video, audio, extra, tasks, advantages = inputs_of(model, batch=3)
    with torch.no_grad(), pytest.raises(RuntimeError):
        float64_reference(torch_model)(torch_video(video), double(audio), extra=double(extra), tasks=double(tasks),
                                       advantages=double(advantages))
    out = call(model, variables, video, audio, extra, tasks, advantages)
    with torch.no_grad(), positional_conditioning_and_audio_views():
        expected = float64_reference(torch_model)(torch_video(video), double(audio), double(extra), double(tasks),
                                                  double(advantages))
    assert_close_outputs(out, expected, ENTRY.tolerance)

    swapped = jax.tree_util.tree_map(lambda a: a, variables)
    swapped['params']['audio_view_emb'] = variables['params']['audio_view_emb'][::-1]
    assert_close_outputs(call(model, swapped, video, audio[:, ::-1], extra, tasks, advantages), np.asarray(out),
                         1e-6)


@pytest.mark.slow
def test_one_audio_view_with_or_without_its_axis():
    model, variables, torch_model = converted_pair(ENTRY, ENTRY.configs[2])  # one view of each
    video, audio = inputs_of(model)
    assert audio.ndim == 2
    out = call(model, variables, video, audio)
    np.testing.assert_array_equal(call(model, variables, video, audio[:, None]), out)
    with torch.no_grad():
        expected = float64_reference(torch_model)(torch_video(video), double(audio[:, None]))
    assert_close_outputs(out, expected, ENTRY.tolerance)


@pytest.mark.slow
def test_return_hiddens_matches_vit_pytorch():
    model, variables, torch_model = converted_pair(ENTRY, ENTRY.configs[1])  # spectrograms, three layers
    video, spec, extra, tasks = inputs_of(model)
    out = call(model, variables, video, spec, extra=extra, tasks=tasks, return_hiddens=True)
    with torch.no_grad():
        expected = float64_reference(torch_model)(torch_video(video), double(spec), extra=double(extra),
                                                  tasks=double(tasks), return_hiddens=True)
    assert out[1].shape == (4, 2, 2 + 1, 12)
    assert_close_outputs(out, expected, ENTRY.tolerance)


def test_bad_configurations_and_inputs_are_refused():
    base = dict(ENTRY.configs[2])
    for overrides, message in (
        (dict(ast_layer_indices=None, ast=AST(**TINY_AST)),
         r'if the VAAT depth is not equal to the AST depth, .* depth=1, ast.depth=2'),
        (dict(ast_layer_indices=(2,)), r'ast_layer_indices=\(2,\) holds 2; .* from -2 to 1'),
        (dict(ast=ViT(**parity.BY_NAME['vat.ViT'].configs[0])), r'ast must be a vit_flax.vaat.AST or a dict'),
        (dict(num_audio_views=-1), r'^VAAT: num_audio_views=-1 must be a non-negative integer'),
    ):
        with pytest.raises(ValueError, match=message):
            VAAT(**{**base, **overrides})
    model = VAAT(**FULL)
    video, audio, extra, tasks, advantages = inputs_of(model)
    init = lambda *args: jax.eval_shape(  # noqa: E731
        lambda: model.init(registry.init_rngs(jax.random.key(0)), *args))
    for args, error, message in (
        ((video, audio[:, :1]), ValueError, r'audio_view_emb has 2 views, the input has 1'),
        ((video, audio[..., None]), ValueError, r'takes waveforms \(batch, \[views,\] samples\), got shape'),
        ((video, audio[:1]), ValueError, r'a batch of 2 videos and audio of shape \(1, 2, '),
        ((video, audio.astype(np.int32)), TypeError, r'VAAT: audio_or_spec has dtype int32'),
    ):
        with pytest.raises(error, match=message):
            init(*args)


@pytest.mark.slow
def test_vit_pytorch_example():
    """vit-pytorch's `__main__` example: shapes at its size, for each of its advantage-bin counts (the AST's
    spectrogram of 70,500 samples included); the loss with a frozen ViT and the trajectory of a scaled-down copy
    against vit-pytorch."""
    vit = ViT(image_size=256, patch_size=32, num_classes=1000, dim=384, heads=8, depth=4, mlp_dim=384 * 4)
    ast = AST(dim=384, depth=4, heads=8, num_classes=1000, patch_size=16, mlp_dim=384 * 4)
    images, audio = jnp.zeros((2, 2, 4, 256, 256, 3)), jnp.zeros((2, 2, 14_100 * 5))
    for num_adv_bins in (0, 2, 10):
        vaat = VAAT(vit, ast, dim=512, depth=9, heads=8, dim_head=64, mlp_dim=2048, dim_action=20, action_chunk_len=7,
                    time_seq_len=4, num_image_views=2, num_audio_views=2, num_tasks=4,
                    num_advantage_bins=num_adv_bins, add_self_attn=True, dim_extra_token=33,
                    vit_layer_indices=(0, 0, 1, 1, 2, 2, 3, 3, 4), ast_layer_indices=(1, 1, 1, 2, 2, 2, 3, 3, 3))
        tasks, extra = jnp.zeros((2,), jnp.int32), jnp.zeros((2, 33))
        advantages = jnp.zeros((2,), jnp.int32) if num_adv_bins > 0 else None
        variables = jax.eval_shape(vaat.init, registry.init_rngs(jax.random.key(0)), images, audio, extra, tasks,
                                   advantages)
        loss = jax.eval_shape(lambda v: vaat.apply(v, images, audio, actions=jnp.zeros((2, 7, 20)),
                                                   advantages=advantages, tasks=tasks, extra=extra, freeze_vit=True),
                              variables)
        pred_actions, hiddens = jax.eval_shape(lambda v: vaat.apply(v, images, audio, advantages=advantages,
                                                                    tasks=tasks, extra=extra, return_hiddens=True),
                                               variables)
        assert loss.shape == () and pred_actions.shape == (2, 7, 20)
        assert hiddens.shape == (10, 2, 4 + (num_adv_bins > 0) + 7 + 1, 512)
    assert variables['buffers']['ast']['spec']['window'].shape == (24,)

    # scaled down, against vit-pytorch
    config = dict(vit=ViT(image_size=16, patch_size=8, num_classes=10, dim=16, heads=2, depth=4, mlp_dim=32),
                  ast=AST(dim=16, depth=4, heads=2, num_classes=10, patch_size=8, mlp_dim=32, spec_n_fft=32),
                  dim=24, depth=9, heads=2, dim_head=8, mlp_dim=32, dim_action=5, action_chunk_len=7, time_seq_len=4,
                  num_image_views=2, num_audio_views=2, num_tasks=4, num_advantage_bins=2, add_self_attn=True,
                  dim_extra_token=33, vit_layer_indices=(0, 0, 1, 1, 2, 2, 3, 3, 4),
                  ast_layer_indices=(1, 1, 1, 2, 2, 2, 3, 3, 3))
    model, variables, torch_model = converted_pair(ENTRY, config)
    rng = np.random.default_rng(0)
    images, audio = rng.standard_normal((2, 2, 4, 16, 16, 3), np.float32), rng.standard_normal((2, 2, 300), np.float32)
    tasks, extra = rng.integers(0, 4, (2,)).astype(np.int32), rng.standard_normal((2, 33), np.float32)
    advantages, actions = np.array([-1, 1], np.int32), rng.standard_normal((2, 7, 5), np.float32)
    exact = float64_reference(torch_model)
    keywords = dict(advantages=double(advantages), tasks=double(tasks), extra=double(extra))
    with positional_conditioning_and_audio_views():
        expected_loss = exact(torch_video(images), double(audio), actions=double(actions), freeze_vit=True, **keywords)
        with torch.no_grad():
            expected = exact(torch_video(images), double(audio), return_hiddens=True, **keywords)
    loss = call(model, variables, images, audio, extra, tasks, advantages, actions, freeze_vit=True)
    assert_close_outputs(loss, expected_loss.detach(), ENTRY.tolerance)
    assert_close_outputs(call(model, variables, images, audio, extra, tasks, advantages, return_hiddens=True),
                         expected, ENTRY.tolerance)
