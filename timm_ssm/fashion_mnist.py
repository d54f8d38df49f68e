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

`prepare_fashion_mnist_folder` also writes them as an image folder for timm's folder reader, with a validation
split held out of the training images, which the default run trains on (grey PNG files, read as RGB by timm):

    folder = prepare_fashion_mnist_folder()  # ROOT/fashion_mnist_images: train/, validation/, test/
    dataset = timm.data.create_dataset('', root=str(folder), split='validation')

From the shell (prints ROOT, or the image folder with --folder):

    python -m timm_ssm.fashion_mnist [ROOT] [--source DIR] [--no-download] [--folder]
"""
import argparse
import gzip
import json
import os
import shutil
import struct
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

from .runs import RunError, atomic_write, check_output_folder

__all__ = ['prepare_fashion_mnist', 'prepare_fashion_mnist_folder', 'default_root', 'DEBIAN_SOURCE', 'MEAN', 'STD',
           'NUM_CLASSES', 'CLASS_NAMES', 'FOLDER_NAME', 'NUM_VALIDATION']

DEBIAN_SOURCE = Path('/usr/share/datasets/fashion-mnist')
# mean and std of all training pixels (scaled to [0, 1]), for --mean / --std of timm's scripts
MEAN = (0.2860,)
STD = (0.3530,)
NUM_CLASSES = 10
NUM_TRAIN = 60000
NUM_TEST = 10000
# the class folders of prepare_fashion_mnist_folder, by label (timm's folder reader indexes them alphabetically)
CLASS_NAMES = ('t-shirt_top', 'trouser', 'pullover', 'dress', 'coat', 'sandal', 'shirt', 'sneaker', 'bag',
               'ankle_boot')
FOLDER_NAME = 'fashion_mnist_images'
NUM_VALIDATION = 5000  # training images held out as the validation split, the same number of each class
_FOLDER_VERSION = 1

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


def _read_idx(path: Path, header_size: int):
    import numpy as np
    with open(path, 'rb') as f:
        f.seek(header_size)
        return np.frombuffer(f.read(), dtype=np.uint8)


def _validation_indices(labels, num_validation: int, seed: int = 0) -> List[int]:
    """Indices of the training images held out for validation: a seeded draw of the same number of each class."""
    import numpy as np
    rng = np.random.RandomState(seed)
    per_class = num_validation // NUM_CLASSES
    held = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(NUM_CLASSES)]
    return sorted(int(i) for i in np.concatenate(held))


def prepare_fashion_mnist_folder(
        root: Optional[Union[str, Path]] = None,
        source: Optional[Union[str, Path]] = None,
        download: bool = True,
) -> Path:
    """Write Fashion-MNIST as an image folder with a validation split held out of the training images.

    `ROOT/fashion_mnist_images/{train,validation,test}/<class>/<file>_<index>.png`: 55,000 training images,
    5,000 validation images (500 of each class, a seeded draw from the 60,000 training images) and the 10,000 test
    images, as grey 28x28 PNG files; timm's folder reader reads them as RGB for a 3-channel model. The folder
    appears whole or not at all (it is written beside and renamed), and one that is complete is kept.

    Args:
        root: As for `prepare_fashion_mnist`, which puts the IDX files there first.
        source: As for `prepare_fashion_mnist`.
        download: As for `prepare_fashion_mnist`.

    Returns:
        The image folder, for `--data-dir` (with `--train-split train --val-split validation`).

    Raises:
        RuntimeError: As `prepare_fashion_mnist`, or the folder cannot be written.
    """
    from PIL import Image

    root = prepare_fashion_mnist(root, source=source, download=download)
    folder = root / FOLDER_NAME
    manifest = dict(version=_FOLDER_VERSION, train=NUM_TRAIN - NUM_VALIDATION, validation=NUM_VALIDATION,
                    test=NUM_TEST, classes=list(CLASS_NAMES), seed=0)
    try:
        with open(folder / 'manifest.json') as f:
            if json.load(f) == manifest:
                return folder
    except (OSError, ValueError):
        pass

    raw = _raw_folder(root)
    tmp = root / f'.{FOLDER_NAME}.{os.getpid()}.tmp'
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        for file, split_of in (('train', None), ('t10k', 'test')):
            images = _read_idx(raw / f'{file}-images-idx3-ubyte', 16).reshape(-1, 28, 28)
            labels = _read_idx(raw / f'{file}-labels-idx1-ubyte', 8)
            held = set(_validation_indices(labels, NUM_VALIDATION)) if split_of is None else set()
            for split in {'train', 'validation'} if split_of is None else {split_of}:
                for name in CLASS_NAMES:
                    (tmp / split / name).mkdir(parents=True)
            prefix = 'train' if split_of is None else 'test'
            for i, (image, label) in enumerate(zip(images, labels)):
                split = split_of or ('validation' if i in held else 'train')
                Image.fromarray(image, mode='L').save(
                    tmp / split / CLASS_NAMES[label] / f'{prefix}_{i:05d}.png', compress_level=1)
        with open(tmp / 'manifest.json', 'w') as f:
            json.dump(manifest, f, indent=1)
        if folder.exists():  # an incomplete or older one
            shutil.rmtree(folder)
        try:
            tmp.rename(folder)
        except OSError:
            if not (folder / 'manifest.json').is_file():  # else another process finished first
                raise
    except OSError as e:
        raise RuntimeError(f'Cannot write the Fashion-MNIST image folder {folder}: {e}. Give a writable ROOT folder '
                           f'with about 300 MB free.') from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog='python -m timm_ssm.fashion_mnist',
        description='Prepare Fashion-MNIST for timm (--dataset torch/fashion_mnist --data-dir ROOT) and print ROOT.')
    parser.add_argument('root', nargs='?', default=None, help=f'data folder (default: {default_root()})')
    parser.add_argument('--source', default=None, help=f'folder with the IDX files (default: {DEBIAN_SOURCE})')
    parser.add_argument('--no-download', action='store_true', help='never download with torchvision')
    parser.add_argument('--folder', action='store_true', help=f'also write the image folder ROOT/{FOLDER_NAME} '
                        f'(train/, validation/ held out of train, test/; what the default run trains on) and print it')
    args = parser.parse_args(argv)
    prepare = prepare_fashion_mnist_folder if args.folder else prepare_fashion_mnist
    try:
        root = prepare(args.root, source=args.source, download=not args.no_download)
    except RuntimeError as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(1)
    print(root)


if __name__ == '__main__':
    main()
