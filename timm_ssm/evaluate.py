""" Evaluation of Split-and-Share models: every sub-classifier, the oracle, head selection and ensembles

Paper: `Exploiting Features with Split-and-Share Module` - https://doi.org/10.3390/electronics11020235
(Lee et al., Electronics 2022)

`python -m timm_ssm.evaluate --checkpoint RUN --data-dir DIR` measures on timm validate.py's road, in one pass: the
averaged output (Table 1), each sub-classifier FC1..FCn (Table 2), the oracle (right when any sub-classifier is),
label-free rules that pick or combine sub-classifiers, parameters and multiply-adds (Table 4) and the ensemble of
several checkpoints (Table 3), for plain timm models too.
"""
import argparse
import csv
import json
import logging
import os
import time
from collections import defaultdict
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from timm.data import create_loader
from timm.utils import AverageMeter, accuracy, setup_default_logging

from .complexity import model_complexity
from .files import RunError, atomic_write, write_error
from .runs import check_outputs, check_read, create_run_dataset, models_from_args, number_in, resolve_device, \
    run_data_config, run_parser, split_head, weights_digest

__all__ = ['SELECTION_RULES', 'split_outputs', 'evaluate', 'format_table', 'main']

_logger = logging.getLogger(__name__)

SELECTION_RULES = ('max_prob', 'min_entropy', 'max_margin', 'vote', 'prob_avg')
_HEAD_RULES = SELECTION_RULES[:3]  # the rules that pick one sub-classifier per sample


def split_outputs(splits: torch.Tensor) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
    """Each output of the sub-classifiers' logits (B, n, K) as class scores (B, K): FC1..FCn, then each rule of
    SELECTION_RULES; and the sub-classifier each picking rule picks per sample (B, 3)."""
    log_prob = splits.float().log_softmax(-1)
    prob = log_prob.exp()
    top = prob.topk(2, -1).values
    choice = torch.stack([
        top[..., 0].argmax(1),  # max_prob: the highest top probability
        (prob * log_prob).sum(-1).argmax(1),  # min_entropy: the largest minus entropy
        (top[..., 0] - top[..., 1]).argmax(1),  # max_margin: the largest gap between the two best classes
    ], 1)
    picked = splits.gather(1, choice[..., None].expand(-1, -1, splits.shape[-1]))
    prob_avg = prob.mean(1)
    # one vote per sub-classifier; the mean probabilities are below 1 and so only order classes with equal votes
    votes = prob_avg.scatter_add(1, splits.argmax(-1), torch.ones_like(prob[..., 0]))
    outputs = {f'FC{j + 1}': s for j, s in enumerate(splits.unbind(1))}
    outputs.update(zip(_HEAD_RULES, picked.unbind(1)), vote=votes, prob_avg=prob_avg)
    return outputs, choice


