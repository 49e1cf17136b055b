"""Input pipelines: datasets, grain loaders (determinism, resume, per-process shares), eval padding, augmentations."""

import itertools
import time

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from vit_flax import data
from vit_flax.data import augment, digits, synthetic

AUGMENT_ALL = {'random_crop_padding': 2, 'flip': True, 'randaugment_ops': 2, 'randaugment_magnitude': 0.5}


def make_config(**overrides):
    return ml_collections.ConfigDict({'dataset': 'digits', **overrides})


def take(iterator, n):
    return list(itertools.islice(iterator, n))


def assert_same_batches(batches, others):
    assert len(batches) == len(others)
    for batch, other in zip(batches, others):
        assert batch.keys() == other.keys()
        for key in batch:
            np.testing.assert_array_equal(batch[key], other[key])


@pytest.fixture
def processes(monkeypatch):
    """Pretend to be process `index` of `count`: grain's ShardByJaxProcess asks jax.process_index/count."""

    def become(index, count):
        monkeypatch.setattr(jax, 'process_index', lambda: index)
        monkeypatch.setattr(jax, 'process_count', lambda: count)

    return become


# ---------------------------------------------------------------------------------------------------- digits


def test_digits_split_is_fixed_and_stratified():
    train, eval_ = digits.splits()
    again_train, again_eval = digits.splits()
    np.testing.assert_array_equal(train.images, again_train.images)
    np.testing.assert_array_equal(eval_.labels, again_eval.labels)

    assert (len(train), len(eval_)) == (1437, 360)
    assert train.images.shape == (1437, 8, 8, 1) and train.images.dtype == np.float32
    assert train.labels.dtype == np.int32
    assert train.images.min() == 0 and train.images.max() == 1
    np.testing.assert_array_equal(train.images * 16, np.round(train.images * 16))  # 0..16 / 16
    train_counts, eval_counts = np.bincount(train.labels), np.bincount(eval_.labels)
    assert np.all(np.abs(eval_counts - 0.2 * (train_counts + eval_counts)) <= 1)


def test_digits_info():
    info = data.dataset_info(make_config())
    train, _ = digits.splits()
    assert info == data.DatasetInfo(
        image_size=(8, 8), channels=1, num_classes=10, num_train=1437, num_eval=360,
        mean=(float(train.images.mean(dtype=np.float64)),), std=(float(train.images.std(dtype=np.float64)),),
        class_names=tuple('0123456789'))
    assert 0.2 < info.mean[0] < 0.4 and 0.3 < info.std[0] < 0.5
    assert data.dataset_info(make_config(image_size=8, channels=1)) == info
    assert data.dataset_info(make_config(image_size=(8, 8))) == info
    with pytest.raises(ValueError, match='image_size=32.*8x8'):
        data.dataset_info(make_config(image_size=32))
    with pytest.raises(ValueError, match='channels=3'):
        data.dataset_info(make_config(channels=3))


def test_config_errors_and_normalisation_override():
    with pytest.raises(ValueError, match="config.dataset='mnist'"):
        data.dataset_info(make_config(dataset='mnist'))
    info = data.dataset_info(make_config(mean=(0.5,), std=(0.25,)))
    assert (info.mean, info.std) == ((0.5,), (0.25,))
    with pytest.raises(ValueError, match='3 values for 1-channel'):
        data.dataset_info(make_config(mean=(0.5, 0.5, 0.5)))
    with pytest.raises(ValueError, match='std'):
        data.dataset_info(make_config(std=(0.0,)))


# ------------------------------------------------------------------------------------------------- training


