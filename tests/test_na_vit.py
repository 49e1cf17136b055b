"""NaViT beyond the registry: auto-grouping, token dropout under shared draws, packed batches, the grain packer,
training on packed mixed-resolution digits, bad input. Covers na_vit.NaViT and na_vit_nested_tensor.NaViT."""

from unittest import mock

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import parity
from tests.conftest import apply, assert_close_outputs, converted_pair, float64_reference, init_variables
from vit_flax import na_vit, na_vit_nested_tensor
from vit_flax.na_vit import NaViT, PackedBatch, pack, packed_dataset, unpack

ENTRY, NESTED = parity.BY_NAME['na_vit.NaViT'], parity.BY_NAME['na_vit_nested_tensor.NaViT']
TINY = dict(image_size=32, patch_size=8, num_classes=10, dim=32, depth=2, heads=4, mlp_dim=64, dim_head=8)


def mixed_images(sizes, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((h, w, channels), dtype=np.float32) for h, w in sizes]


SIZES = [(32, 32), (16, 16), (16, 32), (32, 16), (8, 32), (24, 8)]


def channels_first(tree):
    """Channels-last images, or (nested) lists of them, as vit-pytorch takes them (float64, for the reference),
    whatever the entry's grouping."""
    if isinstance(tree, (list, tuple)):
        return [channels_first(item) for item in tree]
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(tree, -1, 0))).double()


def torch_logits(torch_model, images, **kwargs):
    """vit-pytorch's exact answer (its float64 reference) on image lists, without gradients."""
    with torch.no_grad():
        return float64_reference(torch_model)(channels_first(images), **kwargs)


# the vit-pytorch README's calls


def test_readme_examples_shapes():
    """vit-pytorch's README NaViT calls, channels-last: hand-grouped and auto-grouped lists give (5, 1000)."""
    v = NaViT(image_size=256, patch_size=32, num_classes=1000, dim=64, depth=1, heads=2, mlp_dim=64, dim_head=16,
              dropout=0.1, emb_dropout=0.1, token_dropout_prob=0.1)
    images = [[jnp.zeros((256, 256, 3)), jnp.zeros((128, 128, 3))],
              [jnp.zeros((128, 256, 3)), jnp.zeros((256, 128, 3))],
              [jnp.zeros((64, 256, 3))]]
    variables = jax.eval_shape(v.init, jax.random.key(0), images)
    assert jax.eval_shape(lambda w: v.apply(w, images), variables).shape == (5, 1000)
    flat = [image for group in images for image in group]
    grouped = jax.eval_shape(lambda w: v.apply(w, flat, group_images=True, group_max_seq_len=64), variables)
    assert grouped.shape == (5, 1000)


# grouping and packing against vit-pytorch


@pytest.mark.parametrize('max_seq_len, drop', [(20, None), (16, 0.25), (24, lambda h, w: 0.5 if h > 16 else 0.0)])
def test_auto_grouping_follows_torch(max_seq_len, drop):
    from vit_flax.converters import import_vit_pytorch

    torch_group = import_vit_pytorch('vit_pytorch.na_vit').group_images_by_max_seq_len
    images = mixed_images(SIZES)
    ours = na_vit.group_images_by_max_seq_len(images, 8, drop, max_seq_len)
    theirs = torch_group(channels_first(images), patch_size=8, calc_token_dropout=drop, max_seq_len=max_seq_len)
    assert [[image.shape[:2] for image in group] for group in ours] == \
        [[tuple(image.shape[1:]) for image in group] for group in theirs]


def test_flat_and_auto_grouped_lists_match_torch():
    model, variables, torch_model = converted_pair(ENTRY, TINY)
    images = mixed_images(SIZES)
    run = jax.jit(model.apply, static_argnames=('group_images', 'group_max_seq_len'))
    for kwargs in ({}, dict(group_images=True, group_max_seq_len=20), dict(group_images=True, group_max_seq_len=16)):
        assert_close_outputs(run(variables, images, **kwargs), torch_logits(torch_model, images, **kwargs),
                             ENTRY.tolerance)


@pytest.mark.parametrize('entry', [ENTRY, NESTED], ids=lambda e: e.name)
def test_packed_batch_gives_the_list_outputs(entry):
    """The grain packer's fixed-shape batch, unpacked, equals vit-pytorch's outputs on the image list."""
    model, variables, torch_model = converted_pair(entry, TINY)
    images = mixed_images(SIZES, seed=1)
    batch, labels, index = pack(model, images, labels=range(len(images)), max_seq_len=24, max_images_per_seq=3)
    assert batch.patches.shape[1:] == (24, 3 * 8 * 8) and batch.max_images == 3
    assert sorted(index[index >= 0]) == list(range(len(images)))
    np.testing.assert_array_equal(labels, index)  # labels travel with their images
    per_slot = jax.jit(model.apply)(variables, batch)
    assert per_slot.shape == (len(batch.num_images), 3, 10)
    torch_images = images if entry is NESTED else [images]
    assert_close_outputs(unpack(np.asarray(per_slot), index), torch_logits(torch_model, torch_images),
                         entry.tolerance)


