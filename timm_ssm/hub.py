""" Publish an SSM model trained with timm's train.py on the Hugging Face Hub, in timm's format

    python -m timm_ssm.hub RUN --repo-id ORG/NAME [--dry-run] [--out DIR] ...

RUN is a train.py output folder (model_best.pth.tar, else last.pth.tar; args.yaml, summary.csv) or one checkpoint.
The model is rebuilt as train.py built it (`timm_ssm.runs`) and exported with `timm.models.save_for_hf`
(`model.safetensors` and `config.json`, whose `model_args` name every head argument and leave `num_classes` to the
top level, as transformers' timm wrapper needs) beside a model card (`README.md`, huggingface_hub's `ModelCard`,
with `model-index` metadata). The export is written under a temporary name, loaded back with `local-dir:` and
compared with the checkpoint's logits, and only then moved into place. The card shows the run's `summary.csv` and,
when `python -m timm_ssm.evaluate --json` evaluated the same weights (whichever checkpoint file held them) on a
held-out split of the run's own data set, those results (`choose_evaluation` states the rule). The upload needs a
token (HF_TOKEN or `hf auth login`), which is never printed; --dry-run needs none and sends nothing.
The export loads back with `import timm_ssm; timm.create_model('hf-hub:ORG/NAME', pretrained=True)`, and with
transformers' `pipeline('image-classification', model='ORG/NAME')` after `import timm_ssm`.
"""
import argparse
import csv
import errno
import json
import os
import shutil
import sys
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import yaml
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, constants, get_token
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, RepositoryNotFoundError
from huggingface_hub.utils import validate_repo_id
from safetensors import SafetensorError

import timm
from timm.data import create_dataset
from timm.models import get_model_args, load_model_config_from_hf, parse_model_name, save_for_hf
from timm.utils import ParseKwargs

from .complexity import model_complexity
from .runs import (
    Run, RunError, check_output_folder, class_names, create_run_model, load_run, run_data_config, weights_digest)

__all__ = [
    'main', 'export', 'model_card', 'write_export', 'push_folder', 'check_repo_id', 'choose_evaluation', 'HubError',
    'EXPORT_FILES', 'PROJECT_URL']

EXPORT_FILES = ('README.md', 'config.json', 'model.safetensors')
CITATION = """@article{lee2022ssm,
  title   = {Exploiting Features with Split-and-Share Module},
  author  = {Lee, Jae-Min and Seo, Min-Seok and Kim, Dae-Han and Lee, Sang-Woo and Park, Jong-Chan and Choi, Dong-Geol},
  journal = {Electronics},
  volume  = {11},
  number  = {2},
  pages   = {235},
  year    = {2022},
  doi     = {10.3390/electronics11020235}
}"""
TIMM_CITATION = """@misc{rw2019timm,
  author = {Ross Wightman},
  title = {PyTorch Image Models},
  year = {2019},
  publisher = {GitHub},
  journal = {GitHub repository},
  doi = {10.5281/zenodo.4414861},
  howpublished = {\\url{https://github.com/huggingface/pytorch-image-models}}
}"""
PAPER_URL = 'https://doi.org/10.3390/electronics11020235'
PROJECT_URL = 'https://pypi.org/project/timm-ssm/'
DEFAULT_TAGS = ('image-classification', 'timm', 'timm-ssm', 'split-and-share')
HUB_DATASETS = {  # timm data set names with a data set on the Hub
    'torch/mnist': 'ylecun/mnist',
    'torch/fashion_mnist': 'zalando-datasets/fashion_mnist',
    'torch/cifar10': 'uoft-cs/cifar10',
    'torch/cifar100': 'uoft-cs/cifar100',
    'torch/imagenet': 'imagenet-1k',
}
# train.py arguments that hold paths of the machine it ran on: left out of a published card
_LOCAL_ARGS = ('data', 'data_dir', 'output', 'resume', 'initial_checkpoint', 'pretrained_path', 'class_map', 'config')
# pretrained cfg fields of the weights an architecture is registered with, not of this run's
_SOURCE_FIELDS = ('tag', 'hf_hub_id', 'url', 'file', 'source', 'description', 'origin_url', 'paper_name', 'paper_ids',
                  'notes', 'label_names', 'label_descriptions')


class HubError(Exception):
    """The Hub could not be reached or refused a request."""


def _summary(run: Run) -> List[Dict[str, float]]:
    """Rows of the run's summary.csv, skipping a header repeated by a resumed run or a line cut short."""
    path = run.folder / 'summary.csv' if run.folder else None
    rows = []
    if path is not None and path.is_file():
        with open(path, newline='') as f:
            for row in csv.DictReader(f):
                try:
                    rows.append({k: float(v) for k, v in row.items() if k and v not in (None, '')})
                except (TypeError, ValueError):
                    continue
    return rows


def label_names(run: Run, num_classes: int, label_file: Optional[str] = None) -> Tuple[Optional[List[str]], str]:
    """Class names in classifier order, and where they came from or why there are none: `label_file` (one name a
    line, or a JSON list), else the run's data set as timm's `create_dataset` opens it (not hfds/, tfds/, wds/)."""
    if label_file is not None:
        try:
            text = Path(label_file).read_text(encoding='utf-8')
            names = json.loads(text) if str(label_file).endswith('.json') else [n.strip() for n in text.splitlines()]
            names = [str(n) for n in (names.values() if isinstance(names, dict) else names) if str(n)]
        except (OSError, ValueError) as e:
            raise RunError(f'Cannot read --label-names {label_file}: {e}') from e
        if len(names) != num_classes:
            raise RunError(f'--label-names {label_file} has {len(names)} names, but the model has {num_classes} '
                           f'classes.')
        return names, f'{num_classes} from {label_file}'
    dataset, root = run.args.get('dataset') or '', run.args.get('data_dir') or run.args.get('data')
    if '/' in dataset and not dataset.lower().startswith('torch/'):
        return None, f'none (not read from {dataset} data sets; pass --label-names FILE)'
    if not root:
        return None, 'none (no data set in the run\'s arguments; pass --label-names FILE)'
    try:
        ds = create_dataset(dataset, root=root, split=run.args.get('val_split') or 'validation',
                            class_map=run.args.get('class_map') or None, is_training=False, download=False)
    except Exception as e:  # a data set not on this machine: publish without names rather than fail
        return None, f'none (cannot open data set {dataset or root!r} here: {e}; pass --label-names FILE)'
    names = class_names(ds)
    if not names or len(names) != num_classes:
        found = f'{len(names)} classes' if names else 'no class names'
        return None, f'none ({dataset or root} has {found}, the model {num_classes}; pass --label-names FILE)'
    return names, f'{num_classes} from {dataset or root}'