def test_train_batches_cover_an_epoch_normalised():
    config = make_config()
    info = data.dataset_info(config)
    batch_size = 479  # 1437 = 3 * 479: three batches are one epoch
    batches = take(iter(data.train_loader(config, batch_size=batch_size, seed=0)), 3)
    for batch in batches:
        assert batch.keys() == {'image', 'label'}
        assert batch['image'].shape == (batch_size, 8, 8, 1) and batch['image'].dtype == np.float32
        assert batch['label'].shape == (batch_size,) and batch['label'].dtype == np.int32

    images = np.concatenate([b['image'] for b in batches])
    labels = np.concatenate([b['label'] for b in batches])
    # normalised with the train split's own statistics, so one epoch has mean 0 and std 1
    assert abs(images.mean()) < 1e-4 and abs(images.std() - 1) < 1e-4
    pixels = images * info.std[0] + info.mean[0]
    np.testing.assert_allclose(pixels * 16, np.round(pixels * 16), atol=1e-4)
    train, _ = digits.splits()
    np.testing.assert_array_equal(np.bincount(labels), np.bincount(train.labels))  # every example once


def test_train_order_depends_on_the_seed_only():
    config = make_config(augment=AUGMENT_ALL)
    first = take(iter(data.train_loader(config, batch_size=16, seed=0)), 3)
    assert_same_batches(first, take(iter(data.train_loader(config, batch_size=16, seed=0)), 3))
    other = take(iter(data.train_loader(config, batch_size=16, seed=1)), 3)
    assert not np.array_equal(first[0]['label'], other[0]['label'])
    # successive epochs are shuffled differently
    epochs = take(iter(data.train_loader(make_config(), batch_size=479, seed=0)), 6)
    assert not np.array_equal(epochs[0]['label'], epochs[3]['label'])


def test_resume_gives_the_same_augmented_batches():
    config = make_config(augment=AUGMENT_ALL)
    iterator = iter(data.train_loader(config, batch_size=32, seed=3))
    take(iterator, 5)
    state = iterator.get_state()
    expected = take(iterator, 4)

    resumed = iter(data.train_loader(config, batch_size=32, seed=3))  # a fresh loader, as after a restart
    resumed.set_state(state)
    assert_same_batches(take(resumed, 4), expected)


def test_read_ahead_gives_the_loaders_batches_and_positions():
    """The trainer's background reading (data.ReadAhead) changes nothing a checkpoint sees: the same batches, and
    after each batch taken the loader's own position, though the thread has made the next batch already; going back
    to a position drops what was read ahead."""
    config = make_config(augment=AUGMENT_ALL)
    plain = iter(data.train_loader(config, batch_size=32, seed=3))
    inner = iter(data.train_loader(config, batch_size=32, seed=3))
    ahead = data.ReadAhead(inner)
    try:
        assert ahead.get_state() == plain.get_state()
        for _ in range(3):
            assert_same_batches([next(ahead)], [next(plain)])
            deadline = time.monotonic() + 30
            while inner.get_state() == plain.get_state():  # until the thread has taken the next batch
                assert time.monotonic() < deadline, 'the thread did not read ahead'
                time.sleep(0.01)
            assert ahead.get_state() == plain.get_state()
        state = ahead.get_state()
        expected = take(plain, 2)
        assert_same_batches(take(ahead, 2), expected)
        ahead.set_state(state)
        assert_same_batches(take(ahead, 2), expected)
    finally:
        ahead.close()


def test_processes_train_on_disjoint_shares(processes):
    config = make_config(dataset='synthetic', image_size=4, channels=1, synthetic_size=41)
    shares = []
    for index in range(2):
        processes(index, 2)
        # 41 examples -> two shares of 20 (the remainder dropped): two batches of 10 are one epoch of a share
        batches = take(iter(data.train_loader(config, batch_size=10, seed=0)), 2)
        shares.append({row.tobytes() for batch in batches for row in batch['image']})
    assert [len(share) for share in shares] == [20, 20]
    assert not shares[0] & shares[1]


# ----------------------------------------------------------------------------------------------------- eval