@torch.inference_mode()
def evaluate(models: Sequence[nn.Module], loader, device: torch.device, amp_dtype: Optional[torch.dtype] = None,
             channels_last: bool = False, progress: Optional[bool] = None,
             warmup: Optional[torch.Tensor] = None) -> Dict[str, Any]:
    """One pass of a loader of (images, class indices) through models in eval mode, and their ensemble, as timm's
    validate.py measures it (in autocast to `amp_dtype` if given), after the models saw the `warmup` images.

    Returns:
        `models`: the accuracy part of each model's entry of the JSON schema (docs/analyses.md); `ensemble`,
        `num_samples`, `nonfinite` (images with a logit that is not finite), `throughput` and `seconds`.
    """
    heads = [split_head(m) for m in models]
    k = min(5, models[0].num_classes)
    meters = [defaultdict(lambda: (AverageMeter(), AverageMeter())) for _ in range(len(models) + 1)]
    chosen = [0] * len(models)
    nonfinite, count = torch.zeros((), dtype=torch.long, device=device), 0

    def _forward(model, head, images):
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            if head is None:
                return model(images).float(), None
            pooled = model.forward_head(model.forward_features(images), pre_logits=True)
            return head(pooled).float(), head.forward_splits(pooled).float()  # head(): the model's own output

    def _update(meter, outputs, target):
        for name, output in outputs.items():
            acc1, acc5 = accuracy(output, target, topk=(1, k))
            meter[name][0].update(acc1.item(), target.size(0))
            meter[name][1].update(acc5.item(), target.size(0))

    for model, head in zip(models, heads) if warmup is not None else ():
        _forward(model, head, warmup.to(device))
    start = time.perf_counter()
    for images, target in tqdm(loader, desc='eval', unit='batch', disable=None if progress is None else not progress):
        images = images.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
        target = target.to(device)  # no-op after timm's prefetcher
        averaged = []
        for i, (model, head) in enumerate(zip(models, heads)):
            logits, splits = _forward(model, head, images)
            outputs = {'averaged': logits}
            nonfinite += (~torch.isfinite(logits if splits is None else splits)).flatten(1).any(1).sum()
            if splits is not None:
                more, choice = split_outputs(splits)
                outputs.update(more)
                chosen[i] = chosen[i] + F.one_hot(choice, head.num_splits).sum(0)
                oracle = (splits.argmax(-1) == target[:, None]).any(1).float().mean()
                meters[i]['oracle'][0].update(100. * oracle.item(), target.size(0))
            _update(meters[i], outputs, target)
            averaged.append(logits)
        if len(models) > 1:
            _update(meters[-1], {'averaged': torch.stack(averaged).mean(0)}, target)
        count += target.size(0)
    seconds = time.perf_counter() - start

    def _entry(meter, head=None, chosen=None):
        def pct(name, i=0):
            return round(meter[name][i].avg, 4)
        out = dict(top1=pct('averaged'), top1_err=round(100 - meter['averaged'][0].avg, 4), top5=pct('averaged', 1),
                   top5_err=round(100 - meter['averaged'][1].avg, 4), heads=[], oracle=None, selection={})
        if head is not None:
            w = head.widths
            out['heads'] = [dict(name=f'FC{j + 1}', top1=pct(f'FC{j + 1}'), top5=pct(f'FC{j + 1}', 1), width=w[j],
                                 group=[w[j - 1] if j else 0, w[j] - 1]) for j in range(head.num_splits)]
            out['oracle'] = dict(top1=pct('oracle'))
            fractions = dict(zip(_HEAD_RULES, (chosen / max(count, 1)).tolist()))
            out['selection'] = {rule: dict(top1=pct(rule), top5=pct(rule, 1), chosen=[
                round(c, 4) for c in fractions[rule]] if rule in fractions else None) for rule in SELECTION_RULES}
        return out

    results = dict(models=[_entry(*a) for a in zip(meters, heads, chosen)], ensemble=None, num_samples=count,
                   nonfinite=int(nonfinite), throughput=round(count / max(seconds, 1e-9), 2), seconds=round(seconds, 3))
    if len(models) > 1:
        ens = _entry(meters[-1])
        results['ensemble'] = dict(members=len(models), **{m: ens[m] for m in ('top1', 'top1_err', 'top5', 'top5_err')},
                                   gain_over_best=round(ens['top1'] - max(r['top1'] for r in results['models']), 4))
    return results


parser = argparse.ArgumentParser(
    prog='python -m timm_ssm.evaluate', parents=[run_parser],
    description='Evaluate timm models with Split-and-Share heads: every sub-classifier, the oracle, label-free '
                'head selection, parameters and multiply-adds, and ensembles of several checkpoints.')
group = parser.add_argument_group('Data loading (as timm validate.py)')
group.add_argument('data', nargs='?', metavar='DIR', help='path to dataset (deprecated, use --data-dir)')
group.add_argument('--num-samples', type=number_in(int, 1), metavar='N', help='number of samples (iterable datasets)')
group.add_argument('--input-key', help='dataset key for input images')
group.add_argument('--input-img-mode', help='dataset image conversion mode for input images')
group.add_argument('--target-key', help='dataset key for target labels')
group.add_argument('-b', '--batch-size', default=256, type=number_in(int, 1), metavar='N', help='mini-batch size (256)')
group.add_argument('-j', '--workers', default=min(4, os.cpu_count() or 1), type=number_in(int, 0), metavar='N',
                   help='number of data loading workers (default: 4, at most the CPU count)')
group.add_argument('--no-prefetcher', action='store_true', help='disable fast prefetcher')
group.add_argument('--pin-mem', action='store_true', help='pin CPU memory in DataLoader')

group = parser.add_argument_group('Evaluation')
group.add_argument('--model', '-m', metavar='NAME', nargs='+',
                   help='model name(s): hf-hub:ORG/NAME, local-dir:DIR or a registered name with pretrained weights '
                        '(default: the run\'s); with --checkpoint, one name for all checkpoints or one per checkpoint')
group.add_argument('--checkpoint', nargs='+', default=[], metavar='RUN', help='train.py output folder(s) '
                   '(model_best.pth.tar, else last.pth.tar) or checkpoint(s); several form an ensemble')
group.add_argument('--pretrained', action='store_true', help='as validate.py (a --model alone is pretrained)')
group.add_argument('--amp', action='store_true', help='use native AMP for mixed precision')
group.add_argument('--amp-dtype', default='float16', choices=('float16', 'bfloat16'), help='AMP dtype')
group.add_argument('--channels-last', action='store_true', help='use channels_last memory layout')
group.add_argument('--seed', type=int, default=42, metavar='S', help='random seed (default: 42)')

