""" Publish an SSM model trained with timm's train.py on the Hugging Face Hub, in timm's format

`python -m timm_ssm.hub RUN --repo-id ORG/NAME [--dry-run]`: timm's `save_for_hf` writes the run's model,
huggingface_hub's `ModelCard.from_template` fills `model_card.md`, and `create_repo` + `upload_folder` upload it.
"""
import argparse
import csv
import json
import os
import re
import shutil
import stat
import sys
import tempfile
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch.nn as nn
import yaml
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, constants, get_token
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import validate_repo_id
from safetensors import SafetensorError

import timm
from timm.models import get_model_args, get_pretrained_cfg, load_model_config_from_hf, parse_model_name, save_for_hf
from timm.utils import ParseKwargs

from .complexity import model_complexity
from .files import RunError, check_output_folder
from .runs import (
    SPLIT_SYNONYMS, Run, class_names, create_run_model, load_run, name_value, run_data_config, split_folder, split_head,
    weights_digest)

__all__ = ['main', 'export', 'model_card', 'write_export', 'read_evaluation', 'HubError']

EXPORT_FILES = ('README.md', 'config.json', 'model.safetensors')
TEMPLATE = Path(__file__).with_name('model_card.md')
PROJECT_URL = 'https://pypi.org/project/timm-ssm/'
DEFAULT_TAGS = ('image-classification', 'timm', 'timm-ssm', 'split-and-share')
HUB_DATASETS = {  # timm data set names with a data set on the Hub
    'torch/mnist': 'ylecun/mnist', 'torch/fashion_mnist': 'zalando-datasets/fashion_mnist',
    'torch/cifar10': 'uoft-cs/cifar10', 'torch/cifar100': 'uoft-cs/cifar100', 'torch/imagenet': 'imagenet-1k'}
# train.py arguments that hold paths of the machine it ran on, never on a card
_LOCAL_ARGS = ('data', 'data_dir', 'output', 'resume', 'initial_checkpoint', 'pretrained_path', 'class_map', 'config')
# pretrained cfg fields of the weights the architecture is registered with, not of this run's
_SOURCE_FIELDS = ('tag', 'hf_hub_id', 'url', 'file', 'source', 'description', 'origin_url', 'paper_name', 'paper_ids',
                  'notes', 'label_names', 'label_descriptions')
_EVALUATED = {
    'held-out': "the held-out split `{}` of the run's data set",
    'train': '**the training images** (`{}`), not held-out data',
    'other': "**data not known to be held out** (`{}`: not the run's data set, or the run names none)"}


class HubError(Exception):
    """The Hub could not be reached or refused a request."""


def label_names(run: Run, model, label_file: Optional[str] = None) -> Tuple[Optional[List[str]], str]:
    """Class names in classifier order from `label_file` (one a line, or a JSON list), else from the run's data set
    as timm's `create_dataset` opens it; and where they came from, or why there are none."""
    if not label_file:
        names = class_names(run, model)
        return names, ("from the run's training classes" if names else 'none (give them with --label-names FILE)')
    try:
        text = Path(label_file).read_text(encoding='utf-8')
        names = [str(n).strip() for n in (json.loads(text) if label_file.endswith('.json') else text.splitlines())]
    except (OSError, ValueError) as e:
        raise RunError(f'Cannot read --label-names {label_file} ({e}): give a file of class names, one a line.')
    names = [n for n in names if n]
    if len(names) != model.num_classes:
        raise RunError(f'--label-names {label_file} does not have the model\'s {model.num_classes} class names: give '
                       f'one a line, in class order.')
    return names, f'from {label_file}'


