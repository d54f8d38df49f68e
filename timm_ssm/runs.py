""" One road from a timm train.py run to its model and its data, as timm's validate.py walks it

A run is a train.py output folder, a checkpoint (`.pth.tar`, `.pth`, `.safetensors`) or a model name (`hf-hub:`,
`local-dir:`, a registered name with pretrained weights); the command line's options go over the run's own arguments.
"""
import argparse
import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import yaml

from timm.data import ImageDataset, create_dataset, resolve_data_config
from timm.data.readers.class_map import load_class_map
from timm.models import create_model, get_model_input_config, is_model, load_checkpoint, parse_model_name
from timm.utils import ParseKwargs, natural_key

from .files import RunError, check_output
from .head import SplitShareHead

__all__ = [
    'Run', 'load_run', 'read_checkpoint', 'create_run_model', 'run_data_config', 'split_folder', 'create_run_dataset',
    'check_classes', 'check_read', 'check_outputs', 'class_names', 'ReadCheckedDataset', 'weights_digest', 'split_head',
    'resolve_device', 'number_in', 'name_value', 'run_parser', 'models_from_args', 'CHECKPOINT_NAMES', 'DATA_ARGS']

CHECKPOINT_NAMES = ('model_best.pth.tar', 'last.pth.tar')  # looked for in a run folder, in this order
DATA_ARGS = ('input_size', 'img_size', 'mean', 'std', 'crop_pct', 'crop_mode', 'interpolation')
INTERPOLATIONS = ('nearest', 'bilinear', 'bicubic', 'box', 'hamming', 'lanczos')
POOL_TYPES = ('avg', 'max', 'avgmax', 'catavgmax', 'fast', 'fastavg', 'fastmax', 'fastavgmax', 'token', 'map', '')
# the split folders timm's create_dataset tries after the split's own name
SPLIT_SYNONYMS = (('train', 'training'), ('val', 'valid', 'validation', 'eval', 'evaluation'))
_SPLIT_NAMES = {n for names in SPLIT_SYNONYMS for n in names} | {'test', 'testing'}


def number_in(kind: type, low: float = -math.inf, high: float = math.inf, low_open: bool = False):
    """An argparse `type`: a finite int or float in [low, high] ((low, high] when `low_open`)."""
    what = f'{"an integer" if kind is int else "a finite number"} in {"(" if low_open else "["}{low}, {high}' \
        f'{")" if high == math.inf else "]"}'

    def _parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and low <= value <= high) or low_open and value == low:
            raise argparse.ArgumentTypeError(f'{text} is not {what}')
        return value
    return _parse


def name_value(text: str) -> str:  # an argparse type: an item of timm's ParseKwargs
    if '=' not in text:
        raise argparse.ArgumentTypeError(f'{text!r} is no NAME=VALUE pair (such as num_splits=2)')
    return text


def _check_run_args(args, source: str):
    """A RunError naming a value of the run's arguments that the command line's options would refuse."""
    try:
        if not isinstance(args, dict) or not isinstance(args.get('model', ''), str) \
                or not isinstance(args.get('model_kwargs') or {}, dict):
            raise argparse.ArgumentError(None, 'no mapping, model no name, or model_kwargs no mapping (num_splits: 4)')
        argv = []
        for key in (*DATA_ARGS, 'num_classes', 'in_chans', 'gp'):
            value = args.get(key)
            if value not in (None, ''):
                argv += [f'--{key.replace("_", "-")}', *map(str, value if isinstance(value, list) else [value])]
        argparse.ArgumentParser(parents=[run_parser], add_help=False, exit_on_error=False).parse_args(argv)
    except argparse.ArgumentError as e:
        raise RunError(f'{source} holds a value train.py would not write ({e}): fix or delete that line.') from e