group = parser.add_argument_group('Output')
group.add_argument('--json', default='', metavar='FILE', help='write the results as JSON')
group.add_argument('--csv', default='', metavar='FILE', help='write one row per model and output as CSV')
group.add_argument('--plot', default='', metavar='FILE', help='PNG bar chart: sub-classifiers, averaged, oracle')
group.add_argument('--overwrite', action='store_true', help='replace existing output files')
group.add_argument('--no-progress', action='store_true', help='no progress bar')


def _rows(m: Dict[str, Any]) -> List[tuple]:
    """(output, channels it sees, top1, top5, fraction of samples per sub-classifier) of each output of a model."""
    rows = [(h['name'], f'0-{h["width"] - 1}', h['top1'], h['top5'], None) for h in m['heads']]
    rows.append(('averaged', '', m['top1'], m['top5'], None))
    rows += [('oracle', '', m['oracle']['top1'], None, None)] if m['oracle'] is not None else []
    return rows + [(f'select:{rule}', '', r['top1'], r['top5'], r['chosen']) for rule, r in m['selection'].items()]


def _count(value: Optional[int]) -> str:
    unit, scale = next(((u, s) for u, s in (('G', 1e9), ('M', 1e6), ('K', 1e3)) if (value or 0) >= s), ('', 1))
    return '-' if value is None else f'{value / scale:.2f} {unit}' if unit else str(value)


def format_table(result: Dict[str, Any]) -> str:
    """The results as the printed text table."""
    lines = []
    for m in result['models']:
        lines += [m['model'] + (f'  ({m["checkpoint"]})' if m['checkpoint'] else ''),
                  f'  params {_count(m["param_count"])} (head {_count(m["head_param_count"])})   '
                  f'multiply-adds {_count(m["macs"])} (head {_count(m["head_macs"])})',
                  f'  {"output":<22}{"sees channels":>14}{"top1":>10}{"top5":>10}{"vs avg":>9}']
        for output, channels, top1, top5, chosen in _rows(m):
            top5 = '' if top5 is None else f'{top5:.3f}'
            gap = '' if output == 'averaged' else f'{top1 - m["top1"]:+.2f}'
            picks = '  picks ' + ' '.join(f'{100 * c:.0f}%' for c in chosen) if chosen is not None else ''
            lines.append(f'  {output:<22}{channels:>14}{top1:>10.3f}{top5:>10}{gap:>9}{picks}'.rstrip())
        lines.append('')
    if result['ensemble'] is not None:
        e = result['ensemble']
        lines.append(f'Ensemble of {e["members"]} (mean of logits): top1 {e["top1"]:.3f}  top5 {e["top5"]:.3f}  '
                     f'({e["gain_over_best"]:+.2f} over the best member)')
    data = result['data']
    lines.append(f'{data["num_samples"]} images of {data["split_folder"] or data["dataset"]}, '
                 f'{result["throughput"]:.1f} images/s')
    return '\n'.join(lines)


