""" Export a timm `train.py` run of an SSM model as a Hugging Face Hub model folder

A run folder (`model_best.pth.tar`, `args.yaml`, `summary.csv`) or a single checkpoint becomes the folder that
timm's `hf-hub:` and `local-dir:` loaders read: `model.safetensors` and `config.json`, both written by
`timm.models.save_for_hf`, and a `README.md` model card. The folder is written under a temporary name next to its
destination and renamed into place only once it is complete and reproduces the checkpoint's logits.
"""
import argparse
import csv
import json
import os
import pickle
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import safetensors.torch
import torch
import torch.nn as nn
import yaml
from huggingface_hub.errors import HfHubHTTPError

import timm
from timm.data import create_dataset, resolve_input_data_config
from timm.models import clean_state_dict, load_model_config_from_hf, parse_model_name, save_for_hf
from timm.models._hub import load_model_config_from_path  # local-dir: configs; timm has no public name for it

import timm_ssm

__all__ = [
    'ExportError', 'Run', 'load_run', 'source_config', 'create_run_model', 'base_weights', 'run_data_config',
    'find_label_names', 'find_eval_results', 'prepare_pretrained_cfg', 'write_export', 'CHECKPOINT_NAME',
    'EXPORT_FILES',
]

CHECKPOINT_NAME = 'model_best.pth.tar'
EXPORT_FILES = ('model.safetensors', 'config.json', 'README.md')

# pretrained cfg fields that describe the weights the model was registered or loaded with, not those of this run
_SOURCE_FIELDS = (
    'tag', 'description', 'origin_url', 'paper_name', 'paper_ids', 'notes', 'label_names', 'label_descriptions')


class ExportError(Exception):
    """Bad input for an export or upload; the message says what is wrong and how to fix it."""


@dataclass
class Run:
    """A trained model as `train.py` left it."""
    checkpoint: Path
    state_dict: Dict[str, torch.Tensor]
    args: Dict[str, Any] = field(default_factory=dict)  # train.py arguments, empty when unknown
    args_file: Optional[Path] = None  # args.yaml they came from, None if from the checkpoint or unknown
    summary: List[Dict[str, float]] = field(default_factory=list)  # rows of summary.csv
    summary_file: Optional[Path] = None
    epoch: Optional[int] = None
    ema: bool = False  # state_dict holds the EMA weights
    has_ema: bool = False  # the checkpoint has EMA weights

    @property
    def args_source(self) -> str:
        if self.args_file is not None:
            return str(self.args_file)
        return f'the train.py arguments saved in {self.checkpoint}' if self.args else 'no train.py arguments'


def _load_checkpoint(path: Path) -> Dict[str, Any]:
    if path.name.endswith('.safetensors'):
        try:
            return safetensors.torch.load_file(path, device='cpu')
        except Exception as e:
            raise ExportError(
                f'Cannot read {path}: it is truncated or not a safetensors file ({e}). '
                f'If it was copied, copy it again.') from e
    try:
        # train.py saves its arguments as an argparse.Namespace, the one non-tensor object allowed here
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        if 'Weights only load failed' in str(e):
            raise ExportError(
                f'{path} holds pickled Python objects besides tensors and train.py arguments, which are not '
                f'loaded (weights_only=True). Save its weights alone with '
                f'torch.save(model.state_dict(), PATH) and export that file.') from e
        raise ExportError(f'Cannot read checkpoint {path}: it is not a PyTorch checkpoint ({e}).') from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise ExportError(
            f'Cannot read checkpoint {path}: it is truncated or not a PyTorch checkpoint ({e}). If it was copied '
            f'or train.py was still writing it, copy it again or wait for the epoch to finish.') from e