def _evaluated_split(run: Run, data: Dict[str, Any]) -> Tuple[str, str]:
    """Whether an evaluation's images are held out from the run's training images ('held-out', 'train', 'other'),
    and its split as the card names it: the folder timm read, relative to the run's data folder."""
    ours, theirs = run.args.get('dataset') or '', data.get('dataset') or ''
    root = run.args.get('data_dir') or run.args.get('data')
    try:
        train = split_folder(root, run.args.get('train_split') or 'train', ours)
        folder = data.get('split_folder') or split_folder(data.get('data_dir'), data.get('split'), theirs)
    except RunError:  # the run's data is not on this machine
        return 'other', data.get('split') or 'all splits'
    train, folder = train and str(train), folder and os.path.realpath(folder)
    if not root or (train is None) != (folder is None) or (train is None and ours.lower() != theirs.lower()):
        return 'other', theirs or Path(folder).name
    if train is None:  # a named data set (torch/, hfds/, ...): split names, as create_dataset reads them
        split, train = (s.split('[')[0] for s in (data.get('split') or '', run.args.get('train_split') or 'train'))
        return ('train' if split in ('', train, *SPLIT_SYNONYMS[0]) else 'held-out'), split
    label = os.path.relpath(folder, os.path.realpath(root))
    label = 'all splits' if label == '.' else label
    if folder == train or train.startswith(folder + os.sep) or folder.startswith(train + os.sep):
        return 'train', label  # the training folder, a folder in it, or one that holds it (--split '')
    return ('other', Path(folder).name) if label.startswith('..') else ('held-out', label)


def read_evaluation(run: Run, digest: str, path: Path, named: bool, use_ema: bool) -> Tuple[Optional[dict], str]:
    """The entry of the `python -m timm_ssm.evaluate --json` file `path` that evaluated the weights of `digest`, with
    its split (`kind`, `label`, `what`), and a line saying which it is or why there is none (an error if `named`)."""
    data_dir = run.args.get('data_dir') or run.args.get('data')
    fix = (f'python -m timm_ssm.evaluate --checkpoint {run.checkpoint}' + ' --use-ema' * use_ema
           + (f' --data-dir {data_dir}' if data_dir else '') + f' --split test --json {path}')
    if not named and not path.exists():
        return None, f'none ({path} does not exist; make it with: {fix})'
    try:
        if not path.is_file():
            raise ValueError('not a regular file')
        result = json.loads(path.read_text())
        data, found = dict(result['data']), [m for m in result['models'] if m['weights_sha256'] == digest]
        if len(data['input_size']) != 3 or any(k not in m for m in found for k in ('top1', 'top5', 'heads')):
            raise KeyError('input_size, top1, top5 or heads')
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RunError(f'--eval-json {path} is not the --json output of python -m timm_ssm.evaluate ({e}): make it '
                       f'with {fix}') from None
    if not found:
        why = f'{path} evaluated other weights than the exported ones' + (
            ' (the EMA weights: pass --use-ema to publish those)' if any(
                m.get('use_ema') for m in result['models']) and not use_ema else '')
        if named:
            raise RunError(f'--eval-json {why}; evaluate these with: {fix}')
        return None, f'none ({why}; evaluate these with: {fix})'
    kind, label = _evaluated_split(run, data)
    evaluation = dict(found[0], kind=kind, label=label, what=_EVALUATED[kind].format(label), file=path.name,
                      images=data.get('num_samples'), input_size=data['input_size'])
    return evaluation, f'{path} ({evaluation["what"].replace("**", "")})'


def _summary(run: Run) -> Dict[str, Any]:
    """The rows of the run's summary.csv the card shows: the final epoch's, the published weights' and the best."""
    rows = []
    if (run.folder / 'summary.csv').is_file():
        with open(run.folder / 'summary.csv', newline='') as f:
            for row in csv.DictReader(f):
                with suppress(TypeError, ValueError):  # a header repeated by --resume, a line cut short: skipped
                    rows.append({k: float(v) for k, v in row.items() if k and v})
    rows = [r for r in rows if 'epoch' in r and 'eval_top1' in r]
    if not rows:
        return dict(note='No `summary.csv` with an evaluation came with the checkpoint: no accuracy of train.py.')
    metric = run.args.get('eval_metric') if f'eval_{run.args.get("eval_metric")}' in rows[0] else 'top1'
    best = (min if metric == 'loss' else max)(rows, key=lambda r: r[f'eval_{metric}'])  # the first best, as train.py
    published = next((r for r in reversed(rows) if r['epoch'] == run.epoch), None)  # --resume repeats epochs
    shown = {}
    for label, row in (('Final', rows[-1]), ('Published weights', published), (f'Best by {metric}', best)):
        if row is not None:
            shown.setdefault(id(row), (row, []))[1].append(label)
    columns = (('Top-1 (%)', 'eval_top1'), ('Top-5 (%)', 'eval_top5'), ('Eval loss', 'eval_loss'))
    return dict(rows=[(labels, row) for row, labels in shown.values()], epochs=len(rows), published=bool(published),
                columns=[c for c in columns if c[1] in rows[0]], split=run.args.get('val_split') or 'validation',
                ema_note=run.args.get('model_ema') and not run.args.get('model_ema_force_cpu'))