def read_checkpoint(path: Union[str, Path]) -> Dict[str, Any]:
    """The entries of a checkpoint, loaded with `weights_only=True` (train.py's `args` Namespace allowed), {} for a
    `.safetensors` file (read by `load_checkpoint`); a RunError for whatever torch's reader fails on."""
    path = Path(path)
    if path.name.endswith('.safetensors'):
        return {}
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location='cpu', weights_only=True)
        if not isinstance(checkpoint, dict):
            raise TypeError(f'it holds a {type(checkpoint).__name__}, not a dict')
    except Exception as e:  # noqa  the unpickler raises many kinds of exception on damaged bytes
        reason = str(e).rpartition('WeightsUnpickler error: ')[2].split('. ')[0][:200]  # torch's: the refused global
        raise RunError(f'Cannot read {path} as a checkpoint of tensors, weights_only=True ({type(e).__name__}: '
                       f'{reason}): give a whole copy of the file train.py saved (model_best.pth.tar, last.pth.tar), '
                       f'or its weights alone saved with torch.save(model.state_dict(), PATH).') from e
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
    """Read a run: train.py's arguments come from its `args.yaml` (beside the checkpoint), else from its checkpoint.

    Args:
        source: A train.py output folder, a checkpoint file, or a model name (`hf-hub:`, `local-dir:`, registered).
        checkpoint: File name in the run folder, instead of model_best.pth.tar, else last.pth.tar.
    """
    path = Path(source)
    if not path.exists():
        try:
            prefix, model_id = parse_model_name(str(source))
        except ValueError:
            prefix, model_id = None, ''
        if prefix is not None or is_model(model_id.split('.')[0]):
            return Run(source=str(source), args=dict(model=str(source)), args_source=f'the model name {source}')
        raise RunError(f'{source} does not exist: give a train.py output folder, a checkpoint file, or a model name '
                       f'(hf-hub:ORG/NAME, local-dir:DIR, resnet50_ssm.a1_in1k).')
    if path.is_dir():
        found = [path / n for n in ([checkpoint] if checkpoint else CHECKPOINT_NAMES) if (path / n).is_file()]
        if not found:
            have = sorted(p.name for p in path.iterdir() if p.name.endswith(('.pth.tar', '.pth', '.safetensors')))
            raise RunError(f'No {checkpoint or " or ".join(CHECKPOINT_NAMES)} in {path}: give '
                           f'{path / have[0] if have else "a train.py output folder"}.')
        path = found[0]
    elif checkpoint:
        raise RunError(f'A checkpoint name ({checkpoint}) goes with a run folder, not with the file {path}: give its '
                       f'folder.')
    raw = read_checkpoint(path)
    run = Run(source=str(source), checkpoint=path, epoch=raw['epoch'] if isinstance(raw.get('epoch'), int) else None,
              has_ema=any(isinstance(raw.get(k), dict) for k in ('state_dict_ema', 'model_ema')))
    args_file = path.parent / 'args.yaml'
    if args_file.is_file():
        try:
            run.args, run.args_source = yaml.safe_load(args_file.read_text()), str(args_file)
        except yaml.YAMLError as e:
            raise RunError(f'Cannot read {args_file}, which is not the args.yaml train.py wrote ({e}): fix or delete '
                           f'it.') from e
    elif isinstance(raw.get('args'), argparse.Namespace):
        run.args, run.args_source = dict(vars(raw['args'])), f'the train.py arguments saved in {path}'
    _check_run_args(run.args, run.args_source)
    return run


def _without_aux_bn(state_dict: Dict[str, Any], model: nn.Module) -> Dict[str, Any]:
    """A train.py --split-bn checkpoint as `clean_checkpoint.py --clean-aux-bn` leaves it (SSM models do it on load)."""
    own = model.state_dict()
    return {k: v for k, v in state_dict.items() if '.aux_bn.' not in k or k in own}


