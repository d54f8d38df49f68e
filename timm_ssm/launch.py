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
"""
import argparse
import builtins
import importlib.machinery
import os
import sys
import tokenize
import types
from typing import List, Optional

import timm_ssm  # noqa: F401  registers the *_ssm models before the script creates any

from .timm_source import find_timm_root

__all__ = ['main', 'resolve_script', 'run_script']

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


def main(argv: Optional[List[str]] = None) -> None:
    args = parser.parse_args(argv)
    try:
        path = resolve_script(args.script)
    except (FileNotFoundError, RuntimeError) as e:
        parser.exit(2, f'{parser.prog}: error: {e}\n')
    run_script(path, args.args)


if __name__ == '__main__':
    main()
