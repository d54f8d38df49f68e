""" Fashion-MNIST for timm, through torchvision

    python -m timm_ssm.fashion_mnist [ROOT] [--source DIR] [--no-download] [--folder]

`prepare_fashion_mnist` puts the four files where torchvision's `FashionMNIST` (and timm's `--dataset
torch/fashion_mnist --data-dir ROOT`) reads them, from a local copy (the Debian package `dataset-fashion-mnist`'s) or
torchvision's download; `prepare_fashion_mnist_folder` writes the image folder the default run trains on. Both write
beside the final place and rename in: a run never sees a file or folder half-written or deleted.
"""
import argparse
import gzip
import json
import os
import shutil
import tempfile
from contextlib import suppress
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
from PIL import Image
from torchvision.datasets import FashionMNIST

from .files import atomic_write
from .timm_source import cache_dir

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
FILES = tuple(name.removesuffix('.gz') for name, _ in FashionMNIST.resources)
_VERSION = 1  # of the image folder's layout and validation draw
PathLike = Optional[Union[str, Path]]


def default_root() -> Path:
    """Where the default run keeps the data: `<timm-ssm cache>/data` (`~/.cache/timm_ssm/data`)."""
    return cache_dir() / 'data'


def _writable(root) -> str:
    return ('give a ROOT folder you can write' if root else
            'set XDG_CACHE_HOME to a folder you can write (the data go to $XDG_CACHE_HOME/timm_ssm/data)')


def prepare_fashion_mnist(root: PathLike = None, source: PathLike = None, download: bool = True) -> Path:
    """Put the four Fashion-MNIST files where torchvision's `FashionMNIST(ROOT)` reads them and return ROOT.

    Args:
        root: The folder, `default_root()` if None; the files go to `ROOT/FashionMNIST/raw/`.
        source: A folder with the files (gzipped or not, flat or in torchvision's layout); the Debian package's if None.
        download: Let torchvision download them when `source` lacks one.
    """
    raw = Path(root or default_root()).expanduser() / 'FashionMNIST' / 'raw'
    source = Path(source or DEBIAN_SOURCE).expanduser()
    found = {name: next((p for p in (source / name, source / f'{name}.gz', source / 'FashionMNIST' / 'raw' / name,
                                     raw / f'{name}.gz') if p.is_file()), None)
             for name in FILES if not (raw / name).is_file()}
    try:
        if None in found.values():
            if not download:
                raise RuntimeError(f'Fashion-MNIST is not in {source} and downloading is off: install the Debian '
                                   f'package (sudo apt-get install dataset-fashion-mnist), or allow the download.')
            raw.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=raw) as tmp:  # beside, then moved in
                try:
                    FashionMNIST(tmp, download=True)
                except Exception as e:
                    raise RuntimeError(f'Fashion-MNIST is not in {source} and torchvision could not download it ({e}). '
                                       f'Install the Debian package (sudo apt-get install dataset-fashion-mnist), or '
                                       f'connect to the network, and run again.') from None
                for name in found:
                    os.replace(Path(tmp) / 'FashionMNIST' / 'raw' / name, raw / name)
            found = {}
        for name, path in found.items():
            with (gzip.open if path.suffix == '.gz' else open)(path, 'rb') as f:
                try:
                    atomic_write(raw / name, lambda out: shutil.copyfileobj(f, out))
                except (EOFError, gzip.BadGzipFile) as e:
                    raise RuntimeError(f'{path} is damaged ({e}): copy it again (sudo apt-get install --reinstall '
                                       f'dataset-fashion-mnist for the Debian package\'s).') from None
    except OSError as e:
        raise RuntimeError(f'Cannot put Fashion-MNIST into {raw} ({e}): {_writable(root)}.') from None
    return raw.parent.parent


