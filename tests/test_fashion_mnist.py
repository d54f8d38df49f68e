"""Fashion-MNIST through torchvision: the image folder the default run trains on, prepared beside and renamed in."""
import functools
import gzip
import hashlib
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from timm.data import create_dataset
from torchvision.datasets import FashionMNIST

from timm_ssm import fashion_mnist
from timm_ssm.fashion_mnist import CLASS_NAMES, FILES, MEAN, STD, prepare_fashion_mnist, \
    prepare_fashion_mnist_folder
from timm_ssm.train_timm import DEFAULT_RECIPE

from clean_exit import exits_clearly
from conftest import write_fashion_mnist


def test_image_folder_of_the_real_files(fashion_mnist_cache):
    """55,000 train, 5,000 validation (500 a class, none in train), the 10,000 test images as torchvision reads the
    Debian package's files, by class name; timm's folder reader gives them as RGB. MEAN and STD (and the default
    run's recipe) are the training pixels'."""
    root = fashion_mnist_cache / 'timm_ssm' / 'data'
    folder = root / fashion_mnist.FOLDER_NAME
    splits = {s: create_dataset('', root=str(folder), split=s) for s in ('train', 'validation', 'test')}
    assert {s: len(d) for s, d in splits.items()} == dict(train=55000, validation=5000, test=10000)
    names = {s: {Path(f).name for f, _ in d.reader.samples} for s, d in splits.items()}
    assert not names['train'] & names['validation'] and len(names['train'] | names['validation']) == 60000
    assert np.bincount([t for _, t in splits['validation'].reader.samples]).tolist() == [500] * 10
    test = splits['test']
    assert test.reader.class_to_idx == {n: i for i, n in enumerate(sorted(CLASS_NAMES))}

    reference = FashionMNIST(str(root), train=False)
    for i in (0, 4321, 9999):
        index = next(k for k, (f, _) in enumerate(test.reader.samples) if Path(f).name == f'test_{i:05d}.png')
        img, target = test[index]
        assert img.mode == 'RGB' and all(np.array_equal(np.asarray(img)[..., c], reference.data[i]) for c in range(3))
        assert target == test.reader.class_to_idx[CLASS_NAMES[reference.targets[i]]]

    pixels = FashionMNIST(str(root), train=True).data.numpy() / 255.
    assert (pixels.mean(), pixels.std()) == (pytest.approx(MEAN[0], abs=1e-4), pytest.approx(STD[0], abs=1e-4))
    recipe = yaml.safe_load(DEFAULT_RECIPE.read_text())
    assert recipe['mean'] == pytest.approx(MEAN * 3, abs=1e-3) and recipe['std'] == pytest.approx(STD * 3, abs=1e-3)


def test_a_live_folder_is_never_deleted(tmp_path, monkeypatch):
    """Two default runs a few seconds apart on a fresh cache: the other one's folder is renamed in while this one
    writes its own; this one then keeps the other's, which a run may be reading, and leaves nothing behind."""
    source = write_fashion_mnist(tmp_path / 'source')
    other = prepare_fashion_mnist_folder(tmp_path / 'other', source=source, download=False)
    (other / 'in use').touch()
    root = tmp_path / 'root'
    save = Image.Image.save

    def save_while_the_other_finishes(image, path, *args, **kwargs):
        if not (root / fashion_mnist.FOLDER_NAME).exists():
            other.rename(root / fashion_mnist.FOLDER_NAME)
        return save(image, path, *args, **kwargs)

    monkeypatch.setattr(Image.Image, 'save', save_while_the_other_finishes)
    folder = prepare_fashion_mnist_folder(root, source=source, download=False)
    assert (folder / 'in use').exists()
    assert sorted(p.name for p in root.iterdir()) == ['FashionMNIST', fashion_mnist.FOLDER_NAME]