# split names as timm's data set factory reads an image folder's sub-folders
_TRAIN_SPLITS = ('train', 'training')
_VALIDATION_SPLITS = ('validation', 'val', 'valid', 'eval', 'evaluation')
_FOLDER_DATASETS = ('', 'folder', 'imagefolder', 'image_folder', 'tar', 'imagetar', 'image_tar')


def _data_root(args: Dict[str, Any]) -> Optional[str]:
    return args.get('data_dir') or args.get('data') or None


def _split_kind(run: Run, split: Optional[str]) -> str:
    """'test', 'validation', 'held-out' (another split) or 'train' (the run's --train-split or a name of it)."""
    split = split or ''
    if split == (run.args.get('train_split') or 'train') or split.lower() in _TRAIN_SPLITS:
        return 'train'
    if split.lower() == 'test':
        return 'test'
    if split == run.args.get('val_split') or split.lower() in _VALIDATION_SPLITS:
        return 'validation'
    return 'held-out'


def _other_data(run: Run, data: Dict[str, Any]) -> Optional[str]:
    """Why an evaluation's `data` is not the run's own data set (another data set or folder, a split the folder
    does not have), None when it is."""
    ours, theirs = (run.args.get('dataset') or '').lower(), (data.get('dataset') or '').lower()
    if (ours in _FOLDER_DATASETS) != (theirs in _FOLDER_DATASETS) or (ours not in _FOLDER_DATASETS and ours != theirs):
        return (f'data set {data.get("dataset") or "image folder"!r}, the run trained on '
                f'{run.args.get("dataset") or "an image folder"!r}')
    if ours not in _FOLDER_DATASETS:
        return None  # a named data set is the same whichever folder holds its files
    root, evaluated = _data_root(run.args), data.get('data_dir')
    same = root and evaluated and (os.path.normpath(root) == os.path.normpath(evaluated)
                                   or os.path.realpath(root) == os.path.realpath(evaluated))
    if not same:
        return f'folder {Path(evaluated).name if evaluated else "unknown"}, not the run\'s data folder'
    split = (data.get('split') or '').split('[')[0]
    synonyms = [s for names in (_TRAIN_SPLITS, _VALIDATION_SPLITS) if split in names for s in names]
    if Path(root).is_dir() and not any((Path(root) / s).exists() for s in (split, *synonyms)):
        return f'the data folder has no {split!r} split, so timm read the whole folder'
    return None


def choose_evaluation(
        run: Run,
        digest: str,
        eval_json: Optional[str] = None,
        ema: bool = False,
) -> Tuple[Optional[Dict[str, Any]], str, List[str]]:
    """The `python -m timm_ssm.evaluate --json` entry the card publishes for the exported weights (found by their
    digest, whichever checkpoint file held them), with the JSON's `data`, its file (`file`) and split kind (`kind`)
    added; a line that says which file and split it is, or why there is none; and a line per JSON left out.

    The rule: a JSON of the run folder that evaluated these weights on a held-out split of the run's own data set
    (its data set name, and for an image folder its folder): the test split before the validation split before
    another held-out split, file names in order among equals. The training split and other data are never chosen;
    `eval_json` names a file to publish whatever it measured (the card then says which split and data it is).
    """
    if eval_json:
        path = Path(eval_json)
        try:
            result = json.loads(path.read_text())
            found = [m for m in result['models'] if m.get('weights_sha256') == digest and m['heads']]
            data = dict(result['data'])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise RunError(f'--eval-json {path} is not the --json output of python -m timm_ssm.evaluate '
                           f'({type(e).__name__}: {e}).') from e
        if not found:
            raise RunError(
                f'--eval-json {path} has no evaluation of the exported weights: evaluate them with python -m '
                f'timm_ssm.evaluate --checkpoint {run.checkpoint} --json FILE' + (' --use-ema' if ema else '') + '.')
        kind, other = _split_kind(run, data.get('split')), _other_data(run, data)
        evaluation = dict(found[0], data=data, file=path.name, kind=kind, other_data=other)
        what = f'the {data.get("split")} split' + (f' of other data ({other})' if other else ' of the run\'s data set')
        return evaluation, f'{path} ({what}, as --eval-json asked)', []
    skipped, candidates = [], []
    for path in sorted(run.folder.glob('*.json')) if run.folder else []:
        try:
            result = json.loads(path.read_text())
            found = [m for m in result['models'] if m.get('weights_sha256') == digest and m['heads']]
            data = dict(result['data'])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # not an evaluation
        if not found:
            skipped.append(f'{path.name}: evaluated other weights')
            continue
        kind, other = _split_kind(run, data.get('split')), _other_data(run, data)
        if other:
            skipped.append(f'{path.name}: other data ({other})')
        elif kind == 'train':
            skipped.append(f'{path.name}: the training split {data.get("split")!r} (publish it with --eval-json)')
        else:
            rank = ('test', 'validation', 'held-out').index(kind)
            candidates.append((rank, path.name, dict(found[0], data=data, file=path.name, kind=kind, other_data=None)))
    if not candidates:
        return None, f'none (no python -m timm_ssm.evaluate --json output of these weights on a held-out split of ' \
                     f'the run\'s data set in {run.folder})', skipped
    _, name, evaluation = min(candidates, key=lambda c: c[:2])
    skipped += [f'{c[1]}: the {c[2]["data"].get("split")} split, after {evaluation["data"].get("split")}'
                for c in candidates if c[1] != name]
    return evaluation, f'{run.folder / name} (the {evaluation["data"].get("split")} split of the run\'s data set)', \
        skipped


