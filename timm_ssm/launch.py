""" Run one of timm's scripts with the Split-and-Share models registered

    python -m timm_ssm.launch SCRIPT.py [ARGS...]
    torchrun --nproc_per_node=8 -m timm_ssm.launch train.py [ARGS...]

timm's `train.py`, `validate.py`, `inference.py` and `benchmark.py` know only the models registered when they
call `timm.create_model`. This launcher imports `timm_ssm` (which registers `<arch>_ssm` for every timm
classifier), then runs the unmodified script as `python SCRIPT.py ARGS...` would: the script is the `__main__`
module, `sys.argv` is `[SCRIPT.py, ARGS...]`, `sys.path[0]` is the script's folder, and the exit code is the
script's (`sys.exit(n)` exits n, an uncaught exception exits 1 with its traceback).

SCRIPT.py is a path; a bare name that is not a file here (`train.py`) is taken from timm's source found by
`timm_ssm.timm_source.find_timm_root` (`TIMM_ROOT`, else the cached copy for the installed timm version).

For `train.py` with `--experiment NAME`, the run's folder (`--output`/NAME) is locked while the run lives (on the
process of rank 0): a second run into the same folder stops at once with an error instead of overwriting the
first's checkpoints. The operating system releases the lock when the process ends, however it ends. Without
`--experiment`, train.py names the folder after the model, the image size and the second it starts.
"""
import argparse
import builtins
import contextlib
import fcntl
import importlib.machinery
import io
import os
import runpy
import sys
import tokenize
import types
from pathlib import Path
from typing import List, Optional

import yaml

import timm_ssm  # noqa: F401  registers the *_ssm models before the script creates any

from .timm_source import find_timm_root

__all__ = ['main', 'resolve_script', 'run_script', 'lock_run_folder', 'train_output_folder', 'RunFolderBusy']

_locks = []  # open folders whose locks this process holds until it ends

parser = argparse.ArgumentParser(
    prog='python -m timm_ssm.launch', usage='python -m timm_ssm.launch SCRIPT.py [ARGS...]',
    description='Runs timm\'s SCRIPT.py (train.py, validate.py, inference.py, benchmark.py, ...) unchanged, with '
                'timm-ssm\'s <arch>_ssm models registered. Works under torchrun: torchrun --nproc_per_node=N -m '
                'timm_ssm.launch train.py ARGS...')
parser.add_argument('script', metavar='SCRIPT.py', help='a path, or a bare name taken from TIMM_ROOT (a '
                    'pytorch-image-models checkout) or the cached copy of timm\'s source when not a file here')
parser.add_argument('args', nargs=argparse.REMAINDER, metavar='ARGS', help='the arguments of the script')


def resolve_script(script: str) -> str:
    """Path of the script to run: `script` itself when it is a file, else the file of that name in timm's source.

    Args:
        script: A path, or the bare name of a script at the root of pytorch-image-models (`train.py`).
    """
    if os.path.isfile(script):
        return script
    if os.sep in script or (os.altsep and os.altsep in script) or not script.endswith('.py'):
        raise FileNotFoundError(f'{script}: no such script.')
    path = os.path.join(find_timm_root(), script)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{script} is neither a file here nor a script of timm\'s source at {path}.')
    return path


def run_script(path: str, args: List[str]) -> None:
    """Run a Python file as the `__main__` module with `sys.argv = [path, *args]`, as `python path args` does.

    Exceptions, including the script's `SystemExit`, propagate to the caller.

    Args:
        path: The script file.
        args: Its command-line arguments.
    """
    abs_path = os.path.abspath(path)
    with tokenize.open(abs_path) as f:  # honours a PEP 263 encoding line, as the interpreter does
        source = f.read()
    code = compile(source, abs_path, 'exec', dont_inherit=True)

    main_module = types.ModuleType('__main__')
    main_module.__dict__.update(
        __file__=abs_path,
        __builtins__=builtins,
        __cached__=None,
        __loader__=importlib.machinery.SourceFileLoader('__main__', abs_path),
        __package__=None,
        __spec__=None,
    )
    sys.modules['__main__'] = main_module
    sys.argv = [path, *args]
    script_dir = os.path.dirname(os.path.realpath(abs_path))
    if sys.path and sys.path[0] in ('', os.getcwd()):
        sys.path[0] = script_dir  # `python -m` put the current folder here, `python SCRIPT.py` puts its folder
    else:
        sys.path.insert(0, script_dir)
    exec(code, main_module.__dict__)


class RunFolderBusy(RuntimeError):
    """Another live process holds the lock of a run folder."""


def train_output_folder(train_py: str, args: List[str]) -> Optional[Path]:
    """The folder train.py writes with these arguments when they name it (`--experiment`, from the command line or
    a `-c` config, under `--output` or train.py's `./output/train`); None when train.py names it itself or the
    arguments cannot be read (train.py then says why itself)."""
    try:
        module = runpy.run_path(train_py, run_name='timm_ssm_train_py')
        config_parser, train_parser = module['config_parser'], module['parser']
        with contextlib.redirect_stderr(io.StringIO()):
            config_args, remaining = config_parser.parse_known_args(args)
            if config_args.config:
                with open(config_args.config) as f:
                    train_parser.set_defaults(**yaml.safe_load(f))
            namespace, _ = train_parser.parse_known_args(remaining)
    except (Exception, SystemExit):  # not timm's train.py, or arguments argparse refuses
        return None
    experiment = getattr(namespace, 'experiment', None)
    if not experiment:
        return None
    return Path(getattr(namespace, 'output', None) or './output/train') / experiment


def lock_run_folder(folder: Path) -> None:
    """Hold an exclusive lock on a run folder (made if missing) until this process ends.

    Raises:
        RunFolderBusy: Another process holds it.
    """
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunFolderBusy(
            f'another train.py run is writing {folder} now (it holds the folder\'s lock): two runs in one folder '
            f'overwrite each other\'s checkpoints. Give this run another --experiment NAME (or --output DIR), or '
            f'wait until that run ends.') from None
    except OSError:  # a file system without locks: run unprotected, as train.py itself does
        os.close(fd)
        return
    _locks.append(fd)


def main(argv: Optional[List[str]] = None) -> None:
    args = parser.parse_args(argv)
    try:
        path = resolve_script(args.script)
    except (FileNotFoundError, RuntimeError) as e:
        parser.exit(2, f'{parser.prog}: error: {e}\n')
    if os.path.basename(path) == 'train.py' and os.environ.get('RANK', '0') == '0':
        folder = train_output_folder(path, args.args)
        if folder is not None:
            try:
                lock_run_folder(folder)
            except RunFolderBusy as e:
                parser.exit(2, f'{parser.prog}: error: {e}\n')
            except OSError as e:
                parser.exit(2, f'{parser.prog}: error: cannot make the run folder {folder}: {e}\n')
    run_script(path, args.args)


if __name__ == '__main__':
    main()