@pytest.mark.parametrize('count', [1, 3])
def test_eval_batches_padded_and_cover_the_split_once(processes, count):
    config = make_config()
    info = data.dataset_info(config)
    images, labels = data.raw_eval_split(config)
    assert images.shape == (360, 8, 8, 1) and labels.shape == (360,)
    assert images.dtype == np.float32 and images.min() >= 0 and images.max() <= 1

    batch_size = 7
    padded = -(-360 // (batch_size * count)) * batch_size * count  # all processes run the same number of steps
    for index in range(count):
        processes(index, count)
        batches = list(data.eval_batches(config, batch_size=batch_size))
        assert len(batches) == padded // count // batch_size
        for batch in batches:
            assert batch.keys() == {'image', 'label', 'mask'}
            assert batch['image'].shape == (batch_size, 8, 8, 1) and batch['mask'].dtype == np.float32
        mask = np.concatenate([b['mask'] for b in batches])
        real = np.arange(index, padded, count) < 360  # process i of n reads examples i::n of the padded split
        np.testing.assert_array_equal(mask, real.astype(np.float32))
        np.testing.assert_allclose(
            np.concatenate([b['image'] for b in batches])[real],
            (images[index::count] - info.mean[0]) / info.std[0], rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(np.concatenate([b['label'] for b in batches])[real], labels[index::count])


# --------------------------------------------------------------------------------------------- image folder

COLOURS = {'cat': (255, 0, 0), 'dog': (0, 0, 255)}


def write_image_folder(root, eval_split='val'):
    """Two classes of solid-colour images in assorted sizes and formats (RGB, grey-scale, RGBA)."""
    files = {
        'train/cat/a.png': Image.new('RGB', (20, 10), COLOURS['cat']),
        'train/cat/b.JPG': Image.new('RGB', (7, 9), COLOURS['cat']),
        'train/cat/c.png': Image.new('RGBA', (16, 16), (*COLOURS['cat'], 255)),
        'train/dog/d.jpeg': Image.new('RGB', (30, 12), COLOURS['dog']),
        'train/dog/e.png': Image.new('RGB', (5, 5), COLOURS['dog']),
        f'{eval_split}/cat/f.png': Image.new('RGB', (11, 13), COLOURS['cat']),
        f'{eval_split}/dog/g.png': Image.new('RGB', (12, 8), COLOURS['dog']),
    }
    for name, image in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
    (root / 'train' / 'dog' / 'notes.txt').write_text('not an image')
    return root


def folder_config(root, **overrides):
    return make_config(**{'dataset': 'image_folder', 'data_dir': str(root), 'image_size': (6, 10), **overrides})


def test_image_folder(tmp_path):
    config = folder_config(write_image_folder(tmp_path))
    info = data.dataset_info(config)
    assert info == data.DatasetInfo(
        image_size=(6, 10), channels=3, num_classes=2, num_train=5, num_eval=2,
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), class_names=('cat', 'dog'))

    images, labels = data.raw_eval_split(config)
    assert images.shape == (2, 6, 10, 3) and images.dtype == np.float32
    np.testing.assert_array_equal(labels, [0, 1])
    for image, name in zip(images, ('cat', 'dog')):
        np.testing.assert_allclose(image, np.broadcast_to(np.float32(COLOURS[name]) / 255, image.shape), atol=1e-6)

    batch = next(iter(data.train_loader(config, batch_size=4, seed=0)))
    assert batch['image'].shape == (4, 6, 10, 3) and batch['image'].dtype == np.float32
    assert set(batch['label']) <= {0, 1}
    eval_batch, = data.eval_batches(config, batch_size=4)
    np.testing.assert_array_equal(eval_batch['mask'], [1, 1, 0, 0])


def test_image_folder_processes_share_every_class(tmp_path, processes):
    for name, colour in COLOURS.items():
        (tmp_path / 'train' / name).mkdir(parents=True)
        for i in range(8):
            Image.new('RGB', (4, 4), colour).save(tmp_path / 'train' / name / f'{i}.png')
    (tmp_path / 'eval' / 'cat').mkdir(parents=True)
    Image.new('RGB', (4, 4)).save(tmp_path / 'eval' / 'cat' / 'only.png')
    config = folder_config(tmp_path, image_size=4)
    for index in range(2):
        processes(index, 2)
        share = next(iter(data.train_loader(config, batch_size=8, seed=0)))  # one epoch of this process's share
        assert set(share['label']) == {0, 1}


def test_image_folder_grey_scale_and_eval_split_rule(tmp_path):
    config = folder_config(write_image_folder(tmp_path, eval_split='test'), channels=1)
    info = data.dataset_info(config)
    assert (info.channels, len(info.mean), info.num_eval) == (1, 1, 2)
    images, _ = data.raw_eval_split(config)
    assert images.shape == (2, 6, 10, 1)
    # eval/ wins over test/ when both exist
    (tmp_path / 'eval' / 'cat').mkdir(parents=True)
    Image.new('RGB', (4, 4)).save(tmp_path / 'eval' / 'cat' / 'only.png')
    assert data.dataset_info(config).num_eval == 1


def test_image_folder_errors(tmp_path):
    with pytest.raises(ValueError, match='needs config.data_dir'):
        data.dataset_info(make_config(dataset='image_folder', image_size=8))
    with pytest.raises(FileNotFoundError, match='is not a folder'):
        data.dataset_info(folder_config(tmp_path / 'missing'))
    with pytest.raises(FileNotFoundError, match='train is missing'):
        data.dataset_info(folder_config(tmp_path))

    (tmp_path / 'train').mkdir()
    (tmp_path / 'val').mkdir()
    with pytest.raises(ValueError, match='no class folders'):
        data.dataset_info(folder_config(tmp_path))
    (tmp_path / 'train' / 'cat').mkdir()
    with pytest.raises(ValueError, match='cat has no .jpg/.jpeg/.png images'):
        data.dataset_info(folder_config(tmp_path))

    root = write_image_folder(tmp_path / 'full')
    (root / 'val' / 'cow').mkdir()
    with pytest.raises(ValueError, match=r"class folders \['cow'\] that are not in the train split"):
        data.dataset_info(folder_config(root))
    (root / 'val' / 'cow').rmdir()
    (root / 'val' / 'dog' / 'broken.png').write_bytes(b'not a png')
    with pytest.raises(ValueError, match='cannot read image file .*broken.png'):
        data.raw_eval_split(folder_config(root))
    with pytest.raises(ValueError, match='config.channels=2'):
        data.dataset_info(folder_config(root, channels=2))


# ------------------------------------------------------------------------------------------------ synthetic


def test_synthetic_is_deterministic():
    config = make_config(dataset='synthetic', image_size=(6, 4), channels=2, num_classes=5,
                         synthetic_size=50, synthetic_eval_size=12)
    info = data.dataset_info(config)
    assert (info.image_size, info.channels, info.num_classes, info.num_train, info.num_eval) == ((6, 4), 2, 5, 50, 12)
    train, eval_, _ = synthetic.load(config)
    again, _, _ = synthetic.load(config)
    for index in (0, 49):
        np.testing.assert_array_equal(train[index]['image'], again[index]['image'])
        assert train[index]['label'] == again[index]['label']
    assert not np.array_equal(train[0]['image'], eval_[0]['image'])
    assert train[0]['image'].shape == (6, 4, 2) and train[0]['image'].dtype == np.float32

    images, labels = data.raw_eval_split(config)
    assert images.shape == (12, 6, 4, 2) and 0 <= labels.min() and labels.max() < 5
    assert_same_batches(take(iter(data.train_loader(config, batch_size=8, seed=0)), 2),
                        take(iter(data.train_loader(config, batch_size=8, seed=0)), 2))


# -------------------------------------------------------------------------------------------- augmentations


@pytest.mark.parametrize('name', list(augment.OPS))
@pytest.mark.parametrize('magnitude', [0.0, 0.5, 1.0])
def test_augment_op_keeps_shape_dtype_range_and_is_reproducible(name, magnitude):
    op = augment.OPS[name]
    image = np.random.default_rng(0).random((9, 12, 3), dtype=np.float32)
    out = op(image, magnitude, np.random.default_rng(1))
    assert out.shape == image.shape and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    np.testing.assert_array_equal(out, op(image, magnitude, np.random.default_rng(1)))
    if magnitude == 0 and name not in ('autocontrast', 'posterize'):  # those two change the image at 0 too
        np.testing.assert_allclose(out, image, atol=1e-6)


def test_random_maps_are_reproducible_and_do_what_they_say():
    image = np.random.default_rng(0).random((8, 8, 1), dtype=np.float32)
    element = {'image': image, 'label': np.int32(3)}
    for transform in augment.train_transforms(AUGMENT_ALL):
        out = transform.random_map(element, np.random.default_rng(5))
        np.testing.assert_array_equal(out['image'], transform.random_map(element, np.random.default_rng(5))['image'])
        assert out['image'].shape == image.shape and out['image'].dtype == np.float32 and out['label'] == 3

    padded = np.pad(image, ((2, 2), (2, 2), (0, 0)))
    windows = {padded[top:top + 8, left:left + 8].tobytes() for top in range(5) for left in range(5)}
    flips = {image.tobytes(), image[:, ::-1].tobytes()}
    crops, flipped = set(), set()
    for seed in range(40):
        crop = augment.RandomCrop(2).random_map(element, np.random.default_rng(seed))['image']
        flip = augment.RandomFlip().random_map(element, np.random.default_rng(seed))['image']
        assert crop.tobytes() in windows and flip.tobytes() in flips
        crops.add(crop.tobytes())
        flipped.add(flip.tobytes())
    assert len(crops) > 10 and flipped == flips


def sample_bilinear(image, rows, cols):
    """image (H, W, C) at fractional (row, column) index coordinates, bilinearly, every point inside the image."""
    top, left = np.floor(rows).astype(int), np.floor(cols).astype(int)
    bottom, right = np.minimum(top + 1, image.shape[0] - 1), np.minimum(left + 1, image.shape[1] - 1)
    dy, dx = (rows - top)[..., None], (cols - left)[..., None]
    return ((1 - dy) * ((1 - dx) * image[top, left] + dx * image[top, right])
            + dy * ((1 - dx) * image[bottom, left] + dx * image[bottom, right]))


@pytest.mark.parametrize('name', ['rotate', 'shear_x', 'shear_y', 'translate_x', 'translate_y'])
def test_geometric_ops_move_pixels_by_their_matrix(name):
    """Output pixel p (index coordinates relative to the centre) holds the input at matrix @ p, bilinearly; what
    falls outside the image is zero. The matrix is found from the op's one random draw (its sign)."""
    height, width = 33, 40
    image = np.random.default_rng(0).random((height, width, 3), dtype=np.float32)
    out = augment.OPS[name](image, 0.8, np.random.default_rng(3))
    sign = 1 if np.random.default_rng(3).random() < 0.5 else -1
    angle = np.radians(sign * augment.MAX_ROTATE_DEGREES * 0.8)
    shear, shift = sign * augment.MAX_SHEAR * 0.8, sign * augment.MAX_TRANSLATE * 0.8
    matrix = {
        'rotate': [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0]],
        'shear_x': [[1, shear, 0], [0, 1, 0]], 'shear_y': [[1, 0, 0], [shear, 1, 0]],
        'translate_x': [[1, 0, shift * width], [0, 1, 0]], 'translate_y': [[1, 0, 0], [0, 1, shift * height]],
    }[name]
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    centre_x, centre_y = (width - 1) / 2, (height - 1) / 2
    (a, b, c), (d, e, f) = matrix
    x = centre_x + a * (cols - centre_x) + b * (rows - centre_y) + c
    y = centre_y + d * (cols - centre_x) + e * (rows - centre_y) + f
    inside = (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)
    outside = (x < -1) | (x > width) | (y < -1) | (y > height)
    assert inside.sum() > 300 and outside.sum() > 30, 'the test should see both kinds of pixels'
    np.testing.assert_allclose(out[inside], sample_bilinear(image, y[inside], x[inside]), atol=1e-5)
    assert np.all(out[outside] == 0)


