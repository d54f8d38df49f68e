""" Fashion-MNIST in the layout of timm's `torch/fashion_mnist` data set

timm reads Fashion-MNIST through torchvision (`--dataset torch/fashion_mnist --data-dir ROOT`, splits `train`
and `test`), which expects the four uncompressed IDX files in `ROOT/FashionMNIST/raw/`. `prepare_fashion_mnist`
puts them there from a local copy (the Debian package `dataset-fashion-mnist` installs one at
`/usr/share/datasets/fashion-mnist`) or, when there is none, from torchvision's download. Every file is checked
(IDX header, image and label counts, label range) and written whole or not at all.

From Python:

    from timm_ssm.fashion_mnist import prepare_fashion_mnist
    root = prepare_fashion_mnist()  # or prepare_fashion_mnist('/data/fm'); returns the ROOT for --data-dir
    dataset = timm.data.create_dataset('torch/fashion_mnist', root=str(root), split='test')

From the shell (prints ROOT):

    python -m timm_ssm.fashion_mnist [ROOT] [--source DIR] [--no-download]
"""
import argparse
import gzip
import os
import shutil
import struct
import sys
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

from .runs import RunError, atomic_write, check_output_folder

__all__ = ['prepare_fashion_mnist', 'default_root', 'DEBIAN_SOURCE', 'MEAN', 'STD', 'NUM_CLASSES']

DEBIAN_SOURCE = Path('/usr/share/datasets/fashion-mnist')
# mean and std of all training pixels (scaled to [0, 1]), for --mean / --std of timm's scripts
MEAN = (0.2860,)
STD = (0.3530,)
NUM_CLASSES = 10
NUM_TRAIN = 60000
NUM_TEST = 10000

# file name: (IDX magic number, number of items)
_FILES: Dict[str, Tuple[int, int]] = {
    'train-images-idx3-ubyte': (2051, NUM_TRAIN),
    'train-labels-idx1-ubyte': (2049, NUM_TRAIN),
    't10k-images-idx3-ubyte': (2051, NUM_TEST),
    't10k-labels-idx1-ubyte': (2049, NUM_TEST),
}


def default_root() -> Path:
    """Where the default run keeps the data set: `<timm-ssm cache>/data` (`~/.cache/timm_ssm/data`)."""
    from .timm_source import cache_dir
    return cache_dir() / 'data'


def _raw_folder(root: Path) -> Path:
    return root / 'FashionMNIST' / 'raw'


def _check_idx(path: Path, magic: int, count: int) -> Optional[str]:
    """What is wrong with an IDX file of Fashion-MNIST, None if nothing."""
    if not path.is_file():
        return f'{path} is missing'
    with open(path, 'rb') as f:
        header_size = 16 if magic == 2051 else 8  # images: magic, count, rows, columns; labels: magic, count
        header = f.read(header_size)
        if len(header) < header_size:
            return f'{path} is too short to be an IDX file'
        found_magic, found_count = struct.unpack('>II', header[:8])
        if found_magic != magic:
            return f'{path} has IDX magic number {found_magic}, expected {magic}'
        if found_count != count:
            return f'{path} holds {found_count} items, expected {count}'
        if magic == 2051:
            rows, cols = struct.unpack('>II', header[8:16])
            if (rows, cols) != (28, 28):
                return f'{path} holds {rows}x{cols} images, expected 28x28'
            expected_size = 16 + count * 28 * 28
        else:
            labels = f.read()
            if len(labels) == count and max(labels) >= NUM_CLASSES:
                return f'{path} holds label {max(labels)}, expected 0..{NUM_CLASSES - 1}'
            expected_size = 8 + count
    size = path.stat().st_size
    if size != expected_size:
        return f'{path} has {size} bytes, expected {expected_size}'
    return None


def _problems(raw: Path) -> Dict[str, str]:
    problems = {name: _check_idx(raw / name, *spec) for name, spec in _FILES.items()}
    return {name: p for name, p in problems.items() if p is not None}


def _find_source_file(source: Path, name: str) -> Optional[Path]:
    for candidate in (source / name, source / (name + '.gz'), source / 'FashionMNIST' / 'raw' / name):
        if candidate.is_file():
            return candidate
    return None


