""" Run one of timm's scripts with the Split-and-Share models registered

    python -m timm_ssm.launch SCRIPT.py [ARGS...]
    torchrun --nproc_per_node=8 -m timm_ssm.launch train.py [ARGS...]

Imports `timm_ssm` (which registers `<arch>_ssm`), then runs the unchanged script in this process as
`python SCRIPT.py ARGS...` would (`runpy`). A bare name that is not a file here (`train.py`) is taken from timm's
source (`timm_ssm.timm_source.find_timm_root`). For `train.py` with `--experiment NAME`, rank 0 locks the run's
folder while it runs: a second run into the same folder stops at once instead of overwriting the first's checkpoints.
"""
import argparse
import contextlib
import fcntl
import os
import runpy
import sys
from pathlib import Path
from typing import Iterator, List, Optional, Union

import timm_ssm  # noqa: F401  registers the *_ssm models before the script creates any

from .timm_source import find_timm_root, parse_train_args

__all__ = ['main', 'run_script', 'run_train', 'run_folder_lock', 'RunFolderBusy']


class RunFolderBusy(RuntimeError):
    """Another live run holds the lock of a run folder."""


@contextlib.contextmanager
def run_folder_lock(folder: Union[str, Path]) -> Iterator[None]:
    """Hold an exclusive lock on a run folder (made if missing); the system drops it when the process ends anyhow.

    Raises:
        RunFolderBusy: Another run holds it.
    """
    Path(folder).mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunFolderBusy(f'another train.py run is writing {folder} now: give this run another --experiment '
                                f'NAME (or --output DIR), or wait until that run ends.') from None
        except OSError:
            pass  # a file system without locks: run as train.py itself does
        yield
    finally:
        os.close(fd)


def run_script(path: str, args: List[str]) -> None:
    """Run a script in this process as `python path args` does; its exceptions and `SystemExit` propagate."""
    saved = sys.argv, sys.path[:]
    sys.argv = [path, *args]
    if sys.path and sys.path[0] in ('', os.getcwd()):
        sys.path[0] = os.path.dirname(os.path.realpath(path))  # `python -m` put the current folder here
    else:
        sys.path.insert(0, os.path.dirname(os.path.realpath(path)))
    try:
        runpy.run_path(path, run_name='__main__')
    finally:
        sys.argv, sys.path[:] = saved


def run_train(train_py: str, args: List[str]) -> None:
    """Run timm's train.py in this process, its run folder locked on rank 0 (`--output`/`--experiment`).

    Raises:
        RunFolderBusy: Another run is writing the folder.
    """
    folder = None
    if os.environ.get('RANK', '0') == '0':
        try:
            ns = parse_train_args(args, train_py)
            folder = ns.experiment and Path(ns.output or './output/train') / ns.experiment
        except ValueError:
            pass  # train.py says what is wrong itself
    with run_folder_lock(folder) if folder else contextlib.nullcontext():
        run_script(train_py, args)


parser = argparse.ArgumentParser(
    prog='python -m timm_ssm.launch', description='Runs timm\'s SCRIPT.py unchanged with timm-ssm\'s <arch>_ssm models '
    'registered, also under torchrun: torchrun --nproc_per_node=N -m timm_ssm.launch train.py ARGS...')
parser.add_argument('script', metavar='SCRIPT.py', help='a path, or the name of a script of timm\'s source '
                    '(TIMM_ROOT, else the cached copy)')
parser.add_argument('args', nargs=argparse.REMAINDER, metavar='ARGS', help='the arguments of the script')


def main(argv: Optional[List[str]] = None) -> None:
    args = parser.parse_args(argv)
    path = args.script
    try:
        if not os.path.isfile(path):
            if os.sep in path or not path.endswith('.py'):
                raise FileNotFoundError(f'{path}: no such script.')
            path = str(find_timm_root() / path)
            if not os.path.isfile(path):
                raise FileNotFoundError(f'{args.script} is neither a file here nor a script of timm\'s source {path}.')
    except (FileNotFoundError, RuntimeError) as e:
        parser.exit(2, f'{parser.prog}: error: {e}\n')
    if os.path.basename(path) != 'train.py':
        return run_script(path, args.args)
    try:
        run_train(path, args.args)
    except RunFolderBusy as e:
        parser.exit(2, f'{parser.prog}: error: {e}\n')


if __name__ == '__main__':
    main()
