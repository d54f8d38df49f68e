"""Locating timm's scripts (--timm-root, TIMM_ROOT, the source cached once from GitHub) and train.py's own parser."""
import http.server
import io
import logging
import os
import tarfile
import threading
from pathlib import Path

import pytest
import timm

from timm_ssm import timm_source
from timm_ssm.timm_source import find_timm_root, parse_train_args

VERSION = timm.__version__


def _checkout(path: Path, version: str = VERSION) -> Path:
    (path / 'timm').mkdir(parents=True)
    (path / 'timm' / 'version.py').write_text(f"__version__ = '{version}'\n")
    (path / 'train.py').write_text('print("train")\n')
    return path


def _archive(with_train: bool = True) -> bytes:
    """A source archive laid out as GitHub's /archive/refs/tags/vX.tar.gz: one top folder."""
    files = {'timm/version.py': f"__version__ = '{VERSION}'\n", 'validate.py': ''}
    files.update({'train.py': 'print("train")\n'} if with_train else {})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w:gz') as tar:
        for name, text in files.items():
            info = tarfile.TarInfo(f'pytorch-image-models-{VERSION}/{name}')
            info.size = len(text)
            tar.addfile(info, io.BytesIO(text.encode()))
    return buf.getvalue()


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    monkeypatch.delenv('TIMM_ROOT', raising=False)
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    return tmp_path


@pytest.fixture
def archive_server(monkeypatch):
    """A local HTTP server standing in for GitHub's archive download; records the requested paths."""
    served = {'body': _archive(), 'requests': []}

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
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(timm_source, 'ARCHIVE_URL', f'http://127.0.0.1:{server.server_port}/v{{version}}.tar.gz')
    yield served
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize('version, level, words', [
    (VERSION, None, ''),
    ('99.1.0.dev0', 'WARNING', f'newer than the installed timm {VERSION}, and may use what it lacks: pip install '
                               f'--upgrade timm, or git -C'),
    ('1.0.29.dev0', 'INFO', 'older than the installed timm'),  # never advice to install an older timm
])
def test_explicit_root_then_env(clean_env, monkeypatch, caplog, version, level, words):
    explicit, env_root = _checkout(clean_env / 'explicit', version), _checkout(clean_env / 'env')
    monkeypatch.setenv('TIMM_ROOT', str(env_root))
    with caplog.at_level(logging.INFO):
        assert find_timm_root(explicit) == explicit.resolve()
        assert find_timm_root() == env_root.resolve()
    assert [r.levelname for r in caplog.records] == ([level] if level else [])
    assert words in caplog.text and 'timm==' not in caplog.text
    monkeypatch.setenv('TIMM_ROOT', str(clean_env / 'missing'))
    with pytest.raises(RuntimeError, match='TIMM_ROOT .*missing is not a pytorch-image-models checkout'):
        find_timm_root()


def test_download_once_into_cache(clean_env, archive_server):
    root = find_timm_root()
    assert root == clean_env / 'cache' / 'timm_ssm' / f'pytorch-image-models-{VERSION}'
    assert (root / 'train.py').read_text() == 'print("train")\n'
    assert find_timm_root() == root and archive_server['requests'] == [f'/v{VERSION}.tar.gz']  # fetched once
    assert os.listdir(root.parent) == [root.name]  # no temporary leftovers


def test_wrong_archive_or_offline(clean_env, archive_server, monkeypatch):
    archive_server['body'] = _archive(with_train=False)
    with pytest.raises(RuntimeError, match='holds no train.py'):
        find_timm_root()
    assert not os.listdir(clean_env / 'cache' / 'timm_ssm')
    monkeypatch.setattr(timm_source, 'ARCHIVE_URL', 'http://127.0.0.1:9/v{version}.tar.gz')  # nothing listens
    with pytest.raises(RuntimeError) as e:
        find_timm_root()
    assert 'not part of the timm wheel' in str(e.value) and 'export TIMM_ROOT=' in str(e.value)
    assert f'git clone --branch v{VERSION} https://github.com/huggingface/pytorch-image-models.git' in str(e.value)
    with pytest.raises(RuntimeError, match='not in the cache'):
        find_timm_root(download=False)


@pytest.mark.skipif(not os.environ.get('TIMM_ROOT'), reason='needs timm\'s train.py: set TIMM_ROOT')
def test_parse_train_args_as_train_py(tmp_path):
    """A -c file sets defaults under the command line, and under it the caller's; what train.py refuses is a
    ValueError that says why."""
    (tmp_path / 'c.yaml').write_text('model: resnet18_ssm\nepochs: 3\n')
    ns = parse_train_args(['-c', str(tmp_path / 'c.yaml'), '--epochs', '1'], device=None, model='x')
    assert (ns.model, ns.epochs, ns.device, ns.lr_base) == ('resnet18_ssm', 1, None, 0.1)
    for argv, message in ((['--epochs', 'x'], "train.py does not take these arguments: argument --epochs: invalid "
                                              "int value: 'x'"),  # more in test_train_timm.py's test_errors
                          (['-c', str(tmp_path / 'no.yaml')], 'is not a config file train.py can read .*No such file')):
        with pytest.raises(ValueError, match=message):
            parse_train_args(argv)
