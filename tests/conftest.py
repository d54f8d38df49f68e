"""Test set-up: the whole suite runs offline against a temporary Hugging Face Hub cache.

huggingface_hub reads HF_HUB_OFFLINE and HF_HUB_CACHE when it is imported, so they are set here, before
anything imports it. Tests put real checkpoints into that cache under real repo ids (`hub_cache` fixture)
and timm's own loaders then read them unchanged, as they would after a download.

TIMM_ROOT that is not a pytorch-image-models checkout (no train.py in it, as the quick start's placeholder
`/path/to/pytorch-image-models`) is set aside here, so that the tests of timm's scripts skip, saying why.
"""
import logging
import os
import shutil
import struct
import tempfile
from pathlib import Path

_HUB_CACHE = Path(tempfile.mkdtemp(prefix='timm_ssm_hub_'))
os.environ['HF_HUB_OFFLINE'] = '1'
os.environ['HF_HUB_CACHE'] = str(_HUB_CACHE)
os.environ['HF_HUB_DISABLE_TELEMETRY'] = '1'
os.environ['TORCH_HOME'] = str(_HUB_CACHE / 'torch')

_BAD_TIMM_ROOT = None
if os.environ.get('TIMM_ROOT') and not (Path(os.environ['TIMM_ROOT']) / 'train.py').is_file():
    _BAD_TIMM_ROOT = os.environ.pop('TIMM_ROOT')

import hashlib  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402


def put_in_hub_cache(repo_id: str, files, cache_dir=None) -> Path:
    """Place files in a huggingface_hub cache as `hf_hub_download(repo_id, name)` leaves them.

    Layout (huggingface_hub's cache): `models--ORG--NAME/blobs/<sha256>`, `snapshots/<commit>/<name>` linking to
    the blob, and `refs/main` naming the commit.

    Args:
        repo_id: `ORG/NAME` as on the Hub.
        files: A folder to copy whole, or a dict of file name to source path.
        cache_dir: The cache, HF_HUB_CACHE of this test session if None.

    Returns:
        The snapshot folder.
    """
    if not isinstance(files, dict):
        files = {p.name: p for p in Path(files).iterdir() if p.is_file()}
    repo_dir = Path(cache_dir or _HUB_CACHE) / ('models--' + repo_id.replace('/', '--'))
    digest = hashlib.sha1()
    for name in sorted(files):
        digest.update(name.encode() + Path(files[name]).read_bytes())
    commit = digest.hexdigest()
    snapshot = repo_dir / 'snapshots' / commit
    (repo_dir / 'blobs').mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, src in files.items():
        data = Path(src).read_bytes()
        blob = repo_dir / 'blobs' / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / name
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, snapshot))
    (repo_dir / 'refs').mkdir(exist_ok=True)
    (repo_dir / 'refs' / 'main').write_text(commit)
    return snapshot


@pytest.fixture
def hub_cache():
    """The session's offline Hub cache: `hub_cache.put(repo_id, files)`; repos put here are removed after."""
    added = []

    class _Cache:
        path = _HUB_CACHE

        @staticmethod
        def put(repo_id, files):
            added.append(repo_id)
            return put_in_hub_cache(repo_id, files)

    yield _Cache
    for repo_id in added:
        shutil.rmtree(_HUB_CACHE / ('models--' + repo_id.replace('/', '--')), ignore_errors=True)


def pytest_report_header(config):
    if _BAD_TIMM_ROOT is not None:
        return (f'TIMM_ROOT={_BAD_TIMM_ROOT} is not a pytorch-image-models checkout (it has no train.py): the tests '
                f'of timm\'s scripts skip. Point it at a clone: git clone --branch v1.0.31 '
                f'https://github.com/huggingface/pytorch-image-models.git')
    return None


@pytest.fixture(scope='session')
def fashion_mnist_cache(tmp_path_factory):
    """A timm-ssm cache folder (for XDG_CACHE_HOME) where the default run's Fashion-MNIST image folder is ready,
    prepared once from the Debian package's files."""
    from timm_ssm.fashion_mnist import DEBIAN_SOURCE, prepare_fashion_mnist_folder
    if not (DEBIAN_SOURCE / 'train-images-idx3-ubyte.gz').is_file():
        pytest.skip(f'needs the Fashion-MNIST files of the Debian package dataset-fashion-mnist in {DEBIAN_SOURCE}')
    cache = tmp_path_factory.mktemp('xdg_cache')
    prepare_fashion_mnist_folder(cache / 'timm_ssm' / 'data', download=False)
    return cache


def write_fashion_mnist(folder: Path, num_train: int = 120, num_test: int = 20) -> Path:
    """Fashion-MNIST's four IDX files, as torchvision reads them, of random 28x28 images (label: index % 10)."""
    import numpy as np
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (('train', num_train), ('t10k', num_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        for kind, array in (('images-idx3', images), ('labels-idx1', np.arange(n, dtype=np.uint8) % 10)):
            header = bytes([0, 0, 8, array.ndim]) + struct.pack(f'>{array.ndim}I', *array.shape)
            (folder / f'{prefix}-{kind}-ubyte').write_bytes(header + array.tobytes())
    return folder


@pytest.fixture(scope='session')
def tiny_cache(tmp_path_factory):
    """A timm-ssm cache folder (for XDG_CACHE_HOME) with the image folder of a tiny Fashion-MNIST of random images:
    110 train, 10 validation, 20 test."""
    from timm_ssm.fashion_mnist import prepare_fashion_mnist_folder
    cache = tmp_path_factory.mktemp('tiny_cache')
    source = write_fashion_mnist(cache / 'source')
    prepare_fashion_mnist_folder(cache / 'timm_ssm' / 'data', source=source, download=False)
    return cache


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _root_log_handlers():
    """timm's scripts run in the test process add a root handler on the test's captured stderr each: removed after."""
    handlers = list(logging.root.handlers)
    yield
    logging.root.handlers[:] = handlers
