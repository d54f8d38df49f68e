"""Fashion-MNIST prepared from the real files into the layout timm's `torch/fashion_mnist` reader reads."""
import functools
import gzip
import hashlib
import os
import shutil
import stat
import struct
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from timm.data import create_dataset
from torchvision.datasets import FashionMNIST

from timm_ssm import fashion_mnist
from timm_ssm.fashion_mnist import DEBIAN_SOURCE, MEAN, STD, prepare_fashion_mnist

from clean_exit import exits_clearly

RAW = ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte', 't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')

needs_data = pytest.mark.skipif(
    not all((DEBIAN_SOURCE / (n + '.gz')).is_file() for n in RAW),
    reason=f'needs the real Fashion-MNIST files of the Debian package dataset-fashion-mnist in {DEBIAN_SOURCE}',
)


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
    return prepare_fashion_mnist(tmp_path_factory.mktemp('fm'), download=False)


@needs_data
def test_timm_reads_prepared_data(prepared):
    raw = prepared / 'FashionMNIST' / 'raw'
    assert sorted(p.name for p in raw.iterdir()) == sorted(RAW)
    train = create_dataset('torch/fashion_mnist', root=str(prepared), split='train')
    test = create_dataset('torch/fashion_mnist', root=str(prepared), split='test')
    assert (len(train), len(test)) == (60000, 10000)

    with gzip.open(DEBIAN_SOURCE / 't10k-images-idx3-ubyte.gz') as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(DEBIAN_SOURCE / 't10k-labels-idx1-ubyte.gz') as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    for i in (0, 1234, 9999):
        img, target = test[i]
        assert img.mode == 'L' and img.size == (28, 28)
        assert np.array_equal(np.asarray(img), images[i]) and target == labels[i]
    assert sorted(np.bincount(labels).tolist()) == [1000] * 10

    counts = np.bincount(np.fromfile(raw / 'train-images-idx3-ubyte', np.uint8, offset=16), minlength=256)
    values = np.arange(256) / 255.
    mean = (counts * values).sum() / counts.sum()
    std = np.sqrt((counts * (values - mean) ** 2).sum() / counts.sum())
    assert (mean, std) == (pytest.approx(MEAN[0], abs=1e-4), pytest.approx(STD[0], abs=1e-4))


@needs_data
def test_prepare_keeps_intact_files_and_repairs_broken_ones(prepared):
    raw = prepared / 'FashionMNIST' / 'raw'
    mtimes = {p.name: p.stat().st_mtime_ns for p in raw.iterdir()}
    assert prepare_fashion_mnist(prepared, download=False) == prepared
    assert {p.name: p.stat().st_mtime_ns for p in raw.iterdir()} == mtimes

    labels = raw / 't10k-labels-idx1-ubyte'
    good = labels.read_bytes()
    labels.write_bytes(good[:-10])  # an interrupted copy
    prepare_fashion_mnist(prepared, download=False)
    assert labels.read_bytes() == good
    assert sorted(p.name for p in raw.iterdir()) == sorted(RAW)


@needs_data
def test_prepared_files_are_readable_as_umask_allows(prepared):
    umask = os.umask(0)
    os.umask(umask)
    for name in RAW:
        assert stat.S_IMODE((prepared / 'FashionMNIST' / 'raw' / name).stat().st_mode) == 0o666 & ~umask, name


@pytest.fixture
def mirror(monkeypatch):
    """torchvision's download of Fashion-MNIST served from the Debian package's files by a local HTTP server (with
    their MD5 sums: Debian compressed them again)."""
    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass  # keep the test output clean

    server = ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(Handler, directory=str(DEBIAN_SOURCE)))
    server.handle_error = lambda request, client_address: None  # torchvision drops its redirect probe unread
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    monkeypatch.setattr(FashionMNIST, 'mirrors', [f'http://127.0.0.1:{server.server_address[1]}/'])
    monkeypatch.setattr(FashionMNIST, 'resources', [
        (name, hashlib.md5((DEBIAN_SOURCE / name).read_bytes()).hexdigest()) for name, _ in FashionMNIST.resources])
    yield
    server.shutdown()
    server.server_close()


