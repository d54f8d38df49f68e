""" Does SSM help my model on my data? Baseline, SSM and its controls, trained alike over seeds, paired tests

Paper: `Exploiting Features with Split-and-Share Module` - https://doi.org/10.3390/electronics11020235
(Lee et al., Electronics 2022)

    python -m timm_ssm.study --model M --data-dir DIR [--dataset D] [--train-split S] [--val-split V] \
        [--variants baseline ssm 4fc ...] [--seeds 0 1 2] [--sweep num_features=256,1024,2048] \
        --out OUT [any other train.py argument, unchanged]

For every seed (and every value of `--sweep`), each variant of `--model` is trained by timm's own `train.py`,
unchanged, through `python -m timm_ssm.launch`, with the same arguments and seed; nothing is evaluated during
training (`--val-split ''` for train.py) and the last checkpoint is evaluated by `python -m timm_ssm.evaluate` on
`--val-split`, a split that picked nothing. Variants:

    baseline        `--model` with its own classifier
    ssm             `<model>_ssm`, n = `--num-splits` (the paper's SSM, one loss on the averaged output)
    ssm_norm_all    the same with `norm_all=True` (Algorithm 1: BatchNorm before every sub-classifier)
    kfc (2fc, 4fc)  `<model>_ssm num_splits=k split=False`: k plain Linear layers on all C channels, averaged (Table
                    4's controls); their average is one Linear trained with 1/k of its step, so 4fc is SSM's control
                    for the effective head learning rate at n = 4; 1fc is one Linear with the head's initialization
                    (PyTorch's), where the baseline's classifier has the trunk's
    ssm_individual  `ssm` trained with a loss per sub-classifier (Table 2). train.py cannot do it: the study's own
                    loop (`train_individual`) runs it, built from the same train.py arguments with timm's functions

`--sweep KEY=V1,V2,...` trains every variant with each value of a trunk argument (`--model-kwargs KEY=V`),
e.g. the pooled width `num_features` of `mnasnet_small` or `regnetx_002`. Without `--data-dir` the study runs on
Fashion-MNIST (prepared by `timm_ssm.fashion_mnist`) with the recipe of docs/evidence.md, before your train.py
arguments (the last given wins); `--device cuda` switches its defaults to the paper's width (resnet26, C = 2048),
AMP and channels_last, sized for 10 minutes of one GPU.

Finished runs (`OUT/runs/NAME/run.json`, written when a run is trained and evaluated with the same arguments) are
kept when the command runs again; `--report` trains nothing and reports what finished. Output: `OUT/study.md`,
`OUT/study.json` and `OUT/study.png` (paired differences to the baseline with 95% confidence intervals, and for a
sweep the gain against the swept value). Every paired difference (seed k against seed k) has an exact two-sided
sign test and a paired t-test.
"""
import argparse
import ast
import json
import math
import os
import platform
import re
import shutil
import statistics
import struct
import subprocess
import sys
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import suppress
from typing import Dict, List, Optional, Sequence

import torch
import yaml

from .process import Children, Stopped
from .runs import atomic_write, check_data_dir, check_output_folder
from .timm_source import parse_train_args

__all__ = ['main', 'sign_test', 'paired_t', 'variant_model', 'train_individual']

VARIANT_RE = re.compile(r'^(baseline|ssm|ssm_norm_all|ssm_individual|([1-9][0-9]*)fc)$')
RECORD = 'run.json'
# Fashion-MNIST defaults per device: CPU (2 shared cores, docs/evidence.md), CUDA (one H200, 10 minutes)
DEVICE_DEFAULTS = dict(
    cpu=dict(model='lcnet_050', img_size=28, epochs=3, workers=2, threads=1, extra=[]),
    cuda=dict(model='resnet26', img_size=32, epochs=4, workers=2, threads=1, extra=['--amp', '--channels-last']),
)

parser = argparse.ArgumentParser(
    prog='python -m timm_ssm.study', allow_abbrev=False,
    description='Baseline, SSM and its controls trained alike by timm\'s train.py over seeds, evaluated on a split '
                'that picked nothing, with paired tests. Arguments not listed here go to train.py unchanged.')
parser.add_argument('--model', default=None, help='the baseline timm classifier; the others are <model>_ssm '
                    '(default on Fashion-MNIST: lcnet_050 on CPU, resnet26 on CUDA)')
parser.add_argument('--variants', nargs='+', default=['baseline', 'ssm', '4fc'],
                    help='baseline, ssm, ssm_norm_all, ssm_individual, kfc for any k >= 1 (default: baseline ssm 4fc)')
parser.add_argument('--num-splits', type=int, default=4, help='sub-classifiers n of the SSM variants (default: 4)')
parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2, 3, 4], help='seeds (default: 0 1 2 3 4)')
parser.add_argument('--sweep', default=None, metavar='KEY=V1,V2,...',
                    help='train everything with each value of a trunk argument, e.g. num_features=256,1024,2048')
