""" Locate timm's own scripts (train.py, validate.py, ...)

timm's `train.py`, `validate.py`, `inference.py` and `benchmark.py` live in its source repository
(pytorch-image-models), not in the timm wheel. `find_timm_root` returns a folder that holds them, in this order:
an explicit folder, the `TIMM_ROOT` environment variable, or a copy of the source at the tag of the installed
timm version, downloaded once from GitHub into the user cache folder (`$XDG_CACHE_HOME/timm_ssm` or
`~/.cache/timm_ssm`).
"""
import argparse
import importlib.metadata
import importlib.util
import logging
import os
import re
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import yaml

__all__ = ['find_timm_root', 'train_parser', 'parse_train_args', 'installed_timm_version', 'source_version', 'cache_dir', 'source_cache_path']

_logger = logging.getLogger(__name__)

REPO_URL = 'https://github.com/huggingface/pytorch-image-models'
ARCHIVE_URL = REPO_URL + '/archive/refs/tags/v{version}.tar.gz'
SCRIPTS = ('train.py', 'validate.py', 'inference.py', 'benchmark.py')


def installed_timm_version() -> str:
    """Version of the installed timm package."""
    try:
        return importlib.metadata.version('timm')
    except importlib.metadata.PackageNotFoundError:
        import timm
        return timm.__version__


def source_version(root: Union[str, Path]) -> Optional[str]:
    """timm version of a pytorch-image-models checkout (from its `timm/version.py`), None if it has none."""
    version_file = Path(root) / 'timm' / 'version.py'
    if not version_file.is_file():
        return None
    match = re.search(r'''__version__\s*=\s*['"]([^'"]+)['"]''', version_file.read_text())
    return match.group(1) if match else None


def cache_dir() -> Path:
    """timm-ssm's user cache folder: `$XDG_CACHE_HOME/timm_ssm`, else `~/.cache/timm_ssm`."""
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return Path(base) / 'timm_ssm'


def source_cache_path(version: Optional[str] = None) -> Path:
    """Folder of the cached timm source for a timm version (the installed one if None)."""
    return cache_dir() / f'pytorch-image-models-{version or installed_timm_version()}'


def _how_to_fix(version: str, target: Path) -> str:
    return (
        f'Fix it with one of:\n'
        f'  * point at a pytorch-image-models checkout (its version should match the installed timm {version}):\n'
        f'      git clone --branch v{version} {REPO_URL}.git /path/to/pytorch-image-models\n'
        f'    then pass --timm-root /path/to/pytorch-image-models to python -m timm_ssm.train_timm\n'
        f'    (./train_timm.sh in a checkout of timm-ssm), or\n'
        f'      export TIMM_ROOT=/path/to/pytorch-image-models\n'
        f'  * or, on a machine with network, download {ARCHIVE_URL.format(version=version)}\n'
        f'    and unpack it so that {target / "train.py"} exists:\n'
        f'      mkdir -p {target} && tar -xzf v{version}.tar.gz --strip-components=1 -C {target}'
    )


def _check_root(root: Path, origin: str) -> Path:
    root = root.expanduser().resolve()
    if not (root / 'train.py').is_file():
        raise RuntimeError(
            f'{origin} {root} is not a pytorch-image-models checkout: {root / "train.py"} does not exist. '
            f'Point it at the folder of the repository ({REPO_URL}) that holds train.py and validate.py.')
    return root


def _warn_on_mismatch(root: Path):
    """Say what a checkout of another timm version than the installed one means, with advice that keeps the
    install working (never a timm below the installed one, which timm-ssm may need)."""
    from packaging.version import InvalidVersion, Version
    installed = installed_timm_version()
    found = source_version(root)
    if found is None or found == installed:
        return
    try:
        older = Version(found) < Version(installed)
    except InvalidVersion:
        older = False
    if older:
        _logger.info(
            f'timm\'s scripts in {root} are from timm {found}, older than the installed timm {installed}: that is '
            f'fine, a newer timm runs older scripts (their options are a subset of today\'s). Update the checkout '
            f'(git -C {root} pull) for the newest options.')
        return
    _logger.warning(
        f'timm\'s scripts in {root} are from timm {found}, newer than the installed timm {installed}: a script may '
        f'use options or functions that this timm lacks. Upgrade timm (pip install --upgrade timm), or use a '
        f'checkout at the installed version\'s tag (git -C {root} fetch --tags && git -C {root} checkout '
        f'v{installed}).')


