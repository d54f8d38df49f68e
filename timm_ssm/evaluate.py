""" Evaluation of Split-and-Share models: every sub-classifier, the oracle, head selection and ensembles

Paper: `Exploiting Features with Split-and-Share Module` - https://doi.org/10.3390/electronics11020235
(Lee et al., Electronics 2022)

`python -m timm_ssm.evaluate` takes the data options of timm's `validate.py` and, in one pass over the data,
measures what the paper reports: the averaged output (Table 1), each sub-classifier FC1..FCn from one call of
`forward_splits` (Table 2), the oracle that counts a sample when any sub-classifier is right (Discussion),
label-free rules that pick or combine sub-classifiers per sample, measured against averaging and the oracle,
parameters and multiply-adds (Table 4), and the ensemble of several checkpoints (mean of logits, Table 3).
Plain timm models are evaluated too (averaged output, parameters, ensembles), so a baseline and its SSM twin
go through the same code.

The model, its options (global pool, BatchNorm eps, model kwargs, classes, channels) and the data config are
those of the train.py run (`timm_ssm.runs`); options given here go over the run's.

Examples:
    python -m timm_ssm.evaluate --checkpoint output/train/run --data-dir /data/imagenet --json results.json
    python -m timm_ssm.evaluate --checkpoint run1/ run2/ --data-dir /data/imagenet   # ensemble of two runs

Label-free rules (per sample, without labels):
    max_prob: the sub-classifier with the highest maximum softmax probability.
    min_entropy: the sub-classifier with the lowest entropy of its softmax.
    max_margin: the sub-classifier with the largest gap between its two highest probabilities.
    vote: the class most sub-classifiers predict, ties broken by the mean of their softmax probabilities.
    prob_avg: the mean of the sub-classifiers' softmax probabilities (instead of their logits).

JSON (`--json FILE`, schema in docs/analyses.md), CSV (`--csv FILE`: one row per model and output) and a bar chart
(`--plot FILE`).
"""
import argparse
import csv
import json
import logging
import os
import time
from contextlib import suppress
from functools import partial
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from PIL import Image

from timm.data import create_loader
from timm.utils import setup_default_logging

from .complexity import model_complexity
from .runs import RunError, atomic_write, check_outputs, create_run_dataset, data_config_from_args, \
    models_from_args, number_in, resolve_device, run_input_files, run_parser, split_head, weights_digest, write_error

__all__ = ['SELECTION_RULES', 'SplitMetrics', 'evaluate', 'format_table', 'main']

_logger = logging.getLogger(__name__)

SELECTION_RULES = ('max_prob', 'min_entropy', 'max_margin', 'vote', 'prob_avg')
_HEAD_RULES = SELECTION_RULES[:3]  # the rules that pick one sub-classifier per sample


def _pct(count: int, total: int) -> float:
    return round(100. * float(count) / max(total, 1), 4)


