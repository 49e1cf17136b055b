"""Unreadable files in an image folder: found when the folder is loaded (or skipped and logged with
config.skip_bad_images), and a resume after the file list changed is refused, saying so."""

import shutil

import numpy as np
import pytest
from PIL import Image

from vit_flax import data
from vit_flax.data import image_folder
from vit_flax.train import train_and_evaluate
from vit_flax.training.checkpoint import CheckpointError
from tests.test_data import folder_config, write_image_folder
from tests.train_helpers import losses, tiny_config


def noisy_image(size=(64, 64)):
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (*size, 3), np.uint8))


def truncated(path, fraction=0.6):
    """Cut the file at `path` short, keeping its header."""
    contents = path.read_bytes()
    path.write_bytes(contents[:int(len(contents) * fraction)])
    return path


def truncated_copy(image, path):
    image.save(path)
    return truncated(path)


def trainer_config(root, **overrides):
    """Two steps on an image folder of 8x8 RGB images in two classes: one train compile, one eval."""
    return tiny_config(dataset='image_folder', data_dir=str(root), image_size=8, batch_size=4, eval_batch_size=4,
                       total_steps=2, eval_every=2, checkpoint_every=2,
                       **{'model.channels': 3, 'model.num_classes': 2, **overrides})


def test_the_check_reads_headers_and_end_markers(tmp_path):
    files = {'good.jpg': 'JPEG', 'good.png': 'PNG', 'cut.jpg': 'JPEG', 'cut.png': 'PNG', 'appended.jpg': 'JPEG',
             'bad_pixels.png': 'PNG'}
    for name, image_format in files.items():
        noisy_image().save(tmp_path / name, image_format)
    truncated(tmp_path / 'cut.jpg')
    truncated(tmp_path / 'cut.png')
    with open(tmp_path / 'appended.jpg', 'ab') as file:  # data after the end marker: the image still decodes
        file.write(bytes(10_000))
    png = (tmp_path / 'bad_pixels.png').read_bytes()  # pixel data garbled, header and IEND intact
    start = png.index(b'IDAT') + 20
    (tmp_path / 'bad_pixels.png').write_bytes(png[:start] + bytes(200) + png[start + 200:])
    (tmp_path / 'empty.png').write_bytes(b'')
    (tmp_path / 'text.jpg').write_text('not an image')

    why = {path.name: image_folder.unreadable(str(path)) for path in tmp_path.iterdir()}
    assert why['good.jpg'] is why['good.png'] is why['appended.jpg'] is None
    assert 'truncated' in why['cut.jpg'] and 'truncated' in why['cut.png']
    assert why['empty.png'] == 'the file is empty'
    assert why['text.jpg'] == 'PIL cannot identify it as an image'
    # a file whose header and end pass fails when its record is read, naming it
    assert why['bad_pixels.png'] is None
    source = image_folder.ImageFolderSource(str(tmp_path), (str(tmp_path / 'bad_pixels.png'),), (0,), (8, 8), 'RGB')
    with pytest.raises(ValueError, match='cannot read image file .*bad_pixels.png'):
        source[0]


def test_unreadable_files_are_refused_when_the_folder_is_loaded(tmp_path):
    root = write_image_folder(tmp_path / 'images')
    truncated_path = truncated_copy(noisy_image(), root / 'train' / 'cat' / 'truncated.jpg')
    (root / 'val' / 'dog' / 'empty.png').write_bytes(b'')
    with pytest.raises(ValueError, match=r'(?s)2 of 9 image files under .*cannot be read.*'
                                         r'cannot read image file .*truncated.jpg: truncated.*'
                                         r'cannot read image file .*empty.png: the file is empty.*'
                                         r'skip_bad_images=True'):
        data.dataset_info(folder_config(root))
    with pytest.raises(ValueError, match='cannot read image file .*truncated.jpg'):  # before any training step
        train_and_evaluate(trainer_config(root), tmp_path / 'run')
    assert not (tmp_path / 'run' / 'checkpoints').exists()

    # fixed in place: the same file list loads (no stale verdict)
    shutil.copy(root / 'train' / 'cat' / 'b.JPG', truncated_path)
    shutil.copy(root / 'val' / 'dog' / 'g.png', root / 'val' / 'dog' / 'empty.png')
    assert data.dataset_info(folder_config(root)).num_train == 6


def test_skip_bad_images_trains_without_them_and_logs_them(tmp_path, caplog):
    root = write_image_folder(tmp_path / 'images')
    bad = truncated_copy(noisy_image(), root / 'train' / 'dog' / 'truncated.jpg')
    with caplog.at_level('WARNING'):
        train_and_evaluate(trainer_config(root, skip_bad_images=True), tmp_path / 'run')
    assert len(losses(tmp_path / 'run')) == 2
    assert f'skipping unreadable image file {bad}: truncated' in caplog.text
    assert 'skipped 1 of 8 image files' in caplog.text

    # the case: once the file is removed, the run resumes without the option
    bad.unlink()
    train_and_evaluate(trainer_config(root), tmp_path / 'run')
    assert len(losses(tmp_path / 'run')) == 2


def test_resume_after_the_file_list_changed_says_so(tmp_path):
    root = write_image_folder(tmp_path / 'images')
    workdir = tmp_path / 'run'
    train_and_evaluate(trainer_config(root), workdir)
    (root / 'train' / 'dog' / 'e.png').rename(tmp_path / 'e.png')
    with pytest.raises(CheckpointError) as refused:
        train_and_evaluate(trainer_config(root), workdir)
    message = str(refused.value)
    assert 'the training data changed since checkpoint' in message and 'corrupt' not in message
    assert 'then: ImageFolderSource(' in message and '5 images' in message
    assert 'now:  ImageFolderSource(' in message and '4 images' in message and 'config.init_from=' in message

    (tmp_path / 'e.png').rename(root / 'train' / 'dog' / 'renamed.png')  # as many files as before
    with pytest.raises(CheckpointError, match='(?s)training data changed.*5 images, file list (\\w+).*'
                                              '5 images, file list (?!\\1)'):
        train_and_evaluate(trainer_config(root), workdir)