def _copy_checked(src: Path, dst: Path):
    """Copy (decompressing a .gz) src to dst, replacing dst only with a checked copy."""
    def _check(tmp: Path):
        problem = _check_idx(tmp, *_FILES[dst.name])
        if problem is not None:
            problem = problem.replace(str(tmp), 'its copy')
            raise RuntimeError(f'{src} is not the Fashion-MNIST file {dst.name}: {problem}.')

    try:
        with (gzip.open if src.suffix == '.gz' else open)(src, 'rb') as fin:
            atomic_write(dst, lambda fout: shutil.copyfileobj(fin, fout), check=_check)
    except (EOFError, gzip.BadGzipFile) as e:
        what = 'truncated' if isinstance(e, EOFError) else 'not a gzip file'
        raise RuntimeError(
            f'{src} is {what} ({e}): copy the original Fashion-MNIST file {src.name} again, or pass another '
            f'--source folder.') from e


def _download(root: Path):
    from torchvision.datasets import FashionMNIST
    for train in (True, False):
        FashionMNIST(str(root), train=train, download=True)


def prepare_fashion_mnist(
        root: Optional[Union[str, Path]] = None,
        source: Optional[Union[str, Path]] = None,
        download: bool = True,
) -> Path:
    """Put Fashion-MNIST where timm's `torch/fashion_mnist` reader finds it and return the root folder.

    Files already in place and intact are kept. Missing ones are copied from `source` (the Debian package's
    folder by default; `.gz` or uncompressed IDX files, flat or in `FashionMNIST/raw/`), or, when `source` lacks
    them, downloaded by torchvision.

    Args:
        root: Folder to pass as `--data-dir`; `default_root()` if None.
        source: Folder with the original IDX files, `/usr/share/datasets/fashion-mnist` if None.
        download: Let torchvision download the files when `source` does not have them.

    Returns:
        The root folder; `ROOT/FashionMNIST/raw/` holds the four IDX files.

    Raises:
        RuntimeError: The files are neither in `source` nor downloadable, or a file is not Fashion-MNIST's.
    """
    root = Path(root).expanduser() if root is not None else default_root()
    source = Path(source).expanduser() if source is not None else DEBIAN_SOURCE
    raw = _raw_folder(root)
    missing = _problems(raw)
    if not missing:
        return root

    created = [p for p in (raw, *raw.parents) if not p.exists()]  # removed again if nothing lands in them
    try:
        _prepare(root, source, download, raw, missing)
    except OSError as e:
        raise RuntimeError(f'Cannot write Fashion-MNIST into {raw}: {e}. Give a writable ROOT folder.') from e
    finally:
        for folder in created:
            try:
                folder.rmdir()  # only when empty
            except OSError:
                pass
    return root


def _prepare(root: Path, source: Path, download: bool, raw: Path, missing: Dict[str, str]):
    try:
        check_output_folder(root, 'ROOT' if root != default_root() else 'The data cache folder')
    except RunError as e:
        raise RuntimeError(str(e)) from None
    raw.mkdir(parents=True, exist_ok=True)
    sources = {name: _find_source_file(source, name) for name in missing}
    if all(sources.values()):
        for name, src in sources.items():
            _copy_checked(src, raw / name)
    elif download:
        for name in missing:
            (raw / name).unlink(missing_ok=True)  # torchvision keeps a file that exists, even a broken one
        try:
            _download(root)
        except Exception as e:
            raise RuntimeError(
                f'Fashion-MNIST is not in {source} and torchvision could not download it ({type(e).__name__}: {e}). '
                f'Install the Debian package (sudo apt-get install dataset-fashion-mnist, it puts the files in '
                f'{DEBIAN_SOURCE}), or copy train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, '
                f't10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz into a folder and pass it as source '
                f'(--source DIR).') from e
    else:
        absent = ', '.join(sorted(n for n, s in sources.items() if s is None))
        raise RuntimeError(
            f'Fashion-MNIST is not in {source} (missing {absent}, or the same with .gz) and downloading is off. '
            f'Install the Debian package dataset-fashion-mnist, pass a folder holding the four IDX files as '
            f'source, or allow the download.')

    missing = _problems(raw)
    if missing:
        raise RuntimeError('Fashion-MNIST could not be prepared: ' + '; '.join(missing.values()) + '.')


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog='python -m timm_ssm.fashion_mnist',
        description='Prepare Fashion-MNIST for timm (--dataset torch/fashion_mnist --data-dir ROOT) and print ROOT.')
    parser.add_argument('root', nargs='?', default=None, help=f'data folder (default: {default_root()})')
    parser.add_argument('--source', default=None, help=f'folder with the IDX files (default: {DEBIAN_SOURCE})')
    parser.add_argument('--no-download', action='store_true', help='never download with torchvision')
    args = parser.parse_args(argv)
    try:
        root = prepare_fashion_mnist(args.root, source=args.source, download=not args.no_download)
    except RuntimeError as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(1)
    print(root)


if __name__ == '__main__':
    main()
