""" Fashion-MNIST for timm, through torchvision

    python -m timm_ssm.fashion_mnist [ROOT] [--source DIR] [--no-download] [--folder]

`prepare_fashion_mnist` puts the four IDX files where torchvision's `FashionMNIST` (and so timm's
`--dataset torch/fashion_mnist --data-dir ROOT`) reads them, `ROOT/FashionMNIST/raw/`: from a local copy (the
Debian package `dataset-fashion-mnist` installs one in /usr/share/datasets/fashion-mnist, gzipped), else from
torchvision's download. `prepare_fashion_mnist_folder` writes them as the image folder the default run trains on,
`ROOT/fashion_mnist_images/{train,validation,test}/<class>/*.png` (grey PNGs, read as RGB by timm), with a
validation split held out of the training images. Every file and folder is written beside its place and renamed
in, so a run that reads them never sees one half-written or deleted.
"""
import argparse
import gzip
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Optional, Union

import numpy as np

from .files import atomic_write

__all__ = ['prepare_fashion_mnist', 'prepare_fashion_mnist_folder', 'default_root', 'DEBIAN_SOURCE', 'MEAN', 'STD',
           'NUM_CLASSES', 'CLASS_NAMES', 'FOLDER_NAME']

DEBIAN_SOURCE = Path('/usr/share/datasets/fashion-mnist')
MEAN = (0.2860,)  # of all training pixels scaled to [0, 1], for --mean / --std of timm's scripts
STD = (0.3530,)
NUM_CLASSES = 10
# the class folders of the image folder, by label (timm's folder reader indexes them alphabetically)
CLASS_NAMES = ('t-shirt_top', 'trouser', 'pullover', 'dress', 'coat', 'sandal', 'shirt', 'sneaker', 'bag',
               'ankle_boot')
FOLDER_NAME = 'fashion_mnist_images'
FILES = ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte', 't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')
_VERSION = 1  # of the image folder's layout and validation draw


def default_root() -> Path:
    """Where the default run keeps the data: `<timm-ssm cache>/data` (`~/.cache/timm_ssm/data`)."""
    from .timm_source import cache_dir
    return cache_dir() / 'data'


def _how_to_fix(root: Optional[Union[str, Path]]) -> str:
    return ('give a ROOT folder you can write' if root is not None else
            'set XDG_CACHE_HOME to a folder you can write (the data go to $XDG_CACHE_HOME/timm_ssm/data)')


def prepare_fashion_mnist(
        root: Optional[Union[str, Path]] = None,
        source: Optional[Union[str, Path]] = None,
        download: bool = True,
) -> Path:
    """Put the four Fashion-MNIST files where torchvision's `FashionMNIST(ROOT)` reads them and return ROOT.

    Args:
        root: The folder for `--data-dir`; `default_root()` if None.
        source: A folder with the files (gzipped or not, flat or in `FashionMNIST/raw/`); the Debian package's if None.
        download: Let torchvision download what `source` lacks.

    Raises:
        RuntimeError: The files are neither in `source` nor downloadable, or ROOT cannot be written.
    """
    from torchvision.datasets import FashionMNIST
    given, root = root, Path(root or default_root()).expanduser()
    raw = root / 'FashionMNIST' / 'raw'
    source = Path(source or DEBIAN_SOURCE).expanduser()
    try:
        missing = [name for name in FILES if not (raw / name).is_file()]
        found = {name: next((p for folder in (source, source / 'FashionMNIST' / 'raw', raw)
                             for p in (folder / name, folder / f'{name}.gz') if p.is_file()), None) for name in missing}
        if missing and None in found.values():
            if not download:
                raise RuntimeError(f'Fashion-MNIST is not in {source} and downloading is off: install the Debian '
                                   f'package (sudo apt-get install dataset-fashion-mnist), or allow the download.')
            raw.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=raw) as tmp:  # beside, then moved in
                try:
                    FashionMNIST(tmp, download=True)
                except Exception as e:
                    raise RuntimeError(
                        f'Fashion-MNIST is not in {source} and torchvision could not download it ({e}). Install '
                        f'the Debian package (sudo apt-get install dataset-fashion-mnist), or connect to the '
                        f'network, and run again.') from None
                for name in missing:
                    os.replace(Path(tmp) / 'FashionMNIST' / 'raw' / name, raw / name)
        for name, path in found.items():
            if path is not None:
                with (gzip.open if path.suffix == '.gz' else open)(path, 'rb') as f:
                    try:
                        atomic_write(raw / name, lambda out: shutil.copyfileobj(f, out))
                    except (EOFError, gzip.BadGzipFile) as e:
                        raise RuntimeError(f'{path} is damaged ({e}): copy it again (sudo apt-get install --reinstall '
                                           f'dataset-fashion-mnist for the Debian package\'s).') from None
    except OSError as e:
        raise RuntimeError(f'Cannot put Fashion-MNIST into {raw} ({e}): {_how_to_fix(given)}.') from None
    return root


