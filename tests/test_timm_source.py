"""Locating timm's scripts: --timm-root, TIMM_ROOT, and the source cached once from GitHub's archive."""
import http.server
import io
import logging
import tarfile
import threading
from pathlib import Path

import pytest

from timm_ssm import timm_source
from timm_ssm.timm_source import find_timm_root, installed_timm_version


def _checkout(path: Path, version: str) -> Path:
    (path / 'timm').mkdir(parents=True)
    (path / 'timm' / 'version.py').write_text(f"__version__ = '{version}'\n")
    (path / 'train.py').write_text('print("train")\n')
    return path


def _archive(version: str, with_train: bool = True) -> bytes:
    """A source archive laid out as GitHub's /archive/refs/tags/vX.tar.gz: one top folder."""
    top = f'pytorch-image-models-{version}'
    files = {f'{top}/timm/version.py': f"__version__ = '{version}'\n", f'{top}/validate.py': 'print("validate")\n'}
    if with_train:
        files[f'{top}/train.py'] = 'print("train")\n'
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w:gz') as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def archive_server(monkeypatch):
    """A local HTTP server standing in for GitHub's archive download; records the requested paths."""
    served = {'body': _archive(installed_timm_version()), 'requests': []}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            served['requests'].append(self.path)
            self.send_response(200)
            self.send_header('Content-Length', str(len(served['body'])))
            self.end_headers()
            self.wfile.write(served['body'])

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(('127.0.0.1', 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(
        timm_source, 'ARCHIVE_URL', f'http://127.0.0.1:{server.server_port}/archive/refs/tags/v{{version}}.tar.gz')
    yield served
    server.shutdown()
    server.server_close()


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    monkeypatch.delenv('TIMM_ROOT', raising=False)
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    return tmp_path


def test_explicit_root_then_env(clean_env, monkeypatch, caplog):
    version = installed_timm_version()
    explicit = _checkout(clean_env / 'explicit', version)
    env_root = _checkout(clean_env / 'env', version)
    monkeypatch.setenv('TIMM_ROOT', str(env_root))
    with caplog.at_level(logging.WARNING):
        assert find_timm_root(explicit) == explicit.resolve()
        assert find_timm_root() == env_root.resolve()
    assert not caplog.records  # same version as the installed timm: no warning


def test_version_mismatch_warns(clean_env, caplog):
    """A checkout newer than the installed timm: a warning whose advice keeps the install working (upgrade timm,
    or check out the installed version's tag), never installing timm from the checkout."""
    root = _checkout(clean_env / 'new', '99.1.0.dev0')
    with caplog.at_level(logging.INFO):
        assert find_timm_root(root) == root.resolve()
    (record,) = caplog.records
    assert record.levelname == 'WARNING'
    message = record.getMessage()
    assert 'timm 99.1.0.dev0, newer than the installed timm ' + installed_timm_version() in message
    assert 'pip install --upgrade timm' in message and f'checkout v{installed_timm_version()}' in message
    assert 'pip install -e' not in message and 'timm==' not in message


def test_older_checkout_is_fine(clean_env, caplog):
    """An older checkout (its scripts run with the newer installed timm) is described as such, not as a problem:
    no warning, and no advice to install its older timm, which would break timm_ssm."""
    root = _checkout(clean_env / 'old', '1.0.29.dev0')
    with caplog.at_level(logging.INFO):
        assert find_timm_root(root) == root.resolve()
    (record,) = caplog.records
    assert record.levelname == 'INFO'
    message = record.getMessage()
    assert 'timm 1.0.29.dev0, older than the installed timm' in message and 'that is fine' in message
    assert 'pip install' not in message and 'checkout v' not in message


def test_not_a_checkout(clean_env, monkeypatch):
    with pytest.raises(RuntimeError, match='--timm-root .* is not a pytorch-image-models checkout'):
        find_timm_root(clean_env)
    monkeypatch.setenv('TIMM_ROOT', str(clean_env / 'missing'))
    with pytest.raises(RuntimeError, match='TIMM_ROOT .*missing is not a pytorch-image-models checkout'):
        find_timm_root()


def test_download_once_into_cache(clean_env, archive_server):
    version = installed_timm_version()
    root = find_timm_root()
    assert root == clean_env / 'cache' / 'timm_ssm' / f'pytorch-image-models-{version}'
    assert (root / 'train.py').read_text() == 'print("train")\n'
    assert archive_server['requests'] == [f'/archive/refs/tags/v{version}.tar.gz']
    assert find_timm_root() == root
    assert len(archive_server['requests']) == 1  # cached: fetched once
    assert sorted(p.name for p in root.parent.iterdir()) == [root.name]  # no temporary leftovers


def test_download_of_wrong_archive_leaves_nothing(clean_env, archive_server):
    archive_server['body'] = _archive(installed_timm_version(), with_train=False)
    with pytest.raises(RuntimeError, match='holds no train.py'):
        find_timm_root()
    assert not list((clean_env / 'cache' / 'timm_ssm').iterdir())


def test_offline_message_says_how_to_fix(clean_env, monkeypatch):
    monkeypatch.setattr(timm_source, 'ARCHIVE_URL', 'http://127.0.0.1:9/v{version}.tar.gz')  # nothing listens
    version = installed_timm_version()
    with pytest.raises(RuntimeError) as e:
        find_timm_root()
    message = str(e.value)
    target = clean_env / 'cache' / 'timm_ssm' / f'pytorch-image-models-{version}'
    assert 'not part of the timm wheel' in message
    assert f'git clone --branch v{version} https://github.com/huggingface/pytorch-image-models.git' in message
    assert '--timm-root' in message and 'export TIMM_ROOT=' in message
    assert str(target / 'train.py') in message
    assert not target.exists()
    with pytest.raises(RuntimeError, match='not in the cache'):
        find_timm_root(download=False)