def _download_source(version: str, target: Path, timeout: float = 60.) -> Path:
    """Download the source archive of timm `version` and unpack it into `target`, which appears whole or not at all.
    """
    url = ARCHIVE_URL.format(version=version)
    target.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.write(f'Fetching timm\'s scripts (the source of timm {version}) from {url} into {target} (once).\n')
    with tempfile.TemporaryDirectory(prefix=target.name + '.', dir=target.parent) as tmp:
        archive = Path(tmp) / 'source.tar.gz'
        with urllib.request.urlopen(url, timeout=timeout) as response, open(archive, 'wb') as f:
            shutil.copyfileobj(response, f)
        unpacked = Path(tmp) / 'unpacked'
        with tarfile.open(archive) as tar:
            tops = {Path(m.name).parts[0] for m in tar.getmembers() if Path(m.name).parts}
            if len(tops) != 1:
                raise RuntimeError(f'{url} is not a source archive of one folder (found {sorted(tops)[:5]}).')
            if hasattr(tarfile, 'data_filter'):
                tar.extractall(unpacked, filter='data')
            else:
                for member in tar.getmembers():
                    if member.name.startswith('/') or '..' in Path(member.name).parts:
                        raise RuntimeError(f'{url} holds an unsafe path: {member.name}')
                tar.extractall(unpacked)
        source = unpacked / tops.pop()
        if not (source / 'train.py').is_file():
            raise RuntimeError(f'{url} holds no train.py at its top folder: it is not pytorch-image-models.')
        try:
            source.rename(target)
        except OSError:
            if not (target / 'train.py').is_file():  # else another process finished the same download first
                raise
    return target


def find_timm_root(timm_root: Optional[Union[str, Path]] = None, download: bool = True) -> Path:
    """Folder of timm's source that holds `train.py`, `validate.py`, `inference.py` and `benchmark.py`.

    Looks at `timm_root`, then `$TIMM_ROOT`, then the cached source of the installed timm version, which is
    downloaded once from GitHub when missing and `download` is set. A checkout of another timm version than the
    installed one gets a warning.

    Args:
        timm_root: A pytorch-image-models checkout, used when given.
        download: Download the source into the cache when no other copy is found.

    Raises:
        RuntimeError: Nothing found, with the commands that fix it.
    """
    if timm_root:
        root = _check_root(Path(timm_root), '--timm-root')
        _warn_on_mismatch(root)
        return root
    if os.environ.get('TIMM_ROOT'):
        root = _check_root(Path(os.environ['TIMM_ROOT']), 'TIMM_ROOT')
        _warn_on_mismatch(root)
        return root

    version = installed_timm_version()
    target = source_cache_path(version)
    if (target / 'train.py').is_file():
        return target
    if not download:
        raise RuntimeError(f'timm\'s scripts are not in the cache ({target}). ' + _how_to_fix(version, target))
    try:
        return _download_source(version, target)
    except Exception as e:
        reason = f'{type(e).__name__}: {e}'
        if '.dev' in version or '+' in version:
            reason += f' (timm {version} is a development version: GitHub has no tag v{version})'
        raise RuntimeError(
            f'timm\'s train.py is not part of the timm wheel, no --timm-root or TIMM_ROOT was given, and downloading '
            f'the source of timm {version} from GitHub failed ({reason}). ' + _how_to_fix(version, target)) from e


def train_parser() -> Tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """timm's `train.py` argument parsers (config parser, main parser), from TIMM_ROOT or the cached source."""
    path = os.path.join(find_timm_root(), 'train.py')
    spec = importlib.util.spec_from_file_location('timm_train_script', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines the parsers; main() runs only as __main__
    module.parser.prog = 'train.py'
    return module.config_parser, module.parser


def parse_train_args(argv: Sequence[str]) -> argparse.Namespace:
    """train.py's arguments as train.py parses them (`-c` config file first); ValueError for a bad one."""
    config_parser, main_parser = train_parser()
    def error(message):
        raise ValueError(f'train.py does not take these arguments: {message}')
    config_parser.error = main_parser.error = error  # one line that says what is wrong, not train.py's usage
    config, remaining = config_parser.parse_known_args(list(argv))
    if config.config:
        with open(config.config) as f:
            main_parser.set_defaults(**yaml.safe_load(f))
    return main_parser.parse_args(remaining)