def prepare_fashion_mnist_folder(
        root: Optional[Union[str, Path]] = None,
        source: Optional[Union[str, Path]] = None,
        download: bool = True,
) -> Path:
    """Write Fashion-MNIST as an image folder with a validation split held out of the training images.

    `ROOT/fashion_mnist_images/`: `train/` (55,000 images), `validation/` (the other 5,000: a seeded draw of 1/12 of
    each class's training images, 500 a class), `test/` (10,000), one folder per class name. A folder there already
    is kept as it is; a new one is written beside it and renamed in whole.

    Args:
        root: As for `prepare_fashion_mnist`, which puts the files there first.
        source: As for `prepare_fashion_mnist`.
        download: As for `prepare_fashion_mnist`.

    Returns:
        The image folder, for `--data-dir` (with `--train-split train --val-split validation`).

    Raises:
        RuntimeError: As `prepare_fashion_mnist`, or the files are not Fashion-MNIST's.
    """
    from PIL import Image
    from torchvision.datasets import FashionMNIST
    folder = Path(root or default_root()).expanduser() / FOLDER_NAME
    if folder.exists():
        return _checked(folder)
    data_root = prepare_fashion_mnist(root, source, download)
    tmp = data_root / f'.{FOLDER_NAME}.{os.getpid()}.tmp'
    try:
        manifest = dict(version=_VERSION, classes=list(CLASS_NAMES), seed=0)
        for train in (True, False):
            try:
                dataset = FashionMNIST(str(data_root), train=train)
                images, labels = dataset.data.numpy(), dataset.targets.numpy()
                if len(images) != len(labels) or labels.max() >= NUM_CLASSES:
                    raise ValueError(f'{len(images)} images, {len(labels)} labels up to {labels.max()}')
            except (RuntimeError, ValueError, TypeError) as e:
                raise RuntimeError(f'{data_root / "FashionMNIST" / "raw"} holds files that are not Fashion-MNIST\'s '
                                   f'({e}): delete them (rm -r {data_root / "FashionMNIST"}) and run again.') from None
            rng = np.random.RandomState(0)
            held = {int(i) for c in range(NUM_CLASSES) for i in
                    rng.permutation(np.flatnonzero(labels == c))[:(labels == c).sum() // 12]} if train else set()
            splits = ['validation' if i in held else 'train' if train else 'test' for i in range(len(labels))]
            for split in set(splits):
                manifest[split] = splits.count(split)
                for name in CLASS_NAMES:
                    (tmp / split / name).mkdir(parents=True, exist_ok=True)
            for i, (image, label, split) in enumerate(zip(images, labels, splits)):
                Image.fromarray(image).save(
                    tmp / split / CLASS_NAMES[label] / f'{"train" if train else "test"}_{i:05d}.png', compress_level=1)
        (tmp / 'manifest.json').write_text(json.dumps(manifest, indent=1))
        try:
            tmp.rename(folder)
        except OSError:
            if not folder.exists():
                raise  # else another process renamed its folder in first: that one is kept
    except OSError as e:
        raise RuntimeError(f'Cannot write the Fashion-MNIST image folder {folder} ({e}): {_how_to_fix(root)}, with '
                           f'about 300 MB free.') from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _checked(folder)


def _checked(folder: Path) -> Path:
    """The image folder, if it is one this module wrote (a live folder is never deleted or rewritten here)."""
    try:
        if json.loads((folder / 'manifest.json').read_text())['version'] == _VERSION:
            return folder
    except (OSError, ValueError, KeyError):
        pass
    raise RuntimeError(f'{folder} is not a Fashion-MNIST image folder of this version of timm-ssm: when no run uses '
                       f'it, delete it (rm -r {folder}) and run again.')


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog='python -m timm_ssm.fashion_mnist',
        description='Prepare Fashion-MNIST for timm (--dataset torch/fashion_mnist --data-dir ROOT) and print ROOT.')
    parser.add_argument('root', nargs='?', default=None, help=f'data folder (default: {default_root()})')
    parser.add_argument('--source', default=None, help=f'folder with the four files (default: {DEBIAN_SOURCE})')
    parser.add_argument('--no-download', action='store_true', help='never download with torchvision')
    parser.add_argument('--folder', action='store_true', help=f'also write the image folder ROOT/{FOLDER_NAME} '
                        '(train/, validation/ held out of train, test/: what the default run trains on) and print it')
    args = parser.parse_args(argv)
    prepare = prepare_fashion_mnist_folder if args.folder else prepare_fashion_mnist
    try:
        print(prepare(args.root, source=args.source, download=not args.no_download))
    except RuntimeError as e:
        parser.exit(1, f'{parser.prog}: error: {e}\n')


if __name__ == '__main__':
    main()
