""" Model card (README.md) of an exported SSM model

timm's own card format, as `timm.models.push_to_hf_hub` writes it (`generate_readme`: Hub metadata, description,
Model Details, Model Usage, Citation), with the run's results and training arguments added before the citation.
"""
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch.nn as nn
import yaml

from timm.models._hub import generate_readme  # the card of timm's push_to_hf_hub; timm has no public name for it

from .export import Run

__all__ = ['model_card', 'hub_dataset_id', 'CITATION', 'DEFAULT_TAGS']

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
PAPER_URL = 'https://doi.org/10.3390/electronics11020235'
DEFAULT_TAGS = ('image-classification', 'timm', 'timm-ssm', 'split-and-share')

# timm data set names with a data set on the Hub
_HUB_DATASETS = {
    'torch/mnist': 'ylecun/mnist',
    'torch/fashion_mnist': 'zalando-datasets/fashion_mnist',
    'torch/cifar10': 'uoft-cs/cifar10',
    'torch/cifar100': 'uoft-cs/cifar100',
    'torch/imagenet': 'imagenet-1k',
}
# train.py arguments that hold paths of the machine it ran on: left out of a published card (`data`: the
# deprecated positional data folder)
_LOCAL_ARGS = (
    'data', 'data_dir', 'output', 'resume', 'initial_checkpoint', 'pretrained_path', 'class_map', 'config')


def hub_dataset_id(dataset: Optional[str]) -> Optional[str]:
    """Hub data set id of a timm data set name (`torch/fashion_mnist`, `hfds/ORG/NAME`), None if unknown."""
    if not dataset:
        return None
    prefix, _, rest = dataset.partition('/')
    if prefix.lower() in ('hfds', 'hfids') and rest:
        return rest
    return _HUB_DATASETS.get(dataset.lower())


def _fmt(value: float, digits: int = 2) -> str:
    return f'{value:.{digits}f}'


def _results(run: Run, data_config: Dict[str, Any]) -> str:
    text = '\n## Results\n'
    rows = [r for r in run.summary if 'epoch' in r]
    if not rows:
        return text + '\nNo `summary.csv` came with the checkpoint, so this card reports no accuracy.\n'
    if not any('eval_top1' in r for r in rows):
        return text + (
            f'\n`summary.csv` has no evaluation (train.py ran without a validation set). Train loss after '
            f'{len(rows)} epochs: {_fmt(rows[-1].get("train_loss", float("nan")), 4)}.\n')
    rows = [r for r in rows if 'eval_top1' in r]
    metric = run.args.get('eval_metric') or 'top1'
    if f'eval_{metric}' not in rows[0]:
        metric = 'top1'  # the run's --eval-metric is not in summary.csv: rank by what is there
    best = (min if metric == 'loss' else max)(rows, key=lambda r: r[f'eval_{metric}'])  # first best, as train.py
    # the published weights' own epoch: after --resume, train.py's checkpoint saver starts over, and its
    # model_best.pth.tar may not be summary.csv's best epoch
    published = [r for r in rows if run.epoch is not None and int(r['epoch']) == run.epoch][-1:]
    table = [('Final', rows[-1])]
    if published and int(best['epoch']) == run.epoch:
        table.append((f'Published weights, best by {metric}', best))
    else:
        table += [('Published weights', r) for r in published] + [(f'Best (by {metric})', best)]
    columns = [('Top-1 (%)', 'eval_top1', 2), ('Top-5 (%)', 'eval_top5', 2), ('Eval loss', 'eval_loss', 4)]
    columns = [c for c in columns if c[1] in rows[0]]
    h, w = data_config['input_size'][1:]
    dataset = run.args.get('dataset') or 'an image folder'
    split = run.args.get('val_split') or 'validation'
    text += (
        f'\nMeasured by timm\'s `train.py` on the `{split}` split of `{dataset}` at {h} x {w} '
        f'(`summary.csv`, {len(rows)} evaluated epoch{"s" if len(rows) > 1 else ""}; epochs count from 0):\n\n')
    text += '| | Epoch | ' + ' | '.join(c[0] for c in columns) + ' |\n'
    text += '|---|---:|' + '---:|' * len(columns) + '\n'
    for label, row in table:
        text += f'| {label} | {int(row["epoch"])} | ' + ' | '.join(_fmt(row[c[1]], c[2]) for c in columns) + ' |\n'
    weights = f'`{run.checkpoint.name}`'
    if run.epoch is not None:
        weights += f', epoch {run.epoch}'
    text += f'\nThe published weights: {weights}{", EMA weights" if run.ema else ""}'
    text += '.\n' if published else ' (`summary.csv` has no evaluation of their epoch).\n'
    if run.args.get('model_ema') and not run.args.get('model_ema_force_cpu'):
        text += (
            '\nThe run used model EMA, and train.py then reports the EMA weights\' accuracy'
            + ('.\n' if run.ema else ': these are the non-EMA weights (export with `--ema` for the EMA ones).\n'))
    return text