def _state_dict(checkpoint: Dict[str, Any], path: Path, ema: bool) -> Tuple[Dict[str, torch.Tensor], bool]:
    ema_key = next((k for k in ('state_dict_ema', 'model_ema') if isinstance(checkpoint.get(k), dict)), None)
    if ema:
        if ema_key is None:
            raise ExportError(
                f'--ema: {path} has no EMA weights (train.py saves them only when training with --model-ema). '
                f'Export without --ema.')
        state_dict = checkpoint[ema_key]
    elif isinstance(checkpoint.get('state_dict'), dict):
        state_dict = checkpoint['state_dict']
    elif isinstance(checkpoint.get('model'), dict):
        state_dict = checkpoint['model']
    else:
        state_dict = checkpoint  # a bare state dict
    if not state_dict or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ExportError(
            f'{path} is not a model checkpoint: it has no state_dict of tensors '
            f'(top-level entries: {", ".join(map(str, list(checkpoint)[:8]))}).')
    return clean_state_dict(state_dict), ema_key is not None


def _read_summary(path: Path) -> List[Dict[str, float]]:
    rows = []
    with open(path, newline='') as f:
        for row in csv.DictReader(f):
            try:
                rows.append({k: float(v) for k, v in row.items() if k and v not in (None, '')})
            except (TypeError, ValueError):
                continue  # a header repeated by a resumed run, or a line cut short
    return rows


def load_run(path: Union[str, Path], checkpoint: Optional[str] = None, ema: bool = False) -> Run:
    """Read a `train.py` output folder or a single checkpoint file.

    The weights are loaded with `weights_only=True`. `args.yaml` and `summary.csv` are read from the run folder
    (for a checkpoint file, from the folder it is in) when they are there; without `args.yaml`, the arguments
    that `train.py` saves in its checkpoints are used.

    Args:
        path: A `train.py` output folder, or a checkpoint file (`.pth.tar`, `.pth`, `.safetensors`).
        checkpoint: File name in the run folder to export instead of `model_best.pth.tar`.
        ema: Export the checkpoint's EMA weights.
    """
    path = Path(path)
    if not path.exists():
        raise ExportError(
            f'{path} does not exist: pass a train.py output folder (with {CHECKPOINT_NAME}, args.yaml, '
            f'summary.csv) or a checkpoint file.')
    if path.is_dir():
        run_dir, ckpt = path, path / (checkpoint or CHECKPOINT_NAME)
        if not ckpt.is_file():
            found = sorted(p.name for p in path.iterdir() if p.name.endswith(('.pth.tar', '.pth', '.safetensors')))
            hint = (f'it has {", ".join(found)}: pass one with --checkpoint NAME' if found else
                    'it has no checkpoint at all: is it a train.py output folder?')
            raise ExportError(
                f'No {ckpt.name} in {path} (train.py writes {CHECKPOINT_NAME} after each best evaluated epoch); '
                f'{hint}.')
    else:
        if checkpoint:
            raise ExportError(f'--checkpoint names a file in a run folder, but {path} is a file: pass its folder.')
        run_dir, ckpt = path.parent, path
    raw = _load_checkpoint(ckpt)
    if not isinstance(raw, dict):
        raise ExportError(f'{ckpt} is not a model checkpoint: it holds a {type(raw).__name__}, not a dict.')
    state_dict, has_ema = _state_dict(raw, ckpt, ema)

    run = Run(checkpoint=ckpt, state_dict=state_dict, ema=ema, has_ema=has_ema)
    args_file = run_dir / 'args.yaml'
    if args_file.is_file():
        try:
            run.args = yaml.safe_load(args_file.read_text()) or {}
        except yaml.YAMLError as e:
            raise ExportError(f'Cannot read {args_file} ({e}): is it the args.yaml that train.py wrote?') from e
        if not isinstance(run.args, dict):
            raise ExportError(f'{args_file} is not the args.yaml of a train.py run (no mapping of arguments).')
        run.args_file = args_file
    elif isinstance(raw.get('args'), argparse.Namespace):
        run.args = vars(raw['args'])
    summary_file = run_dir / 'summary.csv'
    if summary_file.is_file():
        run.summary, run.summary_file = _read_summary(summary_file), summary_file
    run.epoch = raw.get('epoch') if isinstance(raw.get('epoch'), int) else None
    return run