parser.add_argument('--model-kwargs', nargs='*', default=[], metavar='KEY=VALUE',
                    help='trunk arguments of every variant (as train.py\'s --model-kwargs)')
parser.add_argument('--data-dir', default=None, help='data root (default: Fashion-MNIST, prepared by timm_ssm)')
parser.add_argument('--dataset', default=None, help='train.py\'s --dataset (default: torch/fashion_mnist without '
                    '--data-dir, else train.py\'s: a folder of class folders)')
parser.add_argument('--train-split', default='train', help='the split to train on (default: train)')
parser.add_argument('--val-split', default=None, help='the split every checkpoint is evaluated on; it picks '
                    'nothing (default: test on Fashion-MNIST, else validation)')
parser.add_argument('--train-subset', type=int, default=None, metavar='N',
                    help='Fashion-MNIST only: train on the first N train images (a copy in OUT)')
parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
parser.add_argument('--jobs', type=int, default=None, help='runs at a time (default: one per CPU core; on CUDA '
                    'one per 3 cores)')
parser.add_argument('--threads', type=int, default=1, help='OMP_NUM_THREADS of each run (default: 1; on shared '
                    'cores a second intra-op thread waits on descheduled ones)')
parser.add_argument('--out', default='output/study', help='output folder (default: output/study)')
parser.add_argument('--report', action='store_true', help='train nothing: report the runs that finished')


def _value(text: str):
    try:
        return ast.literal_eval(text)  # as timm's ParseKwargs reads --model-kwargs
    except (ValueError, SyntaxError):
        return text


def variant_model(model: str, variant: str, num_splits: int = 4) -> tuple:
    """(model name, model kwargs) of a variant; ValueError for an unknown one."""
    match = VARIANT_RE.match(variant)
    if match is None:
        raise ValueError(f'Unknown variant {variant!r}: give baseline, ssm, ssm_norm_all, ssm_individual or kfc '
                         f'for any k >= 1 (1fc, 2fc, 4fc, ...).')
    if match.group(2):
        return f'{model}_ssm', [f'num_splits={match.group(2)}', 'split=False']
    return {'baseline': (model, []), 'ssm_norm_all': (f'{model}_ssm', [f'num_splits={num_splits}', 'norm_all=True'])
            }.get(variant, (f'{model}_ssm', [f'num_splits={num_splits}']))


class Task:
    """One run: a variant, a sweep value (or None) and a seed."""

    def __init__(self, variant: str, value: Optional[str], seed: int, study):
        self.variant, self.value, self.seed = variant, value, seed
        key = study.sweep[0] if value is not None else ''
        self.name = f'{variant}-{key}{value}-seed{seed}' if value is not None else f'{variant}-seed{seed}'
        self.dir = os.path.join(study.runs, self.name)
        self.model, kwargs = variant_model(study.model, variant, study.num_splits)
        self.kwargs = study.model_kwargs + ([f'{key}={value}'] if value is not None else []) + kwargs
        self.train_args = [*study.train_args, '--model', self.model, '--seed', str(seed), '--output', study.runs,
                           '--experiment', self.name] + (['--model-kwargs', *self.kwargs] if self.kwargs else [])
        self.eval_args = ['--checkpoint', os.path.join(self.dir, 'last.pth.tar'), *study.eval_args,
                          '--json', os.path.join(self.dir, 'eval.json')]

    def finished(self) -> Optional[dict]:
        """The record of this run trained and evaluated with exactly these arguments, else None."""
        with suppress(OSError, ValueError):
            with open(os.path.join(self.dir, RECORD)) as f:
                record = json.load(f)
            if record['train_args'] == self.train_args and record['eval_args'] == self.eval_args:
                return record
        return None


def run_task(task: Task, study) -> dict:
    """Train and evaluate one run; its record (train/eval arguments, top-1 and more, wall time, load average)."""
    if os.path.isdir(task.dir):
        shutil.rmtree(task.dir)  # unfinished, or trained otherwise: train.py would start a new folder beside it
    start = time.perf_counter()
    if task.variant == 'ssm_individual':
        cmd = [sys.executable, '-m', 'timm_ssm.study', '--individual', *task.train_args]
    else:
        cmd = [sys.executable, '-m', 'timm_ssm.launch', 'train.py', *task.train_args]
    log = os.path.join(study.runs, f'{task.name}.log')
    with open(log, 'w') as f:
        code = study.children.run(cmd, env=study.env, stdout=f, stderr=subprocess.STDOUT)
    if code == 0:
        log = log[:-4] + '.eval.log'
        with open(log, 'w') as f:
            code = study.children.run([sys.executable, '-m', 'timm_ssm.evaluate', *task.eval_args], env=study.env,
                                      stdout=f, stderr=subprocess.STDOUT)
    if code != 0 or not os.path.isfile(os.path.join(task.dir, 'eval.json')):
        raise RuntimeError(f'{task.name}: failed (exit code {code}), see {log}')
    with open(os.path.join(task.dir, 'eval.json')) as f:
        result = json.load(f)
    m = result['models'][0]
    record = dict(train_args=task.train_args, eval_args=task.eval_args, seconds=round(time.perf_counter() - start, 1),
                  load=round(os.getloadavg()[0], 2), top1=m['top1'], top5=m['top5'], param_count=m['param_count'],
                  heads=[dict(width=h['width'], top1=h['top1']) for h in m.get('heads') or []],
                  oracle=(m.get('oracle') or {}).get('top1'), num_samples=result['data']['num_samples'])
    atomic_write(os.path.join(task.dir, RECORD), lambda f: json.dump(record, f, indent=1), mode='w')
    return record


