""" timm's own scripts (train.py, validate.py, ...) and train.py's own parser

timm's scripts live in its source repository, not in the timm wheel: `find_timm_root` finds them (an explicit folder,
`TIMM_ROOT`, else the source of the installed timm version, downloaded once into the cache). `parse_train_args`, the
one reader of train.py's arguments, reads them with train.py's own parsers.
"""
import argparse
import logging
import os
import runpy
import tarfile
import tempfile
import urllib.request
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import timm
import yaml
from packaging.version import Version

__all__ = ['find_timm_root', 'train_parser', 'parse_train_args', 'cache_dir']

_logger = logging.getLogger(__name__)

REPO_URL = 'https://github.com/huggingface/pytorch-image-models'
ARCHIVE_URL = REPO_URL + '/archive/refs/tags/v{version}.tar.gz'


def cache_dir() -> Path:
    """timm-ssm's user cache folder: `$XDG_CACHE_HOME/timm_ssm`, else `~/.cache/timm_ssm`."""
    return Path(os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache') / 'timm_ssm'


def _checkout(root: Union[str, Path], origin: str) -> Path:
    """A pytorch-image-models checkout, with a word when its timm version is not the installed one."""
    root = Path(root).expanduser().resolve()
    if not (root / 'train.py').is_file():
        raise RuntimeError(f'{origin} {root} is not a pytorch-image-models checkout: it has no train.py. Point it at '
                           f'the folder of {REPO_URL} that holds train.py.')
    found = runpy.run_path(str(root / 'timm' / 'version.py'))['__version__'] if (root / 'timm').is_dir() else None
    if found and Version(found) < Version(timm.__version__):
        _logger.info(f'timm\'s scripts in {root} are from timm {found}, older than the installed timm '
                     f'{timm.__version__}: that is fine, a newer timm runs older scripts.')
    elif found and found != timm.__version__:
        _logger.warning(f'timm\'s scripts in {root} are from timm {found}, newer than the installed timm '
                        f'{timm.__version__}, and may use what it lacks: pip install --upgrade timm, or '
                        f'git -C {root} fetch --tags && git -C {root} checkout v{timm.__version__}.')
    return root


def find_timm_root(timm_root: Optional[Union[str, Path]] = None, download: bool = True) -> Path:
    """The folder of timm's source that holds `train.py`, `validate.py`, `inference.py` and `benchmark.py`, or a
    RuntimeError with the commands that fix it.

    Args:
        timm_root: A pytorch-image-models checkout; else `$TIMM_ROOT`, else the installed timm version's source in the
            cache, downloaded once if `download`.
    """
    if timm_root or os.environ.get('TIMM_ROOT'):
        return _checkout(timm_root or os.environ['TIMM_ROOT'], '--timm-root' if timm_root else 'TIMM_ROOT')
    version = timm.__version__
    target = cache_dir() / f'pytorch-image-models-{version}'
    fix = (f'Fix it (where GitHub can be reached): git clone --branch v{version} {REPO_URL}.git ~/pytorch-image-models '
           f'&& export TIMM_ROOT=~/pytorch-image-models')
    if (target / 'train.py').is_file():
        return target
    if not download:
        raise RuntimeError(f'timm\'s scripts are not in the cache ({target}). {fix}')
    url = ARCHIVE_URL.format(version=version)
    print(f'Fetching timm\'s scripts from {url} into {target} (once).', flush=True)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=target.name + '.', dir=target.parent) as tmp:  # beside, renamed in
            with urllib.request.urlopen(url, timeout=60) as response:
                with tarfile.open(fileobj=response, mode='r|gz') as tar:
                    tar.extractall(tmp, filter='data')  # refuses absolute paths, '..' and links out of the folder
            if not (Path(tmp) / target.name / 'train.py').is_file():  # GitHub's top folder is named so
                raise RuntimeError(f'{url} holds no train.py in {target.name}/: it is not pytorch-image-models')
            try:
                os.rename(Path(tmp) / target.name, target)
            except OSError:
                if not (target / 'train.py').is_file():  # else another process finished the same download first
                    raise
    except Exception as e:
        raise RuntimeError(f'timm\'s train.py is not part of the timm wheel, TIMM_ROOT is not set, and the download '
                           f'of timm {version}\'s source failed ({type(e).__name__}: {e}). {fix}') from e
    return target


def train_parser(train_py: Optional[Union[str, Path]] = None) -> Tuple[argparse.ArgumentParser, ...]:
    """train.py's own parsers (the `-c` config parser, the main parser), from `train_py` or timm's source."""
    module = runpy.run_path(str(train_py or find_timm_root() / 'train.py'), run_name='timm_train_parser')
    module['parser'].prog = 'train.py'
    return module['config_parser'], module['parser']


def parse_train_args(argv: Sequence[str], train_py: Optional[Union[str, Path]] = None,
                     **defaults) -> argparse.Namespace:
    """train.py's arguments as train.py parses them (`-c FILE` sets defaults, the command line goes over them), or a
    ValueError that says which argument train.py refuses or why it cannot read the config file.

    Args:
        train_py: The script, timm's source's if None.
        **defaults: Defaults under the config file's (`device=None` tells a default from a given value).
    """
    config_parser, parser = train_parser(train_py)

    def error(message):
        raise ValueError(f'train.py does not take these arguments: {message}.')
    config_parser.error = parser.error = error
    config, remaining = config_parser.parse_known_args(list(argv))
    parser.set_defaults(**defaults)
    if config.config:
        try:
            cfg = yaml.safe_load(Path(config.config).read_text())
        except (OSError, yaml.YAMLError) as e:
            reason = str(e).splitlines()[0] if isinstance(e, yaml.YAMLError) else e.strerror
            raise ValueError(f'-c {config.config} is not a config file train.py can read ({reason}): give a YAML '
                             f'file of train.py options, without !!python tags.') from None
        if not isinstance(cfg, dict):
            raise ValueError(f'-c {config.config} holds no train.py options (option: value lines).')
        parser.set_defaults(**cfg)
    return parser.parse_args(remaining)