def test_resized_crop_boxes_follow_scale_and_ratio():
    rng = np.random.default_rng(0)
    boxes = [augment.resized_crop_box(60, 80, (0.08, 1.0), (3 / 4, 4 / 3), rng) for _ in range(400)]
    for top, left, box_height, box_width in boxes:
        assert 0 <= top <= 60 - box_height and 0 <= left <= 80 - box_width
        # rounding each side moves the area and the aspect by a little
        assert 0.08 * 4800 - 80 <= box_height * box_width <= 4800
        assert 3 / 4 - 0.1 <= box_width / box_height <= 4 / 3 + 0.1
    areas = np.array([h * w for _, _, h, w in boxes]) / 4800
    assert areas.min() < 0.2 and areas.max() > 0.8
    assert len({(top, left) for top, left, _, _ in boxes}) > 300
    # no box of the ratio fits a 4 x 100 image: the central crop of the widest allowed aspect
    assert augment.resized_crop_box(4, 100, (0.5, 1.0), (3 / 4, 4 / 3), rng) == (0, 47, 4, 5)
    assert augment.resized_crop_box(100, 4, (0.5, 1.0), (3 / 4, 4 / 3), rng) == (47, 0, 5, 4)
    assert augment.resized_crop_box(10, 10, (2.0, 2.0), (1.0, 1.0), rng) == (0, 0, 10, 10)