def hub_dataset_id(dataset: Optional[str]) -> Optional[str]:
    """Hub data set id of a timm data set name (`torch/fashion_mnist`, `hfds/ORG/NAME`), None if unknown."""
    prefix, _, rest = (dataset or '').partition('/')
    return rest if prefix.lower() in ('hfds', 'hfids') and rest else HUB_DATASETS.get((dataset or '').lower())


def _source_config(name: str) -> Tuple[Dict[str, Any], str]:
    """The pretrained cfg and architecture (without tag) of a model name, from the config.json of an `hf-hub:`
    (Hugging Face cache, else the Hub) or `local-dir:` name; ({}, name) for a registered name."""
    source, model_id = parse_model_name(name)
    if source == 'hf-hub':
        cfg, arch, _ = load_model_config_from_hf(model_id)
    elif source == 'local-dir':
        config = json.loads((Path(model_id) / 'config.json').read_text())
        cfg, arch = config.get('pretrained_cfg', {}), config['architecture']
    else:
        cfg, arch = {}, model_id
    return cfg, arch.split('.')[0]


def base_weights(run: Run, model: nn.Module, license: Optional[str] = None) -> Tuple[Optional[str], str]:
    """The Hub id of the weights the run started from (train.py's --pretrained; None for a file or from scratch),
    and the export's license: `license`, else that of those weights, else apache-2.0."""
    name = run.args.get('model') or ''
    if not run.args.get('pretrained'):
        return None, license or 'apache-2.0'
    source, model_id = parse_model_name(name)
    if source is None:
        hub_id, base_license = model.pretrained_cfg.get('hf_hub_id'), model.pretrained_cfg.get('license')
    else:
        hub_id, base_license = model_id.partition('@')[0] if source == 'hf-hub' else None, None
        if not license:
            try:
                base_license = _source_config(name)[0].get('license')
            except Exception as e:
                raise RunError(f'Cannot read the license of {name} from its config.json ({type(e).__name__}: '
                               f'{e}): pass the weights\' license with --license.') from e
    return (None if run.args.get('pretrained_path') else hub_id), license or base_license or 'apache-2.0'


def _results(run: Run, data_config: Dict[str, Any], ema: bool) -> str:
    text = '\n## Results\n'
    rows = [r for r in _summary(run) if 'epoch' in r]
    if not rows:
        return text + '\nNo `summary.csv` came with the checkpoint, so this card reports no accuracy.\n'
    if not any('eval_top1' in r for r in rows):
        return text + (f'\n`summary.csv` has no evaluation (train.py ran without a validation set). Train loss '
                       f'after {len(rows)} epochs: {rows[-1].get("train_loss", float("nan")):.4f}.\n')
    rows = [r for r in rows if 'eval_top1' in r]
    metric = run.args.get('eval_metric') or 'top1'
    metric = metric if f'eval_{metric}' in rows[0] else 'top1'
    best = (min if metric == 'loss' else max)(rows, key=lambda r: r[f'eval_{metric}'])  # first best, as train.py
    # the published epoch: after --resume, train.py's saver starts over and model_best may not be the best row
    published = [r for r in rows if run.epoch is not None and int(r['epoch']) == run.epoch][-1:]
    table = [('Final', rows[-1])]
    if published and int(best['epoch']) == run.epoch:
        table.append((f'Published weights, best by {metric}', best))
    else:
        table += [('Published weights', r) for r in published] + [(f'Best (by {metric})', best)]
    columns = [c for c in (('Top-1 (%)', 'eval_top1', 2), ('Top-5 (%)', 'eval_top5', 2), ('Eval loss', 'eval_loss', 4))
               if c[1] in rows[0]]
    h, w = data_config['input_size'][1:]
    text += (f'\nMeasured by timm\'s `train.py` on the `{run.args.get("val_split") or "validation"}` split of '
             f'`{run.args.get("dataset") or "an image folder"}` at {h} x {w} (`summary.csv`, {len(rows)} evaluated '
             f'epoch{"s" if len(rows) > 1 else ""}; epochs count from 0):\n\n')
    text += '| | Epoch | ' + ' | '.join(c[0] for c in columns) + ' |\n|---|---:|' + '---:|' * len(columns) + '\n'
    for label, row in table:
        text += f'| {label} | {int(row["epoch"])} | ' + ' | '.join(f'{row[k]:.{d}f}' for _, k, d in columns) + ' |\n'
    weights = f'`{run.checkpoint.name}`' + (f', epoch {run.epoch}' if run.epoch is not None else '')
    text += f'\nThe published weights: {weights}{", EMA weights" if ema else ""}'
    text += '.\n' if published else ' (`summary.csv` has no evaluation of their epoch).\n'
    if run.args.get('model_ema') and not run.args.get('model_ema_force_cpu'):
        text += ('\nThe run used model EMA, and train.py then reports the EMA weights\' accuracy'
                 + ('.\n' if ema else ': these are the non-EMA weights (export with `--ema` for the EMA ones).\n'))
    return text


def _dataset_names(data: Dict[str, Any], dataset_id: Optional[str] = None) -> Tuple[str, str]:
    """The model-index `dataset_type` (a Hub data set id where known) and a readable name of evaluated data."""
    name = data.get('dataset') or ''
    if name.lower() not in _FOLDER_DATASETS:
        hub_id = dataset_id or hub_dataset_id(name)
        return hub_id or name.partition('/')[2] or name, f'{name} ({hub_id})' if hub_id else name
    folder = Path(data.get('data_dir') or 'images').name
    return dataset_id or 'imagefolder', f'image folder {folder}'


