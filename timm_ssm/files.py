""" File safety for every tool: outputs are checked before a pass and written whole or not at all

`check_output` refuses an output path before any work: a folder, a FIFO or device (never opened), a file that exists
without `--overwrite`, an input of the run, an unwritable folder. `atomic_write` writes through a temporary file
beside the target, so a failure leaves the earlier file as it was. `RunError` is the error of a bad input to a tool:
its message says what is wrong and how to fix it, and the tools print it without a traceback.
"""
import errno
import os
import stat
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

__all__ = ['RunError', 'atomic_write', 'check_output', 'check_output_folder', 'write_error']


class RunError(ValueError):
    """A run, an option or a file that a tool cannot use; the message says what is wrong and how to fix it."""


def atomic_write(path: Union[str, Path], write: Callable, mode: str = 'wb', check: Optional[Callable] = None):
    """Write a file through a temporary one beside it, so that a failure leaves any existing file as it was.

    Args:
        path: The file.
        write: Called with the open temporary file.
        mode: 'wb' or 'w' (UTF-8 text).
        check: Called with the temporary file's path before it replaces `path`; raises to keep it out.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f'.{path.name}.{os.getpid()}.tmp'
    try:
        with open(tmp, mode, **({} if 'b' in mode else dict(encoding='utf-8', newline=''))) as f:
            write(f)
        if check is not None:
            check(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_output(
        path: Union[str, Path],
        option: str,
        overwrite: bool = False,
        inputs: Sequence[Union[str, Path]] = (),
) -> Path:
    """The output file of `option`, or a RunError that says why it cannot be written; the file is never opened.

    Args:
        path: The output file.
        option: The option that named it, for the message.
        overwrite: Replace an existing regular file.
        inputs: Files the tool reads or must keep (checkpoints, args.yaml): never an output, even with `overwrite`.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise RunError(f'{option} {path} is a folder: give a file name, such as {path / "results.json"}.')
    if path.exists():
        if not stat.S_ISREG(path.stat().st_mode):
            raise RunError(f'{option} {path} is not a regular file (a FIFO, socket or device): give a file path.')
        if any(Path(p).exists() and os.path.samefile(path, p) for p in inputs):
            raise RunError(f'{option} {path} is an input of this run, which would be lost: give another path.')
        if not overwrite:
            other = option if option.startswith('--') else 'path'
            raise RunError(f'{option} {path} already exists: give another {other}, or --overwrite to replace it.')
    check_output_folder(path.parent, option)
    return path


def check_output_folder(folder: Union[str, Path], option: str) -> Path:
    """A folder that can be made or written to, or a RunError that says why not (a file in its place or above it, a
    read-only folder)."""
    folder = Path(folder).expanduser()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise RunError(f'{option} {folder} cannot be used as a folder: {existing} is a file; give a folder.')
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunError(f'{option} {folder} cannot be written: {existing} is not writable; give a folder of yours.')
    return folder


def write_error(path: Union[str, Path], error: OSError, kept: str = 'the results are printed above') -> str:
    """The message of a failed write (a full disk): why, that nothing half-written is left, and what is kept."""
    reason = 'the disk is full' if error.errno in (errno.ENOSPC, errno.EDQUOT) else \
        'the file would exceed the size limit' if error.errno == errno.EFBIG else 'the write failed'
    return (f'Cannot write {path}: {reason} ({error.strerror or error}). No partial file is left and an earlier file '
            f'there is unchanged; {kept}. Free some space (or give another path) and run again.')