def _hits(logits: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
    """Whether the target is in each row's top-k, as (..., k) booleans for every rank."""
    return logits.topk(k, dim=-1).indices == target.view(target.shape + (1,) * (logits.ndim - target.ndim))


class SplitMetrics:
    """Counts of one model's outputs over a data set, updated batch by batch on the model's device.

    Every batch adds one vector of counts (a few kernels per batch whatever n and the number of rules): top-1 and
    top-5 of the output, of each sub-classifier, the oracle's top-1, then top-1 and top-5 of each rule.
    """

    def __init__(self, num_classes: int, num_splits: Optional[int] = None, device=None):
        """
        Args:
            num_classes: Classes K of the model.
            num_splits: Sub-classifiers n, None for a model that gives only one output.
        """
        self.num_classes = num_classes
        self.num_splits = num_splits
        self.topk = min(5, num_classes)
        self.count = 0
        n = num_splits or 0
        size = 2 + (2 * n + 1 + 2 * len(SELECTION_RULES) if num_splits is not None else 0)
        self.counts = torch.zeros(size, dtype=torch.long, device=device)
        self.chosen = torch.zeros(len(_HEAD_RULES), max(n, 1), dtype=torch.long, device=device)

    @torch.no_grad()
    def update(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Add one batch.

        Args:
            output: Logits (B, K), or the sub-classifiers' logits (B, n, K) when the model has n.
            target: Class indices (B,).

        Returns:
            The model's output logits (B, K): the mean over sub-classifiers when there are several.
        """
        output = output.float()
        k = self.topk
        self.count += target.shape[0]
        if self.num_splits is None:
            hits = _hits(output, target, k)
            self.counts += torch.stack([hits[:, 0], hits.any(-1)], 1).sum(0)
            return output

        logits = output.mean(1)
        # softmax from elementwise ops and reductions: log_softmax's own kernel threads even small batches, which
        # costs more than the arithmetic when other processes share the cores
        shifted = output - output.amax(-1, keepdim=True)
        exp = shifted.exp()
        total = exp.sum(-1, keepdim=True)
        log_total = total.log()  # log-probabilities are shifted - log_total
        prob = exp / total
        top = shifted.topk(max(k, 2), dim=-1)
        head_hits = top.indices[..., :k] == target[:, None, None]  # (B, n, k)
        prob_avg = prob.mean(1)
        top_log_prob = top.values[..., :2] - log_total
        top_prob = top_log_prob.exp()
        choice = torch.stack([
            top_log_prob[..., 0].argmax(1),  # max_prob
            ((prob * shifted).sum(-1) - log_total[..., 0]).argmax(1),  # min_entropy: max of minus the entropy
            (top_prob[..., 0] - top_prob[..., 1]).argmax(1),  # max_margin
        ], 1)  # (B, len(_HEAD_RULES))
        chosen_hits = head_hits.gather(1, choice[..., None].expand(-1, -1, k))  # (B, len(_HEAD_RULES), k)
        # mean probabilities are below 1 and so only order classes with equal votes
        votes = prob_avg.scatter_add(1, top.indices[..., 0], torch.ones_like(top.values[..., 0]))
        combined_hits = torch.stack([_hits(logits, target, k), _hits(votes, target, k), _hits(prob_avg, target, k)], 1)

        head1 = head_hits[..., 0]
        self.counts += torch.cat([
            combined_hits[:, 0, 0, None], combined_hits[:, 0].any(-1, keepdim=True),  # the averaged output
            head1, head_hits.any(-1), head1.any(1, keepdim=True),  # each sub-classifier, the oracle
            # rules in the order of SELECTION_RULES, top-1 and top-5 of each
            torch.stack([chosen_hits[..., 0], chosen_hits.any(-1)], -1).flatten(1),
            torch.stack([combined_hits[:, 1:, 0], combined_hits[:, 1:].any(-1)], -1).flatten(1),
        ], 1).sum(0)
        self.chosen += F.one_hot(choice, self.num_splits).sum(0)
        return logits

    def compute(self, widths: Optional[Sequence[int]] = None) -> Dict[str, Any]:
        """Accuracies in percent, with the keys of the `models` entries of the JSON schema (docs/analyses.md).

        Args:
            widths: Channels seen by each sub-classifier (`SplitShareHead.widths`), to name their groups.
        """
        total = self.count
        counts = self.counts.tolist()
        top1, top5 = _pct(counts[0], total), _pct(counts[1], total)
        out = dict(
            top1=top1, top1_err=round(100 - top1, 4), top5=top5, top5_err=round(100 - top5, 4),
            heads=[], oracle=None, selection={},
        )
        if self.num_splits is None:
            return out
        n = self.num_splits
        for j in range(n):
            head = dict(name=f'FC{j + 1}', top1=_pct(counts[2 + j], total), top5=_pct(counts[2 + n + j], total))
            if widths is not None:
                head = dict(head, width=widths[j], group=[widths[j - 1] if j else 0, widths[j] - 1])
            out['heads'].append(head)
        out['oracle'] = dict(top1=_pct(counts[2 + 2 * n], total))
        chosen = self.chosen.tolist()
        for i, rule in enumerate(SELECTION_RULES):
            first = 3 + 2 * n + 2 * i
            out['selection'][rule] = dict(
                top1=_pct(counts[first], total),
                top5=_pct(counts[first + 1], total),
                chosen=[round(c / max(total, 1), 4) for c in chosen[i]] if rule in _HEAD_RULES else None,
            )
        return out


@torch.inference_mode()
def evaluate(
        models: Sequence[nn.Module],
        loader,
        device=None,
        amp_autocast=suppress,
        channels_last: bool = False,
        progress: Optional[bool] = None,
        warmup: Optional[torch.Tensor] = None,
) -> Dict[str, Any]:
    """One pass of a loader through one or more models.

    Args:
        models: Models in eval mode on `device`; with several, their ensemble (mean of logits) is measured too.
        loader: Batches of (images, class indices), as timm's `create_loader` gives them.
        device: Device of the models, where the batches go; the first model's if None.
        amp_autocast: Context manager of the forward passes.
        channels_last: Feed channels-last images.
        progress: Show a progress bar; None shows one only on a terminal.
        warmup: A batch of images that goes through the models and the metrics before the timed pass (as in
            validate.py), so that one-time set-up is not timed.

    Returns:
        `models`: the accuracy part of each model's entry of the JSON schema (docs/analyses.md), `ensemble`,
        `num_samples`, `throughput` and `seconds`.
    """
    param = next(models[0].parameters(), None)
    device = device or (param.device if param is not None else 'cpu')
    metrics = []
    for model in models:
        head = split_head(model)
        metrics.append(SplitMetrics(model.num_classes, head.num_splits if head is not None else None, device))
    ensemble = SplitMetrics(models[0].num_classes, None, device) if len(models) > 1 else None

    def _step(images, target, metrics, ensemble):
        images = images.to(device, non_blocking=True)  # no-op when timm's prefetcher has moved the batch
        target = target.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        outputs = []
        for model, metric in zip(models, metrics):
            with amp_autocast():
                output = model.forward_splits(images) if metric.num_splits is not None else model(images)
            outputs.append(metric.update(output, target))
        if ensemble is not None:
            ensemble.update(torch.stack(outputs).mean(0), target)

    if warmup is not None:
        scratch = [SplitMetrics(m.num_classes, m.num_splits, device) for m in metrics]
        target = torch.randint(0, models[0].num_classes, warmup.shape[:1])
        _step(warmup, target, scratch, SplitMetrics(models[0].num_classes, None, device) if ensemble else None)

    start = time.perf_counter()
    for images, target in tqdm(loader, desc='eval', unit='batch', disable=None if progress is None else not progress):
        _step(images, target, metrics, ensemble)
    seconds = time.perf_counter() - start

    results = dict(
        models=[
            m.compute(split_head(model).widths if m.num_splits is not None else None)
            for model, m in zip(models, metrics)
        ],
        ensemble=None,
        num_samples=metrics[0].count,
        throughput=round(metrics[0].count / max(seconds, 1e-9), 2),
        seconds=round(seconds, 3),
    )
    if ensemble is not None:
        ens = ensemble.compute()
        best = max(r['top1'] for r in results['models'])
        results['ensemble'] = dict(
            members=len(models),
            top1=ens['top1'], top1_err=ens['top1_err'], top5=ens['top5'], top5_err=ens['top5_err'],
            gain_over_best=round(ens['top1'] - best, 4),
        )
    return results


parser = argparse.ArgumentParser(
    prog='python -m timm_ssm.evaluate',
    description='Evaluate timm models with Split-and-Share heads: every sub-classifier, the oracle, label-free '
                'head selection, parameters and multiply-adds, and ensembles of several checkpoints.',
    parents=[run_parser],
)
group = parser.add_argument_group('Data loading (as timm validate.py)')
group.add_argument('data', nargs='?', metavar='DIR', const=None, help='path to dataset (deprecated, use --data-dir)')
group.add_argument('--num-samples', default=None, type=number_in(int, 1), metavar='N',
                   help='number of samples of the split, for iterable datasets')
group.add_argument('--input-key', default=None, type=str, help='dataset key for input images')
group.add_argument('--input-img-mode', default=None, type=str, help='dataset image conversion mode for input images')
group.add_argument('--target-key', default=None, type=str, help='dataset key for target labels')
group.add_argument('-b', '--batch-size', default=256, type=number_in(int, 1), metavar='N',
                   help='mini-batch size (default: 256)')
group.add_argument('-j', '--workers', default=min(4, os.cpu_count() or 1), type=number_in(int, 0),
                   metavar='N', help='number of data loading workers (default: 4, at most the CPU count)')
group.add_argument('--no-prefetcher', action='store_true', default=False, help='disable fast prefetcher')
group.add_argument('--pin-mem', action='store_true', default=False, help='pin CPU memory in DataLoader')

group = parser.add_argument_group('Evaluation')
group.add_argument('--model', '-m', metavar='NAME', nargs='+', default=None,
                   help='model name(s): hf-hub:ORG/NAME, local-dir:DIR or a registered name with pretrained weights '
                        '(resnet50_ssm.a1_in1k); with --checkpoint, one name for all checkpoints or one per '
                        'checkpoint. Default: the model of each train.py run')
group.add_argument('--checkpoint', nargs='+', default=[], metavar='RUN',
                   help='train.py output folder(s) (model_best.pth.tar, else last.pth.tar) or checkpoint(s); several '
                        'form an ensemble')
group.add_argument('--pretrained', action='store_true', default=False,
                   help='accepted for validate.py\'s spelling: a --model without --checkpoint has pretrained weights')
group.add_argument('--amp', action='store_true', default=False, help='use native AMP for mixed precision')
group.add_argument('--amp-dtype', default='float16', type=str, choices=('float16', 'bfloat16'),
                   help='AMP dtype (float16, bfloat16)')
group.add_argument('--channels-last', action='store_true', default=False, help='use channels_last memory layout')
group.add_argument('--seed', type=int, default=42, metavar='S', help='random seed (default: 42)')

group = parser.add_argument_group('Output')
group.add_argument('--json', default='', metavar='FILE', help='write the results as JSON (schema: docs/analyses.md)')
group.add_argument('--csv', default='', metavar='FILE', help='write one row per model and output as CSV')
group.add_argument('--plot', default='', metavar='FILE',
                   help='PNG bar chart of the sub-classifiers, averaged output and oracle (needs matplotlib)')
group.add_argument('--overwrite', action='store_true', default=False,
                   help='replace existing files that are not earlier outputs of this tool (default: refuse)')
group.add_argument('--no-progress', action='store_true', default=False, help='no progress bar')

_CSV_FIELDS = ['model', 'checkpoint', 'output', 'top1', 'top5']
_PNG_SOFTWARE = 'timm_ssm.evaluate'  # the PNG text chunk that marks a plot of this tool


def _output_rows(result: Dict[str, Any]) -> List[Dict[str, Any]]:
    rows = []
    for m in result['models']:
        base = dict(model=m['model'], checkpoint=m['checkpoint'] or '')
        for head in m['heads']:
            rows.append(dict(base, output=head['name'], top1=head['top1'], top5=head['top5']))
        rows.append(dict(base, output='averaged', top1=m['top1'], top5=m['top5']))
        if m['oracle'] is not None:
            rows.append(dict(base, output='oracle', top1=m['oracle']['top1'], top5=''))
        for rule, r in m['selection'].items():
            rows.append(dict(base, output=f'select:{rule}', top1=r['top1'], top5=r['top5']))
    if result['ensemble'] is not None:
        e = result['ensemble']
        rows.append(dict(model='+'.join(m['model'] for m in result['models']), checkpoint='', output='ensemble',
                         top1=e['top1'], top5=e['top5']))
    return rows


def _count(value: Optional[int]) -> str:
    if value is None:
        return '-'
    for unit, scale in (('G', 1e9), ('M', 1e6), ('K', 1e3)):
        if value >= scale:
            return f'{value / scale:.2f} {unit}'
    return str(value)


def format_table(result: Dict[str, Any]) -> str:
    """The results as the printed text table."""
    lines = []
    for m in result['models']:
        title = m['model'] + (f'  ({m["checkpoint"]})' if m['checkpoint'] else '')
        lines += [
            title,
            f'  params {_count(m["param_count"])} (head {_count(m["head_param_count"])})   '
            f'multiply-adds {_count(m["macs"])} (head {_count(m["head_macs"])})',
            f'  {"output":<22}{"sees channels":>14}{"top1":>10}{"top5":>10}{"vs avg":>9}',
        ]
        for head in m['heads']:
            channels = f'0-{head["width"] - 1}'
            lines.append(f'  {head["name"]:<22}{channels:>14}{head["top1"]:>10.3f}{head["top5"]:>10.3f}'
                         f'{head["top1"] - m["top1"]:>+9.2f}')
        lines.append(f'  {"averaged":<22}{"":>14}{m["top1"]:>10.3f}{m["top5"]:>10.3f}')
        if m['oracle'] is not None:
            lines.append(f'  {"oracle (any FC right)":<22}{"":>14}{m["oracle"]["top1"]:>10.3f}{"":>10}'
                         f'{m["oracle"]["top1"] - m["top1"]:>+9.2f}')
        for rule, r in m['selection'].items():
            chosen = ''
            if r['chosen'] is not None:
                chosen = '  picks ' + ' '.join(f'{100 * c:.0f}%' for c in r['chosen'])
            lines.append(f'  {"select " + rule:<22}{"":>14}{r["top1"]:>10.3f}{r["top5"]:>10.3f}'
                         f'{r["top1"] - m["top1"]:>+9.2f}{chosen}')
        lines.append('')
    if result['ensemble'] is not None:
        e = result['ensemble']
        lines.append(f'Ensemble of {e["members"]} (mean of logits): top1 {e["top1"]:.3f}  top5 {e["top5"]:.3f}  '
                     f'({e["gain_over_best"]:+.2f} over the best member)')
    lines.append(f'{result["data"]["num_samples"]} images, {result["throughput"]:.1f} images/s')
    return '\n'.join(lines)


def _pyplot():
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError(
            "--plot needs matplotlib: pip install 'timm-ssm[analysis]' (or pip install matplotlib).") from e
    return plt


def plot_results(result: Dict[str, Any], path: str):
    """PNG bar chart: per model, the sub-classifiers' top-1, the averaged output's and the oracle's."""
    plt = _pyplot()
    models = result['models']
    cols = min(3, len(models))
    rows = -(-len(models) // cols)
    width = 1.6 + 0.9 * max(len(m['heads']) + 2 for m in models)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, 4 * rows), squeeze=False)
    for ax in axes.flat[len(models):]:
        ax.set_visible(False)
    for ax, m in zip(axes.flat, models):
        names = [h['name'] for h in m['heads']] + ['avg']
        values = [h['top1'] for h in m['heads']] + [m['top1']]
        colors = ['tab:blue'] * len(m['heads']) + ['tab:orange']
        if m['oracle'] is not None:
            names.append('oracle')
            values.append(m['oracle']['top1'])
            colors.append('tab:green')
        bars = ax.bar(names, values, color=colors)
        ax.bar_label(bars, fmt='%.1f', fontsize=8)
        ax.set_ylim(0, min(105, max(values) * 1.12 + 1))  # room for the labels above the bars
        ax.set_ylabel('top-1 accuracy (%)')
        title = m['model']
        if m['checkpoint']:
            checkpoint = os.path.abspath(m['checkpoint'])
            title += '\n' + os.path.join(os.path.basename(os.path.dirname(checkpoint)), os.path.basename(checkpoint))
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format='png', dpi=120, metadata={'Software': _PNG_SOFTWARE}))
    plt.close(fig)