def _eval_results(evaluation: Dict[str, Any], dataset_id: Optional[str]) -> List[EvalResult]:
    """model-index entries of the averaged output's top-1 and top-5 (%) on the evaluated split."""
    data = evaluation['data']
    dataset_type, dataset_name = _dataset_names(data, dataset_id if not evaluation.get('other_data') else None)
    common = dict(task_type='image-classification', task_name='Image Classification', dataset_type=dataset_type,
                  dataset_name=dataset_name, dataset_split=data.get('split'))
    return [EvalResult(metric_type='accuracy', metric_name='Top-1 accuracy (%)',
                       metric_value=round(evaluation['top1'], 2), **common),
            EvalResult(metric_type='top_5_accuracy', metric_name='Top-5 accuracy (%)',
                       metric_value=round(evaluation['top5'], 2), **common)]


def _sub_classifiers(evaluation: Dict[str, Any]) -> str:
    data = evaluation['data']
    h, w = data['input_size'][1:]
    split = data.get('split')
    if evaluation.get('other_data'):
        why = (f'**not the run\'s data set** ({evaluation["other_data"]}), published because `--eval-json` named '
               f'it')
    elif evaluation['kind'] == 'train':
        why = '**the training split**, not held-out data, published because `--eval-json` named it'
    else:
        why = ('the held-out split of the run\'s own data set that the export chose: test before validation, never '
               'the training split')
    text = (
        f'\n## Sub-classifiers\n\nMeasured by `python -m timm_ssm.evaluate` on the `{split}` split of '
        f'`{data.get("dataset") or "an image folder"}` ({data.get("num_samples")} images at {h} x {w}'
        f'{"; the EMA weights" if evaluation.get("use_ema") else ""}; `{evaluation["file"]}`: {why}). '
        f'Sub-classifier FCj sees the first j groups of channels; the model\'s output is their average; the oracle '
        f'counts an image when any sub-classifier is right (an upper bound, it needs the label); the label-free rules '
        f'pick or combine sub-classifiers per image without it.\n\n'
        '| Output | Channels | Top-1 (%) | Top-5 (%) |\n|---|---|---:|---:|\n')
    for head in evaluation['heads']:
        text += f'| {head["name"]} | 0-{head["width"] - 1} | {head["top1"]:.2f} | {head["top5"]:.2f} |\n'
    text += f'| Averaged (the model) | all | {evaluation["top1"]:.2f} | {evaluation["top5"]:.2f} |\n'
    if evaluation.get('oracle'):
        text += f'| Oracle: any sub-classifier right | | {evaluation["oracle"]["top1"]:.2f} | |\n'
    for rule, result in (evaluation.get('selection') or {}).items():
        text += f'| Label-free: {rule} | | {result["top1"]:.2f} | {result["top5"]:.2f} |\n'
    return text


def _training(run: Run, base_model: Optional[str]) -> str:
    args = run.args
    if not run.trained:
        return '\n## Training\n\nThe checkpoint came without its train.py arguments.\n'
    source = f'fine-tuned from [{base_model}](https://huggingface.co/{base_model})' if base_model else (
        'fine-tuned from pretrained weights' if args.get('pretrained') or args.get('pretrained_path') else
        'trained from scratch')
    recipe = [f'{k.replace("_", " ")} {args[k]}' for k in ('epochs', 'batch_size', 'opt', 'lr', 'sched')
              if args.get(k) is not None]
    public = {k: v for k, v in args.items() if k not in _LOCAL_ARGS}
    return (f'\n## Training\n\n{source[0].upper() + source[1:]} with timm\'s `train.py` ({", ".join(recipe)}).\n'
            '\n<details>\n<summary>All train.py arguments (args.yaml, local paths left out)</summary>\n\n'
            f'```yaml\n{yaml.safe_dump(public, default_flow_style=False).rstrip()}\n```\n\n</details>\n')


def _usage(repo_id: str, arch: str, in_chans: int, num_classes: int) -> str:
    mode = 'L' if in_chans == 1 else 'RGB'
    top_k = min(5, num_classes)
    load = f"""from PIL import Image
import timm
import timm_ssm  # registers {arch} with timm: before any load
import torch
"""
    transforms = """data_config = timm.data.resolve_model_data_config(model)
transforms = timm.data.create_transform(**data_config, is_training=False)
"""
    if in_chans == 1:
        pipe = ("# the pipeline reads files and PIL images as RGB; this model takes 1-channel (grey) images: give\n"
                "# it the grey image as an (H, W, 1) array (transformers >= 5.13; with older ones, use the processor\n"
                "# below)\n"
                f"print(classifier(np.asarray(Image.open('image.png').convert('L'))[..., None], top_k={top_k}))")
    else:
        pipe = f"print(classifier('image.png', top_k={top_k}))"
    return f"""## How to load it

The architecture `{arch}` comes with the timm-ssm package ({PROJECT_URL}), a plugin of timm:

```bash
pip install timm-ssm
```

and `import timm_ssm` before loading, with timm or with transformers. Without it, timm stops with \
`RuntimeError: Unknown model ({arch})` and transformers with \
`ImportError: The model architecture '{arch}' is not supported in your version of timm`: \
upgrading timm does not help, installing and importing timm-ssm does.

## Model Usage
### Image Classification
```python
{load}
model = timm.create_model('hf-hub:{repo_id}', pretrained=True)
model = model.eval()

{transforms}
img = Image.open('image.png').convert('{mode}')
x = transforms(img).unsqueeze(0)
with torch.no_grad():
    logits = model(x)  # mean of the sub-classifiers' logits
    split_logits = model.forward_splits(x)  # (1, n, num_classes): each sub-classifier's logits

top_prob, top_idx = logits.softmax(dim=1).topk({top_k})
labels = model.pretrained_cfg.get('label_names') or list(range(model.num_classes))
print([(labels[i], round(p, 4)) for i, p in zip(top_idx[0].tolist(), top_prob[0].tolist())])
```

### Feature Map Extraction
```python
{load}
model = timm.create_model('hf-hub:{repo_id}', pretrained=True, features_only=True)  # the trunk's stages
model = model.eval()

{transforms}
img = Image.open('image.png').convert('{mode}')
with torch.no_grad():
    output = model(transforms(img).unsqueeze(0))
for o in output:
    print(o.shape)  # (1, channels, height, width) of each stage
```

### Image Embeddings
```python
{load}
model = timm.create_model('hf-hub:{repo_id}', pretrained=True, num_classes=0)  # no sub-classifiers
model = model.eval()

{transforms}
img = Image.open('image.png').convert('{mode}')
x = transforms(img).unsqueeze(0)
with torch.no_grad():
    embedding = model(x)  # (1, num_features): the pooled feature the sub-classifiers split
    # or, with the sub-classifiers kept: model.forward_head(model.forward_features(x), pre_logits=True)
print(embedding.shape)
```

### Transformers
```python
from PIL import Image
import numpy as np
import timm_ssm  # registers {arch} with timm, which transformers builds it with
import torch
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

classifier = pipeline('image-classification', model='{repo_id}')
{pipe}

processor = AutoImageProcessor.from_pretrained('{repo_id}')
model = AutoModelForImageClassification.from_pretrained('{repo_id}').eval()
inputs = processor(Image.open('image.png').convert('{mode}'), return_tensors='pt')
with torch.no_grad():
    logits = model(**inputs).logits  # the timm model's logits
print(model.config.id2label[logits.argmax(-1).item()])
```

`TimmWrapperModel.from_pretrained('{repo_id}')` gives the pooled feature (`pooler_output`), as
`num_classes=0` above.

### Fine-tuning
```python
import timm
import timm_ssm

# new final Linear layers for 7 classes; the trunk and the head's BatchNorm keep these weights
model = timm.create_model('hf-hub:{repo_id}', pretrained=True, num_classes=7)
```
"""