def _local(value) -> bool:
    """Whether a train.py argument holds a path of the machine it ran on."""
    if isinstance(value, (dict, list, tuple)):
        return any(map(_local, value.values() if isinstance(value, dict) else value))
    return isinstance(value, str) and (value.startswith(('local-dir:', 'file:', '~')) or os.path.isabs(value))


def _training(run: Run) -> Optional[Dict[str, Any]]:
    """train.py's arguments for the card, without paths of the machine it ran on."""
    args = run.args
    left_out = sorted(k for k, v in args.items() if v and (k in _LOCAL_ARGS or _local(v)))
    return dict(
        pretrained=bool(args.get('pretrained') or args.get('pretrained_path')),
        recipe=', '.join(f'{k.replace("_", " ")} {args[k]}' for k in ('epochs', 'batch_size', 'opt', 'lr', 'sched')
                         if args.get(k) is not None),
        args=yaml.safe_dump({k: v for k, v in args.items() if k not in (*left_out, *_LOCAL_ARGS)}).rstrip(),
        left_out=left_out) if run.trained and args else None


def base_weights(run: Run, license: Optional[str]) -> Tuple[Optional[str], str, List[Tuple[str, str]]]:
    """The Hub id of the weights the run started from (train.py's --pretrained; None for a folder or file), the
    export's license (`license`, else that of those weights, else apache-2.0) and the papers of timm's weights."""
    if not run.args.get('pretrained'):
        return None, license or 'apache-2.0', []
    name = run.args.get('model') or ''
    source, model_id = parse_model_name(name)
    try:
        if source == 'hf-hub':
            cfg = load_model_config_from_hf(model_id)[0]  # from the Hugging Face cache train.py left, else the Hub
        elif source == 'local-dir':
            cfg = json.loads((Path(model_id) / 'config.json').read_text()).get('pretrained_cfg', {})
        else:
            cfg = getattr(get_pretrained_cfg(model_id), '__dict__', {})
    except Exception as e:  # noqa: whatever keeps the config from being read, --license stands in
        if not license:
            raise RunError(f'Cannot read the license of {name}, which the run started from ({type(e).__name__}: '
                           f'{e}): give the license of those weights with --license ID.') from None
        cfg = {}
    hub_id = model_id.partition('@')[0] if source == 'hf-hub' else None if source else cfg.get('hf_hub_id')
    license = license or cfg.get('license') or 'apache-2.0'
    return None if run.args.get('pretrained_path') else hub_id, license, [] if source else _papers(cfg)


def _papers(cfg: Dict[str, Any]) -> List[Tuple[str, str]]:
    """(name, link) of the papers a timm pretrained cfg names (`paper_ids`, `paper_name`)."""
    ids = cfg.get('paper_ids') or []
    ids = [ids] if isinstance(ids, str) else ids
    links = [re.sub('^arxiv:', 'https://arxiv.org/abs/', i, flags=re.I) for i in ids]
    return [(cfg.get('paper_name') or link, link) for link in links] or (
        [(cfg['paper_name'], '')] if cfg.get('paper_name') else [])