def create_run_model(run: Run, model_name: Optional[str] = None, use_ema: bool = False,
                     overrides: Optional[Dict[str, Any]] = None, device=None) -> nn.Module:
    """The run's model as train.py built it (`model_name` over the run's), with its (EMA) weights, in eval mode;
    `overrides` are `create_model` arguments over the run's (None ignored). Non-finite weights are refused."""
    args = run.args
    name = model_name or args.get('model')
    if not name:
        raise RunError(f'{run.checkpoint} comes with no train.py arguments (no args.yaml beside it, none saved in it): '
                       f'give its model name and options, such as --model test_resnet_ssm --num-classes 10.')
    if use_ema and not run.has_ema:
        raise RunError(f'{run.checkpoint or name} has no EMA weights (train.py saves them with --model-ema): leave '
                       f'out --use-ema.')
    input_size = args.get('input_size') or [None]  # train.py's channels: --in-chans, else those of --input-size
    kwargs = dict(num_classes=args.get('num_classes'), in_chans=args.get('in_chans') or input_size[0],
                  global_pool=args.get('gp'), bn_momentum=args.get('bn_momentum'), bn_eps=args.get('bn_eps'))
    kwargs = {k: v for more in (kwargs, args.get('model_kwargs') or {}, overrides or {}) for k, v in more.items()
              if v is not None}
    what = f'{name}({", ".join(f"{k}={v!r}" for k, v in kwargs.items())}) from {run.args_source}'
    try:
        model = create_model(name, pretrained=run.checkpoint is None, **kwargs)
    except Exception as e:  # noqa  create_model raises what the model's constructor raises, assertions included
        raise RunError(f'Cannot build {what} ({type(e).__name__}: {e}): give the model name and options it was '
                       f'trained with (--model, --model-kwargs).') from e
    if run.checkpoint is not None:
        try:
            load_checkpoint(model, str(run.checkpoint), use_ema=use_ema, filter_fn=_without_aux_bn)
        except Exception as e:  # noqa  a state dict of another model, entries that are no state dict, damaged bytes
            raise RunError(f'The weights in {run.checkpoint} do not fit {what}, or the file is damaged: give the '
                           f'--model, --num-classes, --in-chans and --model-kwargs it was trained with, or a whole '
                           f'copy of the file.\n{type(e).__name__}: {e}') from e
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise RunError(f'{run.checkpoint or name} holds non-finite weights (NaN or inf) in {_listed(bad, 3)}: its '
                       f'training diverged; give a checkpoint of an earlier epoch, or train again with a lower --lr.')
    return model.to(device).eval()


def run_data_config(run: Run, model: nn.Module, overrides: Optional[Dict[str, Any]] = None,
                    verbose: bool = False) -> Dict[str, Any]:
    """timm's `resolve_data_config` on the run's `DATA_ARGS` under `overrides` (unset ones ignored; an input size
    replaces the run's whole) for the model's channels; the test size only for a model name (as validate.py)."""
    overrides = {k: v for k, v in (overrides or {}).items() if k in DATA_ARGS and v not in (None, '', [])}
    args = {k: run.args.get(k) for k in DATA_ARGS}
    if 'input_size' in overrides or 'img_size' in overrides:
        args.update(input_size=None, img_size=None)
    args.update(overrides)
    chans = args['in_chans'] = get_model_input_config(model)['input_size'][0]  # the channels the model was built with
    for key in ('mean', 'std'):
        if args[key] is not None and len(args[key]) not in (1, chans):
            where = f'--{key}' if key in overrides else f'{key} in {run.args_source}'
            raise RunError(f'{where} has {len(args[key])} values, but the model sees {chans} channel(s): give --{key} '
                           f'with one value, or one per channel.')
    config = resolve_data_config(args, model=model, use_test_size=not run.trained, verbose=verbose)
    config['input_size'] = (chans, *config['input_size'][1:])
    for key in ('mean', 'std'):  # a pretrained 3-channel mean for 1-channel images: their average, as the prefetcher
        if len(config[key]) != chans:
            config[key] = (sum(config[key]) / len(config[key]),) * chans
    return config


def split_folder(root: Optional[Union[str, Path]], split: Optional[str], dataset: str = '') -> Optional[Path]:
    """The absolute folder (or tar file) timm's `create_dataset` reads for `split` of an image folder, found as it finds
    it (the split's own name, else a synonym: `val` for `validation`, ...); None for other data sets; `root` itself for
    `split=None`. A folder with split folders but none for `split` (or `split=''`) is refused: timm would read all."""
    prefix = (dataset or '').lower().partition('/')[0] if '/' in (dataset or '') else ''
    if not root and prefix not in ('hfds', 'hfids', 'tfds', 'wds'):  # these find their data or say so
        raise RunError('No data folder: give --data-dir DIR (the image folder, with one folder per class, or the '
                       'folder of --dataset NAME).')
    if prefix:
        return None
    root = Path(root).expanduser()
    if not root.exists():
        raise RunError(f'--data-dir {root} does not exist: give the folder that holds the data set.')
    if split is None or not root.is_dir():
        return root.resolve()
    name = split.split('[')[0].strip('/')
    synonyms = next((s for s in SPLIT_SYNONYMS if name in s), ())
    folder = next((root / n for n in (name, *synonyms) if n and (root / n).exists()), None)
    if folder is None:
        splits = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.lower() in _SPLIT_NAMES)
        if splits:
            raise RunError(f'--split {split!r}: {root} has no such split folder, and reading it whole would mix its '
                           f'splits {", ".join(splits)}: give --split {splits[-1]} (or the split you mean).')
        folder = root  # no split folders: the folder's own class folders, as timm reads them
    return folder.resolve()