def write_json(result: Dict[str, Any], path: str):
    atomic_write(path, lambda f: json.dump(result, f, indent=2), mode='w')


def write_csv(result: Dict[str, Any], path: str):
    def _write(f):
        writer = csv.DictWriter(f, fieldnames=_CSV_FIELDS)
        writer.writeheader()
        writer.writerows(_output_rows(result))
    atomic_write(path, _write, mode='w')


def is_own_output(path) -> bool:
    """Whether an existing file is an earlier output of this tool: its JSON, its CSV or its plot."""
    try:
        if str(path).endswith('.csv'):
            with open(path, encoding='utf-8') as f:
                return f.readline().strip() == ','.join(_CSV_FIELDS)
        with open(path, 'rb') as f:
            start = f.read(8)
        if start == b'\x89PNG\r\n\x1a\n':
            with Image.open(path) as im:
                return im.info.get('Software') == _PNG_SOFTWARE
        with open(path, encoding='utf-8') as f:
            result = json.load(f)
        return isinstance(result, dict) and {'data', 'models', 'ensemble'} <= set(result)
    except (OSError, ValueError, UnicodeDecodeError):
        return False


def _outputs(args) -> Dict[str, str]:
    return {f'--{o}': getattr(args, o) for o in ('json', 'csv', 'plot') if getattr(args, o)}


