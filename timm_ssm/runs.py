""" One road from a timm train.py run to the model it trained

A run is a train.py output folder, one checkpoint (`.pth.tar`, `.pth`, `.safetensors`), or a model name
(`hf-hub:ORG/NAME`, `local-dir:DIR`, a registered name with pretrained weights). `load_run` reads it,
`create_run_model` builds the model as train.py did (`create_model` with the run's model name, num_classes,
in_chans, global pool, BatchNorm eps and momentum and model kwargs, then timm's `load_checkpoint`, EMA weights on
request) and `run_data_config` gives the data config train.py evaluated it with (`resolve_data_config` on the run's
arguments). What a command line sets goes over the run's. `timm_ssm.evaluate`, `timm_ssm.cam`, `timm_ssm.hub` and
the default run of `train_timm.sh` all take this road.

The checks the tools share live here too: `create_run_dataset` (timm's `create_dataset` between `check_data_dir`,
which finds missing splits, stray images, symlink loops and empty folders, and `check_classes`, which compares the
data's classes with the model's), `check_outputs` (no output over an input or a foreign file), `atomic_write` and
`write_error` (a failed write leaves nothing half-written), `read_checkpoint` (any reader failure is a RunError),
`resolve_device`, and the parser types (`number_in`, `ModelKwargs`) of the options' ranges.
"""
import argparse
import errno
import hashlib
import os
import pickle
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import yaml

from timm.data import create_dataset, get_img_extensions, resolve_data_config
from timm.data.readers.class_map import load_class_map
from timm.data.transforms import str_to_pil_interp
from timm.models import create_model, get_model_input_config, is_model, load_checkpoint, parse_model_name
from timm.utils import ParseKwargs, natural_key

from .head import SplitShareHead

__all__ = [
    'Run', 'RunError', 'load_run', 'create_run_model', 'run_data_config', 'read_checkpoint', 'atomic_write',
    'weights_digest', 'class_names', 'split_head', 'run_parser', 'models_from_args', 'data_config_from_args',
    'check_data_dir', 'check_output_file', 'check_output_folder', 'check_outputs', 'run_input_files',
    'create_run_dataset', 'check_classes', 'training_classes', 'resolve_device', 'write_error', 'number_in',
    'ModelKwargs', 'CHECKPOINT_NAMES', 'DATA_ARGS',
]

CHECKPOINT_NAMES = ('model_best.pth.tar', 'last.pth.tar')  # looked for in a run folder, in this order
DATA_ARGS = ('input_size', 'img_size', 'mean', 'std', 'crop_pct', 'crop_mode', 'interpolation')