def _model_kwargs(args: Dict[str, Any]) -> Dict[str, Any]:
    """`timm.create_model` arguments of the model as train.py builds it, less those that do not shape it."""
    in_chans = args.get('in_chans') or (args['input_size'][0] if args.get('input_size') else None)
    kwargs = dict(
        in_chans=in_chans,
        num_classes=args.get('num_classes'),
        global_pool=args.get('gp'),
        bn_momentum=args.get('bn_momentum'),
        bn_eps=args.get('bn_eps'),
    )
    kwargs.update(args.get('model_kwargs') or {})
    return {k: v for k, v in kwargs.items() if v is not None}


def _check_keys(model: nn.Module, state_dict: Dict[str, torch.Tensor], what: str):
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f'{k}: checkpoint {tuple(state_dict[k].shape)}, model {tuple(v.shape)}'
        for k, v in expected.items() if k in state_dict and state_dict[k].shape != v.shape
    ]
    problems = []
    for label, items in (('missing from the checkpoint', missing), ('not in the model', unexpected),
                         ('of another shape', shapes)):
        if items:
            problems.append(f'{len(items)} keys {label} ({"; ".join(items[:3])}{"; ..." if len(items) > 3 else ""})')
    if problems:
        raise ExportError(
            f'The checkpoint does not match {what}: {", ".join(problems)}. Check that the checkpoint and '
            f'args.yaml come from the same run, or describe the checkpoint\'s model with --model and '
            f'--model-kwargs.')


def source_config(name: str, where: str) -> Optional[Tuple[Dict[str, Any], str, Dict[str, Any]]]:
    """The pretrained cfg, architecture and model arguments in the `config.json` of an `hf-hub:` or `local-dir:`
    model name, as `timm.create_model` reads them (`hf-hub:` from the Hugging Face cache where train.py left it,
    else from the Hub); None for a name of timm's registry.

    Args:
        name: A model name as train.py's --model takes it.
        where: Where the name comes from, for error messages.
    """
    try:
        source, model_id = parse_model_name(name)
    except ValueError as e:
        raise ExportError(f'{name} (from {where}) is not a model name: {e}') from None
    if source is None:
        return None
    try:
        if source == 'hf-hub':
            return load_model_config_from_hf(model_id)
        return load_model_config_from_path(model_id)
    except (OSError, ValueError, KeyError, TypeError, HfHubHTTPError) as e:
        raise ExportError(
            f'Cannot read the architecture of {name} (from {where}) from its config.json ({type(e).__name__}: '
            f'{e}). A run fine-tuned from hf-hub: weights needs their config.json, which train.py downloaded into '
            f'the Hugging Face cache: run where it ran, or pass the architecture with --model <arch>_ssm and its '
            f'options with --model-kwargs (e.g. num_classes=10 num_splits=4).') from e


def create_run_model(
        run: Run,
        model_name: Optional[str] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
) -> nn.Module:
    """Build the run's model as `train.py` did and load the checkpoint's weights into it (eval mode).

    An `hf-hub:` or `local-dir:` model name (a run fine-tuned from published weights) is built from its
    `config.json`: its architecture and model arguments, under those of the run.

    Args:
        run: The run.
        model_name: Architecture, `args.yaml`'s `model` if None.
        model_kwargs: `timm.create_model` arguments over those of the run (`num_classes`, `num_splits`, ...).
    """
    name = model_name or run.args.get('model')
    if not name:
        raise ExportError(
            f'{run.checkpoint} comes with no train.py arguments (no args.yaml next to it, none saved in it): name '
            f'its architecture with --model, and its options with --model-kwargs (e.g. num_classes=10 '
            f'num_splits=4).')
    where = run.args_source if not model_name else '--model'
    source = source_config(name, where)
    arch = source[1] if source else name
    try:
        timm_ssm.base_model_name(arch)
    except ValueError:
        what = f'{name} (architecture {arch} in its config.json)' if source else name
        raise ExportError(
            f'{what} (from {where}) is not an SSM model: this tool publishes models with a Split-and-Share head, '
            f'<arch>_ssm (e.g. {arch.split(".")[0]}_ssm).') from None
    kwargs = _model_kwargs(run.args)
    kwargs.update(model_kwargs or {})
    what = f'{name}({", ".join(f"{k}={v!r}" for k, v in kwargs.items())}) from {run.args_source}'
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except (RuntimeError, ValueError, TypeError) as e:
        raise ExportError(f'Cannot build {what}: {e}') from e
    _check_keys(model, run.state_dict, what)
    model.load_state_dict(run.state_dict)
    return model.eval()