@needs_data
def test_download_replaces_broken_files(mirror, tmp_path):
    """torchvision skips its download when the files exist: a broken one is removed first, then downloaded."""
    root = prepare_fashion_mnist(tmp_path / 'root', source=tmp_path / 'empty', download=True)
    raw = root / 'FashionMNIST' / 'raw'
    labels = raw / 't10k-labels-idx1-ubyte'
    good = labels.read_bytes()
    labels.write_bytes(good[:-10])
    assert prepare_fashion_mnist(root, source=tmp_path / 'empty', download=True) == root
    assert labels.read_bytes() == good


@needs_data
def test_wrong_source_file_is_refused_and_nothing_is_half_written(tmp_path):
    source = tmp_path / 'source'
    source.mkdir()
    for name in RAW:
        shutil.copy(DEBIAN_SOURCE / (name + '.gz'), source / (name + '.gz'))
    # the test labels swapped for the training labels: right format, wrong count
    shutil.copy(DEBIAN_SOURCE / 'train-labels-idx1-ubyte.gz', source / 't10k-labels-idx1-ubyte.gz')
    root = tmp_path / 'root'
    with pytest.raises(RuntimeError, match='is not the Fashion-MNIST file t10k-labels-idx1-ubyte: .*60000 items, '
                                           'expected 10000'):
        prepare_fashion_mnist(root, source=source, download=False)
    assert not any(p.name.endswith('.tmp') for p in (root / 'FashionMNIST' / 'raw').iterdir())
    assert not (root / 'FashionMNIST' / 'raw' / 't10k-labels-idx1-ubyte').exists()
    assert len(list((root / 'FashionMNIST' / 'raw').iterdir())) == 3  # the three good files are kept


def test_no_source_no_download(tmp_path):
    with pytest.raises(RuntimeError, match='apt-get install dataset-fashion-mnist|Install the Debian package'):
        prepare_fashion_mnist(tmp_path / 'root', source=tmp_path, download=False)


@pytest.mark.parametrize('size', [0, 7, 8, 12, 15])
def test_short_files_are_reported(tmp_path, size):
    """An images file cut inside its 16-byte header (magic, count, rows, columns) is refused as too short."""
    source = tmp_path / 'source'
    source.mkdir()
    for name in RAW:
        (source / name).write_bytes(b'')
    (source / RAW[0]).write_bytes(struct.pack('>IIII', 2051, 60000, 28, 28)[:size])
    with pytest.raises(RuntimeError, match=f'not the Fashion-MNIST file {RAW[0]}: its copy is too short'):
        prepare_fashion_mnist(tmp_path / 'root', source=source, download=False)


@needs_data
def test_shell_command_prints_root(prepared, capsys):
    fashion_mnist.main([str(prepared), '--no-download'])
    assert capsys.readouterr().out.strip() == str(prepared)
    with pytest.raises(SystemExit) as e:
        fashion_mnist.main([str(prepared / 'elsewhere'), '--source', str(prepared / 'no-such-folder'), '--no-download'])
    assert e.value.code == 1
    assert 'error: Fashion-MNIST is not in' in capsys.readouterr().err


def _fails(argv, capsys, match):
    """The shell command exits 1 with `error: ...` matching `match`, and no traceback."""
    return exits_clearly(fashion_mnist.main, argv, capsys, match, code=1)


def test_root_that_is_a_file(tmp_path, capsys):
    (tmp_path / 'afile').write_text('x')
    _fails([str(tmp_path / 'afile'), '--no-download'], capsys, 'afile cannot be used as a folder: it is a file')
    _fails([str(tmp_path / 'afile' / 'sub'), '--no-download'], capsys, f'{tmp_path / "afile"} is a file')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['afile']


def test_read_only_root(tmp_path, capsys, monkeypatch):
    """A folder that cannot be written (simulated: the tests may run as root, who writes everywhere)."""
    access = os.access
    monkeypatch.setattr(os, 'access', lambda p, mode: False if Path(p) == tmp_path / 'ro' else access(p, mode))
    (tmp_path / 'ro').mkdir()
    _fails([str(tmp_path / 'ro' / 'fm'), '--no-download'], capsys, f'{tmp_path / "ro"} is not writable')
    assert not any((tmp_path / 'ro').iterdir())