def _papers(cfg: Dict[str, Any]) -> List[Tuple[str, str]]:
    """(name, link) of the papers a timm pretrained cfg names (`paper_ids`, `paper_name`)."""
    ids = cfg.get('paper_ids') or ()
    ids = [ids] if isinstance(ids, str) else list(ids)
    links = [f'https://arxiv.org/abs/{i.split(":", 1)[1]}' if i.lower().startswith('arxiv:') else i for i in ids]
    name = cfg.get('paper_name')
    if not links:
        return [(name, '')] if name else []
    return [(name or i, link) for i, link in zip(ids, links)]


def model_card(
        run: Run,
        model: nn.Module,
        repo_id: str,
        data_config: Dict[str, Any],
        license: str,
        ema: bool = False,
        tags: Sequence[str] = (),
        dataset_id: Optional[str] = None,
        base_model: Optional[str] = None,
        label_names: Optional[List[str]] = None,
        evaluation: Optional[Dict[str, Any]] = None,
        trunk_papers: Sequence[Tuple[str, str]] = (),
) -> ModelCard:
    """The model card of an exported SSM model: how to install and load it (timm, transformers), timm's sections
    (Model Details, Model Usage, Citation) with the run's `summary.csv` results, the evaluation of the exported
    weights (`evaluation`, as `choose_evaluation` gives it; also the `model-index` metadata) and the training
    arguments; metadata from huggingface_hub's `ModelCardData`.

    Args:
        trunk_papers: (name, link) of the papers of the trunk's pretrained weights, cited beside the SSM paper.
    """
    head = model.head
    arch = model.pretrained_cfg['architecture']
    norm = 'all n prefixes pass' if head.norm_all else 'the first n - 1 prefixes pass'
    in_chans, h, w = data_config['input_size']
    cost = model_complexity(model, data_config['input_size'])
    details = [
        '- **Model Type:** Image classification / feature backbone',
        '- **Model Stats:**',
        f'  - Params (M): {cost["param_count"] / 1e6:.3f} (head: {cost["head_param_count"] / 1e6:.3f})',
        f'  - GMACs: {cost["macs"] / 1e9:.3g} (head: {cost["head_macs"]:,} MACs)',
        f'  - Image size: {h} x {w}',
        f'  - Sub-classifiers (n): {head.num_splits}, on the first {", ".join(map(str, head.widths))} channels',
        f'  - Classes: {model.num_classes}',
    ]
    if in_chans != 3:
        details.append(f'  - Input channels: {in_chans}')
    details += ['- **Papers:**', f'  - Exploiting Features with Split-and-Share Module: {PAPER_URL}']
    details += [f'  - {name} (the trunk\'s pretrained weights): {link}'.rstrip(': ') for name, link in trunk_papers]
    if dataset_id:
        details.append(f'- **Dataset:** {dataset_id}')
    elif run.args.get('dataset'):
        details.append(f'- **Training data:** `{run.args["dataset"]}` (timm data set name)')
    if base_model:
        details.append(f'- **Initialized from:** {base_model}')
    if label_names:
        details.append(f'- **Class names:** {", ".join(label_names[:10])}{", ..." if len(label_names) > 10 else ""}')
    details.append(f'- **Library:** timm-ssm, {PROJECT_URL} (a plugin of timm: `import timm_ssm`)')
    citations = f'```bibtex\n{CITATION}\n```\n\n```bibtex\n{TIMM_CITATION}\n```\n'
    if trunk_papers:
        citations += '\nThe trunk\'s pretrained weights: ' + '; '.join(
            f'{name}, {link}' if link else name for name, link in trunk_papers) + '.\n'
    install, usage = _usage(repo_id, arch, in_chans, model.num_classes).split('## Model Usage\n')
    usage = '## Model Usage\n' + usage
    body = (
        f'# Model card for {repo_id.split("/")[-1]}\n\n'
        f'A `{arch.removesuffix("_ssm")}` image classifier with a Split-and-Share Module (SSM) head (Lee et al., '
        f'Electronics 2022), trained with timm\'s `train.py` and timm-ssm. The head splits the pooled feature of '
        f'C = {head.in_features} channels into n = {head.num_splits} groups; sub-classifier i sees the first i groups '
        f'({norm} BatchNorm1d + ReLU) and the output is the mean of the n sub-classifiers\' logits. Load it with '
        f'`pip install timm-ssm` and `import timm_ssm` (which registers `{arch}` with timm), then '
        f'`timm.create_model(\'hf-hub:{repo_id}\', pretrained=True)`, or with transformers.\n\n'
        + install + '\n## Model Details\n' + '\n'.join(details) + '\n\n' + usage
        + _results(run, data_config, ema)
        + (_sub_classifiers(evaluation) if evaluation else '')
        + _training(run, base_model)
        + f'\n## Citation\n{citations}')
    data = ModelCardData(
        library_name='timm', pipeline_tag='image-classification', license=license,
        tags=list(dict.fromkeys([*DEFAULT_TAGS, *tags])), datasets=[dataset_id] if dataset_id else None,
        base_model=base_model, model_name=repo_id.split('/')[-1] if evaluation else None,
        eval_results=_eval_results(evaluation, dataset_id) if evaluation else None)
    return ModelCard(f'---\n{data.to_yaml()}\n---\n\n{body}')


