""" One road from a timm train.py run to the model it trained

A run is a train.py output folder, one checkpoint (`.pth.tar`, `.pth`, `.safetensors`), or a model name
(`hf-hub:ORG/NAME`, `local-dir:DIR`, a registered name with pretrained weights). `load_run` reads it,
`create_run_model` builds the model as train.py did (`create_model` with the run's model name, num_classes,
in_chans, global pool, BatchNorm eps and momentum and model kwargs, then timm's `load_checkpoint`, EMA weights on
request) and `run_data_config` gives the data config train.py evaluated it with (`resolve_data_config` on the run's
arguments). What a command line sets goes over the run's. `timm_ssm.evaluate`, `timm_ssm.cam`, `timm_ssm.hub` and
the default run of `train_timm.sh` all take this road.
"""
import argparse
import hashlib
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import yaml

from timm.data import resolve_data_config
from timm.models import create_model, get_model_input_config, is_model, load_checkpoint, parse_model_name
from timm.utils import ParseKwargs

from .head import SplitShareHead

__all__ = [
    'Run', 'RunError', 'load_run', 'create_run_model', 'run_data_config', 'read_checkpoint', 'atomic_write',
    'weights_digest', 'class_names', 'split_head', 'run_parser', 'models_from_args', 'data_config_from_args',
    'check_data_dir', 'check_output_file', 'check_output_folder', 'CHECKPOINT_NAMES', 'DATA_ARGS',
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


def check_data_dir(
        path: Optional[Union[str, Path]],
        option: str = '--data-dir',
        dataset: str = '',
        download: bool = False,
):
    """Raise a RunError that says what is missing when a data folder does not exist (before timm's bare assert).

    Args:
        path: The folder, None or '' when not given.
        option: The option that gave it, for the message.
        dataset: The data set name (`torch/NAME` with `download` may create its folder).
        download: Whether the data set may be downloaded into the folder.
    """
    if download and '/' in (dataset or ''):
        return
    if not path:
        if dataset and '/' in dataset:  # torch/, hfds/, tfds/, wds/ readers find their data elsewhere or say so
            return
        raise RunError(f'No data folder: give {option} DIR (an image folder with class sub-folders, or the root '
                       f'folder of --dataset NAME).')
    path = Path(path).expanduser()
    if path.is_dir():
        return
    if path.exists():
        raise RunError(f'{option} {path} is a file, not a folder: give the folder that holds the data set.')
    parent = next((p for p in path.absolute().parents if p.is_dir()), None)
    raise RunError(f'{option} {path} does not exist (the nearest existing folder is {parent}): check the path, or '
                   f'prepare the data there first.')


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


def read_checkpoint(path: Union[str, Path]) -> Dict[str, Any]:
    """The entries of a checkpoint, loaded with `weights_only=True` (train.py's `args` Namespace allowed), tensors
    memory-mapped; {} for a `.safetensors` file, which holds weights only."""
    path = Path(path)
    if path.name.endswith('.safetensors'):
        from safetensors import safe_open
        try:
            with safe_open(str(path), framework='pt') as f:
                f.keys()
        except Exception as e:
            raise RunError(
                f'Cannot read {path}: it is truncated or not a safetensors file ({e}). If it was copied or is still '
                f'being written, copy it again or wait for it to finish.') from e
        return {}
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            try:
                checkpoint = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
            except RuntimeError as e:
                if 'zip' not in str(e):
                    raise
                checkpoint = torch.load(path, map_location='cpu', weights_only=True)  # legacy format: no mmap
    except pickle.UnpicklingError as e:
        with open(path, 'rb') as f:
            magic = f.read(4)
        if magic != b'PK\x03\x04' and not magic.startswith(b'\x80'):  # neither torch.save's zip nor a pickle
            raise RunError(f'{path} is not a checkpoint: it is neither a PyTorch checkpoint (torch.save) nor a '
                           f'safetensors file. Give the file train.py saved (model_best.pth.tar, '
                           f'last.pth.tar) or its run folder.') from e
        raise RunError(
            f'{path} holds pickled Python objects besides tensors and train.py arguments, which are not loaded '
            f'(weights_only=True). Save its weights alone with torch.save(model.state_dict(), PATH).') from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise RunError(
            f'Cannot read checkpoint {path}: it is truncated or not a PyTorch checkpoint ({e}). If it was copied or '
            f'train.py was still writing it, copy it again or wait for the epoch to finish.') from e
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
    return run


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
    args = {k: run.args.get(k) for k in DATA_ARGS}
    if 'input_size' in overrides or 'img_size' in overrides:
        args.update(input_size=None, img_size=None)
    args.update(overrides)
    chans = get_model_input_config(model)['input_size'][0]  # the channels the model was built with
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
                   help='path to class to idx mapping file (default: "")')
group.add_argument('--img-size', default=None, type=int, metavar='N', help='input image dimension')
group.add_argument('--input-size', default=None, nargs=3, type=int, metavar='N',
                   help='input all image dimensions (d h w, e.g. --input-size 3 224 224)')
group.add_argument('--crop-pct', default=None, type=float, metavar='N', help='input image center crop pct')
group.add_argument('--crop-mode', default=None, type=str, metavar='N',
                   help='input image crop mode (squash, border, center)')
group.add_argument('--mean', type=float, nargs='+', default=None, metavar='MEAN', help='override mean pixel value')
group.add_argument('--std', type=float, nargs='+', default=None, metavar='STD', help='override std deviation')
group.add_argument('--interpolation', default='', type=str, metavar='NAME', help='image resize interpolation type')
group = run_parser.add_argument_group('Model', 'Unset options take the values of the run\'s train.py arguments.')
group.add_argument('--use-ema', action='store_true', default=False, help='use the EMA weights of the checkpoint')
group.add_argument('--num-classes', type=int, default=None, help='number of classes')
group.add_argument('--in-chans', type=int, default=None, metavar='N', help='image input channels')
group.add_argument('--gp', default=None, type=str, metavar='POOL', help='global pool type (avg, max, avgmax, ...)')
group.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs,
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