def base_weights(run: Run, model: nn.Module, license: Optional[str] = None) -> Tuple[Optional[str], str]:
    """The Hub id of the pretrained weights the run started from (train.py's --pretrained), and the export's license.

    For `--model hf-hub:ORG/NAME`: `ORG/NAME`, and the license in its `config.json`; for `local-dir:`, no Hub id
    and the license in its `config.json`; for an architecture of timm's registry, the Hub id and license of its
    pretrained cfg (`model`'s). The Hub id is None when the weights came from a file (--pretrained-path) or for a run
    trained from scratch.

    Args:
        run: The run.
        model: The run's model, as `create_run_model` built it.
        license: The export's license, instead of that of the weights the run started from (else apache-2.0).
    """
    args = run.args
    if not args.get('pretrained'):
        return None, license or 'apache-2.0'
    name = args.get('model') or ''
    try:
        source, model_id = parse_model_name(name)
    except ValueError:
        source, model_id = None, name  # not a name timm takes: create_run_model was told the architecture
    if source is None:
        hub_id, base_license = model.pretrained_cfg.get('hf_hub_id'), model.pretrained_cfg.get('license')
    else:
        hub_id = model_id.partition('@')[0] if source == 'hf-hub' else None  # without a revision
        base_license = None
        if not license:
            try:
                base_license = source_config(name, run.args_source)[0].get('license')
            except ExportError as e:
                raise ExportError(f'{e} Or pass the weights\' license with --license.') from e
    return (None if args.get('pretrained_path') else hub_id), license or base_license or 'apache-2.0'


def run_data_config(run: Run, model: nn.Module) -> Dict[str, Any]:
    """Preprocessing of the run's evaluation, as train.py resolves it from its arguments and the model, against
    the model's input channels (the architecture's defaults where the run has no arguments)."""
    try:
        cfg = resolve_input_data_config(model, args=run.args)
    except ValueError as e:
        raise ExportError(f'The preprocessing in {run.args_source} does not fit the model: {e}') from e
    keys = ('input_size', 'interpolation', 'mean', 'std', 'crop_pct', 'crop_mode')
    return {k: tuple(cfg[k]) if isinstance(cfg[k], list) else cfg[k] for k in keys}


def _read_label_file(path: Path) -> List[str]:
    text = Path(path).read_text(encoding='utf-8')
    if Path(path).suffix == '.json':
        names = json.loads(text)
        if isinstance(names, dict):
            names = [names[k] for k in sorted(names, key=int)]
        return [str(n) for n in names]
    return [line.strip() for line in text.splitlines() if line.strip()]