@pytest.mark.parametrize('layout', ['gzip', 'plain', 'torchvision'])
def test_files_from_a_source_folder(tmp_path, layout):
    """Gzipped (as the Debian package has them), plain, or in torchvision's own layout: torchvision reads the same."""
    plain = write_fashion_mnist(tmp_path / 'plain')
    source = {'plain': plain, 'gzip': tmp_path / 'gz', 'torchvision': tmp_path / 'tv'}[layout]
    if layout == 'gzip':
        source.mkdir()
        for name in FILES:
            (source / f'{name}.gz').write_bytes(gzip.compress((plain / name).read_bytes()))
    elif layout == 'torchvision':
        shutil.copytree(plain, source / 'FashionMNIST' / 'raw')
    root = prepare_fashion_mnist(tmp_path / 'root', source=source, download=False)
    assert sorted(p.name for p in (root / 'FashionMNIST' / 'raw').iterdir()) == sorted(FILES)
    assert len(FashionMNIST(str(root), train=True)) == 120
    assert fashion_mnist.main([str(root), '--no-download']) is None  # kept as it is


def test_download_through_torchvision(tmp_path, monkeypatch):
    """No local copy: torchvision downloads the files (from a local mirror here), into a folder beside the data."""
    mirror = tmp_path / 'mirror'
    mirror.mkdir()
    plain = write_fashion_mnist(tmp_path / 'plain')
    for name in FILES:
        (mirror / f'{name}.gz').write_bytes(gzip.compress((plain / name).read_bytes()))
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(mirror))
    server = ThreadingHTTPServer(('127.0.0.1', 0), handler)
    server.handle_error = lambda *args: None  # torchvision drops its redirect probe unread
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        monkeypatch.setattr(FashionMNIST, 'mirrors', [f'http://127.0.0.1:{server.server_address[1]}/'])
        monkeypatch.setattr(FashionMNIST, 'resources', [
            (f'{n}.gz', hashlib.md5((mirror / f'{n}.gz').read_bytes()).hexdigest()) for n in FILES])
        folder = prepare_fashion_mnist_folder(tmp_path / 'root', source=tmp_path / 'empty')
    finally:
        server.shutdown()
        server.server_close()
    assert len(create_dataset('', root=str(folder), split='test')) == 20
    assert sorted(p.name for p in (folder.parent / 'FashionMNIST' / 'raw').iterdir()) == sorted(FILES)


def test_errors_say_how_to_fix(tmp_path, capsys, monkeypatch):
    """Each message's advice works for the command that printed it; nothing is left half-written."""
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    err = exits_clearly(fashion_mnist.main, ['--folder', '--source', str(tmp_path), '--no-download'], capsys,
                        'Fashion-MNIST is not in .* install the Debian package', code=1)
    assert '--source' not in err.split('error:')[1]  # ./train_timm.sh takes no --source
    (tmp_path / 'file').write_text('x')
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'file'))
    exits_clearly(fashion_mnist.main, ['--source', str(write_fashion_mnist(tmp_path / 'src'))], capsys,
                  'Cannot put Fashion-MNIST into .*set XDG_CACHE_HOME to a folder you can write', code=1)
    exits_clearly(fashion_mnist.main, [str(tmp_path / 'file' / 'root'), '--source', str(tmp_path / 'src')], capsys,
                  'give a ROOT folder you can write', code=1)

    damaged = tmp_path / 'damaged'
    damaged.mkdir()
    for name in FILES:
        (damaged / f'{name}.gz').write_bytes(gzip.compress((tmp_path / 'src' / name).read_bytes())[:200])
    exits_clearly(fashion_mnist.main, [str(tmp_path / 'r1'), '--source', str(damaged)], capsys,
                  'train-images-idx3-ubyte.gz is damaged .*copy it again', code=1)
    assert not list((tmp_path / 'r1' / 'FashionMNIST' / 'raw').iterdir())

    other = write_fashion_mnist(tmp_path / 'other')
    (other / 't10k-labels-idx1-ubyte').write_bytes((other / 't10k-labels-idx1-ubyte').read_bytes()[:8] + b'\x0c' * 20)
    raw = tmp_path / 'r2' / 'FashionMNIST'
    exits_clearly(fashion_mnist.main, [str(tmp_path / 'r2'), '--source', str(other), '--folder'], capsys,
                  f'holds files that are not Fashion-MNIST\'s .*labels up to 12.*rm -r {raw}', code=1)

    (tmp_path / 'r3' / fashion_mnist.FOLDER_NAME / 'mine').mkdir(parents=True)
    exits_clearly(fashion_mnist.main, [str(tmp_path / 'r3'), '--folder'], capsys,
                  'is not a Fashion-MNIST image folder of this version.*rm -r', code=1)
    assert (tmp_path / 'r3' / fashion_mnist.FOLDER_NAME / 'mine').is_dir()