def test_packed_dataset_has_fixed_shapes_and_keeps_labels():
    model = NaViT(**TINY)
    sizes = [SIZES[i % len(SIZES)] for i in range(17)]
    records = [{'image': image, 'label': i % 10} for i, image in enumerate(mixed_images(sizes))]
    batches = list(packed_dataset(model, grain.MapDataset.source(records), rows=2, max_seq_len=24,
                                  max_images_per_seq=3))
    seen = []
    for batch, labels, index in batches:
        assert isinstance(batch, PackedBatch)
        assert batch.patches.shape == (2, 24, 192) and batch.positions.shape == (2, 24, 2)
        assert labels.shape == index.shape == (2, 3)
        np.testing.assert_array_equal(batch.num_images, (index >= 0).sum(1))
        for row in range(2):
            for slot in range(batch.num_images[row]):
                i = index[row, slot]
                tokens = batch.image_ids[row] == slot
                assert labels[row, slot] == i % 10
                assert tokens.sum() == (sizes[i][0] // 8) * (sizes[i][1] // 8)
                np.testing.assert_array_equal(batch.patches[row][tokens], na_vit.to_patches(records[i]['image'], 8))
            assert (batch.image_ids[row] >= batch.num_images[row]).sum() == 0
        seen.extend(index[index >= 0].tolist())
    assert sorted(seen) == list(range(17))
    assert 0 < np.mean([b.fill for b, _, _ in batches]) <= 1


def test_packer_token_dropout_is_reproducible_and_counts_like_torch():
    model = NaViT(**TINY, token_dropout_prob=lambda h, w: 0.5 if h * w > 512 else 0.25)
    records = [{'image': image, 'label': 0} for image in mixed_images(SIZES)]
    run = lambda seed: list(packed_dataset(model, grain.MapDataset.source(records), rows=6, max_seq_len=16,
                                           max_images_per_seq=1, train=True, seed=seed))
    (first, _, index), = run(0)
    for row in range(6):
        h, w = SIZES[index[row, 0]]
        n = (h // 8) * (w // 8)
        assert (first.image_ids[row] == 0).sum() == max(1, int(n * (1 - (0.5 if h * w > 512 else 0.25))))
    (again, _, _), = run(0)
    (other, _, _), = run(1)
    np.testing.assert_array_equal(first.patches, again.patches)
    assert not np.array_equal(first.positions, other.positions)


# token dropout with the same kept tokens as vit-pytorch


@pytest.mark.parametrize('entry, token_dropout_prob', [
    (ENTRY, 0.4), (ENTRY, lambda h, w: 0.5 if h == w else 0.2), (NESTED, 0.3)], ids=['constant', 'function', 'nested'])
def test_token_dropout_matches_torch_given_the_same_draws(entry, token_dropout_prob):
    config = {**TINY, 'token_dropout_prob': token_dropout_prob}
    model, variables, torch_model = converted_pair(entry, config)
    images = mixed_images(SIZES[:4], seed=2)
    inputs = images if entry is NESTED else [images[:2], images[2:]]
    rngs = {na_vit.TOKEN_DROPOUT: jax.random.key(5)}
    draws = model.apply(variables, inputs, rngs=rngs, method=NaViT.token_dropout_draws)
    queue = [torch.from_numpy(np.array(d)) for d in draws]

    def randn(shape, device=None, **kwargs):
        draw = queue.pop(0)
        assert tuple(shape) == tuple(draw.shape)
        return draw

    torch_model.train()  # dropout rates are 0: only token dropout is random
    with mock.patch.object(torch, 'randn', randn), parity.na_vit_nested_tensor.torch_keeps_gradients():
        expected = torch_logits(torch_model, inputs)
    assert not queue
    trained = jax.jit(lambda v, x: model.apply(v, x, train=True, rngs=rngs))(variables, inputs)
    assert_close_outputs(trained, expected, entry.tolerance)
    assert not np.allclose(trained, apply(model, variables, inputs), atol=1e-3)  # tokens were dropped


def test_dropout_only_in_training_and_needs_its_streams():
    model = NaViT(**TINY, dropout=0.5, token_dropout_prob=0.5)
    images = [mixed_images(SIZES[:2])]
    variables = init_variables(model)
    np.testing.assert_array_equal(apply(model, variables, *images), apply(NaViT(**TINY), variables, *images))
    rngs = lambda seed: {'dropout': jax.random.key(seed), na_vit.TOKEN_DROPOUT: jax.random.key(seed)}
    train = lambda seed: apply(model, variables, *images, train=True, rngs=rngs(seed))
    np.testing.assert_array_equal(train(1), train(1))
    assert not np.allclose(train(1), train(2))
    with pytest.raises(Exception, match='token_dropout'):
        model.apply(variables, *images, train=True, rngs={'dropout': jax.random.key(0)})


# training on packed batches


def mixed_resolution_digits(limit=None, seed=0):
    """The embedded digits resized (nearest neighbour) to random sides in {8, 12, 16}: records for the packer."""
    from vit_flax.data import digits

    train, _ = digits.splits()
    rng = np.random.default_rng(seed)
    records = []
    for i in range(len(train) if limit is None else limit):
        h, w = rng.choice([8, 12, 16], size=2)
        image = train.images[i][np.arange(h) * 8 // h][:, np.arange(w) * 8 // w]
        records.append({'image': image, 'label': int(train.labels[i])})
    return records


def test_jitted_train_step_on_packed_mixed_resolution_digits_lowers_the_loss():
    model = NaViT(image_size=16, patch_size=4, num_classes=10, dim=32, depth=2, heads=4, mlp_dim=64, dim_head=8,
                  channels=1, token_dropout_prob=0.1)
    dataset = grain.MapDataset.source(mixed_resolution_digits(limit=768)).shuffle(seed=0).repeat(4)
    batches = packed_dataset(model, dataset, rows=4, max_seq_len=64, max_images_per_seq=8, train=True)
    first, _, _ = next(iter(batches))
    variables = model.init({'params': jax.random.key(0)}, first)
    optimizer = optax.adamw(3e-3)

    @jax.jit
    def step(params, opt_state, batch, labels, key):
        def loss_fn(params):
            logits = model.apply({**variables, 'params': params}, batch, train=True, rngs={'dropout': key})
            valid = labels >= 0
            losses = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels, 0))
            return jnp.sum(losses * valid) / jnp.sum(valid)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    params, opt_state, losses = variables['params'], optimizer.init(variables['params']), []
    for i, (batch, labels, _) in enumerate(batches):
        params, opt_state, loss = step(params, opt_state, batch, labels, jax.random.key(i))
        losses.append(float(loss))
    assert step._cache_size() == 1  # one compile for the whole mixed-resolution stream
    assert len(losses) > 40 and all(np.isfinite(losses))
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:5]), losses