def find_label_names(
        run: Run,
        num_classes: int,
        label_file: Optional[Union[str, Path]] = None,
) -> Tuple[Optional[List[str]], str]:
    """Class names in classifier order, and a line that says where they came from or why there are none.

    From `label_file` when given (one name per line, or a JSON list), else from the run's data set as timm's
    `create_dataset` opens it (class folders, a `--class-map`, a torchvision data set's `classes`); data sets that
    would be downloaded (hfds/, tfds/, wds/) are not opened.

    Args:
        run: The run.
        num_classes: Classes of the model.
        label_file: A file of class names.
    """
    if label_file is not None:
        try:
            names = _read_label_file(Path(label_file))
        except (OSError, ValueError, KeyError) as e:
            raise ExportError(f'Cannot read --label-names {label_file}: {e}') from e
        if len(names) != num_classes:
            raise ExportError(
                f'--label-names {label_file} has {len(names)} names, but the model has {num_classes} classes.')
        return names, f'{num_classes} from {label_file}'
    dataset, root = run.args.get('dataset') or '', run.args.get('data_dir') or run.args.get('data')
    prefix = dataset.partition('/')[0].lower() if '/' in dataset else ''
    if prefix not in ('', 'torch'):
        return None, f'none (not read from {dataset} data sets; pass --label-names FILE)'
    if not root:
        return None, 'none (no data set in the run\'s arguments; pass --label-names FILE)'
    try:
        ds = create_dataset(
            dataset,
            root=root,
            split=run.args.get('val_split') or 'validation',
            class_map=run.args.get('class_map') or None,
            is_training=False,
            download=False,
        )
    except Exception as e:  # a data set not on this machine: publish without names rather than fail
        return None, f'none (cannot open data set {dataset or root!r} here: {e}; pass --label-names FILE)'
    names = getattr(ds, 'classes', None)
    class_to_idx = getattr(getattr(ds, 'reader', None), 'class_to_idx', None)
    if names is None and class_to_idx:
        if sorted(class_to_idx.values()) == list(range(len(class_to_idx))):
            names = sorted(class_to_idx, key=class_to_idx.get)
    if not names or len(names) != num_classes:
        found = f'{len(names)} classes' if names else 'no class names'
        return None, f'none ({dataset or root} has {found}, the model {num_classes}; pass --label-names FILE)'
    return [str(n) for n in names], f'{num_classes} from {dataset or root}'


def _is_evaluate_json(result: Any) -> bool:
    return (isinstance(result, dict) and isinstance(result.get('data'), dict) and isinstance(result.get('models'), list)
            and all(isinstance(m, dict) and 'heads' in m for m in result['models']))


def find_eval_results(
        run: Run,
        num_classes: int,
        num_splits: int,
        eval_json: Optional[Union[str, Path]] = None,
) -> Tuple[Optional[Dict[str, Any]], str]:
    """Per-sub-classifier results of `python -m timm_ssm.evaluate --json` for the exported checkpoint.

    From `eval_json` when given, else from a `*.json` in the checkpoint's folder that `timm_ssm.evaluate` wrote
    for a checkpoint of the same file name, after it (train.py overwrites model_best.pth.tar as training goes on).
    Either way, of the weights exported: EMA or not (the JSON's `use_ema`).

    Args:
        run: The run.
        num_classes: Classes of the model.
        num_splits: Sub-classifiers of the model.
        eval_json: The evaluation's JSON file.

    Returns:
        The model's entry of the JSON with its `data` entry added (None if there is none), and a line that says
        where it came from or why there is none.
    """
    paths = [Path(eval_json)] if eval_json else sorted(run.checkpoint.parent.glob('*.json'))
    weights = 'EMA weights' if run.ema else 'weights' if not run.has_ema else 'non-EMA weights'
    for path in paths:
        try:
            if not eval_json and path.stat().st_mtime < run.checkpoint.stat().st_mtime:
                continue  # an evaluation of an earlier checkpoint of that name
            result = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            if eval_json:
                raise ExportError(f'Cannot read --eval-json {path}: {e}') from e
            continue
        if not _is_evaluate_json(result):
            if eval_json:
                raise ExportError(f'--eval-json {path} is not the --json output of python -m timm_ssm.evaluate.')
            continue
        entries = [m for m in result['models'] if m['heads'] and _of_weights(m, run)]
        found = [m for m in entries if Path(m.get('checkpoint') or '').name == run.checkpoint.name]
        if not found and eval_json and len(entries) == 1:
            found = entries  # the file the user named, with one Split-and-Share model in it
        if len(found) == 1 and (found[0].get('num_classes'), found[0].get('num_splits')) == (num_classes, num_splits):
            return dict(found[0], data=result['data']), f'{path}'
        if eval_json:
            others = [m for m in result['models'] if m['heads']]
            raise ExportError(
                f'--eval-json {path} has no evaluation of the {weights} of {run.checkpoint.name} with {num_classes} '
                f'classes and {num_splits} sub-classifiers (it has: '
                f'{", ".join(_describe_evaluation(m) for m in others) or "none"}). Evaluate the exported weights '
                f'with python -m timm_ssm.evaluate --json' + (' --use-ema' if run.ema else '') + '.')
    return None, (f'none (no python -m timm_ssm.evaluate --json output of the {weights} of the checkpoint next to '
                  f'it, written after it)')