class RunError(ValueError):
    """A run that cannot be read or rebuilt; the message says what is wrong and how to fix it."""


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
            write(f)  # open() gives the permissions the umask allows, as for any other file
        if check is not None:
            check(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


_INTERPOLATIONS = ('nearest', 'bilinear', 'bicubic', 'box', 'hamming', 'lanczos', 'random')

# create_dataset's names that are no image folder (the rest go to timm's folder or tar reader)
_READER_PREFIXES = ('torch/', 'hfds/', 'hfids/', 'tfds/', 'wds/')
# the split folders timm's create_dataset looks for, in its order, after the split's own name
_SPLIT_SYNONYMS = (('train', 'training'), ('val', 'valid', 'validation', 'eval', 'evaluation'))
_SPLIT_NAMES = {n for names in _SPLIT_SYNONYMS for n in names} | {'test', 'testing'}


def _is_folder_data(dataset: str) -> bool:
    return not (dataset or '').lower().startswith(_READER_PREFIXES)


def _split_folder(root: Path, split: str) -> Optional[Path]:
    """The folder timm's `create_dataset` reads for `split` (its own name, else a synonym), None when it would fall
    back to `root` itself."""
    name = split.split('[')[0]
    for synonyms in ((name,),) + tuple(s for s in _SPLIT_SYNONYMS if name in s):
        for n in synonyms:
            if (root / n).exists():
                return root / n
    return None


def _scan_images(root: Path, option: str) -> int:
    """The images under `root` as timm's folder reader walks it (following links); a RunError on a link that leads
    back to a folder above it, which the reader would follow until the path is too long."""
    extensions = set(get_img_extensions(as_set=True))
    count = 0
    stack = [(root, (os.path.realpath(root),))]
    while stack:
        folder, above = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as e:
            raise RunError(f'{option}: cannot read {folder} ({e.strerror}): make it readable, or leave it out of the '
                           f'data folder.') from e
        for entry in entries:
            if entry.is_dir():  # follows links, as the reader does
                real = os.path.realpath(entry.path)
                if real in above:
                    raise RunError(
                        f'{option}: {entry.path} is a symlink loop: it leads back to {real}, which holds it, so the '
                        f'image reader would find the same images again and again under ever longer paths (and '
                        f'invent classes). Remove the link or point it outside the data folder.')
                stack.append((Path(entry.path), above + (real,)))
            elif os.path.splitext(entry.name)[1].lower() in extensions:
                count += 1
    return count


def check_data_dir(
        path: Optional[Union[str, Path]],
        option: str = '--data-dir',
        dataset: str = '',
        download: bool = False,
        split: Optional[str] = None,
) -> Optional[Path]:
    """Check a data folder before a pass, with a RunError that says what is wrong and how to fix it.

    The folder must exist. An image folder (no `torch/`, `hfds/`, `tfds/`, `wds/` data set) must hold images and no
    symlink loop; with `split`, the split folder that timm's `create_dataset` reads must exist when the folder has
    split folders at all (timm would read the whole folder instead).

    Args:
        path: The folder, None or '' when not given.
        option: The option that gave it, for the message.
        dataset: The data set name (`torch/NAME` with `download` may create its folder).
        download: Whether the data set may be downloaded into the folder.
        split: The split to be read, None to check the whole folder.

    Returns:
        The folder of images that timm's folder reader reads, None for other data sets.
    """
    dataset = dataset or ''
    if download and '/' in dataset and path:
        return None
    if not path:
        if dataset.lower().startswith(('hfds/', 'hfids/', 'tfds/', 'wds/')):  # these readers find their data or say so
            return None
        what = f'the folder that holds (or, with --dataset-download, receives) {dataset}' if dataset else \
            'an image folder with class sub-folders, or the root folder of --dataset NAME'
        raise RunError(f'No data folder: give {option} DIR ({what}).')
    path = Path(path).expanduser()
    if not path.is_dir():
        if path.exists():
            if _is_folder_data(dataset) and path.name.endswith('.tar') and tarfile.is_tarfile(path):
                return None  # timm's tar reader
            raise RunError(f'{option} {path} is a file, not a folder: give the folder that holds the data set.')
        parent = next((p for p in path.absolute().parents if p.is_dir()), None)
        raise RunError(f'{option} {path} does not exist (the nearest existing folder is {parent}): check the path, '
                       f'or prepare the data there first.')
    if not _is_folder_data(dataset):
        return None
    folder = path
    if split:
        folder = _split_folder(path, split)
        if folder is None:
            splits = sorted(p.name for p in path.iterdir() if p.is_dir() and p.name.lower() in _SPLIT_NAMES)
            if splits:
                raise RunError(f'--split {split}: {path} has no {split} folder, it has {", ".join(splits)}: give '
                               f'--split {splits[-1] if len(splits) > 1 else splits[0]} (or the split you mean).')
            folder = path  # no split folders: the folder's own class folders, as timm reads them
    count = _scan_images(folder, option)
    extensions = set(get_img_extensions(as_set=True))
    loose = sorted(e.path for e in os.scandir(folder)
                   if e.is_file() and os.path.splitext(e.name)[1].lower() in extensions)
    if loose and count > len(loose):
        raise _loose_images(loose, folder)
    if count == 0:
        raise RunError(f'{option} {folder} holds no images ({", ".join(get_img_extensions())}), in class folders or '
                       f'elsewhere: give the folder of the data set, or prepare the data there first.')
    return folder


def _loose_images(loose: Sequence[str], where) -> RunError:
    return RunError(f'{len(loose)} image(s) lie beside the class folders of {where} (such as {loose[0]}): timm\'s '
                    f'folder reader would make them a class of their own and shift every label. Move them into their '
                    f'class folder, or out of the data folder.')


def training_classes(run: 'Run', model: Optional[nn.Module] = None) -> Optional[List[str]]:
    """The class names of the run's training data in index order, when they can be known here: train.py's
    `--class-map` file, else the class folders of its training split (`data_dir`/`train_split`, as timm's folder
    reader sorts them), else the model's pretrained cfg `label_names`; None otherwise."""
    args = run.args if run is not None else {}
    if args.get('class_map') and os.path.isfile(str(args['class_map'])):
        try:
            mapping = load_class_map(str(args['class_map']))
            return sorted(mapping, key=mapping.get)
        except Exception:  # noqa  unreadable: fall through to the folders
            pass
    data_dir = args.get('data_dir') or args.get('data')
    if data_dir and _is_folder_data(args.get('dataset') or '') and Path(str(data_dir)).is_dir():
        root = Path(str(data_dir))
        folder = _split_folder(root, str(args.get('train_split') or 'train'))
        if folder is None and not any(p.is_dir() and p.name.lower() in _SPLIT_NAMES for p in root.iterdir()):
            folder = root  # no split folders: train.py read the folder whole, as timm does
        names = sorted((p.name for p in folder.iterdir() if p.is_dir()), key=natural_key) if folder else []
        if names:
            return names
    names = getattr(model, 'pretrained_cfg', {}).get('label_names') if model is not None else None
    if names and len(names) == getattr(model, 'num_classes', None):
        return [str(n) for n in names]
    return None


def _listed(names: Sequence[str], at_most: int = 12) -> str:
    shown = ', '.join(names[:at_most])
    return f'[{shown}{", ..." if len(names) > at_most else ""}]'


def check_classes(dataset, model: nn.Module, run: Optional['Run'] = None, class_map: str = '', where: str = '',
                  labelled: bool = True) -> Optional[List[str]]:
    """Check that a timm data set's classes are the model's, before a pass, with a RunError that gives both lists.

    The data's classes must be the run's training classes (`training_classes`), or, when those are unknown, as many
    as the model's; a `class_map` (timm's `--class-map`) maps the data's names to the model's indices instead. Images
    beside class folders (timm's folder reader gives them a class '' at index 0, shifting every label) are refused.

    Args:
        dataset: The data set, from timm's `create_dataset`.
        model: The model.
        run: The model's run, for its training classes.
        class_map: The class map file given with the data, if any.
        where: The data folder, for the message.
        labelled: Whether the images need labels (a flat folder of images is refused).

    Returns:
        The data's class names in index order, None when it has none (a flat folder, a data set without names).
    """
    k = model.num_classes
    reader = getattr(dataset, 'reader', None)
    class_to_idx = getattr(reader, 'class_to_idx', None)
    if class_to_idx and '' in class_to_idx:
        samples = getattr(reader, 'samples', [])
        loose = [f for f, t in samples if t == class_to_idx['']]
        if len(class_to_idx) > 1:
            raise _loose_images(loose, where)
        if labelled:
            raise RunError(f'{where} has no class folders, so its images have no labels: give the folder that holds '
                           f'one folder per class.')
        return None
    if class_map:
        samples = getattr(reader, 'samples', None)
        indices = sorted({t for _, t in samples} if samples else set(class_to_idx.values()) if class_to_idx else ())
        if indices and (indices[0] < 0 or indices[-1] >= k):
            raise RunError(f'--class-map {class_map} maps the data to class indices {indices[0]}..{indices[-1]}, but '
                           f'the model has {k} classes (0..{k - 1}): give the map of its classes.')
        return sorted(class_to_idx, key=class_to_idx.get) if class_to_idx else None
    names = class_names(dataset)
    if names is None:
        return None
    trained = training_classes(run, model)
    fix = ('Give the data set of the model\'s classes, or map the data\'s class names to the model\'s indices with '
           '--class-map FILE (one class name per line, in the order of the model\'s classes).')
    if trained is not None and names != trained:
        raise RunError(f'The classes of {where} are not those the model was trained on.\n  data ({len(names)}): '
                       f'{_listed(names)}\n  model ({len(trained)}): {_listed(trained)}\n{fix}')
    if trained is None and len(names) != k:
        raise RunError(f'{where} has {len(names)} classes {_listed(names)}, but the model has {k}. {fix}')
    return names


def create_run_dataset(
        root: Optional[Union[str, Path]],
        model: nn.Module,
        run: Optional['Run'] = None,
        dataset: str = '',
        split: str = 'validation',
        class_map: str = '',
        download: bool = False,
        search_split: bool = True,
        labelled: bool = True,
        option: str = '--data-dir',
        **kwargs,
):
    """timm's `create_dataset`, checked before and after (`check_data_dir`, `check_classes`): the one road from a
    tool's data options to a data set whose labels are the model's.

    Args:
        root: The data folder.
        model: The model the data set is for.
        run: The model's run, for its training classes.
        dataset: `create_dataset`'s name ('' for an image folder).
        split: The split; with `search_split=False` the folder is read as it is.
        class_map: timm's class map file.
        download: Allow torchvision's download.
        search_split: Look for the split folder, as `create_dataset` does.
        labelled: Whether the images need labels.
        option: The option that gave `root`, for messages.
        **kwargs: More `create_dataset` arguments.
    """
    folder = check_data_dir(root, option, dataset, download, split if search_split else None)
    if class_map and not os.path.isfile(class_map):
        raise RunError(f'--class-map {class_map} does not exist: give the class map file (a .txt of class names, '
                       f'one per line in index order).')
    try:
        data = create_dataset(dataset, root=str(root) if root else None, split=split, search_split=search_split,
                              class_map=class_map, download=download, **kwargs)
    except (AssertionError, RuntimeError, ValueError, OSError, KeyError, TypeError) as e:
        raise RunError(f'Cannot read the data set {dataset or "(image folder)"} at {root} (--split {split}): '
                       f'{type(e).__name__}: {e}\nCheck --data-dir, --dataset and --split (with --dataset-download '
                       f'torchvision data sets are downloaded first).') from e
    check_classes(data, model, run, class_map, str(folder or root), labelled=labelled)
    return data


def check_output_file(path: Union[str, Path], option: str):
    """Raise a RunError when a file cannot be written at `path`, so that a long pass does not end in a lost
    result: the path is a folder, a parent is a file, or the folder is not writable."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise RunError(f'{option} {path} is a folder: give a file name (such as {path / "results"}.json).')
    parent = next(p for p in (path.parent, *path.parent.parents) if p.exists())
    if not parent.is_dir():
        raise RunError(f'{option} {path} cannot be written: {parent} is a file, not a folder.')
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RunError(f'{option} {path} cannot be written: {parent} is not writable. Give a path in a folder '
                       f'of yours.')


def check_output_folder(folder: Union[str, Path], option: str):
    """Raise a RunError that says why `folder` cannot be made or written to (a file in its place or above it, a
    read-only folder), before anything is written."""
    folder = Path(folder).expanduser()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        where = 'it' if existing == folder else existing
        raise RunError(f'{option} {folder} cannot be used as a folder: {where} is a file. Give a folder.')
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunError(f'{option} {folder} cannot be written: {existing} is not writable. Give a folder of yours, '
                       f'or make it writable.')


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)  # hard and symbolic links too
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def run_input_files(run: 'Run') -> List[Path]:
    """The files of a run that a tool reads or must keep: its checkpoint, and in its folder train.py's args.yaml,
    summary.csv and checkpoints."""
    if run.checkpoint is None:
        return []
    folder = run.checkpoint.parent
    files = [run.checkpoint, folder / 'args.yaml', folder / 'summary.csv']
    files += [p for p in folder.iterdir() if p.name.endswith(('.pth.tar', '.pth', '.safetensors', '.bin'))]
    return files


def check_outputs(
        outputs: Dict[str, Union[str, Path]],
        inputs: Sequence[Union[str, Path]] = (),
        input_folders: Sequence[Union[str, Path]] = (),
        overwrite: bool = False,
        own: Optional[Callable[[Path], bool]] = None,
        tool: str = 'this tool',
):
    """Refuse, before a pass, outputs that would destroy a file: a RunError when an output is one of the inputs or
    lies in an input folder (even with `overwrite`), when two outputs name the same file, or when it is an existing
    file that is not an earlier output of the tool (`own`) and `overwrite` is not given. Each output must also be
    writable (`check_output_file`).

    Args:
        outputs: The output files, by the option (or name) that gave each.
        inputs: Files the tool reads or must keep (checkpoints, args.yaml, summary.csv, class maps).
        input_folders: Folders the tool reads (data folders): nothing is written inside them.
        overwrite: Replace existing files that are not the tool's own outputs.
        own: Whether an existing file is an earlier output of the tool (replaced without `overwrite`).
        tool: The tool's name, for the message.
    """
    seen = {}
    for option, path in outputs.items():
        path = Path(path).expanduser()
        check_output_file(path, option)
        for other_option, other in seen.items():
            if _same_file(path, other):
                raise RunError(f'{other_option} and {option} both name {path}: give each output its own file.')
        seen[option] = path
        for source in inputs:
            if Path(source).exists() and _same_file(path, Path(source)):
                raise RunError(f'{option} {path} is {source}, an input of this run that would be lost: give another '
                               f'output path.')
        for folder in input_folders:
            folder = os.path.realpath(folder)
            if os.path.commonpath([folder, os.path.realpath(path)]) == folder:
                raise RunError(f'{option} {path} lies in the data folder {folder}, which is read, not written: give '
                               f'an output path outside it.')
        if path.exists() and not overwrite and not (own is not None and own(path)):
            raise RunError(f'{option} {path} already exists and is not an earlier output of {tool}: give another '
                           f'path, or --overwrite to replace it.')


def write_error(path: Union[str, Path], error: OSError, kept: str = 'the results are printed above') -> str:
    """The message of a failed write (a full disk): why, that nothing half-written is left, and what is kept."""
    reason = 'the disk is full' if error.errno in (errno.ENOSPC, errno.EDQUOT) else \
        'the file would exceed the size limit' if error.errno == errno.EFBIG else 'the write failed'
    return (f'Cannot write {path}: {reason} ({error.strerror or error}). No partial file is left and an earlier file '
            f'there is unchanged; {kept}. Free some space (or give another path) and run again.')


def resolve_device(name: Optional[str]) -> torch.device:
    """The device of `--device` (default: cuda when available, else cpu), or a RunError when it is not there."""
    try:
        device = torch.device(name or ('cuda' if torch.cuda.is_available() else 'cpu'))
    except (RuntimeError, ValueError) as e:
        raise RunError(f'--device {name} is no device ({e}): give cpu, cuda, cuda:1, mps, ...') from e
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise RunError(f'--device {name}: no CUDA GPU is visible here (torch {torch.__version__}, '
                       f'CUDA_VISIBLE_DEVICES={os.environ.get("CUDA_VISIBLE_DEVICES", "unset")}): give --device cpu.')
    if device.type == 'cuda' and device.index is not None and device.index >= torch.cuda.device_count():
        raise RunError(f'--device {name}: only {torch.cuda.device_count()} GPU(s) are visible (0..'
                       f'{torch.cuda.device_count() - 1}).')
    if device.type == 'mps' and not torch.backends.mps.is_available():
        raise RunError(f'--device {name}: MPS is not available here: give --device cpu.')
    return device


def _not_a_checkpoint(path: Path, e: BaseException) -> RunError:
    with open(path, 'rb') as f:
        magic = f.read(4)
    if isinstance(e, pickle.UnpicklingError) and 'weights_only' in str(e) and (
            magic == b'PK\x03\x04' or magic.startswith(b'\x80')):
        return RunError(
            f'{path} holds pickled Python objects besides tensors and train.py arguments, which are not loaded '
            f'(weights_only=True). Save its weights alone with torch.save(model.state_dict(), PATH).')
    if magic != b'PK\x03\x04' and not magic.startswith(b'\x80'):  # neither torch.save's zip nor a pickle
        return RunError(f'{path} is not a checkpoint: it is neither a PyTorch checkpoint (torch.save) nor a '
                        f'safetensors file. Give the file train.py saved (model_best.pth.tar, last.pth.tar) or its '
                        f'run folder.')
    return RunError(
        f'Cannot read checkpoint {path}: it is truncated or not a PyTorch checkpoint, or damaged ({type(e).__name__}: '
        f'{e}). If it was copied or train.py was still writing it, copy it again or wait for the epoch to finish.')


def read_checkpoint(path: Union[str, Path]) -> Dict[str, Any]:
    """The entries of a checkpoint, loaded with `weights_only=True` (train.py's `args` Namespace allowed), tensors
    memory-mapped; {} for a `.safetensors` file, which holds weights only.

    Any failure of torch's or safetensors' readers on a damaged or foreign file is a RunError ("not a
    checkpoint"): their unpicklers and parsers raise many kinds of exception on bad bytes.
    """
    path = Path(path)
    if path.name.endswith('.safetensors'):
        from safetensors import safe_open
        try:
            with safe_open(str(path), framework='pt') as f:
                for key in f.keys():
                    f.get_slice(key).get_shape()  # header entries that point outside the file fail here
        except Exception as e:  # noqa  SafetensorError and whatever the header parser raises
            raise RunError(
                f'Cannot read {path}: it is truncated or not a safetensors file ({e}). If it was copied or is still '
                f'being written, copy it again or wait for it to finish.') from e
        return {}
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            try:
                checkpoint = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
            except RuntimeError as e:
                if 'zip' not in str(e) or 'mmap' not in str(e):
                    raise
                checkpoint = torch.load(path, map_location='cpu', weights_only=True)  # legacy format: no mmap
    except (KeyboardInterrupt, MemoryError):
        raise
    except OSError as e:
        if not path.is_file() or not os.access(path, os.R_OK):
            raise RunError(f'Cannot read checkpoint {path}: {e.strerror or e}.') from e
        raise _not_a_checkpoint(path, e) from e
    except Exception as e:  # noqa  weights-only unpickler: UnpicklingError, KeyError, IndexError, TypeError, ...
        raise _not_a_checkpoint(path, e) from e
    if not isinstance(checkpoint, dict):
        raise RunError(f'{path} is not a model checkpoint: it holds a {type(checkpoint).__name__}, not a dict.')
    return checkpoint


@dataclass
class Run:
    """A trained model as train.py left it, or a model name with its pretrained weights."""
    source: str  # as given
    checkpoint: Optional[Path] = None  # None: the pretrained weights of args['model']
    args: Dict[str, Any] = field(default_factory=dict)  # train.py arguments, {'model': name} for a model name
    args_source: str = 'no train.py arguments'
    epoch: Optional[int] = None  # train.py's epoch of the checkpoint, counted from 0
    has_ema: bool = False

    @property
    def folder(self) -> Optional[Path]:
        return self.checkpoint.parent if self.checkpoint is not None else None

    @property
    def trained(self) -> bool:
        """Whether the arguments are train.py's (and so describe its data config)."""
        return self.checkpoint is not None and set(self.args) != {'model'}


def load_run(source: Union[str, Path], checkpoint: Optional[str] = None) -> Run:
    """Read a train.py output folder, a checkpoint or a model name.

    The train.py arguments come from the run's `args.yaml` (beside the checkpoint), else from those train.py saves
    in its checkpoints.

    Args:
        source: A train.py output folder, a checkpoint file, or a model name (`hf-hub:`, `local-dir:`, registered).
        checkpoint: File name in the run folder, instead of model_best.pth.tar, else last.pth.tar.
    """
    path = Path(source)
    if not path.exists():
        name = str(source)
        try:
            model_source, model_id = parse_model_name(name)
        except ValueError:
            model_source, model_id = None, ''
        if model_source is not None or is_model(model_id.split('.')[0]):
            return Run(source=name, args=dict(model=name), args_source=f'the model name {name}')
        raise RunError(
            f'{source} does not exist: give a train.py output folder, a checkpoint file, or a model name '
            f'(hf-hub:ORG/NAME, local-dir:DIR, resnet50_ssm.a1_in1k).')
    if path.is_dir():
        names = [checkpoint] if checkpoint else CHECKPOINT_NAMES
        found = [path / n for n in names if (path / n).is_file()]
        if not found:
            have = sorted(p.name for p in path.iterdir() if p.name.endswith(('.pth.tar', '.pth', '.safetensors')))
            hint = f'it has {", ".join(have)}: name one' if have else 'is it a train.py output folder?'
            raise RunError(f'No {" or ".join(names)} in {path}; {hint}.')
        path = found[0]
    elif checkpoint:
        raise RunError(f'A checkpoint name ({checkpoint}) goes with a run folder, but {path} is a file: give its '
                       f'folder.')

    raw = read_checkpoint(path)
    run = Run(source=str(source), checkpoint=path)
    run.has_ema = any(isinstance(raw.get(k), dict) for k in ('state_dict_ema', 'model_ema'))
    run.epoch = raw.get('epoch') if isinstance(raw.get('epoch'), int) else None
    args_file = path.parent / 'args.yaml'
    if args_file.is_file():
        try:
            args = yaml.safe_load(args_file.read_text())
        except yaml.YAMLError as e:
            raise RunError(f'Cannot read {args_file} ({e}): is it the args.yaml that train.py wrote?') from e
        if not isinstance(args, dict):
            raise RunError(f'{args_file} is not the args.yaml of a train.py run (no mapping of arguments).')
        run.args, run.args_source = args, str(args_file)
    elif isinstance(raw.get('args'), (argparse.Namespace, dict)):
        args = raw['args']
        run.args = dict(vars(args) if isinstance(args, argparse.Namespace) else args)
        run.args_source = f'the train.py arguments saved in {path}'
    _check_run_args(run.args, run.args_source)
    return run


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# what each train.py argument that shapes the model or its data must be, as train.py's parser gives it
_RUN_ARG_TYPES = {
    'model': (lambda v: isinstance(v, str) and v != '', 'a model name'),
    'model_kwargs': (lambda v: isinstance(v, dict), 'a mapping (num_splits: 4)'),
    'num_classes': (lambda v: _is_int(v) and v > 0, 'a positive integer'),
    'in_chans': (lambda v: _is_int(v) and v > 0, 'a positive integer'),
    'img_size': (lambda v: _is_int(v) and v > 0, 'a positive integer'),
    'input_size': (lambda v: isinstance(v, (list, tuple)) and len(v) == 3 and all(_is_int(x) and x > 0 for x in v),
                   'three positive integers [channels, height, width]'),
    'mean': (lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(_is_number(x) for x in v),
             'a list of numbers'),
    'std': (lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(_is_number(x) and x > 0 for x in v),
            'a list of positive numbers'),
    'crop_pct': (lambda v: _is_number(v) and 0 < v <= 1, 'a number in (0, 1]'),
    'crop_mode': (lambda v: v in ('center', 'squash', 'border'), 'center, squash or border'),
    'interpolation': (lambda v: isinstance(v, str) and (v == '' or v in _INTERPOLATIONS), 'an interpolation name'),
    'gp': (lambda v: isinstance(v, str), 'a pool type (avg, max, ...)'),
    'bn_eps': (lambda v: _is_number(v) and v > 0, 'a positive number'),
    'bn_momentum': (lambda v: _is_number(v) and 0 < v <= 1, 'a number in (0, 1]'),
}


def _check_run_args(args: Dict[str, Any], source: str):
    """A RunError naming the argument of a (hand-edited or damaged) args.yaml or checkpoint that train.py would
    not have written, instead of a traceback deep in create_model."""
    for key, (valid, what) in _RUN_ARG_TYPES.items():
        value = args.get(key)
        if value is not None and not valid(value):
            raise RunError(f'{source}: {key} is {value!r}, but train.py writes {what} there: fix or delete that '
                           f'line, or give the option on the command line.')


def _in_chans(args: Dict[str, Any]) -> Optional[int]:
    """Input channels as train.py (and validate.py) choose them: --in-chans, else those of --input-size."""
    return args.get('in_chans') or (args['input_size'][0] if args.get('input_size') else None)


def create_run_model(
        run: Run,
        model_name: Optional[str] = None,
        use_ema: bool = False,
        overrides: Optional[Dict[str, Any]] = None,
        device: Optional[Union[str, torch.device]] = None,
) -> nn.Module:
    """The run's model as train.py built it, with the run's weights, in eval mode.

    Args:
        run: The run.
        model_name: Model name instead of the run's `model`.
        use_ema: Load the checkpoint's EMA weights.
        overrides: `create_model` arguments over the run's (`num_classes`, `in_chans`, `global_pool`, model
            kwargs); None values are ignored.
        device: Device of the model.
    """
    args = run.args
    name = model_name or args.get('model')
    if not name:
        raise RunError(
            f'{run.checkpoint} comes with no train.py arguments (no args.yaml beside it, none saved in it): give its '
            f'model name (--model) and options (--num-classes, --model-kwargs num_splits=4).')
    kwargs = dict(
        num_classes=args.get('num_classes'),
        in_chans=_in_chans(args),
        global_pool=args.get('gp'),
        bn_momentum=args.get('bn_momentum'),
        bn_eps=args.get('bn_eps'),
        **(args.get('model_kwargs') or {}),
    )
    kwargs.update({k: v for k, v in (overrides or {}).items() if v is not None})
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    what = f'{name}({", ".join(f"{k}={v!r}" for k, v in kwargs.items())}) from {run.args_source}'
    if use_ema and not run.has_ema:
        raise RunError(
            f'{run.checkpoint or name} has no EMA weights (train.py saves them with --model-ema): drop the EMA '
            f'option.')
    try:
        model = create_model(name, pretrained=run.checkpoint is None, **kwargs)
    except (RuntimeError, ValueError, TypeError, OSError, KeyError) as e:
        raise RunError(
            f'Cannot build {what}: {type(e).__name__}: {e}\nGive the model name and options it was trained with '
            f'(--model, --model-kwargs); an hf-hub: or local-dir: name needs its config.json (train.py left it in '
            f'the Hugging Face cache of the machine it ran on).') from e
    if run.checkpoint is not None:
        try:
            load_checkpoint(model, str(run.checkpoint), use_ema=use_ema)
        except RuntimeError as e:
            raise RunError(
                f'The weights in {run.checkpoint} do not fit {what}: give the --model, --num-classes, --in-chans and '
                f'--model-kwargs it was trained with, or check that the checkpoint and args.yaml come from the same '
                f'run.\n{e}') from e
        except Exception as e:  # noqa  a damaged checkpoint whose entries are no state dict
            raise RunError(f'{run.checkpoint} holds no state dict that timm\'s load_checkpoint can load '
                           f'({type(e).__name__}: {e}): it is damaged or not a model checkpoint.') from e
    return model.to(device).eval()


def run_data_config(
        run: Run,
        model: nn.Module,
        overrides: Optional[Dict[str, Any]] = None,
        use_test_size: Optional[bool] = None,
        verbose: bool = False,
) -> Dict[str, Any]:
    """The data config of the run's evaluation: timm's `resolve_data_config` on the run's data arguments, with
    `overrides` (a command line's, None or empty values ignored) over them, for the model's input channels.

    Args:
        run: The run.
        model: The run's model, as `create_run_model` built it.
        overrides: Data options (`DATA_ARGS`); an input size given here replaces the run's whole.
        use_test_size: Prefer the pretrained cfg's test input size; default: as train.py (no) for a trained run,
            as validate.py (yes) for a model name.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v not in (None, '', [])}
    chans = get_model_input_config(model)['input_size'][0]  # the channels the model was built with
    for key in ('mean', 'std'):
        if key in overrides and len(overrides[key]) not in (1, chans):
            raise RunError(f'--{key} has {len(overrides[key])} values, but the model sees {chans} channel(s): give '
                           f'one value, or one per channel.')
    args = {k: run.args.get(k) for k in DATA_ARGS}
    if 'input_size' in overrides or 'img_size' in overrides:
        args.update(input_size=None, img_size=None)
    args.update(overrides)
    args['in_chans'] = chans
    use_test_size = not run.trained if use_test_size is None else use_test_size
    config = resolve_data_config(args, model=model, use_test_size=use_test_size, verbose=verbose)
    config['input_size'] = (chans, *config['input_size'][1:])
    for key in ('mean', 'std'):  # a pretrained 3-channel mean for 1-channel images: their average, as the prefetcher
        if len(config[key]) != chans:
            config[key] = (sum(config[key]) / len(config[key]),) * chans
    return config


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of a model's state dict (names and tensor bytes): the same weights give the same digest whichever
    checkpoint file held them."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def class_names(dataset) -> Optional[List[str]]:
    """Class names of a timm data set in index order (a torchvision data set's `classes`, the class folders of an
    image folder), None when it has none."""
    names = getattr(dataset, 'classes', None)
    class_to_idx = getattr(getattr(dataset, 'reader', None), 'class_to_idx', None)
    if names is None and class_to_idx and '' not in class_to_idx and \
            sorted(class_to_idx.values()) == list(range(len(class_to_idx))):
        names = sorted(class_to_idx, key=class_to_idx.get)
    return [str(n) for n in names] if names else None


def split_head(model: nn.Module) -> Optional[SplitShareHead]:
    """The model's Split-and-Share head when it has one with classes, else None (a plain timm classifier)."""
    head = getattr(model, 'head', None)
    if hasattr(model, 'forward_splits') and isinstance(head, SplitShareHead) and head.num_classes > 0:
        return head
    return None


def number_in(kind: type, low: Optional[float] = None, high: Optional[float] = None, low_open: bool = False,
              name: str = ''):
    """An argparse `type` that refuses values outside [low, high] ((low, high] when `low_open`) with a message."""
    def _parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'{text!r} is not {"an integer" if kind is int else "a number"}')
        if value != value or (low is not None and (value < low or (low_open and value == low))) or \
                (high is not None and value > high):
            lo = '' if low is None else f'{"(" if low_open else "["}{low}'
            hi = 'inf)' if high is None else f'{high}]'
            raise argparse.ArgumentTypeError(f'{text} is outside {lo or "(-inf"}, {hi}')
        return value
    _parse.__name__ = name or kind.__name__
    return _parse


def _interpolation(text: str) -> str:
    if text and text not in _INTERPOLATIONS[:-1]:  # 'random' is for training
        raise argparse.ArgumentTypeError(f'{text!r} is none of {", ".join(_INTERPOLATIONS[:-1])}')
    if text:
        str_to_pil_interp(text)
    return text


class ModelKwargs(ParseKwargs):
    """timm's ParseKwargs (`--model-kwargs num_splits=2 ...`), with a usage error for an item without `=`."""

    def __call__(self, parser, namespace, values, option_string=None):
        bad = [v for v in values if v and '=' not in v]
        if bad:
            parser.error(f'argument {option_string}: {bad[0]!r} is no NAME=VALUE pair (such as num_splits=2)')
        super().__call__(parser, namespace, values, option_string)


_positive = number_in(int, 1, name='positive integer')

# the options of a run that a tool's command line sets over the run's (argparse parent of evaluate and cam)
run_parser = argparse.ArgumentParser(add_help=False)
group = run_parser.add_argument_group(
    'Data (as timm validate.py)', 'Unset options take the values of the run\'s train.py arguments, else those of '
                                  'the model\'s pretrained config.')
group.add_argument('--data-dir', metavar='DIR', help='path to dataset (root dir)')
group.add_argument('--dataset', metavar='NAME', default='',
                   help='dataset type + name ("<type>/<name>") (default: ImageFolder or ImageTar if empty)')
group.add_argument('--split', metavar='NAME', default='validation', help='dataset split (default: validation)')
group.add_argument('--dataset-download', action='store_true', default=False,
                   help='allow download of dataset for torch/ and tfds/ datasets that support it')
group.add_argument('--class-map', default='', type=str, metavar='FILENAME',
                   help='path to class to idx mapping file (default: ""): maps the data\'s class folders to the '
                        'model\'s classes')
group.add_argument('--img-size', default=None, type=_positive, metavar='N', help='input image dimension')
group.add_argument('--input-size', default=None, nargs=3, type=_positive, metavar='N',
                   help='input all image dimensions (d h w, e.g. --input-size 3 224 224)')
group.add_argument('--crop-pct', default=None, type=number_in(float, 0, 1, low_open=True), metavar='N',
                   help='input image center crop pct, in (0, 1]')
group.add_argument('--crop-mode', default=None, type=str, metavar='N', choices=('center', 'squash', 'border'),
                   help='input image crop mode (squash, border, center)')
group.add_argument('--mean', type=float, nargs='+', default=None, metavar='MEAN',
                   help='override mean pixel value (one, or one per channel)')
group.add_argument('--std', type=number_in(float, 0, low_open=True), nargs='+', default=None, metavar='STD',
                   help='override std deviation (positive; one, or one per channel)')
group.add_argument('--interpolation', default='', type=_interpolation, metavar='NAME',
                   help='image resize interpolation type (bilinear, bicubic, ...)')
group = run_parser.add_argument_group('Model', 'Unset options take the values of the run\'s train.py arguments.')
group.add_argument('--use-ema', action='store_true', default=False, help='use the EMA weights of the checkpoint')
group.add_argument('--num-classes', type=_positive, default=None, help='number of classes')
group.add_argument('--in-chans', type=_positive, default=None, metavar='N', help='image input channels')
group.add_argument('--gp', default=None, type=str, metavar='POOL', help='global pool type (avg, max, avgmax, ...)')
group.add_argument('--model-kwargs', nargs='*', default={}, action=ModelKwargs,
                   help='model arguments (num_splits=2 ...) over the run\'s')
group.add_argument('--device', default=None, type=str, help='device (default: cuda when available, else cpu)')


def models_from_args(args, device=None) -> List[Tuple[Run, nn.Module]]:
    """The runs and models a command line of `run_parser` names: `args.checkpoint` (paths) or, without them,
    `args.model` (names); `args.model` with checkpoints gives one name for all or one per checkpoint."""
    names, sources = list(args.model or []), list(args.checkpoint or [])
    if not names and not sources:
        raise RunError('Give --checkpoint RUN (a train.py output folder or checkpoint) or --model NAME '
                       '(hf-hub:ORG/NAME, local-dir:DIR, or a registered name with pretrained weights).')
    if sources and len(names) > 1 and len(names) != len(sources):
        raise RunError(f'{len(names)} model names for {len(sources)} checkpoints: give one model name for all '
                       f'checkpoints, or one per checkpoint in the same order.')
    if not sources:
        sources, names = names, []
    overrides = dict(
        num_classes=args.num_classes,
        in_chans=args.in_chans or (args.input_size[0] if args.input_size else None),
        global_pool=args.gp,
        **args.model_kwargs,
    )
    out = []
    for i, source in enumerate(sources):
        run = load_run(source)
        if names:
            run.args['model'] = names[i] if len(names) > 1 else names[0]  # the command line's over the run's
        out.append((run, create_run_model(run, use_ema=args.use_ema, overrides=overrides, device=device)))
    return out


def data_config_from_args(args, run: Run, model: nn.Module, verbose: bool = False) -> Dict[str, Any]:
    """`run_data_config` with the data options of a `run_parser` command line over the run's."""
    return run_data_config(run, model, {k: getattr(args, k) for k in DATA_ARGS}, verbose=verbose)