def class_names(run: Optional[Run], model: nn.Module) -> Optional[List[str]]:
    """The model's class names in index order: its run's training classes (train.py's `--class-map` file, else the
    class folders of its training split), else the model's pretrained `label_names`; None when none is known."""
    args = run.args if run is not None else {}
    try:
        if args.get('class_map'):
            mapping = load_class_map(str(args['class_map']))
            names = sorted(mapping, key=mapping.get)
        else:
            folder = split_folder(args.get('data_dir') or args.get('data'), str(args.get('train_split') or 'train'),
                                  args.get('dataset') or '')
            names = sorted((p.name for p in folder.iterdir() if p.is_dir()), key=natural_key)
    except Exception:  # noqa  the run's class map or data is not on this machine, or is no image folder
        names = []
    names = names or list(getattr(model, 'pretrained_cfg', {}).get('label_names') or [])
    return [str(n) for n in names] if len(names) == model.num_classes else None


def _listed(names: Sequence[str], at_most: int = 12) -> str:
    return f'[{", ".join(names[:at_most])}{", ..." if len(names) > at_most else ""}]'


def check_classes(dataset, model: nn.Module, run: Optional[Run] = None, class_map: str = '', where: str = '',
                  labelled: bool = True) -> Optional[List[str]]:
    """The data's class names, or a RunError before a pass when a timm data set's labels are not the model's classes:
    not the run's (`class_names`; not as many as the model's when those are unknown), a `class_map` that moves a
    training class, images beside the class folders (timm makes them a class '' at index 0, shifting every label), a
    folder read twice through a symbolic link, and, when `labelled`, a flat folder of images."""
    k, trained = model.num_classes, class_names(run, model)
    reader = getattr(dataset, 'reader', None)
    samples, class_to_idx = getattr(reader, 'samples', None) or [], getattr(reader, 'class_to_idx', None) or {}
    real = {}
    for folder in sorted({os.path.dirname(f) for f, _ in samples if isinstance(f, str)}, key=len):
        if real.setdefault(os.path.realpath(folder), folder) != folder:
            raise RunError(f'{folder} is {real[os.path.realpath(folder)]} again (a symbolic link), so timm\'s reader '
                           f'would read its images twice: remove the link or point it outside {where}.')
    if '' in class_to_idx:
        loose = [f for f, t in samples if t == class_to_idx['']]
        if len(class_to_idx) > 1:
            raise RunError(f'{len(loose)} image(s) lie beside the class folders of {where} (such as {loose[0]}), which '
                           f'timm would make a class that shifts every label: move them into their class folder.')
        if labelled:
            raise RunError(f'{where} has no class folders, so its images have no labels: give the folder that holds '
                           f'one folder per class.')
        return None
    names = getattr(dataset, 'classes', None) or sorted(class_to_idx, key=class_to_idx.get) or None
    if class_map:
        indices = sorted(set(class_to_idx.values()))
        moved = [n for n in class_to_idx if trained and n in trained and trained.index(n) != class_to_idx[n]]
        if indices and (indices[0] < 0 or indices[-1] >= k):
            raise RunError(f'--class-map {class_map} maps the data to class indices {indices[0]}..{indices[-1]}, but '
                           f'the model has {k} classes (0..{k - 1}): give the map of its classes.')
        if moved:
            raise RunError(f'--class-map {class_map} gives class {moved[0]} index {class_to_idx[moved[0]]}, but the '
                           f'model was trained with it at {trained.index(moved[0])}: give the classes in the model\'s '
                           f'order {_listed(trained)}, or leave out --class-map.')
        return names
    fix = ('give the data set of the model\'s classes, or map the data\'s class names to the model\'s indices with '
           '--class-map FILE (one class name per line, in the order of the model\'s classes).')
    if names is not None and trained is not None and list(map(str, names)) != trained:
        raise RunError(f'The classes of {where} are not those the model was trained on:\n  data ({len(names)}): '
                       f'{_listed(names)}\n  model ({len(trained)}): {_listed(trained)}\nSo {fix}')
    if names is not None and trained is None and len(names) != k:
        raise RunError(f'{where} has {len(names)} classes {_listed(names)}, but the model has {k}: {fix}')
    return names