def test_write_error_is_clear_and_leaves_no_empty_folders(tmp_path, capsys, monkeypatch):
    """An OSError while writing (a read-only file system, a full disk) is reported, and the folders made for the
    data are removed again."""
    def _refuse(*args, **kwargs):
        raise PermissionError(13, 'Permission denied')

    source = tmp_path / 'source'
    source.mkdir()
    for name in RAW:
        (source / name).write_bytes(b'')
    monkeypatch.setattr(fashion_mnist, 'atomic_write', _refuse)
    _fails([str(tmp_path / 'root'), '--source', str(source), '--no-download'], capsys,
           'Cannot write Fashion-MNIST into .*Permission denied.*Give a writable ROOT')
    assert not (tmp_path / 'root').exists()


@pytest.mark.parametrize('content, match', [
    (gzip.compress(os.urandom(5000))[:1000], 'is truncated'),
    (b'not gzip at all', 'is not a gzip file'),
], ids=['truncated', 'not_gzip'])
def test_bad_gzip_source(tmp_path, capsys, content, match):
    source = tmp_path / 'source'
    source.mkdir()
    for name in RAW:
        (source / (name + '.gz')).write_bytes(content)
    _fails([str(tmp_path / 'root'), '--source', str(source), '--no-download'], capsys,
           f'train-images-idx3-ubyte.gz {match} .*copy the original Fashion-MNIST file')
    assert not (tmp_path / 'root').exists()  # no empty FashionMNIST/raw left behind


def test_default_cache_that_is_a_file(tmp_path, capsys, monkeypatch):
    """The default run's data folder (`<cache>/timm_ssm/data`) under a file: a clear error, nothing written."""
    (tmp_path / 'cache').write_text('x')
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    _fails(['--no-download'], capsys, 'The data cache folder .*cache is a file')


def test_no_empty_folders_after_a_failed_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    _fails(['--source', str(tmp_path / 'nothing'), '--no-download'], capsys, 'Fashion-MNIST is not in')
    assert not (tmp_path / 'cache').exists()


def test_image_folder_holds_out_validation_from_train(fashion_mnist_cache):
    """The default run's image folder: 55,000 train, 5,000 validation (500 a class, none of them in train), the
    10,000 test images unchanged; timm's folder reader gives 3-channel images and the classes by name."""
    folder = fashion_mnist_cache / 'timm_ssm' / 'data' / fashion_mnist.FOLDER_NAME
    splits = {s: create_dataset('', root=str(folder), split=s) for s in ('train', 'validation', 'test')}
    assert {s: len(d) for s, d in splits.items()} == dict(train=55000, validation=5000, test=10000)
    names = {s: {Path(f).name for f, _ in d.reader.samples} for s, d in splits.items()}
    assert not names['train'] & names['validation'] and len(names['train'] | names['validation']) == 60000
    counts = np.bincount([t for _, t in splits['validation'].reader.samples])
    assert counts.tolist() == [500] * 10
    assert splits['test'].reader.class_to_idx == {n: i for i, n in enumerate(sorted(fashion_mnist.CLASS_NAMES))}

    with gzip.open(DEBIAN_SOURCE / 't10k-images-idx3-ubyte.gz') as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(DEBIAN_SOURCE / 't10k-labels-idx1-ubyte.gz') as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    test = splits['test']
    for i in (0, 4321, 9999):
        path, target = next((f, t) for f, t in test.reader.samples if Path(f).name == f'test_{i:05d}.png')
        img, _ = test[test.reader.samples.index((path, target))]
        assert img.mode == 'RGB' and img.size == (28, 28)  # grey read as RGB
        assert all(np.array_equal(np.asarray(img)[..., c], images[i]) for c in range(3))
        assert test.reader.class_to_idx[fashion_mnist.CLASS_NAMES[labels[i]]] == target
    # a complete folder is kept as it is
    stamp = (folder / 'manifest.json').stat().st_mtime_ns
    assert fashion_mnist.prepare_fashion_mnist_folder(folder.parent, download=False) == folder
    assert (folder / 'manifest.json').stat().st_mtime_ns == stamp
