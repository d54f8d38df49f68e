""" Run one of timm's scripts with the Split-and-Share models registered

    python -m timm_ssm.launch SCRIPT.py [ARGS...]
    torchrun --nproc_per_node=8 -m timm_ssm.launch train.py [ARGS...]

Runs the unchanged script in this process as `python SCRIPT.py ARGS...` would, after `import timm_ssm` registered
`<arch>_ssm`. A bare name that is not a file here (`train.py`) is taken from timm's source (`TIMM_ROOT`, else the
cached copy). For `train.py --experiment NAME` rank 0 locks the run's folder: a second run into it stops at once
instead of overwriting the first's checkpoints; the system drops the lock when the process ends, however it ends.
"""
import argparse
import contextlib
import fcntl
import os
import runpy
import sys
from pathlib import Path
from typing import List, Optional

import timm_ssm  # noqa: F401  registers the *_ssm models before the script creates any

from .timm_source import find_timm_root, parse_train_args

__all__ = ['main', 'run_script', 'run_train', 'run_folder_lock', 'RunFolderBusy']


class RunFolderBusy(RuntimeError):
    """Another live run holds the lock of a run folder."""


@contextlib.contextmanager
def run_folder_lock(folder: Path):
    """Hold an exclusive lock on a run folder (made if missing), or raise RunFolderBusy."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunFolderBusy(f'another train.py run is writing {folder} now: give this run another --experiment NAME '
                            f'(or --output DIR), or wait until that run ends.') from None
    except OSError:
        pass  # a file system without locks: run as train.py itself does
    try:
        yield
    finally:
        os.close(fd)


def run_script(path: str, args: List[str]) -> None:
    """Run a script in this process as `python path args` does; its exceptions and `SystemExit` propagate."""
    saved = sys.argv, sys.path[:]
    sys.argv = [path, *args]
    sys.path.insert(0, os.path.dirname(os.path.realpath(path)))  # where `python path` puts it
    try:
        runpy.run_path(path, run_name='__main__')
    finally:
        sys.argv, sys.path[:] = saved


def run_train(train_py: str, args: List[str]) -> None:
    """Run timm's train.py in this process, its run folder locked on rank 0 (or RunFolderBusy)."""
    try:
        ns = parse_train_args(args, train_py)
    except ValueError:  # train.py says what is wrong itself
        return run_script(train_py, args)
    if not ns.experiment or os.environ.get('RANK', '0') != '0':
        return run_script(train_py, args)
    with run_folder_lock(Path(ns.output or 'output/train') / ns.experiment):
        run_script(train_py, args)


parser = argparse.ArgumentParser(
    prog='python -m timm_ssm.launch', description='Runs timm\'s SCRIPT.py unchanged with timm-ssm\'s <arch>_ssm models '
    'registered, also under torchrun: torchrun --nproc_per_node=N -m timm_ssm.launch train.py ARGS...')
parser.add_argument('script', metavar='SCRIPT.py', help='a path, or a script of timm\'s source (TIMM_ROOT, else the '
                    'cached copy)')
parser.add_argument('args', nargs=argparse.REMAINDER, metavar='ARGS', help='the arguments of the script')


def _script(name: str) -> str:
    """The file of SCRIPT.py: a file here, else a script of timm's source."""
    if os.path.isfile(name):
        return name
    path = find_timm_root() / name if os.sep not in name and name.endswith('.py') else None
    if path is None or not path.is_file():
        raise FileNotFoundError(f'{name} is neither a file here nor a script of timm\'s source.')
    return str(path)


def main(argv: Optional[List[str]] = None) -> None:
    args = parser.parse_args(argv)
    try:
        path = _script(args.script)
    except (FileNotFoundError, RuntimeError) as e:
        parser.exit(2, f'{parser.prog}: error: {e}\n')
    try:
        (run_train if os.path.basename(path) == 'train.py' else run_script)(path, args.args)
    except RunFolderBusy as e:
        parser.exit(2, f'{parser.prog}: error: {e}\n')


if __name__ == '__main__':
    main()