def _check_members(runs, models):
    """Refuse an ensemble of identical weights (a checkpoint twice, or last.pth.tar and model_best.pth.tar of the
    same epoch): its 'gain' would be zero by construction, not a measurement."""
    seen = {}
    for run, model in zip(runs, models):
        digest = weights_digest(model)
        if digest in seen:
            raise RunError(f'{seen[digest]} and {run.checkpoint or run.source} hold identical weights (the same '
                           f'file, a link or copy, or two checkpoints of one epoch): an ensemble of them measures '
                           f'nothing. Give checkpoints of different runs or epochs.')
        seen[digest] = run.checkpoint or run.source
    return list(seen)


def run(args) -> Dict[str, Any]:
    """Evaluate as the command line asks and return the results (JSON schema: docs/analyses.md)."""
    device = resolve_device(args.device)
    outputs = _outputs(args)
    check_outputs(outputs, overwrite=args.overwrite, own=is_own_output, tool=parser.prog)  # before the models load
    if args.plot:
        _pyplot()
    root = args.data or args.data_dir
    amp_autocast = suppress
    if args.amp:
        amp_autocast = partial(torch.autocast, device_type=device.type, dtype=getattr(torch, args.amp_dtype))
    torch.manual_seed(args.seed)

    runs, models = zip(*models_from_args(args, device))
    inputs = [f for r in runs for f in run_input_files(r)] + ([args.class_map] if args.class_map else [])
    folders = [root] if root and os.path.isdir(root) and not args.dataset else []
    check_outputs(outputs, inputs, folders, overwrite=args.overwrite, own=is_own_output, tool=parser.prog)
    digests = _check_members(runs, models)
    num_classes = {m.num_classes for m in models}
    if len(num_classes) > 1:
        raise RunError(f'An ensemble needs models with the same classes, got num_classes {sorted(num_classes)}.')
    if min(num_classes) < 2:
        raise RunError(f'Evaluation needs a classifier of two or more classes, the model has num_classes='
                       f'{min(num_classes)}: give --num-classes.')
    data_config = data_config_from_args(args, runs[0], models[0], verbose=True)
    for run, model in zip(runs[1:], models[1:]):
        other = data_config_from_args(args, run, model)
        if other != data_config:
            _logger.warning(f'{run.source} has another data config ({other}): all models see the data of the '
                            f'first one ({data_config}).')
    complexity = [model_complexity(m, data_config['input_size']) for m in models]

    dataset = create_run_dataset(
        root,
        models[0],
        runs[0],
        dataset=args.dataset,
        split=args.split,
        download=args.dataset_download,
        class_map=args.class_map,
        num_samples=args.num_samples,
        input_key=args.input_key,
        input_img_mode=args.input_img_mode or ('RGB' if data_config['input_size'][0] == 3 else 'L'),
        target_key=args.target_key,
        seed=args.seed,
    )
    loader = create_loader(
        dataset,
        input_size=data_config['input_size'],
        batch_size=args.batch_size,
        use_prefetcher=not args.no_prefetcher,
        interpolation=data_config['interpolation'],
        mean=data_config['mean'],
        std=data_config['std'],
        num_workers=args.workers,
        crop_pct=data_config['crop_pct'],
        crop_mode=data_config['crop_mode'],
        pin_memory=args.pin_mem,
        device=device,
    )
    if args.channels_last:
        models = [m.to(memory_format=torch.channels_last) for m in models]
    results = evaluate(
        models,
        loader,
        device=device,
        amp_autocast=amp_autocast,
        channels_last=args.channels_last,
        progress=False if args.no_progress else None,
        warmup=torch.randn((args.batch_size,) + tuple(data_config['input_size'])),
    )

    out = dict(
        data=dict(
            data_dir=root, dataset=args.dataset, split=args.split, num_samples=results['num_samples'],
            input_size=list(data_config['input_size']), interpolation=data_config['interpolation'],
            crop_pct=data_config['crop_pct'], crop_mode=data_config['crop_mode'],
            mean=list(data_config['mean']), std=list(data_config['std']),
        ),
        models=[],
        ensemble=results['ensemble'],
        throughput=results['throughput'],
        seconds=results['seconds'],
    )
    for run, model, digest, cost, accuracy in zip(runs, models, digests, complexity, results['models']):
        head = split_head(model)
        out['models'].append(dict(
            model=run.args['model'],
            checkpoint=str(run.checkpoint) if run.checkpoint else None,
            epoch=run.epoch,
            use_ema=args.use_ema,
            weights_sha256=digest,
            num_classes=model.num_classes,
            num_splits=head.num_splits if head is not None else None,
            **cost,
            **accuracy,
        ))
    return out


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run the command line `python -m timm_ssm.evaluate ARGS`, print the table and write the files asked for.

    Args:
        argv: The arguments, sys.argv[1:] if None.

    Returns:
        The results (JSON schema: docs/analyses.md).
    """
    args = parser.parse_args(argv)
    try:
        result = run(args)
    except (ValueError, FileNotFoundError, ImportError) as e:  # RunError is a ValueError
        parser.exit(2, f'{parser.prog}: error: {e}\n')
    print(format_table(result), flush=True)
    for path, write in ((args.json, write_json), (args.csv, write_csv), (args.plot, plot_results)):
        if path:
            try:
                write(result, path)
            except OSError as e:  # a full disk: the results are printed, atomic_write left no partial file
                parser.exit(1, f'{parser.prog}: error: {write_error(path, e)}\n')
    return result


if __name__ == '__main__':
    setup_default_logging()
    main()