def model_card(run: Run, model: nn.Module, args: argparse.Namespace, data_config: Dict[str, Any], license: str,
               base_model: Optional[str] = None, names: Optional[List[str]] = None,
               evaluation: Optional[Dict[str, Any]] = None, papers: Sequence[Tuple[str, str]] = ()) -> ModelCard:
    """The export's card: `model_card.md` filled by huggingface_hub's `ModelCard.from_template`; `model-index`
    holds only an evaluation of a held-out split of the run's data set."""
    name, head, arch = args.repo_id.split('/')[-1], model.head, model.pretrained_cfg['architecture']
    dataset = run.args.get('dataset') or ''
    dataset_id = args.dataset_id or HUB_DATASETS.get(dataset.lower()) or (
        dataset.partition('/')[2] if dataset.lower().startswith(('hfds/', 'hfids/')) else None)
    results = None
    if evaluation and evaluation['kind'] == 'held-out':
        folder = Path(run.args.get('data_dir') or run.args.get('data')).name
        common = dict(task_type='image-classification', task_name='Image Classification',
                      dataset_type=dataset_id or dataset.partition('/')[2] or dataset or 'imagefolder',
                      dataset_name=dataset_id or dataset or f'image folder {folder}', dataset_split=evaluation['label'])
        results = [EvalResult(metric_type=metric, metric_name=f'{title} accuracy (%)',
                              metric_value=round(evaluation[key], 2), **common)
                   for metric, title, key in (('accuracy', 'Top-1', 'top1'), ('top_5_accuracy', 'Top-5', 'top5'))]
    card_data = ModelCardData(
        library_name='timm', pipeline_tag='image-classification', license=license,
        tags=list(dict.fromkeys([*DEFAULT_TAGS, *args.tags])), datasets=[dataset_id] if dataset_id else None,
        base_model=base_model, model_name=name if results else None, eval_results=results)
    in_chans, h, w = data_config['input_size']
    return ModelCard.from_template(
        card_data, template_path=str(TEMPLATE), name=name, repo_id=args.repo_id, project_url=PROJECT_URL, arch=arch,
        trunk=arch.removesuffix('_ssm'), in_features=head.in_features, num_splits=head.num_splits, widths=head.widths,
        norm='all n prefixes pass' if head.norm_all else 'the first n - 1 prefixes pass', num_classes=model.num_classes,
        in_chans=in_chans, h=h, w=w, mode='L' if in_chans == 1 else 'RGB', top_k=min(5, model.num_classes),
        cost=model_complexity(model, data_config['input_size']), papers=papers, label_names=names,
        train_dataset=dataset, summary=_summary(run), checkpoint=run.checkpoint.name, epoch=run.epoch,
        use_ema=args.use_ema, evaluation=evaluation, training=_training(run))


def check_out(out: Path, overwrite: bool):
    """A RunError unless `out` can take the export: a new writable folder, or an earlier export with `overwrite`."""
    if out.is_symlink() or out.exists() and not (out.is_dir() and {p.name for p in out.iterdir()} <= set(EXPORT_FILES)):
        raise RunError(f'--out {out} is not an export of this tool: give a new folder, such as --out {out}-2.')
    if out.exists() and not overwrite:
        raise RunError(f'--out {out} already holds an export: pass --overwrite to replace it.')
    check_output_folder(out.parent if out.exists() else out, '--out')


def write_export(model: nn.Module, out: Path, data_config: Dict[str, Any], card: ModelCard,
                 names: Optional[List[str]] = None):
    """Write model.safetensors, config.json (timm's `save_for_hf`) and README.md into a hidden folder beside `out`,
    then put it in place of `out` (an earlier export that `check_out` allowed): a failure leaves no partial file."""
    tmp, old = (out.parent / f'.{out.name}.{os.getpid()}.{end}' for end in ('partial', 'old'))
    try:
        tmp.mkdir(parents=True)
        save_for_hf(model, tmp, safe_serialization=True, data_config=data_config,
                    model_args={k: getattr(model.head, k) for k in ('num_splits', 'norm_all', 'split')},
                    model_config=dict(label_names=names, global_pool=get_model_args(model.trunk).get('global_pool')))
        config = json.loads((tmp / 'config.json').read_text())
        del config['model_args']['num_classes']  # transformers' timm wrapper passes its own: twice is a TypeError
        (tmp / 'config.json').write_text(json.dumps(config, indent=2))
        card.save(tmp / 'README.md')
        (tmp / 'model.safetensors').chmod(stat.S_IMODE((tmp / 'README.md').stat().st_mode))  # as open() (not 0o600)
        if out.exists():
            out.rename(old)  # the earlier export, deleted once the new one is in its place
        tmp.rename(out)
    except (OSError, SafetensorError) as e:
        if old.exists() and not out.exists():
            old.rename(out)
        raise RunError(f'Cannot write the export to {out} ({e}); nothing was written: free some space, or give '
                       f'--out DIR on another disk.') from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def export(args: argparse.Namespace, run: Run, out: Path) -> nn.Module:
    """Export the run as the parsed command line asks into `out` (checked by `check_out`); the exported model."""
    epoch = f' (epoch {run.epoch})' if run.epoch is not None else ''
    ema = ', EMA weights' if args.use_ema else '; it has EMA weights too: pass --use-ema to publish those' * run.has_ema
    print(f'Checkpoint: {run.checkpoint}{epoch}{ema}\nArguments: {run.args_source}')
    model = create_run_model(run, args.model, use_ema=args.use_ema, overrides=args.model_kwargs)
    if split_head(model) is None:
        raise RunError(f'{args.model or run.args.get("model")} is not an SSM model (<arch>_ssm), which this tool '
                       f'publishes: give the SSM architecture the run trained with --model.')
    data_config = run_data_config(run, model)
    names, note = label_names(run, model, args.label_names)
    print(f'Label names: {note}')
    path = Path(args.eval_json) if args.eval_json else run.folder / 'eval_test.json'
    evaluation, note = read_evaluation(run, weights_digest(model), path, bool(args.eval_json), args.use_ema)
    print(f'Evaluation on the card: {note}')
    base_model, license, papers = base_weights(run, args.license)
    model.pretrained_cfg = dict({k: v for k, v in model.pretrained_cfg.items() if k not in _SOURCE_FIELDS},
                                license=license)
    card = model_card(run, model, args, data_config, license, base_model, names, evaluation, papers)
    write_export(model, out, data_config, card, names)
    print(f'Wrote {out}: ' + ', '.join(f'{p.name} ({p.stat().st_size / 1e6:.3f} MB)' for p in sorted(out.iterdir())))
    return model