def sign_test(diffs: Sequence[float]) -> float:
    """Exact two-sided sign test of a zero median difference (zero differences dropped)."""
    pos, neg = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    if pos + neg == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(pos + neg, k) for k in range(min(pos, neg) + 1)) / 2 ** (pos + neg))


def _t_sf(t: float, df: int, steps: int = 4000) -> float:
    """P(T > t) of Student's t with df degrees of freedom, t >= 0 (Simpson's rule on the density)."""
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    density = lambda x: math.exp(log_c - (df + 1) / 2 * math.log1p(x * x / df))  # noqa: E731
    h = t / steps
    area = density(0) + density(t) + sum((4 if i % 2 else 2) * density(i * h) for i in range(1, steps))
    return max(0.0, 0.5 - area * h / 3)


def t_quantile(p: float, df: int) -> float:
    """The t with P(T > t) = p (0 < p < 0.5), by bisection."""
    lo, hi = 0.0, 1.0
    while _t_sf(hi, df) > p:
        lo, hi = hi, hi * 2
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_sf(mid, df) > p else (lo, mid)
    return (lo + hi) / 2


def paired_t(diffs: Sequence[float]) -> tuple:
    """(t statistic, degrees of freedom, two-sided p) of the paired t-test of a zero mean difference."""
    n = len(diffs)
    if n < 2:
        return float('nan'), 0, float('nan')
    sd, mean = statistics.stdev(diffs), statistics.mean(diffs)
    if sd == 0:
        return (math.copysign(math.inf, mean) if mean else float('nan')), n - 1, (0.0 if mean else 1.0)
    t = mean / (sd / math.sqrt(n))
    return t, n - 1, 2 * _t_sf(abs(t), n - 1)


def comparisons(variants: Sequence[str]) -> List[tuple]:
    """(variant, reference) pairs: every variant against the baseline, SSM against each kFC control, Algorithm 1's
    BatchNorm and the individual scheme against SSM."""
    pairs = [(v, 'baseline') for v in variants if v != 'baseline' and 'baseline' in variants]
    if 'ssm' in variants:
        pairs += [('ssm', v) for v in variants if v.endswith('fc')]
        pairs += [(v, 'ssm') for v in ('ssm_norm_all', 'ssm_individual') if v in variants]
    if '1fc' in variants:  # the head's initialization is 1fc's: what k changes beyond it
        pairs += [(v, '1fc') for v in variants if v.endswith('fc') and v != '1fc']
    return pairs


def paired(top1: Dict[tuple, float], a: str, b: str, value, seeds: Sequence[int]) -> Optional[dict]:
    """The paired difference a - b over the seeds both finished: per seed, mean, sd, 95% CI, both tests."""
    common = [s for s in seeds if (a, value, s) in top1 and (b, value, s) in top1]
    if not common:
        return None
    diffs = [round(top1[a, value, s] - top1[b, value, s], 4) for s in common]
    t, df, p_t = paired_t(diffs)
    sd = statistics.stdev(diffs) if len(diffs) > 1 else float('nan')
    half = t_quantile(0.025, df) * sd / math.sqrt(len(diffs)) if df and sd > 0 else (0.0 if df else float('nan'))
    return dict(a=a, b=b, value=value, seeds=common, diffs=diffs, mean=statistics.mean(diffs), sd=sd,
                ci95=[statistics.mean(diffs) - half, statistics.mean(diffs) + half], wins=sum(d > 0 for d in diffs),
                losses=sum(d < 0 for d in diffs), sign_p=sign_test(diffs), t=t, df=df, t_p=p_t)


def _ms(values: Sequence[float], sign: str = '') -> str:
    mean = f'{statistics.mean(values):{sign}.2f}'
    return mean if len(values) == 1 else f'{mean} ± {statistics.stdev(values):.2f}'


def _p(p: float) -> str:
    return 'nan' if math.isnan(p) else '< 0.001' if p < 0.0005 else f'{p:.3f}'


