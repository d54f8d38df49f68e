""" Run one of timm's scripts with the Split-and-Share models registered

    python -m timm_ssm.launch SCRIPT.py [ARGS...]
    torchrun --nproc_per_node=8 -m timm_ssm.launch train.py [ARGS...]

Runs the unchanged script (a file, else one of timm's source) in this process as `python SCRIPT.py ARGS...` would;
importing this module imports `timm_ssm`, which registers `<arch>_ssm`. Rank 0 of `train.py --experiment NAME` locks
the run folder: a second run into it stops at once instead of overwriting the first's checkpoints.
"""
import argparse
import contextlib
import fcntl
import os
import runpy
import sys
from pathlib import Path
from typing import List, Optional

from .timm_source import find_timm_root, parse_train_args

__all__ = ['main', 'run_script', 'run_train', 'run_folder_lock', 'RunFolderBusy']


class RunFolderBusy(RuntimeError):
    """Another live run holds the lock of a run folder."""


@contextlib.contextmanager
def run_folder_lock(folder: Path):
    """Hold an exclusive lock on a run folder (made if missing), or raise RunFolderBusy; the system drops it when the
    process ends, however it ends."""
    folder.mkdir(parents=True, exist_ok=True)
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
    locked = ns.experiment and os.environ.get('RANK', '0') == '0'
    with run_folder_lock(Path(ns.output or 'output/train') / ns.experiment) if locked else contextlib.nullcontext():
        run_script(train_py, args)


parser = argparse.ArgumentParser(
    prog='python -m timm_ssm.launch', description='Runs timm\'s SCRIPT.py unchanged with timm-ssm\'s <arch>_ssm models '
    'registered, also under torchrun: torchrun --nproc_per_node=N -m timm_ssm.launch train.py ARGS...')
parser.add_argument('script', metavar='SCRIPT.py', help='a path, or a script of timm\'s source (TIMM_ROOT, else the '
                    'cached copy)')
parser.add_argument('args', nargs=argparse.REMAINDER, metavar='ARGS', help='the arguments of the script')


def main(argv: Optional[List[str]] = None) -> None:
    args = parser.parse_args(argv)
    path = args.script
    try:
        if not os.path.isfile(path) and os.sep not in path and path.endswith('.py'):
            path = str(find_timm_root() / path)  # a script of timm's source
        if not os.path.isfile(path):
            raise RuntimeError(f'{args.script} is neither a file here nor a script of timm\'s source.')
    except RuntimeError as e:
        parser.exit(2, f'{parser.prog}: error: {e}\n')
    try:
        (run_train if os.path.basename(path) == 'train.py' else run_script)(path, args.args)
    except RunFolderBusy as e:
        parser.exit(2, f'{parser.prog}: error: {e}\n')


if __name__ == '__main__':
    main()