def check_repo_id(repo_id: str):
    """Raise a RunError unless `repo_id` is a model repository id ORG/NAME."""
    try:
        validate_repo_id(repo_id)
        if repo_id.count('/') != 1:
            raise HFValidationError('no slash between user or organization and name')
    except HFValidationError as e:
        example = repo_id[7:] if repo_id.startswith('hf-hub:') else 'alice/resnet50-ssm-fashion-mnist'
        raise RunError(f'--repo-id {repo_id!r} is not ORG/NAME ({e}): give, e.g., --repo-id {example}.') from None


@contextmanager
def _hub_errors(action: str):
    """huggingface_hub's HTTP errors and those of reaching the Hub as a HubError."""
    try:
        yield
    except HfHubHTTPError as e:
        raise HubError(f'the Hub refused to {action}: {e}') from None
    except (OSError, *HfHubHTTPError.__bases__) as e:  # the HTTP client's own errors: no answer
        raise HubError(f'cannot reach the Hub at {constants.ENDPOINT} to {action} ({type(e).__name__}: {e}): check '
                       f'the connection and HF_ENDPOINT, then run again.') from None


def upload(args: argparse.Namespace, run: Run, out: Optional[Path], where: str):
    """Check the token and the repository, export the run (into `out`, else a temporary folder) and upload it as
    timm's `push_to_hf_hub` does, keeping a README.md already there unless --overwrite-card."""
    token = get_token()
    if not token:
        raise RunError('No Hugging Face token: log in once with `hf auth login` or set HF_TOKEN (--dry-run needs '
                       'none).')
    api, repo_id = HfApi(token=token, library_name='timm', library_version=timm.__version__), args.repo_id
    with _hub_errors('check the token and repository'):
        user = api.whoami()['name']
        public = args.private and api.repo_exists(repo_id) and not api.repo_info(repo_id).private
    if public:
        raise RunError(f'--private: {repo_id} exists and is public, and uploading does not change that: make it '
                       f'private in its settings on the Hub first, or upload without --private.')
    print(f'Hub: {constants.ENDPOINT}, as {user}')
    with tempfile.TemporaryDirectory(prefix='timm_ssm_hub_') as tmp:
        folder = out or Path(tmp) / 'export'
        arch = export(args, run, folder).pretrained_cfg['architecture']
        print(f'Uploading to {where} ...')
        with _hub_errors('upload'):
            api.create_repo(repo_id, private=True if args.private else None, exist_ok=True)  # None: the Hub's default
            if args.revision and args.revision != 'main':
                api.create_branch(repo_id, branch=args.revision, exist_ok=True)
            keep_card = not args.overwrite_card and api.file_exists(repo_id, 'README.md', revision=args.revision)
            info = api.upload_folder(
                repo_id=repo_id, folder_path=folder, revision=args.revision,
                commit_message=args.commit_message or f'Add {arch} weights (timm-ssm export)',
                ignore_patterns=['README.md'] if keep_card else None)
    if keep_card:
        print('The repository already has a README.md: kept it (pass --overwrite-card to replace it).')
    print(f'Uploaded: {info.commit_url}\nLoad it with: import timm, timm_ssm; timm.create_model('
          f'\'hf-hub:{repo_id}\', pretrained=True) (pip install timm-ssm: {PROJECT_URL})')