def report(study, tasks: List[Task], records: Dict[str, dict], wall_seconds: float) -> dict:
    """Write OUT/study.md, study.json and study.png from the finished runs; return the JSON."""
    done = [t for t in tasks if t.name in records]
    top1 = {(t.variant, t.value, t.seed): records[t.name]['top1'] for t in done}
    values = list(dict.fromkeys(t.value for t in tasks))
    variants = list(dict.fromkeys(t.variant for t in tasks))
    seeds = list(dict.fromkeys(t.seed for t in tasks))
    key = study.sweep[0] if study.sweep else None
    num_samples = records[done[0].name]['num_samples']
    lines = [f'# `{study.model}` on {study.dataset or "an image folder"}: baseline, SSM and controls', '',
             f'Top-1 (%) on the `{study.val_split}` split ({num_samples:,} images), which picked nothing: each run '
             f'trains without evaluation (`--val-split \'\'`) and its last checkpoint is evaluated by '
             f'`python -m timm_ssm.evaluate`. Mean ± sample sd over seeds. train.py arguments of every run:', '',
             '    ' + ' '.join(a if a and ' ' not in a else repr(a) for a in study.train_args), '']
    if len(done) < len(tasks):
        lines += [f'**Partial report: {len(done)} of {len(tasks)} runs finished.**', '']
    runs_json, pairs_json = [], []
    for value in values:
        if key:
            lines += [f'## {key} = {value}', '']
        lines += ['| variant | model | seeds | top-1 | per seed | top-5 | each sub-classifier (top-1) | parameters '
                  '| min / run |', '|---|---|---|---|---|---|---|---|---|']
        for v in variants:
            rs = [(t, records[t.name]) for t in done if t.variant == v and t.value == value]
            if not rs:
                continue
            heads = [[r['heads'][j]['top1'] for _, r in rs] for j in range(len(rs[0][1]['heads']))]
            widths = [h['width'] for h in rs[0][1]['heads']]
            cells = [' '.join([f'`{rs[0][0].model}`', *rs[0][0].kwargs]), ', '.join(str(t.seed) for t, _ in rs),
                     _ms([r['top1'] for _, r in rs]), ', '.join(f'{r["top1"]:.2f}' for _, r in rs),
                     _ms([r['top5'] for _, r in rs]), '; '.join(f'{_ms(h)} (w {w})' for h, w in zip(heads, widths)),
                     f'{rs[0][1]["param_count"]:,}', _ms([r['seconds'] / 60 for _, r in rs])]
            lines.append(f'| {v} | ' + ' | '.join(cells) + ' |')
            runs_json += [dict(variant=v, value=value, seed=t.seed, model=t.model, model_kwargs=t.kwargs,
                               **{k: r[k] for k in ('top1', 'top5', 'heads', 'oracle', 'param_count', 'seconds',
                                                    'load')}) for t, r in rs]
        pairs_json += [p for p in (paired(top1, a, b, value, seeds) for a, b in comparisons(variants)) if p]
        lines.append('')
    lines += ['## Paired differences of top-1 (points; seed k against seed k: same data order and initialization '
              'seed)', '', f'| {key + " | " if key else ""}difference | seeds | per seed | mean ± sd | 95% CI | '
              f'wins / losses | sign test p (exact) | paired t (df) | paired t p |',
              '|---|---|---|---|---|---|---|---|---|' + ('---|' if key else '')]
    verdicts = []
    for p in pairs_json:
        name = f'{p["a"]} − {p["b"]}'
        ci = '–' if math.isnan(p['ci95'][0]) else f'{p["ci95"][0]:+.2f} to {p["ci95"][1]:+.2f}'
        lines.append(f'| {str(p["value"]) + " | " if key else ""}{name} | {", ".join(map(str, p["seeds"]))} | '
                     f'{", ".join(f"{d:+.2f}" for d in p["diffs"])} | {_ms(p["diffs"], "+")} | '
                     f'{ci} | {p["wins"]} / {p["losses"]} | '
                     f'{p["sign_p"]:.3f} | {p["t"]:+.2f} ({p["df"]}) | {_p(p["t_p"])} |')
        verdict = 'beyond seed noise (paired t p < 0.05)' if p['t_p'] < 0.05 else 'within seed noise'
        at = f' at {key} = {p["value"]}' if key else ''
        verdicts.append(f'- {name}{at}: {p["mean"]:+.2f} points over '
                        f'{len(p["diffs"])} seeds ({p["wins"]} wins, {p["losses"]} losses), {verdict}.')
    floor = sign_test([1.0] * min(len(p['diffs']) for p in pairs_json)) if pairs_json else 1.0
    if floor >= 0.05:
        verdicts.append(f'- The exact sign test cannot go below p = {floor:.3f} with this many seeds: only the paired '
                        f't-test (which assumes normal seed-to-seed differences) can reach 5 %.')
    loads = [r['load'] for r in runs_json]
    lines += ['', '## Verdicts', '', *verdicts, '',
              f'Wall time of this invocation {wall_seconds / 60:.1f} min; the runs took '
              f'{sum(r["seconds"] for r in runs_json) / 60:.0f} min of run time (training and evaluation) on '
              f'{study.hardware}; 1-minute load average at the end of the runs '
              f'{min(loads):.1f}-{max(loads):.1f}.']
    result = dict(model=study.model, dataset=study.dataset, val_split=study.val_split, num_samples=num_samples,
                  sweep=dict(key=key, values=values) if key else None, variants=variants, seeds=seeds,
                  train_args=study.train_args, complete=len(done) == len(tasks), runs=runs_json,
                  comparisons=pairs_json, wall_seconds=round(wall_seconds, 1), hardware=study.hardware)
    atomic_write(os.path.join(study.out, 'study.md'), lambda f: f.write('\n'.join(lines) + '\n'), mode='w')
    atomic_write(os.path.join(study.out, 'study.json'), lambda f: json.dump(result, f, indent=1), mode='w')
    plot(result, os.path.join(study.out, 'study.png'))
    print('\n'.join(lines))
    return result