def _sub_classifiers(run: Run, evaluation: Dict[str, Any], source: str) -> str:
    data = evaluation['data']
    h, w = data['input_size'][1:]
    weights = ('; the EMA weights' if evaluation.get('use_ema') else '; the non-EMA weights') if run.has_ema else ''
    text = (
        f'\n## Sub-classifiers\n\nMeasured by `python -m timm_ssm.evaluate` on the `{data.get("split")}` split of '
        f'`{data.get("dataset") or "an image folder"}` ({data.get("num_samples")} images at {h} x {w}{weights}; '
        f'`{Path(source).name}`). Sub-classifier FCj sees the first j groups of channels; the model\'s output is '
        f'their average; the oracle counts an image when any sub-classifier is right (an upper bound, it needs the '
        f'label); the label-free rules pick or combine sub-classifiers per image without it.\n\n'
        f'| Output | Channels | Top-1 (%) | Top-5 (%) |\n|---|---|---:|---:|\n')
    for head in evaluation['heads']:
        text += f'| {head["name"]} | 0-{head["width"] - 1} | {_fmt(head["top1"])} | {_fmt(head["top5"])} |\n'
    text += f'| Averaged (the model) | all | {_fmt(evaluation["top1"])} | {_fmt(evaluation["top5"])} |\n'
    if evaluation.get('oracle'):
        text += f'| Oracle: any sub-classifier right | | {_fmt(evaluation["oracle"]["top1"])} | |\n'
    for rule, result in (evaluation.get('selection') or {}).items():
        text += f'| Label-free: {rule} | | {_fmt(result["top1"])} | {_fmt(result["top5"])} |\n'
    return text


def _training(run: Run, base_model: Optional[str]) -> str:
    args = run.args
    text = '\n## Training\n\n'
    if not args:
        return text + 'The checkpoint came without its train.py arguments.\n'
    source = f'fine-tuned from [{base_model}](https://huggingface.co/{base_model})' if base_model else (
        'fine-tuned from pretrained weights' if args.get('pretrained') or args.get('pretrained_path') else
        'trained from scratch')
    recipe = [f'{k.replace("_", " ")} {args[k]}' for k in ('epochs', 'batch_size', 'opt', 'lr', 'sched')
              if args.get(k) is not None]
    text += f'{source.capitalize()} with timm\'s `train.py` ({", ".join(recipe)}).\n'
    public = {k: v for k, v in args.items() if k not in _LOCAL_ARGS}
    text += (
        '\n<details>\n<summary>All train.py arguments (args.yaml, local paths left out)</summary>\n\n'
        f'```yaml\n{yaml.safe_dump(public, default_flow_style=False).rstrip()}\n```\n\n</details>\n')
    return text


def _usage(repo_id: str, in_chans: int, num_classes: int) -> str:
    mode = 'L' if in_chans == 1 else 'RGB'
    k = min(5, num_classes)
    return f"""### Image Classification
```python
from PIL import Image
import timm
import timm_ssm  # registers the <arch>_ssm architectures with timm
import torch

model = timm.create_model('hf-hub:{repo_id}', pretrained=True)
model = model.eval()

data_config = timm.data.resolve_model_data_config(model)
transforms = timm.data.create_transform(**data_config, is_training=False)

img = Image.open('image.png').convert('{mode}')
x = transforms(img).unsqueeze(0)
with torch.no_grad():
    logits = model(x)  # mean of the sub-classifiers' logits
    split_logits = model.forward_splits(x)  # (1, n, num_classes): each sub-classifier's logits

top_prob, top_idx = logits.softmax(dim=1).topk({k})
labels = model.pretrained_cfg.get('label_names') or list(range(model.num_classes))
print([(labels[i], round(p, 4)) for i, p in zip(top_idx[0].tolist(), top_prob[0].tolist())])
```

### Fine-tuning
```python
# new final Linear layers for 7 classes; the trunk and the head's BatchNorm keep these weights
model = timm.create_model('hf-hub:{repo_id}', pretrained=True, num_classes=7)
```
"""