parser = argparse.ArgumentParser(
    prog='python -m timm_ssm.hub', description='Export an SSM model trained with timm\'s train.py in timm\'s Hugging '
    'Face Hub format (model.safetensors, config.json, README.md model card) and upload it.')
parser.add_argument('run', metavar='RUN', help='train.py output folder or checkpoint')
parser.add_argument('--repo-id', required=True, metavar='ORG/NAME', help='Hub repository: user or org / name')
parser.add_argument('--out', metavar='DIR',
                    help='new folder for the export (default: RUN/hub-ORG--NAME with --dry-run, else a temporary one)')
parser.add_argument('--overwrite', action='store_true', help='replace an earlier export in that folder')
parser.add_argument('--dry-run', action='store_true', help='write the export only: no token needed, nothing sent')
group = parser.add_argument_group('Weights')
group.add_argument('--checkpoint', metavar='NAME', help='file in RUN (default: model_best.pth.tar, else last.pth.tar)')
group.add_argument('--use-ema', action='store_true', help='export the checkpoint\'s EMA weights')
group.add_argument('--ema', action='store_true', dest='use_ema', help=argparse.SUPPRESS)  # the earlier spelling
group.add_argument('--model', metavar='NAME', help='model name (<arch>_ssm) over the run\'s')
group.add_argument('--model-kwargs', nargs='*', default={}, type=name_value, action=ParseKwargs, metavar='KEY=VALUE',
                   help='model arguments over the run\'s, as train.py\'s --model-kwargs')
group = parser.add_argument_group('Model card')
group.add_argument('--eval-json', metavar='FILE', help='python -m timm_ssm.evaluate --json output of the exported '
                   'weights (default: RUN/eval_test.json if it exists)')
group.add_argument('--license', help='license id (default: that of the weights the run started from, else apache-2.0)')
group.add_argument('--tag', action='append', default=[], dest='tags', metavar='TAG', help='extra Hub tag (repeatable)')
group.add_argument('--dataset-id', metavar='ORG/NAME', help='Hub data set id (default: from the run\'s --dataset)')
group.add_argument('--label-names', metavar='FILE', help='class names, one a line or a JSON list (default: the run\'s)')
group = parser.add_argument_group('Upload')
group.add_argument('--private', action='store_true', help='create the repository private')
group.add_argument('--revision', metavar='BRANCH', help='branch to commit to (default: main)')
group.add_argument('--commit-message', metavar='MESSAGE', help='commit message')
group.add_argument('--overwrite-card', action='store_true', help='replace a README.md the repository already has')


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run `python -m timm_ssm.hub ARGS`; the exit code (2: bad input, 1: the Hub failed)."""
    args = parser.parse_args(argv)
    try:
        check_repo_id(args.repo_id)
        run = load_run(args.run, args.checkpoint)
        if run.checkpoint is None:
            raise RunError(f'{args.run} is a model name: give a train.py output folder or checkpoint.')
        out = Path(args.out) if args.out else run.folder / f'hub-{args.repo_id.replace("/", "--")}' \
            if args.dry_run else None
        if out is not None:
            check_out(out, args.overwrite)
        where = f'{constants.ENDPOINT}/{args.repo_id}' + (f' (branch {args.revision})' if args.revision else '')
        if args.dry_run:
            export(args, run, out)
            kept = '' if args.overwrite_card else '; a README.md already there would be kept'
            print(f'Dry run: would upload these files to {where}{kept}. Nothing was sent.')
        else:
            upload(args, run, out, where)
        return 0
    except (RunError, HubError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1 if isinstance(e, HubError) else 2


if __name__ == '__main__':
    sys.exit(main())