def plot_results(result: Dict[str, Any], path: str):
    """PNG bar chart: per model, the sub-classifiers' top-1, the averaged output's and the oracle's."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state
    models = result['models']
    rows, cols = -(-len(models) // 3), min(3, len(models))
    fig = Figure(figsize=((1.6 + 0.9 * max(len(m['heads']) + 2 for m in models)) * cols, 4 * rows))
    for i, m in enumerate(models):
        ax = fig.add_subplot(rows, cols, i + 1)
        names, values = zip(*[(o, top1) for o, _, top1, _, _ in _rows(m) if not o.startswith('select:')])
        colors = [dict(averaged='tab:orange', oracle='tab:green').get(name, 'tab:blue') for name in names]
        ax.bar_label(ax.bar(names, values, color=colors), fmt='%.1f', fontsize=8)
        ax.set_ylim(0, min(105, max(values) * 1.12 + 1))  # room for the labels above the bars
        ax.set_ylabel('top-1 accuracy (%)')
        checkpoint = os.path.abspath(m['checkpoint']) if m['checkpoint'] else ''
        ax.set_title(m['model'] + ('\n' + os.path.join(*checkpoint.split(os.sep)[-2:]) if checkpoint else ''),
                     fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format='png', dpi=120))


def _write_json(result: Dict[str, Any], path: str):
    atomic_write(path, lambda f: json.dump(result, f, indent=2), mode='w')


def _write_csv(result: Dict[str, Any], path: str):
    rows = [('model', 'checkpoint', 'output', 'top1', 'top5')]
    rows += [(m['model'], m['checkpoint'], output, top1, top5)
             for m in result['models'] for output, _, top1, top5, _ in _rows(m)]
    if result['ensemble'] is not None:
        members, ensemble = '+'.join(m['model'] for m in result['models']), result['ensemble']
        rows.append((members, '', 'ensemble', ensemble['top1'], ensemble['top5']))
    atomic_write(path, lambda f: csv.writer(f).writerows(rows), mode='w')


def run(args) -> Dict[str, Any]:
    """Evaluate as the command line asks and return the results (JSON schema: docs/analyses.md)."""
    device = resolve_device(args.device)
    runs, models = zip(*models_from_args(args, device))
    outputs = [(f'--{o}', getattr(args, o)) for o in ('json', 'csv', 'plot') if getattr(args, o)]
    check_outputs(outputs, runs, args.class_map, args.overwrite)
    digests = [weights_digest(m) for m in models]
    twins = [str(r.checkpoint or r.source) for r, digest in zip(runs, digests) if digests.count(digest) > 1]
    if twins:
        raise RunError(f'{" and ".join(twins)} hold identical weights, so an ensemble of them measures nothing: give '
                       f'checkpoints of different runs or epochs.')
    num_classes = sorted({m.num_classes for m in models})
    if len(num_classes) > 1 or num_classes[0] < 2:
        raise RunError(f'Evaluation needs models of one number of classes, two or more, but they have num_classes '
                       f'{num_classes}: give models trained on the same classes.')
    data_config = run_data_config(runs[0], models[0], vars(args), verbose=True)
    for run_, model in zip(runs[1:], models[1:]):
        if run_data_config(run_, model, vars(args)) != data_config:
            _logger.warning(f'{run_.source} has another data config: all models see the first one\'s ({data_config}).')
    complexity = [model_complexity(m, data_config['input_size']) for m in models]

    img_mode = args.input_img_mode or ('RGB' if data_config['input_size'][0] == 3 else 'L')
    dataset = create_run_dataset(
        args.data or args.data_dir, models[0], runs[0], dataset=args.dataset, split=args.split, seed=args.seed,
        class_map=args.class_map, download=args.dataset_download, num_samples=args.num_samples,
        input_key=args.input_key, target_key=args.target_key, input_img_mode=img_mode)
    loader = create_loader(dataset, batch_size=args.batch_size, use_prefetcher=not args.no_prefetcher,
                           num_workers=args.workers, pin_memory=args.pin_mem, device=device, **data_config)
    if args.channels_last:
        models = [m.to(memory_format=torch.channels_last) for m in models]
    torch.manual_seed(args.seed)
    warmup = torch.randn((max(1, min(args.batch_size, len(dataset))),) + tuple(data_config['input_size']))
    try:
        results = evaluate(models, loader, device, getattr(torch, args.amp_dtype) if args.amp else None,
                           args.channels_last, progress=False if args.no_progress else None, warmup=warmup)
    finally:  # timm's reader gives up after 10 unreadable images in a row: those before are named
        check_read(dataset)
    if results['nonfinite']:
        fix = 'run again without --amp (or with --amp-dtype bfloat16)' if args.amp else \
            'check the checkpoint (its weights overflow on these images)'
        raise RunError(f'{results["nonfinite"]} of the {results["num_samples"]} images gave logits that are not '
                       f'finite (NaN or inf), so no accuracy is reported: {fix}.')

    data = dict(data_dir=args.data or args.data_dir, dataset=args.dataset, split=args.split,
                split_folder=str(dataset.folder) if dataset.folder else None, num_samples=results['num_samples'],
                **{k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()})
    entries = [dict(model=run_.args['model'], checkpoint=str(run_.checkpoint) if run_.checkpoint else None,
                    epoch=run_.epoch, use_ema=args.use_ema, weights_sha256=digest, num_classes=model.num_classes,
                    num_splits=len(accuracy_['heads']) or None, **cost, **accuracy_)
               for run_, model, digest, cost, accuracy_ in zip(runs, models, digests, complexity, results['models'])]
    return dict(data=data, models=entries, ensemble=results['ensemble'], throughput=results['throughput'],
                seconds=results['seconds'])


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run `python -m timm_ssm.evaluate ARGS`: print the table, write the files asked for, return the results."""
    args = parser.parse_args(argv)
    try:
        result = run(args)
    except RunError as e:
        parser.exit(2, f'{parser.prog}: error: {e}\n')
    print(format_table(result), flush=True)
    for path, write in ((args.json, _write_json), (args.csv, _write_csv), (args.plot, plot_results)):
        if path:
            try:
                write(result, path)
            except OSError as e:  # a full disk: the results are printed, atomic_write left no partial file
                parser.exit(1, f'{parser.prog}: error: {write_error(path, e)}\n')
            print(f'wrote results to {path}')
    return result


if __name__ == '__main__':
    setup_default_logging()
    main()