class _Recorder:
    """A reader that records the indices asked of it (timm's `ImageDataset` asks the next one after an unreadable)."""

    def __init__(self, reader):
        self.reader, self.asked = reader, []

    def __getitem__(self, index):
        self.asked.append(index)
        return self.reader[index]

    def __len__(self):
        return len(self.reader)

    def __getattr__(self, name):  # filename(), samples, class_to_idx, ... of the reader
        if name == 'reader':  # not yet set while unpickled in a loader worker
            raise AttributeError(name)
        return getattr(self.reader, name)


class ReadCheckedDataset(ImageDataset):
    """timm's `ImageDataset` that records each image it could not read (and replaced by the next one) in memory shared
    with the loader's workers; `check_read` names them."""

    def __init__(self, dataset: ImageDataset):
        self.__dict__.update(vars(dataset))  # the data set as timm made it, its reader recorded
        self.reader = _Recorder(dataset.reader)
        self.unread = torch.zeros(len(self), dtype=torch.bool).share_memory_()

    def __getitem__(self, index):
        asked = self.reader.asked
        asked.clear()
        try:
            return super().__getitem__(index)
        finally:
            self.unread[asked[:-1]] = True  # every image tried before the one returned


def create_run_dataset(root: Optional[Union[str, Path]], model: nn.Module, run: Optional[Run] = None, dataset: str = '',
                       split: Optional[str] = 'validation', class_map: str = '', download: bool = False,
                       labelled: bool = True, **kwargs):
    """timm's `create_dataset` (`kwargs`) on the `split_folder`, checked by `check_classes`, an image folder as a
    `ReadCheckedDataset`; its `folder` is the folder read (None for other data sets), `names` the data's classes."""
    folder = split_folder(root, split, dataset)
    try:
        data = create_dataset(dataset, root=str(folder or root) if folder or root else None, split=split or '',
                              search_split=folder is None, class_map=class_map, download=download, **kwargs)
    except Exception as e:  # noqa  timm's readers assert, raise RuntimeError on no images, ...
        raise RunError(f'Cannot read the data set {dataset or "(image folder)"} at {folder or root} (--split {split}): '
                       f'{type(e).__name__}: {e}; check --data-dir, --dataset, --split and --class-map.') from e
    names = check_classes(data, model, run, class_map, str(folder or root), labelled=labelled)
    if isinstance(data, ImageDataset):
        data = ReadCheckedDataset(data)
    data.folder, data.names = folder, names
    return data


def check_read(dataset):
    """A RunError naming the images of a `create_run_dataset` data set that could not be read so far."""
    unread = dataset.unread.nonzero().flatten().tolist() if isinstance(dataset, ReadCheckedDataset) else []
    if unread:
        listed = ', '.join(dataset.filename(i, absolute=True) for i in unread[:5])
        listed += f' and {len(unread) - 5} more' if len(unread) > 5 else ''
        raise RunError(f'{len(unread)} of the {len(dataset)} images in {dataset.folder} could not be read, and '
                       f'timm\'s reader read the next image in place of each, so no result is reported: {listed}; '
                       f'replace or remove them, and run again.')


def check_outputs(outputs: Sequence[Tuple[str, str]], runs: Sequence[Run], class_map: str = '',
                  overwrite: bool = False):
    """`files.check_output` of each (option, path), which must be distinct files and none of the runs' checkpoints,
    args.yaml and summary.csv, nor the class map."""
    if len({os.path.realpath(p) for _, p in outputs}) < len(outputs):
        raise RunError(f'{" and ".join(o for o, _ in outputs)} name one file between them: give each output its own '
                       f'file.')
    inputs = [class_map] if class_map else []
    for run in (r for r in runs if r.checkpoint is not None):
        inputs += [run.checkpoint, run.folder / 'args.yaml', run.folder / 'summary.csv']
        inputs += [p for p in run.folder.iterdir() if p.name.endswith(('.pth.tar', '.pth', '.safetensors'))]
    for option, path in outputs:
        check_output(path, option, overwrite, inputs)


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of a model's state dict (names and tensor bytes): the same for the same weights in any file."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())  # no copy of the bytes
    return digest.hexdigest()