@pytest.mark.parametrize('dtype', [np.uint8, np.float32])
@pytest.mark.parametrize('channels', [1, 3, 2])
def test_random_resized_crop_resizes_its_box(dtype, channels):
    """A box of the output's size comes through unchanged (as float32 in [0, 1]); the whole image, resized,
    matches PIL's bilinear resize."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (16, 20, channels), dtype=np.uint8)
    image = pixels if dtype == np.uint8 else pixels.astype(np.float32) / 255
    element = {'image': image, 'label': np.int32(1)}
    crop = augment.RandomResizedCrop((8, 8), scale=(0.2, 0.2), ratio=(1.0, 1.0))  # 0.2 * 320 = 64: 8 x 8 boxes
    windows = {}
    for seed in range(30):
        out = crop.random_map(element, np.random.default_rng(seed))
        assert out['image'].dtype == np.float32 and out['image'].shape == (8, 8, channels) and out['label'] == 1
        top, left, _, _ = augment.resized_crop_box(16, 20, (0.2, 0.2), (1.0, 1.0), np.random.default_rng(seed))
        np.testing.assert_allclose(out['image'], pixels[top:top + 8, left:left + 8] / 255, atol=1e-6)
        windows[top, left] = True
    assert len(windows) > 10

    whole = augment.RandomResizedCrop((10, 5), scale=(1.0, 1.0), ratio=(1.25, 1.25)).random_map(
        element, np.random.default_rng(0))['image']
    expected = np.stack([np.asarray(Image.fromarray(pixels[..., c]).resize((5, 10), Image.Resampling.BILINEAR))
                         for c in range(channels)], axis=-1) / 255
    np.testing.assert_allclose(whole, expected, atol=1 / 255 + 1e-6)  # 8-bit rounding in PIL's uint8 modes


def test_image_folder_random_resized_crops_come_from_the_files(tmp_path):
    """With a random resized crop the train records keep each file's size (uint8) and the loader's batches are
    crops at image_size of the solid-colour files, normalised; eval records are unchanged."""
    augmented = folder_config(write_image_folder(tmp_path), augment={'random_resized_crop': True, 'flip': True})
    source, operations = data.train_records(augmented)
    assert source.keep_file_size and 'file size, uint8' in repr(source)
    assert isinstance(operations[0], augment.RandomResizedCrop) and operations[0].size == (6, 10)
    assert isinstance(operations[-1], data.Normalize)
    sizes = {source[i]['image'].shape for i in range(len(source))}
    assert sizes == {(10, 20, 3), (9, 7, 3), (16, 16, 3), (12, 30, 3), (5, 5, 3)}
    assert {source[i]['image'].dtype for i in range(len(source))} == {np.dtype(np.uint8)}

    plain_source, _ = data.train_records(folder_config(tmp_path))
    assert not plain_source.keep_file_size and plain_source[0]['image'].shape == (6, 10, 3)

    batch = next(iter(data.train_loader(augmented, batch_size=5, seed=0)))
    assert batch['image'].shape == (5, 6, 10, 3) and batch['image'].dtype == np.float32
    info = data.dataset_info(augmented)
    for image, label in zip(batch['image'], batch['label']):
        colour = np.float32(COLOURS[info.class_names[label]]) / 255
        # JPEG's colour rounding aside, every pixel of a crop of a solid image is that colour
        np.testing.assert_allclose(image * np.float32(info.std) + np.float32(info.mean),
                                   np.broadcast_to(colour, image.shape), atol=3 / 255)
    np.testing.assert_array_equal(data.raw_eval_split(augmented)[0], data.raw_eval_split(folder_config(tmp_path))[0])


def test_augment_config():
    assert augment.train_transforms(None) == []
    assert augment.train_transforms(ml_collections.ConfigDict({'mixup_alpha': 0.2})) == []  # the trainer's key
    assert augment.train_transforms(AUGMENT_ALL) == [
        augment.RandomCrop(2), augment.RandomFlip(), augment.RandAugment(2, 0.5)]
    for key, value in (('random_crop_padding', -1), ('randaugment_ops', -1), ('randaugment_magnitude', 1.5)):
        with pytest.raises(ValueError, match=f'{key}={value}'):
            augment.train_transforms({key: value})

    inception = {'random_resized_crop': True, 'flip': True, 'randaugment_ops': 2}
    assert augment.train_transforms(inception, (32, 24)) == [
        augment.RandomResizedCrop((32, 24), (0.08, 1.0), (3 / 4, 4 / 3)), augment.RandomFlip(),
        augment.RandAugment(2, 0.5)]
    assert augment.train_transforms({**inception, 'random_resized_crop_scale': [0.5, 1], 'random_resized_crop_ratio': (
        1, 2)}, (8, 8))[0] == augment.RandomResizedCrop((8, 8), (0.5, 1.0), (1.0, 2.0))
    with pytest.raises(ValueError, match='needs the image size'):
        augment.train_transforms(inception)
    with pytest.raises(ValueError, match='random_crop_padding=2 with random_resized_crop=True: choose one'):
        augment.train_transforms({**inception, 'random_crop_padding': 2}, (8, 8))
    for key, value, why in (('random_resized_crop_scale', (0.5, 1.5), '<= 1'),
                            ('random_resized_crop_scale', (0.0, 1.0), '0 < low'),
                            ('random_resized_crop_ratio', (2.0, 1.0), 'low <= high'),
                            ('random_resized_crop_ratio', 0.5, 'two numbers')):
        with pytest.raises(ValueError, match=rf'config\.augment\.{key}=.*{why}'):
            augment.train_transforms({**inception, key: value}, (8, 8))


def test_digits_written_as_an_image_folder_keep_their_classes_and_pixels(tmp_path):
    """`python -m vit_flax.data digits --classes=...` (make finetune-demo's pretraining set): the chosen classes of the
    fixed split, every image, its pixels to 8-bit rounding."""
    root = digits.write_image_folder(tmp_path / 'digits', classes=('0', '3'))
    for split, source in zip(('train', 'val'), digits.splits()):
        assert sorted(path.name for path in (root / split).iterdir()) == ['0', '3']
        for name in ('0', '3'):
            kept = np.flatnonzero(source.labels == int(name))
            assert len(list((root / split / name).iterdir())) == len(kept)
            first = np.asarray(Image.open(root / split / name / f'{kept[0]}.png'), np.float32) / 255
            np.testing.assert_allclose(first, source.images[kept[0], ..., 0], atol=0.5 / 255)