def plot(result: dict, path: str):
    """The figure: each paired difference to the baseline (seeds as dots, mean and 95% CI), and for a sweep the
    gain of each variant against the swept value."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    pairs = [p for p in result['comparisons'] if p['b'] == 'baseline']
    sweep = result['sweep']
    fig, axes = plt.subplots(1, 2 if sweep else 1, figsize=(11 if sweep else 6, 4), squeeze=False)
    ax = axes[0][0]
    for i, p in enumerate(pairs):
        ax.plot([i] * len(p['diffs']), p['diffs'], '.', color='0.6')
        ax.errorbar([i], [p['mean']], yerr=[[p['mean'] - p['ci95'][0]], [p['ci95'][1] - p['mean']]], fmt='o',
                    color='C0', capsize=4)
    ax.axhline(0, color='k', lw=0.8)
    ax.set_xticks(range(len(pairs)), [p['a'] + (f'\n{p["value"]}' if sweep else '') for p in pairs], fontsize=8)
    ax.set_ylabel('top-1 − baseline (points)')
    ax.set_title(f'{result["model"]}: paired difference, mean and 95% CI', fontsize=9)
    if sweep:
        ax = axes[0][1]
        names = list(dict.fromkeys(p['a'] for p in pairs))
        for j, v in enumerate(names):
            ps = [p for p in pairs if p['a'] == v]
            x = [sweep['values'].index(p['value']) + 0.06 * (j - (len(names) - 1) / 2) for p in ps]  # side by side
            ax.errorbar(x, [p['mean'] for p in ps], yerr=[[p['mean'] - p['ci95'][0] for p in ps],
                                                          [p['ci95'][1] - p['mean'] for p in ps]],
                        fmt='o-', capsize=4, label=v, color=f'C{j}')
        ax.axhline(0, color='k', lw=0.8)
        ax.set_xticks(range(len(sweep['values'])), sweep['values'])
        ax.set_xlabel(sweep['key'])
        ax.set_ylabel('gain over the baseline (points)')
        ax.legend(fontsize=8)
        ax.set_title('gain against the swept value, mean and 95% CI', fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format='png', dpi=100))
    plt.close(fig)


def subset_fashion_mnist(root: str, target: str, num_train: int) -> str:
    """A Fashion-MNIST root at `target` whose train split is the first `num_train` images of `root`'s (the test
    split whole), in the IDX layout torchvision reads."""
    src, dst = os.path.join(root, 'FashionMNIST', 'raw'), os.path.join(target, 'FashionMNIST', 'raw')
    os.makedirs(dst, exist_ok=True)
    for name, item_size, header in (('train-images-idx3-ubyte', 28 * 28, 16), ('train-labels-idx1-ubyte', 1, 8)):
        with open(os.path.join(src, name), 'rb') as f:
            head = bytearray(f.read(header))
            available = struct.unpack('>I', head[4:8])[0]
            if not 0 < num_train <= available:
                raise ValueError(f'--train-subset must be in 1..{available}, got {num_train}.')
            head[4:8] = struct.pack('>I', num_train)
            data = bytes(head) + f.read(num_train * item_size)
        atomic_write(os.path.join(dst, name), lambda out: out.write(data))
    for name in ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'):
        shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
    return target


def _hardware(device: str, jobs: int, threads: int) -> str:
    if device.startswith('cuda') and torch.cuda.is_available():
        return f'{torch.cuda.get_device_name(0)}, {jobs} runs at a time'
    cpu = platform.processor() or platform.machine()
    with suppress(OSError, StopIteration), open('/proc/cpuinfo') as f:
        cpu = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    return (f'{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}, {jobs} runs at a time, '
            f'OMP_NUM_THREADS={threads}')


def check_models(study, in_chans: int, num_classes: Optional[int]):
    """Build every model of the study on the meta device: a clear error for a model that is no classifier or
    an argument the trunk does not take or ignores, before any run starts."""
    import timm
    import timm_ssm  # noqa: F401  registers <arch>_ssm
    arch = study.model.split('.')[0]
    if not timm.is_model(arch) or arch.endswith('_ssm'):
        raise ValueError(f'--model {study.model}: not a timm model to put a head on; give a registered timm '
                         f'classifier such as resnet50 (the study builds <model>_ssm itself).')
    if not timm.is_model(f'{arch}_ssm'):
        raise ValueError(f'--model {study.model} is no classifier (timm lists no classifier layer for it), so it '
                         f'has no <model>_ssm: give a timm classifier.')
    for value in study.sweep[1] if study.sweep else [None]:
        for variant in study.variants:
            name, kwargs = variant_model(study.model, variant, study.num_splits)
            extra = study.model_kwargs + ([f'{study.sweep[0]}={value}'] if value is not None else [])
            kwargs = {k: _value(v) for k, v in (kv.split('=', 1) for kv in extra + kwargs)}
            try:
                with torch.device('meta'):
                    model = timm.create_model(name, in_chans=in_chans, num_classes=num_classes or 1000, **kwargs)
            except Exception as e:  # any error of the model's constructor is a bad argument here
                raise ValueError(f'{name} does not take {" ".join(extra)}: {type(e).__name__}: {e}') from None
            if value is not None and getattr(model, study.sweep[0], _value(value)) != _value(value):
                raise ValueError(f'{name} ignores {study.sweep[0]}={value} (it has {study.sweep[0]} = '
                                 f'{getattr(model, study.sweep[0])}): sweep an argument the trunk takes.')


def prepare(args, rest: List[str]) -> argparse.Namespace:
    """The study a command line asks for, checked before any run starts; ValueError says what is wrong."""
    defaults = DEVICE_DEFAULTS['cuda' if args.device.startswith('cuda') else 'cpu']
    dataset = args.dataset if args.dataset is not None else '' if args.data_dir else 'torch/fashion_mnist'
    fashion_mnist = dataset == 'torch/fashion_mnist'
    study = argparse.Namespace(model=args.model or defaults['model'], variants=list(dict.fromkeys(args.variants)),
                               num_splits=args.num_splits, dataset=dataset, out=os.path.abspath(args.out),
                               val_split=args.val_split or ('test' if fashion_mnist else 'validation'))
    for v in study.variants:
        variant_model(study.model, v)
    study.sweep = None
    if args.sweep:
        key, sep, values = args.sweep.partition('=')
        if not sep or not key.isidentifier() or not values.strip(','):
            raise ValueError(f'--sweep {args.sweep}: give KEY=V1,V2,... such as num_features=256,1024,2048.')
        study.sweep = (key, list(dict.fromkeys(v for v in values.split(',') if v)))
    if any('=' not in kv for kv in args.model_kwargs):
        raise ValueError(f'--model-kwargs {" ".join(args.model_kwargs)}: give KEY=VALUE pairs.')
    study.model_kwargs = list(args.model_kwargs)
    given = [a for a in rest if a.split('=')[0] in ('--seed', '--experiment', '--output', '--resume',
                                                      '--model-kwargs', '--model')]
    if given:
        raise ValueError(f'{given[0]} is set by the study per run: give --seeds, --out, --model or --model-kwargs '
                         f'to the study instead.')
    if args.train_subset and not fashion_mnist:
        raise ValueError('--train-subset is for Fashion-MNIST (torch/fashion_mnist) only.')
    check_output_folder(study.out, '--out')
    data_dir = args.data_dir
    if fashion_mnist and not data_dir:
        from .fashion_mnist import prepare_fashion_mnist
        data_dir = str(prepare_fashion_mnist())
    check_data_dir(data_dir, '--data-dir', dataset)
    if args.train_subset:
        data_dir = subset_fashion_mnist(data_dir, os.path.join(study.out, f'data-train{args.train_subset}'),
                                        args.train_subset)
    recipe = []
    if fashion_mnist:  # docs/evidence.md: SGD with momentum as the paper, cosine, light augmentation
        from .fashion_mnist import MEAN, NUM_CLASSES, STD
        size = str(defaults['img_size'])
        recipe = ['--num-classes', str(NUM_CLASSES), '--input-size', '1', size, size, '--mean', *map(str, MEAN),
                  '--std', *map(str, STD), '--crop-pct', '1.0', '--interpolation', 'bilinear',
                  '--train-interpolation', 'bilinear', '--scale', '0.75', '1', '--color-jitter', '0',
                  '--smoothing', '0', '--opt', 'momentum', '--momentum', '0.9', '--lr', '0.1', '--weight-decay',
                  '1e-4', '--sched', 'cosine', '--epochs', str(defaults['epochs']), '--warmup-epochs', '0',
                  '--cooldown-epochs', '0', '-b', '128', '--workers', str(defaults['workers']),
                  '--log-interval', '100', '--checkpoint-hist', '1', *defaults['extra']]
    data_dir = os.path.abspath(data_dir) if data_dir else ''
    study.train_args = [*recipe, *rest, '--data-dir', data_dir,
                        '--dataset', dataset, '--train-split', args.train_split, '--val-split', '',
                        '--device', args.device]
    ns = parse_train_args(study.train_args)  # train.py's own check of every argument
    check_models(study, ns.in_chans or (ns.input_size[0] if ns.input_size else 3), ns.num_classes)
    study.eval_args = ['--data-dir', data_dir, '--dataset', dataset, '--split', study.val_split,
                       '-b', '256', '--workers', str(ns.workers), '--device', args.device, '--no-progress',
                       *(['--amp'] if ns.amp else []), *(['--channels-last'] if ns.channels_last else []),
                       *(['--class-map', ns.class_map] if ns.class_map else [])]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1
    study.jobs = args.jobs or (max(1, cores // 3) if args.device.startswith('cuda') else cores)
    study.runs = os.path.join(study.out, 'runs')
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.environ.get('PYTHONPATH')
    study.env = dict(os.environ, PYTHONPATH=root + (os.pathsep + path if path else ''),
                     OMP_NUM_THREADS=str(args.threads))
    study.hardware = _hardware(args.device, study.jobs, args.threads)
    study.tasks = [Task(v, value, s, study) for s in args.seeds for value in (study.sweep[1] if study.sweep else
                   [None]) for v in study.variants]
    return study


def run_all(study) -> Dict[str, dict]:
    """Train and evaluate the runs not finished, `study.jobs` at a time, with a progress line per run."""
    records = {t.name: r for t in study.tasks if (r := t.finished()) is not None}
    todo = [t for t in study.tasks if t.name not in records]
    print(f'{len(study.tasks)} runs in {study.runs}: {len(records)} finished and kept, {len(todo)} to train, '
          f'{study.jobs} at a time', flush=True)
    os.makedirs(study.runs, exist_ok=True)
    start, failed = time.perf_counter(), []
    pool = ThreadPoolExecutor(max_workers=study.jobs)
    try:
        futures = {pool.submit(run_task, t, study): t for t in todo}
        for i, future in enumerate(as_completed(futures), 1):
            task, left = futures[future], len(todo) - i
            try:
                records[task.name] = r = future.result()
            except RuntimeError as e:
                failed.append(str(e))
                print(f'[{i}/{len(todo)}] {e}', flush=True)
                continue
            eta = (time.perf_counter() - start) / i * left
            print(f'[{i}/{len(todo)}] {task.name}: top-1 {r["top1"]:.2f}, {r["seconds"] / 60:.1f} min (load '
                  f'{r["load"]:.1f}); {left} left, about {eta / 60:.0f} min to go', flush=True)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    study.failed = failed
    return records


def main(argv: Optional[List[str]] = None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ['--individual']:  # the child process of one ssm_individual run
        return train_individual(argv[1:])
    start = time.perf_counter()
    args, rest = parser.parse_known_args(argv)
    try:
        study = prepare(args, rest)
    except (ValueError, FileNotFoundError, RuntimeError) as e:  # RunError is a ValueError
        parser.exit(2, f'{parser.prog}: error: {e}\n')
    if args.report:
        records = {t.name: r for t in study.tasks if (r := t.finished()) is not None}
        study.failed = []
    else:
        with Children() as study.children:  # SIGTERM, SIGHUP, Ctrl-C stop every run; finished ones are kept
            try:
                records = run_all(study)
            except Stopped as stop:
                print(f'{stop}: the finished runs are kept in {study.runs}; run the same command again to train '
                      f'the rest, or add --report.', file=sys.stderr)
                sys.exit(stop.exit_code)
    if not records:
        sys.exit(f'No finished runs in {study.runs}.')
    result = report(study, study.tasks, records, time.perf_counter() - start)
    if study.failed:
        sys.exit('\n'.join(study.failed) + '\nFinished runs are kept: run the same command again to train the rest.')
    return result


def train_individual(argv: List[str]):
    """SSM-individual (Table 2): `IndividualLoss` on `forward_splits`, in a loop of timm's own parts built from
    train.py's arguments as train.py builds them (seed, model, data config, dataset, loader, optimizer, scheduler
    and its steps, `update_summary`, a `last.pth.tar` with `state_dict` and `args`). Single process, no mixup,
    EMA, accumulation, resume or per-epoch evaluation: those are refused."""
    from timm.data import create_dataset, create_loader, resolve_data_config
    from timm.loss import LabelSmoothingCrossEntropy
    from timm.models import create_model
    from timm.optim import create_optimizer_v2, optimizer_kwargs
    from timm.scheduler import create_scheduler_v2, scheduler_kwargs
    from timm.utils import random_seed, setup_default_logging, update_summary
    from timm_ssm import IndividualLoss
    setup_default_logging()
    args = parse_train_args(argv)
    unsupported = {'--mixup/--cutmix': args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None,
                   '--aug-splits': args.aug_splits > 0, '--model-ema': args.model_ema,
                   '--grad-accum-steps': args.grad_accum_steps != 1, '--pretrained': args.pretrained,
                   '--resume/--start-epoch': bool(args.resume) or args.start_epoch is not None,
                   '--val-split (give --val-split "")': bool(args.val_split), '--bce-loss/--jsd-loss':
                   args.bce_loss or args.jsd_loss, 'no --lr (lr from --lr-base)': args.lr is None}
    if any(unsupported.values()):
        sys.exit(f'The individual loop does not support {", ".join(k for k, v in unsupported.items() if v)}.')
    args.prefetcher = not args.no_prefetcher  # as train.py sets it
    device = torch.device(args.device)
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
    random_seed(args.seed, 0)
    model = create_model(args.model, in_chans=args.in_chans or (args.input_size[0] if args.input_size else 3),
                         num_classes=args.num_classes, drop_rate=args.drop, drop_path_rate=args.drop_path,
                         drop_block_rate=args.drop_block, global_pool=args.gp, bn_momentum=args.bn_momentum,
                         bn_eps=args.bn_eps, **args.model_kwargs)
    if not hasattr(model, 'forward_splits'):
        sys.exit(f'{args.model} has no Split-and-Share head (forward_splits); give an <arch>_ssm model.')
    args.num_classes = args.num_classes or model.num_classes
    data_config = resolve_data_config(vars(args), model=model, verbose=True)
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    amp_autocast, scaler = suppress, None
    if args.amp:
        dtype = torch.bfloat16 if args.amp_dtype == 'bfloat16' else torch.float16
        amp_autocast = lambda: torch.autocast(device_type=device.type, dtype=dtype)  # noqa: E731
        scaler = torch.amp.GradScaler('cuda') if dtype == torch.float16 and device.type == 'cuda' else None
    dataset = create_dataset(args.dataset, root=args.data_dir or args.data, split=args.train_split, is_training=True,
                             class_map=args.class_map, download=args.dataset_download, batch_size=args.batch_size,
                             seed=args.seed, repeats=args.epoch_repeats,
                             input_img_mode=args.input_img_mode or ('RGB' if data_config['input_size'][0] == 3
                                                                    else 'L'))
    loader = create_loader(
        dataset, input_size=data_config['input_size'], batch_size=args.batch_size, is_training=True,
        no_aug=args.no_aug, re_prob=args.reprob, re_mode=args.remode, re_count=args.recount, re_split=args.resplit,
        train_crop_mode=args.train_crop_mode, scale=args.scale, ratio=args.ratio, hflip=args.hflip,
        vflip=args.vflip, color_jitter=args.color_jitter, color_jitter_prob=args.color_jitter_prob,
        grayscale_prob=args.grayscale_prob, gaussian_blur_prob=args.gaussian_blur_prob, auto_augment=args.aa,
        interpolation=args.train_interpolation if args.train_interpolation and not args.no_aug
        else data_config['interpolation'], mean=data_config['mean'], std=data_config['std'],
        num_workers=args.workers, pin_memory=args.pin_mem, device=device, use_prefetcher=args.prefetcher,
        worker_seeding=args.worker_seeding)
    if len(loader) == 0:
        sys.exit(f'The {args.train_split} split holds fewer than one batch of {args.batch_size} images.')
    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=args), **args.opt_kwargs)
    updates = len(loader)
    scheduler, num_epochs = create_scheduler_v2(optimizer, **scheduler_kwargs(args, decreasing_metric=True),
                                                updates_per_epoch=updates)
    criterion = LabelSmoothingCrossEntropy(args.smoothing) if args.smoothing else torch.nn.CrossEntropyLoss()
    loss_fn = IndividualLoss(criterion).to(device)
    output_dir = os.path.join(args.output or './output/train', args.experiment or f'{args.model}-individual')
    os.makedirs(output_dir, exist_ok=True)
    num_updates = 0
    for epoch in range(num_epochs):
        model.train()
        loss_sum, seen, start = 0., 0, time.perf_counter()
        for batch_idx, (images, target) in enumerate(loader):
            if not args.prefetcher:
                images, target = images.to(device), target.to(device)
            if args.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with amp_autocast():
                loss = loss_fn(model.forward_splits(images), target)
            optimizer.zero_grad()
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            num_updates += 1
            loss_sum, seen = loss_sum + loss.item() * images.shape[0], seen + images.shape[0]
            scheduler.step_update(num_updates=num_updates, metric=loss_sum / seen)
            if batch_idx % args.log_interval == 0 or batch_idx == updates - 1:
                print(f'Train: {epoch} [{batch_idx:>4d}/{updates}] loss {loss_sum / seen:.4f} lr '
                      f'{optimizer.param_groups[0]["lr"]:.3e} {seen / (time.perf_counter() - start):.0f} img/s',
                      flush=True)
        lrs = [group['lr'] for group in optimizer.param_groups]
        update_summary(epoch, OrderedDict(loss=loss_sum / seen), None, lr=sum(lrs) / len(lrs),
                       filename=os.path.join(output_dir, 'summary.csv'), write_header=epoch == 0)
        scheduler.step(epoch + 1, loss_sum / seen)
        checkpoint = dict(epoch=epoch, arch=args.model, state_dict=model.state_dict(), version=2, args=args,
                          optimizer=optimizer.state_dict(), metric=loss_sum / seen)
        atomic_write(os.path.join(output_dir, 'last.pth.tar'), lambda f: torch.save(checkpoint, f))


if __name__ == '__main__':
    main()