def split_head(model: nn.Module) -> Optional[SplitShareHead]:
    """The model's Split-and-Share head when it has one with classes, else None (a plain timm classifier)."""
    head = getattr(model, 'head', None)
    return head if isinstance(head, SplitShareHead) and head.num_classes > 0 else None


def resolve_device(name: Optional[str]) -> torch.device:
    """The device of `--device` (default: cuda when available, else cpu), or a RunError when it is not here."""
    try:
        device = torch.device(name or ('cuda' if torch.cuda.is_available() else 'cpu'))
        torch.empty(0, device=device)  # raises when there is no such device here
    except (RuntimeError, ValueError, AssertionError) as e:
        raise RunError(f'--device {name} is not here ({str(e).splitlines()[0]}): give --device cpu.') from e
    return device


_positive = number_in(int, 1)

# the options of a run that a tool's command line sets over the run's (argparse parent of evaluate and cam)
run_parser = argparse.ArgumentParser(add_help=False)
group = run_parser.add_argument_group('Data (as timm validate.py)', 'Unset options take the values of the run\'s '
                                      'train.py arguments, else those of the model\'s pretrained config.')
group.add_argument('--data-dir', metavar='DIR', help='path to dataset (root dir)')
group.add_argument('--dataset', metavar='NAME', default='', help='dataset type + name ("<type>/<name>")')
group.add_argument('--split', metavar='NAME', default='validation', help='dataset split (default: validation)')
group.add_argument('--dataset-download', action='store_true', help='allow download of the dataset')
group.add_argument('--class-map', default='', metavar='FILENAME', help='class map file of the data\'s class folders')
group.add_argument('--img-size', type=_positive, metavar='N', help='input image dimension')
group.add_argument('--input-size', nargs=3, type=_positive, metavar='N', help='input dims (d h w)')
group.add_argument('--crop-pct', type=number_in(float, 0, 1, low_open=True), metavar='N', help='center crop pct')
group.add_argument('--crop-mode', choices=('center', 'squash', 'border'), help='input image crop mode')
group.add_argument('--mean', type=number_in(float), nargs='+', metavar='MEAN', help='mean (one, or per channel)')
group.add_argument('--std', type=number_in(float, 0, low_open=True), nargs='+', metavar='STD',
                   help='std deviation (one, or per channel)')
group.add_argument('--interpolation', default='', choices=INTERPOLATIONS + ('',), metavar='NAME',
                   help=f'image resize interpolation type ({", ".join(INTERPOLATIONS)})')
group = run_parser.add_argument_group('Model', 'Unset options take the values of the run\'s train.py arguments.')
group.add_argument('--use-ema', action='store_true', help='use the EMA weights of the checkpoint')
group.add_argument('--num-classes', type=_positive, help='number of classes')
group.add_argument('--in-chans', type=_positive, metavar='N', help='image input channels')
group.add_argument('--gp', choices=POOL_TYPES, metavar='POOL', help=f'global pool type ({", ".join(POOL_TYPES[:-1])})')
group.add_argument('--model-kwargs', nargs='*', default={}, type=name_value, action=ParseKwargs,
                   help='model arguments (num_splits=2 ...) over the run\'s')
group.add_argument('--device', help='device (default: cuda when available, else cpu)')


def models_from_args(args, device=None) -> List[tuple]:
    """(run, model) of each of `args.checkpoint` (paths) or, without them, of `args.model` (names); `args.model` with
    checkpoints gives one name for all, or one per checkpoint."""
    names, sources = list(args.model or []), list(args.checkpoint or [])
    if not names and not sources:
        raise RunError('Give --checkpoint RUN (a train.py output folder or checkpoint) or --model NAME '
                       '(hf-hub:ORG/NAME, local-dir:DIR, or a registered name with pretrained weights).')
    if sources and len(names) > 1 and len(names) != len(sources):
        raise RunError(f'{len(names)} model names for {len(sources)} checkpoints: give one model name for all '
                       f'checkpoints, or one per checkpoint in the same order.')
    overrides = dict(num_classes=args.num_classes, global_pool=args.gp, **args.model_kwargs,
                     in_chans=args.in_chans or (args.input_size[0] if args.input_size else None))
    out = []
    for i, source in enumerate(sources or names):
        run = load_run(source)
        if sources and names:
            run.args['model'] = names[i] if len(names) > 1 else names[0]  # the command line's over the run's
        out.append((run, create_run_model(run, use_ema=args.use_ema, overrides=overrides, device=device)))
    return out