# bad input


@pytest.mark.parametrize('config, message', [
    (dict(image_size=30), r'divisible by the patch size: image_size=\(30, 30\), patch_size=8'),
    (dict(patch_size=(8, 8)), 'patch_size must be a positive int'),
    (dict(token_dropout_prob=1.0), r'token_dropout_prob=1.0 must be a probability in \[0, 1\)'),
])
def test_bad_configs_fail_at_construction(config, message):
    with pytest.raises(ValueError, match=message):
        NaViT(**{**TINY, **config})
    with pytest.raises(ValueError, match='constant token_dropout_prob'):
        na_vit_nested_tensor.NaViT(**TINY, token_dropout_prob=lambda h, w: 0.1)


@pytest.mark.parametrize('images, message', [
    ([[np.zeros((40, 32, 3), np.float32)]], r'group 0, image 0: size \(40, 32\) exceeds image_size \(32, 32\)'),
    ([[np.zeros((8, 8, 3), np.float32), np.zeros((12, 8, 3), np.float32)]],
     r'group 0, image 1: height and width \(12, 8\) must be positive multiples of the patch size 8'),
    ([np.zeros((8, 8, 1), np.float32)], r'expected an image of shape \(height, width, 3\), got \(8, 8, 1\)'),
    ([], 'takes a list of images'),
    (np.zeros((1, 8, 8, 3), np.float32), 'takes a list of images'),
])
def test_bad_inputs_name_the_image(images, message):
    model = NaViT(**TINY)
    variables = init_variables(model)
    with pytest.raises(ValueError, match=message):
        model.apply(variables, images)


def test_packer_refuses_what_cannot_fit():
    model = NaViT(**TINY)
    with pytest.raises(ValueError, match='record 1: 16 tokens do not fit max_seq_len=8'):
        pack(model, mixed_images([(8, 8), (32, 32)]), max_seq_len=8, max_images_per_seq=2)
    with pytest.raises(ValueError, match='group_max_seq_len=8'):
        model.apply(init_variables(model), mixed_images([(32, 32)]), group_images=True, group_max_seq_len=8)