def is_export(folder: Path) -> bool:
    """Whether `folder` holds an export of this tool and nothing else (what a dry run may replace)."""
    try:
        if sorted(p.name for p in folder.iterdir()) != sorted(EXPORT_FILES) or folder.is_symlink():
            return False
        config = json.loads((folder / 'config.json').read_text())
        meta = ModelCard.load(folder / 'README.md').data
    except (OSError, ValueError):
        return False
    return str(config.get('architecture', '')).endswith('_ssm') and 'timm-ssm' in (meta.tags or [])


def check_out(out: Path, option: str, replace: bool = False):
    """Raise a RunError, before anything is exported, when `out` cannot take the export: it exists (and is not an
    earlier export that `replace` allows to replace), or its folder cannot be written."""
    if (out.exists() or out.is_symlink()) and not (replace and is_export(out)):
        raise RunError(f'{out} already exists: an export never overwrites anything; remove it or pass another --out.')
    check_output_folder(out.parent if out.exists() else out, option)  # the folder the export is renamed in


def _config_json(path: Path, model: nn.Module):
    """Complete save_for_hf's config.json: `num_classes` only at the top level (transformers' timm wrapper passes
    it to create_model itself, a second one in `model_args` is a TypeError), every head argument in
    `model_args`, and the trunk's pooling as `global_pool`, as timm's own exports have it."""
    config = json.loads(path.read_text())
    args = {k: v for k, v in config.get('model_args', {}).items() if k != 'num_classes'}
    head = model.head
    config['model_args'] = dict(args, num_splits=head.num_splits, norm_all=head.norm_all, split=head.split)
    pool = get_model_args(model.trunk).get('global_pool')
    if pool:
        config.setdefault('global_pool', pool)
    order = ('architecture', 'num_classes', 'num_features', 'global_pool', 'label_names', 'label_descriptions',
             'model_args', 'pretrained_cfg')  # save_for_hf's
    config = dict({k: config[k] for k in order if k in config}, **{k: v for k, v in config.items() if k not in order})
    with open(path, 'w') as f:
        json.dump(config, f, indent=2)