def _read(root: Path, train: bool) -> Tuple[np.ndarray, np.ndarray]:
    """Images and labels as torchvision reads them; a RuntimeError if they are not Fashion-MNIST's."""
    try:
        dataset = FashionMNIST(str(root), train=train)
        images, labels = dataset.data.numpy(), dataset.targets.numpy()
        if len(images) != len(labels) or labels.max() >= NUM_CLASSES:
            raise ValueError(f'{len(images)} images, {len(labels)} labels up to {labels.max()}')
    except (RuntimeError, ValueError, TypeError) as e:
        raise RuntimeError(f'{root / "FashionMNIST" / "raw"} holds files that are not Fashion-MNIST\'s ({e}): delete '
                           f'them (rm -r {root / "FashionMNIST"}) and run again.') from None
    return images, labels


def prepare_fashion_mnist_folder(root: PathLike = None, source: PathLike = None, download: bool = True) -> Path:
    """Write Fashion-MNIST as the image folder `ROOT/fashion_mnist_images/` and return it: `train/` (55,000 images),
    `validation/` (the other 5,000: a seeded draw of 500 a class), `test/` (10,000), one folder per class name, grey
    PNGs (read as RGB by timm). One there already is kept. The arguments are `prepare_fashion_mnist`'s."""
    folder = Path(root or default_root()).expanduser() / FOLDER_NAME
    if not folder.exists():
        data_root = prepare_fashion_mnist(root, source, download)
        tmp = data_root / f'.{FOLDER_NAME}.{os.getpid()}.tmp'
        manifest = dict(version=_VERSION, classes=list(CLASS_NAMES), seed=0)
        try:
            for prefix, train in (('train', True), ('test', False)):
                images, labels = _read(data_root, train)
                rng = np.random.RandomState(0)
                held = {int(i) for c in range(NUM_CLASSES) for i in
                        rng.permutation(np.flatnonzero(labels == c))[:(labels == c).sum() // 12]} if train else ()
                for i, (image, label) in enumerate(zip(images, labels)):
                    split = 'validation' if i in held else prefix
                    manifest[split] = manifest.get(split, 0) + 1
                    (tmp / split / CLASS_NAMES[label]).mkdir(parents=True, exist_ok=True)
                    Image.fromarray(image).save(tmp / split / CLASS_NAMES[label] / f'{prefix}_{i:05d}.png',
                                                compress_level=1)
            (tmp / 'manifest.json').write_text(json.dumps(manifest, indent=1))
            try:
                tmp.rename(folder)
            except OSError:
                if not folder.exists():
                    raise  # else another process renamed its folder in first: that one is kept
        except OSError as e:
            raise RuntimeError(f'Cannot write the Fashion-MNIST image folder {folder} ({e}): {_writable(root)}, with '
                               f'about 300 MB free.') from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    with suppress(OSError, ValueError, KeyError):  # a folder there is never deleted or rewritten: a run may read it
        if json.loads((folder / 'manifest.json').read_text())['version'] == _VERSION:
            return folder
    raise RuntimeError(f'{folder} is not a Fashion-MNIST image folder of this version of timm-ssm: when no run uses '
                       f'it, delete it (rm -r {folder}) and run again.')


parser = argparse.ArgumentParser(
    prog='python -m timm_ssm.fashion_mnist',
    description='Prepare Fashion-MNIST for timm (--dataset torch/fashion_mnist --data-dir ROOT) and print ROOT.')
parser.add_argument('root', nargs='?', help=f'data folder (default: {default_root()})')
parser.add_argument('--source', help=f'folder with the four files (default: {DEBIAN_SOURCE})')
parser.add_argument('--no-download', action='store_true', help='never download with torchvision')
parser.add_argument('--folder', action='store_true', help=f'also write the image folder ROOT/{FOLDER_NAME} '
                    '(train/, validation/ held out of train, test/: what the default run trains on) and print it')


def main(argv=None):
    args = parser.parse_args(argv)
    prepare = prepare_fashion_mnist_folder if args.folder else prepare_fashion_mnist
    try:
        print(prepare(args.root, source=args.source, download=not args.no_download))
    except RuntimeError as e:
        parser.exit(1, f'{parser.prog}: error: {e}\n')


if __name__ == '__main__':
    main()