def _of_weights(entry: Dict[str, Any], run: Run) -> bool:
    """The evaluation is of the weights exported, EMA or not (an entry without `use_ema`, of timm_ssm.evaluate
    before it recorded it, only for a checkpoint without EMA weights)."""
    use_ema = entry.get('use_ema', None if run.has_ema else False)
    return use_ema is not None and bool(use_ema) == run.ema


def _describe_evaluation(entry: Dict[str, Any]) -> str:
    use_ema = {True: ', EMA weights', False: ', non-EMA weights'}.get(entry.get('use_ema'), '')
    return f'{entry.get("checkpoint") or entry.get("model")}{use_ema}'


def prepare_pretrained_cfg(model: nn.Module, license: str):
    """Make `model.pretrained_cfg` describe the run's weights: no registered tag, paper or notes of the
    architecture's default weights, the run's license."""
    cfg = {k: v for k, v in model.pretrained_cfg.items() if k not in _SOURCE_FIELDS}
    cfg['license'] = license
    model.pretrained_cfg = cfg


def _verify(model: nn.Module, folder: Path, input_size: Sequence[int]):
    loaded = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    x = torch.randn((2, *input_size), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, actual = model(x), loaded(x)
    if actual.shape != expected.shape or not torch.allclose(actual, expected, rtol=1e-4, atol=1e-5):
        raise ExportError(
            f'The export does not reproduce the checkpoint\'s logits when loaded with local-dir: (largest '
            f'difference {(actual - expected).abs().max().item() if actual.shape == expected.shape else "shape"}). '
            f'This is a bug of hub_upload or timm_ssm: please report it.')


def write_export(
        model: nn.Module,
        out: Union[str, Path],
        data_config: Dict[str, Any],
        readme: str,
        label_names: Optional[Sequence[str]] = None,
        verify: bool = True,
) -> Path:
    """Write `model.safetensors`, `config.json` and `README.md` to a new folder `out`, all or nothing.

    Everything is written to a temporary folder beside `out`, checked, then renamed to `out`. An existing `out`
    is never touched; on any failure the temporary folder, and the parent folders created for `out`, are removed.

    Args:
        model: The model in eval mode, its `pretrained_cfg` prepared with `prepare_pretrained_cfg`.
        out: The folder to create.
        data_config: Preprocessing of the weights (input_size, interpolation, mean, std, crop_pct, crop_mode).
        readme: The model card.
        label_names: Class names in classifier order.
        verify: Load the export back with `local-dir:` and compare its logits to the model's.
    """
    out = Path(out)
    if out.exists() or out.is_symlink():
        raise ExportError(
            f'{out} already exists: an export never overwrites anything; remove it or pass another --out.')
    created = [p for p in (out.parent, *out.parent.parents) if not p.exists()]  # removed again on failure
    tmp = out.parent / f'.{out.name}.{uuid.uuid4().hex[:8]}.partial'
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        save_for_hf(
            model,
            tmp,
            model_config=dict(label_names=list(label_names)) if label_names else None,
            safe_serialization=True,
            data_config=data_config,
        )
        (tmp / 'README.md').write_text(readme, encoding='utf-8')
        written = sorted(p.name for p in tmp.iterdir())
        if written != sorted(EXPORT_FILES):
            raise ExportError(f'The export wrote {written}, expected {sorted(EXPORT_FILES)}.')
        if verify:
            _verify(model, tmp, data_config['input_size'])
        if out.exists():
            raise ExportError(f'{out} appeared while exporting: nothing was written to it, run again.')
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in created:  # deepest first; one that something else wrote to stays
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    return out