def write_export(
        model: nn.Module,
        out: Path,
        data_config: Dict[str, Any],
        card: ModelCard,
        label_names: Optional[Sequence[str]] = None,
        replace: bool = False,
) -> Path:
    """Write `model.safetensors`, `config.json` (`timm.models.save_for_hf`) and `README.md` to the new folder
    `out`, all or nothing: in a temporary folder beside it, loaded back with `local-dir:` and compared with the
    model's logits, then renamed. An existing `out` is never touched, unless `replace` and it is an earlier export
    (`is_export`), which is then replaced once the new one passed its check; on failure, the temporary folder and
    the parent folders made for `out` are removed. A write that fails (a full disk, a read-only folder) is a
    RunError that says so."""
    out = Path(out)
    check_out(out, 'The export folder', replace)
    created = [p for p in (out.parent, *out.parent.parents) if not p.exists()]
    tmp = out.parent / f'.{out.name}.{uuid.uuid4().hex[:8]}.partial'
    old = out.parent / f'.{out.name}.{uuid.uuid4().hex[:8]}.old' if out.exists() else None
    try:
        try:
            tmp.mkdir(parents=True)
            save_for_hf(model, tmp, model_config=dict(label_names=list(label_names)) if label_names else None,
                        safe_serialization=True, data_config=data_config)
            _config_json(tmp / 'config.json', model)
            card.save(tmp / 'README.md')
            written = sorted(p.name for p in tmp.iterdir())
            if written != sorted(EXPORT_FILES):
                raise RunError(f'The export wrote {written}, expected {sorted(EXPORT_FILES)}.')
            umask = os.umask(0)
            os.umask(umask)
            for name in written:  # as open() makes files, whatever the writer's own choice
                os.chmod(tmp / name, 0o666 & ~umask)
        except (OSError, SafetensorError) as e:
            if isinstance(e, SafetensorError) and 'I/O error' not in str(e):
                raise
            full = getattr(e, 'errno', None) == errno.ENOSPC or 'os error 28' in str(e)
            raise RunError(
                f'Cannot write the export to {out}: ' + (
                    f'the disk is full ({e}). Free some space, or pass --out DIR on another disk' if full else
                    f'{e}. Pass --out DIR in a folder you can write') + '; nothing was written.') from None
        loaded = timm.create_model(f'local-dir:{tmp}', pretrained=True).eval()
        x = torch.randn((2, *data_config['input_size']), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            expected, actual = model(x), loaded(x)
        if actual.shape != expected.shape or not torch.allclose(actual, expected, rtol=1e-4, atol=1e-5):
            raise RunError('The export does not reproduce the checkpoint\'s logits when loaded with local-dir:. This '
                           'is a bug of timm_ssm: please report it.')
        if old is not None:
            os.rename(out, old)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists() and not out.exists():
            os.rename(old, out)  # the earlier export, as it was
        for folder in created:  # deepest first; one that something else wrote to stays
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


def check_repo_id(repo_id: str):
    """Raise RunError unless `repo_id` is a valid `ORG/NAME` model repository id."""
    if repo_id.startswith('hf-hub:'):
        raise RunError(f'--repo-id takes ORG/NAME without the hf-hub: prefix: --repo-id {repo_id[7:]}')
    org, sep, name = repo_id.partition('/')
    if not sep or not org or not name or '/' in name:
        raise RunError(f'--repo-id must be ORG/NAME (your user or organization, a slash, the model name, e.g. '
                       f'alice/resnet50-ssm-fashion-mnist), got {repo_id!r}.')
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise RunError(f'--repo-id {repo_id!r} is not a valid Hub repository id: {e}') from None


@contextmanager
def _hub_errors(action: str):
    """huggingface_hub's HTTP errors and those of reaching the Hub (OSError, the HTTP client's) as HubError."""
    clients = tuple(e for e in (getattr(sys.modules.get(m), n, None) for m, n in (
        ('requests', 'RequestException'), ('httpx', 'HTTPError'), ('httpx2', 'HTTPError'))) if isinstance(e, type))
    try:
        yield
    except HfHubHTTPError as e:
        raise HubError(f'the Hub refused to {action}: {e}') from e
    except (OSError, *clients) as e:
        if getattr(e, 'response', None) is not None:
            raise HubError(f'the Hub refused to {action}: {e}') from e
        raise HubError(f'cannot reach the Hub at {constants.ENDPOINT} to {action}: {type(e).__name__}: {e}') from e


def check_remote(api: HfApi, repo_id: str, private: bool = False) -> str:
    """Check, before exporting, that the token is valid and that --private can be honored; the token's user."""
    user = api.whoami()['name']
    if private:
        try:
            public = not api.repo_info(repo_id).private
        except RepositoryNotFoundError:
            public = False
        if public:
            raise RunError(f'--private: {repo_id} exists and is public, and uploading does not change that. Make it '
                           f'private in its settings on the Hub first, or upload without --private.')
    return user


def push_folder(
        api: HfApi,
        folder: Path,
        repo_id: str,
        commit_message: str,
        private: bool = False,
        revision: Optional[str] = None,
        overwrite_card: bool = False,
):
    """Upload the checked export folder as `timm.models.push_to_hf_hub` uploads the folder it writes (create the
    repo, keep a README.md already there, `upload_folder`); the commit info and whether a README.md was kept."""
    api.create_repo(repo_id, private=True if private else None, exist_ok=True)  # None: the Hub's default
    if revision and revision != 'main':
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    keep_card = not overwrite_card and api.file_exists(repo_id, 'README.md', revision=revision)
    info = api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision, commit_message=commit_message,
                             ignore_patterns=['README.md'] if keep_card else None)
    return info, keep_card


parser = argparse.ArgumentParser(
    prog='python -m timm_ssm.hub',
    description='Export an SSM model trained with timm\'s train.py in timm\'s Hugging Face Hub format '
                '(model.safetensors, config.json, README.md model card) and upload it.')
parser.add_argument('run', metavar='RUN', help='train.py output folder (model_best.pth.tar, else last.pth.tar, '
                                               'args.yaml, summary.csv) or a checkpoint')
parser.add_argument('--repo-id', required=True, metavar='ORG/NAME', help='Hub repository: user or org / name')
parser.add_argument('--out', metavar='DIR', default=None,
                    help='new folder for the export (never overwritten); default: RUN/hub-ORG--NAME with --dry-run '
                         '(which a later dry run replaces), a temporary folder for an upload')
parser.add_argument('--dry-run', action='store_true',
                    help='write the export and print what would be uploaded; needs no token and sends nothing')
group = parser.add_argument_group('Weights')
group.add_argument('--checkpoint', metavar='NAME', default=None,
                   help='checkpoint file in the run folder (default: model_best.pth.tar, else last.pth.tar)')
group.add_argument('--ema', action='store_true', help='export the checkpoint\'s EMA weights')
group.add_argument('--model', metavar='NAME', default=None,
                   help='model name (<arch>_ssm), when the run has no train.py arguments or to override them')
group.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs, metavar='KEY=VALUE',
                   help='model arguments over the run\'s, as train.py\'s --model-kwargs')
group = parser.add_argument_group('Model card')
group.add_argument('--license', default=None,
                   help='license id (default: that of the pretrained weights the run started from, else apache-2.0)')
group.add_argument('--tag', action='append', default=[], dest='tags', metavar='TAG', help='extra Hub tag (repeatable)')
group.add_argument('--dataset-id', default=None, metavar='ORG/NAME',
                   help='Hub data set id for the card metadata (default: from the run\'s --dataset)')
group.add_argument('--eval-json', default=None, metavar='FILE',
                   help='per-sub-classifier results, the --json output of python -m timm_ssm.evaluate for these '
                        'weights (default: found in the run folder)')
group.add_argument('--label-names', default=None, metavar='FILE',
                   help='class names, one per line or a JSON list (default: from the run\'s data set)')
group = parser.add_argument_group('Upload')
group.add_argument('--private', action='store_true', help='create the repository private')
group.add_argument('--revision', default=None, metavar='BRANCH', help='branch to commit to (default: main)')
group.add_argument('--commit-message', default=None, metavar='MESSAGE', help='commit message')
group.add_argument('--overwrite-card', action='store_true',
                   help='replace a README.md that the repository already has (kept by default)')