def _add_metadata(readme: str, key: str, value: str) -> str:
    """Add a `key: value` line to the card's YAML front matter (generate_readme has no field for it)."""
    end = readme.index('\n---\n', 4)
    return readme[:end] + f'\n{key}: {value}' + readme[end:]


def model_card(
        run: Run,
        model: nn.Module,
        repo_id: str,
        data_config: Dict[str, Any],
        license: str,
        tags: Sequence[str] = (),
        dataset_id: Optional[str] = None,
        base_model: Optional[str] = None,
        label_names: Optional[List[str]] = None,
        evaluation: Optional[Dict[str, Any]] = None,
        evaluation_file: Optional[str] = None,
) -> str:
    """The README.md of an exported SSM model, in timm's model card format.

    Args:
        run: The run the weights come from.
        model: The model, in eval mode.
        repo_id: `ORG/NAME` on the Hub.
        data_config: Preprocessing of the run's evaluation.
        license: License id for the Hub metadata.
        tags: Tags besides the default ones.
        dataset_id: Hub id of the training data set, for the metadata.
        base_model: Hub id of the weights the run started from.
        label_names: Class names, when the data set has them.
        evaluation: The model's entry of `python -m timm_ssm.evaluate --json`, with its `data` entry.
        evaluation_file: The JSON file it came from.
    """
    head = model.head
    arch = model.pretrained_cfg.get('architecture', run.args.get('model'))
    base = arch[:-len('_ssm')] if arch.endswith('_ssm') else arch
    norm = 'all n prefixes pass' if head.norm_all else 'the first n - 1 prefixes pass'
    description = (
        f'A `{base}` image classifier with a Split-and-Share Module (SSM) head (Lee et al., Electronics 2022), '
        f'trained with timm\'s `train.py` and timm-ssm. The head splits the '
        f'pooled feature of C = {head.in_features} channels into n = {head.num_splits} groups; sub-classifier i '
        f'sees the first i groups ({norm} BatchNorm1d + ReLU) and the output is the mean of the n '
        f'sub-classifiers\' logits. Load it with `import timm_ssm` (which registers `{arch}` with timm), '
        f'then `timm.create_model(\'hf-hub:{repo_id}\', pretrained=True)`.')
    h, w = data_config['input_size'][1:]
    stats = {
        'Params (M)': _fmt(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        'Image size': f'{h} x {w}',
        'Sub-classifiers (n)': f'{head.num_splits}, on the first {", ".join(map(str, head.widths))} channels',
        'Classes': model.num_classes,
    }
    if data_config['input_size'][0] != 3:
        stats['Input channels'] = data_config['input_size'][0]
    details: Dict[str, Any] = {
        'Model Type': 'Image classification / feature backbone',
        'Model Stats': stats,
        'Papers': {'Exploiting Features with Split-and-Share Module': PAPER_URL},
    }
    if dataset_id:
        details['Dataset'] = dataset_id  # generate_readme also lists it in the metadata
    elif run.args.get('dataset'):
        details['Training data'] = f'`{run.args["dataset"]}` (timm data set name)'
    if base_model:
        details['Initialized from'] = base_model
    if label_names:
        shown = ', '.join(label_names[:10]) + (', ...' if len(label_names) > 10 else '')
        details['Class names'] = shown
    card = dict(
        tags=list(dict.fromkeys([*DEFAULT_TAGS, *tags])),
        license=license,
        description=description,
        details=details,
        usage=_usage(repo_id, data_config['input_size'][0], model.num_classes),
        citation=CITATION,
    )
    readme = generate_readme(card, repo_id.split('/')[-1])
    if base_model:
        readme = _add_metadata(readme, 'base_model', base_model)
    body, sep, citation = readme.partition('\n## Citation\n')
    results = _results(run, data_config)
    if evaluation:
        results += _sub_classifiers(run, evaluation, evaluation_file or 'evaluation JSON')
    return body + results + _training(run, base_model) + sep + citation
