"""Fashion-MNIST prepared from the real files into the layout timm's `torch/fashion_mnist` reader reads."""
import gzip
import shutil

import numpy as np
import pytest
from timm.data import create_dataset

from timm_ssm import fashion_mnist
from timm_ssm.fashion_mnist import DEBIAN_SOURCE, MEAN, STD, prepare_fashion_mnist

RAW = ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte', 't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')

pytestmark = pytest.mark.skipif(
    not all((DEBIAN_SOURCE / (n + '.gz')).is_file() for n in RAW),
    reason=f'needs the real Fashion-MNIST files of the Debian package dataset-fashion-mnist in {DEBIAN_SOURCE}',
)


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
    return prepare_fashion_mnist(tmp_path_factory.mktemp('fm'), download=False)


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


def test_no_source_no_download(tmp_path):
    with pytest.raises(RuntimeError, match='apt-get install dataset-fashion-mnist|Install the Debian package'):
        prepare_fashion_mnist(tmp_path / 'root', source=tmp_path, download=False)


def test_shell_command_prints_root(prepared, capsys):
    fashion_mnist.main([str(prepared), '--no-download'])
    assert capsys.readouterr().out.strip() == str(prepared)
    with pytest.raises(SystemExit) as e:
        fashion_mnist.main([str(prepared / 'elsewhere'), '--source', str(prepared / 'no-such-folder'), '--no-download'])
    assert e.value.code == 1
    assert 'error: Fashion-MNIST is not in' in capsys.readouterr().err