def _size(nbytes: float) -> str:
    for unit in ('B', 'kB', 'MB', 'GB'):
        if nbytes < 1000 or unit == 'GB':
            return f'{nbytes:.0f} {unit}' if unit == 'B' else f'{nbytes:.1f} {unit}'
        nbytes /= 1000


def export(args, out: Path, replace: bool = False) -> nn.Module:
    """Export the run the parsed command line names into the new folder `out` (or over an earlier export there,
    with `replace`); the exported model."""
    run = load_run(args.run, args.checkpoint)
    if run.checkpoint is None:
        raise RunError(f'{args.run} is a model name: give a train.py output folder or checkpoint.')
    print(f'Checkpoint: {run.checkpoint}' + (f' (epoch {run.epoch})' if run.epoch is not None else '')
          + (', EMA weights' if args.ema else ''))
    if run.has_ema and not args.ema:
        print('  It also has EMA weights: pass --ema to publish those instead.')
    print(f'Arguments: {run.args_source}')
    name = args.model or run.args.get('model') or ''
    try:
        arch = _source_config(name)[1]
    except Exception:  # create_run_model says why
        arch = None
    if arch and not arch.endswith('_ssm'):
        raise RunError(f'{name} (architecture {arch}, from {run.args_source if not args.model else "--model"}) is not '
                       f'an SSM model: this tool publishes models with a Split-and-Share head, <arch>_ssm (e.g. '
                       f'{arch}_ssm).')
    model = create_run_model(run, args.model, use_ema=args.ema, overrides=args.model_kwargs)
    data_config = run_data_config(run, model)
    data_config = {k: data_config[k] for k in ('input_size', 'interpolation', 'mean', 'std', 'crop_pct', 'crop_mode')}
    names, note = label_names(run, model.num_classes, args.label_names)
    print(f'Label names: {note}')
    evaluation, note, skipped = choose_evaluation(run, weights_digest(model), args.eval_json, args.ema)
    print(f'Evaluation on the card: {note}')
    for line in skipped:
        print(f'  left out {line}')
    base_model, license = base_weights(run, model, args.license)
    # the papers of the trunk's weights: those of timm's pretrained tag the run started from
    papers = _papers(model.pretrained_cfg) if run.args.get('pretrained') and parse_model_name(
        run.args.get('model') or '')[0] is None else []
    model.pretrained_cfg = dict({k: v for k, v in model.pretrained_cfg.items() if k not in _SOURCE_FIELDS},
                                license=license)
    card = model_card(
        run, model, args.repo_id, data_config, license, ema=args.ema, tags=args.tags,
        dataset_id=args.dataset_id or hub_dataset_id(run.args.get('dataset')),
        base_model=base_model, label_names=names, evaluation=evaluation, trunk_papers=papers)
    if replace and out.exists():
        print(f'Replacing the earlier dry run in {out}.')
    write_export(model, out, data_config, card, label_names=names, replace=replace)
    print(f'Model: {model.pretrained_cfg["architecture"]}, {model.num_classes} classes, {model.head.num_splits} '
          f'sub-classifiers, {sum(p.numel() for p in model.parameters()) / 1e6:.3f} M parameters; the export loads '
          f'back with local-dir: and gives the checkpoint\'s logits.')
    print(f'Wrote {out}:')
    for p in sorted(out.iterdir()):
        print(f'  {p.name:<20} {_size(p.stat().st_size):>10}')
    return model


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run `python -m timm_ssm.hub ARGS`; the exit code (2: bad input, 1: the Hub failed)."""
    args = parser.parse_args(argv)
    try:
        check_repo_id(args.repo_id)
        run_dir = Path(args.run) if Path(args.run).is_dir() else Path(args.run).parent
        # a dry run's default folder is its own: a second dry run replaces the first (and nothing else)
        replace = args.dry_run and not args.out
        out = Path(args.out) if args.out else run_dir / f'hub-{args.repo_id.replace("/", "--")}' if args.dry_run \
            else None
        if out is not None:
            try:
                check_out(out, '--out' if args.out else 'The dry run\'s export folder', replace)
            except RunError as e:
                raise RunError(f'{e} (--dry-run writes into the run folder unless --out DIR names another.)'
                               if not args.out else str(e)) from None
        where = f'{constants.ENDPOINT}/{args.repo_id}' + (f' (branch {args.revision})' if args.revision else '')
        if args.dry_run:
            export(args, out, replace)
            print(f'Dry run: would upload these files to {where}'
                  + ('; a README.md already there would be kept' if not args.overwrite_card else '')
                  + '. Nothing was sent.')
            return 0
        token = get_token()
        if not token:
            raise RunError('No Hugging Face token: set HF_TOKEN, or log in once with `hf auth login` (older '
                           'huggingface_hub: `huggingface-cli login`). --dry-run needs no token.')
        api = HfApi(token=token, library_name='timm', library_version=timm.__version__)
        with _hub_errors('check the token and repository'):
            user = check_remote(api, args.repo_id, args.private)
        print(f'Hub: {constants.ENDPOINT}, as {user}')
        with tempfile.TemporaryDirectory(prefix='timm_ssm_hub_') as tmp:
            folder = out or Path(tmp) / args.repo_id.split('/')[-1]
            arch = export(args, folder).pretrained_cfg['architecture']
            message = args.commit_message or f'Add {arch} weights (timm-ssm export of a timm train.py run)'
            print(f'Uploading to {where} ...')
            with _hub_errors('upload'):
                info, kept_card = push_folder(api, folder, args.repo_id, message, private=args.private,
                                              revision=args.revision, overwrite_card=args.overwrite_card)
        if kept_card:
            print('The repository already has a README.md: kept it (pass --overwrite-card to replace it).')
        print(f'Uploaded: {info.commit_url}')
        print(f'Load it with: import timm, timm_ssm; timm.create_model(\'hf-hub:{args.repo_id}\', pretrained=True) '
              f'(pip install timm-ssm: {PROJECT_URL})')
        return 0
    except RunError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    except HubError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
