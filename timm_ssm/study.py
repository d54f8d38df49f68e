""" Does SSM help my model on my data? Baseline, SSM and its controls, tuned alike, trained alike, paired tests

Paper: `Exploiting Features with Split-and-Share Module` - https://doi.org/10.3390/electronics11020235
(Lee et al., Electronics 2022)

    python -m timm_ssm.study --model M [--data-dir DIR --val-split test] [--variants baseline 1fc bn1fc ssm 4fc] \
        [--seeds 0 1 2] [--tune lr=0.01,0.03,0.1 --tune-split validation --tune-seeds 100 101] \
        [--train-subset N] [--pretrained | --pretrained-path FILE] --out OUT [any other train.py argument]

Every run is timm's own `train.py`, unchanged (`python -m timm_ssm.launch train.py`), with the same arguments but
the model and the seed, and no evaluation during training; its last checkpoint is evaluated once by
`timm_ssm.evaluate`. Seed k of every variant starts from the same trunk weights and sees the same data order
(`<arch>_ssm` builds its trunk as `create_model('<arch>')` does at the same seed and its head from a generator of
its own), so variants are compared seed k against seed k. With `--tune KEY=V1,V2,...` every variant first picks its
own value by its mean top-1 over `--tune-seeds` on `--tune-split`, held out of the training images; the reported
runs use each variant's pick over `--seeds` and are evaluated on `--val-split`, which picks nothing. Variants:

    baseline        `--model` with its own classifier
    kfc (1fc, 4fc)  `<model>_ssm num_splits=k split=False`: k plain Linear layers on all C channels, averaged
                    (Table 4's controls; 1fc is one Linear with PyTorch's initialization)
    bn1fc           `<model>_ssm num_splits=1 norm_all=True`: BatchNorm + ReLU on all C, one Linear (the control
                    that separates SSM's split from its BatchNorm)
    ssm             `<model>_ssm num_splits=n` (the paper's SSM, one loss on the averaged output)
    ssm_norm_all    the same with `norm_all=True` (Algorithm 1: BatchNorm before every sub-classifier)

Primary comparisons are named before the runs (`--primary`, default `ssm-bestplain ssm-bn1fc` with `--tune`, where
`bestplain` is the plain head best on the tuning split); Holm's correction over them and, apart, over all other
pairs (exploratory); a verdict per primary comparison from its interval and `--margin`. Without `--data-dir` the
study runs on Fashion-MNIST as an image folder (`timm_ssm.fashion_mnist`, 3 channels), with the from-scratch recipe
of docs/evidence.md before your own train.py arguments (yours win). Finished runs are kept when the command runs
again; `--out OUT --report` reports them. Output: OUT/study.md, OUT/study.json (the options, saved at the start, and
the results) and OUT/study.png.
"""
import argparse
import contextlib
import hashlib
import itertools
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import yaml
from scipy.stats import binomtest, t as student_t, ttest_rel

from .files import RunError, atomic_write, check_output_folder
from .process import Children, Stopped
from .timm_source import parse_train_args, train_parser

__all__ = ['main', 'variant_model', 'paired', 'holm', 'verdict', 'headline', 'subset_folder']

VARIANT_RE = re.compile(r'^(baseline|ssm|ssm_norm_all|bn1fc|([1-9][0-9]*)fc)$')
PLAIN_RE = re.compile(r'^[\w.+][\w.+-]*$')  # a value that can name a folder: no path separator, no leading '-'
OWNED = ('seed', 'output', 'experiment', 'resume', 'model', 'model_kwargs', 'data', 'data_dir', 'dataset',
         'train_split', 'val_split', 'device')
RECIPE = ['--img-size', '28', '--crop-pct', '1.0', '--interpolation', 'bilinear', '--train-interpolation', 'bilinear',
          '--scale', '0.75', '1', '--color-jitter', '0', '--smoothing', '0', '--opt', 'momentum', '--momentum', '0.9',
          '--lr', '0.1', '--weight-decay', '1e-4', '--sched', 'cosine', '--epochs', '3', '--warmup-epochs', '0',
          '--cooldown-epochs', '0', '-b', '128', '--workers', '2']
ALPHA, PROGRESS_SECONDS = 0.05, 60
RULE = ('a primary comparison is *ahead* if its Holm-adjusted paired t-test p < 0.05 and its mean difference > 0, '
        '*behind* if p < 0.05 and the mean < 0, *equivalent within ±M* if its (1 − 0.05/m) two-sided t confidence '
        'interval (m primary comparisons) lies inside ±M points, else *inconclusive*. Headline: "helps" only if '
        'every primary comparison is ahead; "hurts" if any is behind; "no difference within ±M" if every one is '
        'equivalent; otherwise "inconclusive".')

parser = argparse.ArgumentParser(
    prog='python -m timm_ssm.study', allow_abbrev=False,
    description='Baseline, SSM and its controls trained alike by timm\'s train.py over seeds, tuned per variant on a '
                'held-out split, evaluated on a split that picked nothing, with paired tests. Arguments not listed '
                'here go to train.py unchanged.')
parser.add_argument('--model', default='lcnet_050', help='the baseline timm classifier; the others are <model>_ssm')
parser.add_argument('--variants', nargs='+', default=['baseline', 'ssm', '4fc'],
                    help='baseline, ssm, ssm_norm_all, bn1fc, kfc for any k >= 1 (default: baseline ssm 4fc)')
parser.add_argument('--num-splits', type=int, default=4, help='sub-classifiers n of the SSM variants (default: 4)')
parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2, 3, 4], help='reported seeds (default: 0-4)')
parser.add_argument('--sweep', default=None, metavar='KEY=V1,V2,...', help='train everything with each value of a '
                    'trunk argument, e.g. num_features=256,1024,2048')
parser.add_argument('--model-kwargs', nargs='*', default=[], metavar='KEY=VALUE', help='trunk arguments of every '
                    'variant (as train.py\'s --model-kwargs)')
parser.add_argument('--data-dir', default=None, help='an image folder or a --dataset root (default: Fashion-MNIST)')
parser.add_argument('--dataset', default='', help='train.py\'s --dataset (default: an image folder)')
parser.add_argument('--train-split', default='train', help='the split to train on (default: train)')
parser.add_argument('--val-split', default=None, help='the reported split, used once per reported run (default: '
                    'test on Fashion-MNIST, else validation)')
parser.add_argument('--train-subset', type=int, default=None, metavar='N', help='train on a class-balanced subset '
                    'of N images, drawn once (seed 0), the same for every run (image folders only)')
parser.add_argument('--tune', action='append', default=[], metavar='KEY=V1,V2,...', help='a train.py option each '
                    'variant tunes on --tune-split, e.g. lr=0.01,0.03,0.1 (repeat for a grid)')
parser.add_argument('--tune-split', default='validation', help='the tuning split, held out of the training images '
                    '(default: validation)')
parser.add_argument('--tune-subset', type=int, default=None, metavar='N', help='tune on a class-balanced subset '
                    'of N images of --tune-split')
parser.add_argument('--tune-seeds', type=int, nargs='+', default=[100, 101], help='seeds of the tuning runs, '
                    'distinct from --seeds (default: 100 101)')
parser.add_argument('--primary', nargs='+', default=None, metavar='A-B', help='the primary comparisons, named before '
                    'the runs (default with --tune: ssm-bestplain ssm-bn1fc, those whose variants are in the study)')
parser.add_argument('--margin', type=float, default=0.5, help='M of the equivalence verdict, in points (default 0.5)')
parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
parser.add_argument('--jobs', type=int, default=None, help='runs at a time, 1 to the number of CPU cores (default: '
                    'one per core; on CUDA one per 3 cores)')
parser.add_argument('--threads', type=int, default=1, help='OMP_NUM_THREADS of each run (default: 1)')
parser.add_argument('--out', default='output/study', help='output folder (default: output/study)')
parser.add_argument('--report', action='store_true', help='train nothing: report the runs that finished (with '
                    '--out alone, the options saved in OUT/study.json)')


def variant_model(model: str, variant: str, num_splits: int = 4) -> tuple:
    """(model name, model kwargs) of a variant; a RunError for an unknown one."""
    match = VARIANT_RE.match(variant)
    if match is None:
        raise RunError(f'Unknown variant {variant!r}: give baseline, ssm, ssm_norm_all, bn1fc or kfc for any k >= 1 '
                       f'(1fc, 2fc, 4fc, ...).')
    if match.group(2):
        return f'{model}_ssm', [f'num_splits={match.group(2)}', 'split=False']
    return {'baseline': (model, []), 'bn1fc': (f'{model}_ssm', ['num_splits=1', 'norm_all=True']),
            'ssm_norm_all': (f'{model}_ssm', [f'num_splits={num_splits}', 'norm_all=True'])
            }.get(variant, (f'{model}_ssm', [f'num_splits={num_splits}']))


def _plain(option: str, values: Sequence[str]) -> List[str]:
    bad = [v for v in values if not PLAIN_RE.match(v)]
    if bad or not values:
        raise RunError(f'{option}: {bad[0] if bad else "no value"!r} is not a plain value (letters, digits, . + _ '
                       f'and no leading -): give values such as 0.01,0.03,0.1.')
    return list(dict.fromkeys(values))


def _key_values(option: str, text: str) -> tuple:
    key, sep, values = text.partition('=')
    if not sep or not key.replace('-', '_').isidentifier():
        raise RunError(f'{option} {text}: give KEY=V1,V2,... such as {option[2:]}=0.01,0.03,0.1.')
    return key.replace('-', '_'), _plain(f'{option} {text}', [v for v in values.split(',') if v])


class Task:
    """One run: a variant, a sweep value (or None), a seed and tuned values, for tuning or for the report."""

    def __init__(self, study, variant: str, value: Optional[str], seed: int, tuned: Dict[str, str], tuning: bool):
        self.variant, self.value, self.seed, self.tuned, self.tuning = variant, value, seed, tuned, tuning
        key = study.sweep[0] if value is not None else ''
        tags = [f'{k}{v}' for k, v in tuned.items()] if tuning else []
        self.name = '-'.join(['tune'] * tuning + [variant] + [f'{key}{value}'] * (value is not None) + tags +
                             [f'seed{seed}'])
        self.dir = os.path.join(study.runs, self.name)
        self.model, kwargs = variant_model(study.model, variant, study.num_splits)
        self.kwargs = study.model_kwargs + [f'{key}={value}'] * (value is not None) + kwargs
        self.train_args = [*study.train_args, '--model', self.model, '--seed', str(seed), '--output', study.runs,
                           '--experiment', self.name, *(['--model-kwargs', *self.kwargs] if self.kwargs else []),
                           *[a for k, v in tuned.items() for a in (f'--{k.replace("_", "-")}', v)]]
        root, split = (study.tune_root, study.tune_split) if tuning else (study.data_dir, study.val_split)
        self.eval_args = ['--checkpoint', os.path.join(self.dir, 'last.pth.tar'), '--data-dir', root, '--split', split,
                          *study.eval_args, '--json', os.path.join(self.dir, 'eval.json')]

    def finished(self) -> Optional[dict]:
        """The record of this run trained and evaluated with exactly these arguments, else None."""
        with contextlib.suppress(OSError, ValueError, KeyError):
            record = json.loads(Path(self.dir, 'run.json').read_text())
            if record['train_args'] == self.train_args and record['eval_args'] == self.eval_args:
                return record
        return None


class Progress:
    """Runs done, the epoch of each run training (read from its log), the time left for the study."""

    def __init__(self, total: int, epochs: int):
        self.total, self.epochs, self.done, self.logs = total, epochs, 0, {}
        self.start, self.stop, self.out = time.perf_counter(), threading.Event(), sys.stdout

    def _epoch(self, log: str) -> float:
        with contextlib.suppress(OSError), open(log, 'rb') as f:
            f.seek(max(0, os.path.getsize(log) - 8192))
            found = re.findall(rb'Train: (\d+) \[\s*(\d+)/(\d+)', f.read())
            if found:
                epoch, batch, batches = map(int, found[-1])
                return min(1.0, (epoch + (batch + 1) / batches) / self.epochs)
        return 0.0

    def left(self) -> str:
        work = self.done + sum(self._epoch(log) for log in list(self.logs.values()))
        seconds = (time.perf_counter() - self.start) / work * (self.total - work) if work else float('nan')
        return 'time left unknown yet' if math.isnan(seconds) else f'about {seconds / 60:.0f} min left for the study'

    def line(self, text: str):
        print(text, file=self.out, flush=True)

    def watch(self):
        while not self.stop.wait(PROGRESS_SECONDS):
            running = [f'{name} at {100 * self._epoch(log):.0f}%' for name, log in list(self.logs.items())]
            if running:
                self.line(f'[{self.done}/{self.total} done] training {", ".join(running)} of {self.epochs} epochs; '
                          f'{self.left()}')


def run_task(task: Task, study, progress: Progress) -> dict:
    """Train (a child process) and evaluate (in this process, one at a time) one run; its record."""
    if os.path.commonpath([study.runs, os.path.realpath(task.dir)]) != study.runs:
        raise RuntimeError(f'{task.name}: not a folder inside {study.runs}')
    shutil.rmtree(task.dir, ignore_errors=True)  # unfinished or trained otherwise: train.py would append to it
    start, log = time.perf_counter(), os.path.join(study.runs, f'{task.name}.log')
    progress.logs[task.name] = log
    try:
        with open(log, 'w') as f:
            code = study.children.run([sys.executable, '-m', 'timm_ssm.launch', 'train.py', *task.train_args],
                                      env=study.env, stdout=f, stderr=subprocess.STDOUT)
    finally:
        progress.logs.pop(task.name)
    if code != 0:
        raise RuntimeError(f'{task.name}: train.py failed (exit code {code}), see {log}')
    from .evaluate import main as evaluate
    log = log[:-4] + '.eval.log'
    with study.eval_lock, open(log, 'w') as f, contextlib.redirect_stdout(f):
        try:
            result = evaluate(task.eval_args)
        except SystemExit as e:
            raise RuntimeError(f'{task.name}: the evaluation failed ({e}), see {log}') from None
    m = result['models'][0]
    record = dict(train_args=task.train_args, eval_args=task.eval_args, seconds=round(time.perf_counter() - start, 1),
                  load=round(os.getloadavg()[0], 2), top1=m['top1'], top5=m['top5'], param_count=m['param_count'],
                  heads=[dict(width=h['width'], top1=h['top1']) for h in m.get('heads') or []],
                  split=result['data']['split'], num_samples=result['data']['num_samples'])
    atomic_write(os.path.join(task.dir, 'run.json'), lambda f: json.dump(record, f, indent=1), mode='w')
    return record


def run_all(study, tasks: List[Task], progress: Progress) -> Dict[str, dict]:
    """Train and evaluate the runs not finished, `study.jobs` at a time; the records of all that finished."""
    records = {t.name: r for t in tasks if (r := t.finished()) is not None}
    todo = [t for t in tasks if t.name not in records]
    os.makedirs(study.runs, exist_ok=True)
    progress.line(f'{len(tasks)} runs: {len(records)} finished and kept, {len(todo)} to train, {study.jobs} at a '
                  f'time, in {study.runs}')
    with ThreadPoolExecutor(max_workers=study.jobs) as pool:
        futures = {pool.submit(run_task, t, study, progress): t for t in todo}
        for future in as_completed(futures):
            task = futures[future]
            progress.done += 1
            try:
                records[task.name] = r = future.result()
            except RuntimeError as e:
                study.failed.append(str(e))
                progress.line(f'[{progress.done}/{progress.total}] {e}')
                continue
            progress.line(f'[{progress.done}/{progress.total}] {task.name}: top-1 {r["top1"]:.2f} on {r["split"]}, '
                          f'{r["seconds"] / 60:.1f} min (load {r["load"]:.1f}); {progress.left()}')
    return records


def subset_folder(reader, split: str, num: int, out: str, option: str, seed: int = 0) -> str:
    """A root under `out` whose `split` holds links to a class-balanced draw of `num` images of an image folder
    (timm's folder reader; the first `num % classes` classes get one more); named by the draw's digest, made once."""
    classes = sorted(reader.class_to_idx, key=reader.class_to_idx.get)
    files = [sorted(p for p, t in reader.samples if t == c) for c in range(len(classes))]
    quota = [num // len(classes) + (c < num % len(classes)) for c in range(len(classes))]
    short = [(name, len(f)) for name, f, q in zip(classes, files, quota) if len(f) < q or q == 0]
    if short:
        raise RunError(f'{option} {num}: a class-balanced subset of {len(classes)} classes needs {max(quota)} images '
                       f'of each, class {short[0][0]} has {short[0][1]}: give N from {len(classes)} to '
                       f'{len(classes) * min(map(len, files))}.')
    rng = np.random.RandomState(seed)
    chosen = [p for f, q in zip(files, quota) for p in sorted(rng.permutation(f)[:q])]
    rel = [os.path.relpath(p, reader.root) for p in chosen]
    digest = hashlib.sha256('\n'.join(rel).encode()).hexdigest()[:8]
    target = os.path.join(out, 'data', f'{split}-{num}-{digest}')
    if not os.path.isdir(target):
        tmp = f'{target}.{os.getpid()}.tmp'
        shutil.rmtree(tmp, ignore_errors=True)
        for src, name in zip(chosen, rel):
            os.makedirs(os.path.dirname(os.path.join(tmp, split, name)), exist_ok=True)
            os.symlink(os.path.realpath(src), os.path.join(tmp, split, name))
        os.replace(tmp, target)
    return target


def paired(a: Dict[int, float], b: Dict[int, float], level: float = 0.95) -> dict:
    """The paired difference a − b of top-1 by seed over the seeds both have: per seed, mean, sd, the two-sided t
    interval at `level`, the paired t-test and the exact sign test."""
    seeds = [s for s in a if s in b]
    diffs, n = [a[s] - b[s] for s in seeds], len(seeds)
    mean = float(np.mean(diffs)) if n else math.nan
    sd = float(np.std(diffs, ddof=1)) if n > 1 else math.nan
    p = float(ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).pvalue) if n > 1 else math.nan
    half = float(student_t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n) if n > 1 else math.nan
    wins, losses = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    return dict(seeds=seeds, diffs=diffs, mean=mean, sd=sd, level=level, ci=[mean - half, mean + half], p=p,
                wins=wins, losses=losses, sign_p=float(binomtest(wins, wins + losses).pvalue) if wins + losses else 1.)


def holm(ps: Sequence[float]) -> List[float]:
    """Holm's step-down adjustment of a family of p-values (NaN counts as 1)."""
    ps = [1.0 if math.isnan(p) else p for p in ps]
    adjusted, running = [1.0] * len(ps), 0.0
    for rank, i in enumerate(sorted(range(len(ps)), key=ps.__getitem__)):
        running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
        adjusted[i] = running
    return adjusted


def verdict(p_holm: float, mean: float, ci: Sequence[float], margin: float) -> str:
    """ahead / behind (Holm p < 0.05), equivalent within ±margin (the interval inside it), else inconclusive."""
    if p_holm < ALPHA:
        return 'ahead' if mean > 0 else 'behind'
    return f'equivalent within ±{margin:g}' if -margin < ci[0] and ci[1] < margin else 'inconclusive'


def headline(verdicts: Sequence[str], margin: float, name: str = 'SSM') -> str:
    """The written rule over the primary verdicts."""
    if verdicts and all(v == 'ahead' for v in verdicts):
        return f'{name} helps'
    if 'behind' in verdicts:
        return f'{name} hurts'
    if verdicts and all(v.startswith('equivalent') for v in verdicts):
        return f'no difference within ±{margin:g} points'
    return 'inconclusive'


def _ms(values: Sequence[float], sign: str = '') -> str:
    return f'{np.mean(values):{sign}.2f}' + (f' ± {np.std(values, ddof=1):.2f}' if len(values) > 1 else '')


def _p(p: float) -> str:
    return 'nan' if math.isnan(p) else '< 0.001' if p < 0.0005 else f'{p:.3f}'


def report(study, records: Dict[str, dict], wall: float) -> dict:
    """Write OUT/study.md, study.json and study.png from the finished runs; return the JSON."""
    top1 = {}
    for t in study.tasks + study.tune_tasks:
        if t.name in records:
            top1.setdefault((t.tuning, t.variant, t.value, tuple(t.tuned.items()) if t.tuning else ()), {})[
                t.seed] = records[t.name]['top1']
    pairs = []
    for value in study.values:
        best = study.best.get(value)
        named = [(best if a == 'bestplain' else a, best if b == 'bestplain' else b, f'{a}-{b}') for a, b in
                 study.primary]
        rest = [(x, y) if x.startswith('ssm') and not y.startswith('ssm') else (y, x) for x, y in
                itertools.combinations(study.variants, 2)]
        rest = [(a, b, '') for a, b in rest if {a, b} not in [{x, y} for x, y, _ in named]]
        for a, b, name in named + rest:
            if a is None or b is None:
                continue
            level = 1 - ALPHA / len(study.primary) if name else 1 - ALPHA
            pairs.append(dict(a=a, b=b, value=value, primary=name, **paired(
                top1.get((False, a, value, ()), {}), top1.get((False, b, value, ()), {}), level)))
    for primary in (True, False):
        family = [p for p in pairs if bool(p['primary']) == primary]
        for p, adjusted in zip(family, holm([p['p'] for p in family])):
            p['p_holm'] = adjusted
            p['verdict'] = verdict(adjusted, p['mean'], p['ci'], study.margin) if primary else ''
    verdicts = [p['verdict'] for p in pairs if p['primary']]
    answer = headline(verdicts, study.margin, ' and '.join(dict.fromkeys(p['a'] for p in pairs if p['primary'])))
    done = [t for t in study.tasks if t.name in records]
    loads = [records[t.name]['load'] for t in done + [t for t in study.tune_tasks if t.name in records]]
    seen = records[done[0].name]['num_samples'] if done else 0
    start = (f'every variant starts from the pretrained trunk of `{study.pretrained}` and its head starts fresh for '
             f'the data\'s {study.num_classes} classes' if study.pretrained else 'every variant is trained from '
             'scratch')
    lines = [f'# `{study.model}` on {study.data_name}: baseline, SSM and controls', '',
             f'Top-1 (%) of the model\'s output on `{study.val_split}` ({seen:,} images), used once per reported run '
             f'and for no choice; {start}. Seed k of every variant starts from the same trunk weights, sees the same '
             f'data order and seeds the head\'s own generator alike, so the variants are paired seed k against seed '
             f'k. Training data: {study.train_name}.', '']
    if study.tune:
        lines += [f'## Tuning on {study.tune_name}, seeds {", ".join(map(str, study.tune_seeds))}', '',
                  'Mean top-1 (per seed); each variant runs its pick (**bold**: the highest mean, ties to the first '
                  'listed value) in the reported runs.', '',
                  '| variant | ' + ' | '.join(', '.join(f'{k}={v}' for k, v in c.items()) for c in study.combos) + ' |',
                  '|---|' + '---|' * len(study.combos)]
        for value in study.values:
            for v in study.variants:
                cells = []
                for c in study.combos:
                    got = top1.get((True, v, value, tuple(c.items())), {})
                    cell = (f'{np.mean(list(got.values())):.2f} ({", ".join(f"{x:.2f}" for x in got.values())})'
                            if got else '–')
                    cells.append(f'**{cell}**' if study.picks.get((v, value)) == c else cell)
                lines.append(f'| {v}{f" ({study.sweep[0]}={value})" if value is not None else ""} | '
                             + ' | '.join(cells) + ' |')
        best = ', '.join(f'{b}' + (f' at {study.sweep[0]}={v}' if v is not None else '') for v, b in
                         study.best.items())
        lines += ['', f'Best plain head on the tuning split: {best or "none (no plain head)"}.', '']
    else:
        lines += [f'The learning rate was not tuned: every variant ran at lr {study.lr}.', '']
    lines += ['## Results', '', '| variant | model | tuned | seeds | top-1 | per seed | each sub-classifier | '
              'parameters | min / run |', '|---|---|---|---|---|---|---|---|---|']
    runs = []
    for value in study.values:
        for v in study.variants:
            rs = [(t, records[t.name]) for t in done if t.variant == v and t.value == value]
            if not rs:
                continue
            heads = zip(*[[h['top1'] for h in r['heads']] for _, r in rs])
            lines.append(' | '.join([f'| {v}', ' '.join([f'`{rs[0][0].model}`', *rs[0][0].kwargs]),
                                     ' '.join(f'{k}={x}' for k, x in rs[0][0].tuned.items()) or '–',
                                     ', '.join(str(t.seed) for t, _ in rs), _ms([r['top1'] for _, r in rs]),
                                     ', '.join(f'{r["top1"]:.2f}' for _, r in rs),
                                     '; '.join(f'{_ms(h)} (w {x["width"]})' for h, x in zip(heads, rs[0][1]['heads'])),
                                     f'{rs[0][1]["param_count"]:,}', _ms([r['seconds'] / 60 for _, r in rs])]) + ' |')
            runs += [dict(variant=v, value=value, seed=t.seed, model=t.model, model_kwargs=t.kwargs, tuned=t.tuned,
                          **{k: r[k] for k in ('top1', 'top5', 'heads', 'param_count', 'seconds', 'load')})
                     for t, r in rs]
    at = lambda p: f' at {study.sweep[0]}={p["value"]}' if p['value'] is not None else ''  # noqa: E731
    row = lambda p: (f'| {p["a"]} − {p["b"]}{at(p)} | {", ".join(map(str, p["seeds"]))} | '  # noqa: E731
                     f'{", ".join(f"{d:+.2f}" for d in p["diffs"])} | {_ms(p["diffs"], "+") if p["diffs"] else "–"} '
                     f'| {p["ci"][0]:+.2f} to {p["ci"][1]:+.2f} | {p["wins"]} / {p["losses"]} | {_p(p["sign_p"])} | '
                     f'{_p(p["p"])} | {_p(p["p_holm"])} |')
    head = ('| comparison | seeds | per seed | mean ± sd | {} CI | wins / losses | sign test p | paired t p | Holm p |'
            '{}\n|---|---|---|---|---|---|---|---|---|{}')
    m = len(study.primary)
    lines += ['', f'## Primary comparisons (named before the runs; Holm over {m * len(study.values)})', '',
              f'Rule: {RULE.replace("±M", f"±{study.margin:g}")}', '']
    if verdicts:
        lines += [head.format(f'{100 * (1 - ALPHA / m):g}%', ' verdict |', '---|')]
        lines += [row(p) + f' **{p["verdict"]}** |' for p in pairs if p['primary']]
        lines += ['', f'**Headline: {answer}.**']
    else:
        lines += ['None: without --tune the best plain head cannot be picked on a split that is not reported; give '
                  '--tune, or --primary A-B with named variants.']
    lines += ['', '## Secondary comparisons (exploratory; Holm over their own family)', '',
              head.format('95%', '', ''), *[row(p) for p in pairs if not p['primary']], '',
              f'Wall time of this invocation {wall / 60:.1f} min on {study.hardware}; 1-minute load average at the end '
              f'of the runs {min(loads, default=0):.1f}-{max(loads, default=0):.1f}. train.py arguments of every run '
              f'(then its model, seed and tuned values):', '',
              '    ' + ' '.join(a if a and ' ' not in a else repr(a) for a in study.train_args)]
    if len(done) < len(study.tasks):
        lines[1:1] = ['', f'**Partial report: {len(done)} of {len(study.tasks)} reported runs finished.**']
    result = dict(argv=study.argv, model=study.model, val_split=study.val_split, num_samples=seen,
                  variants=study.variants, seeds=study.seeds, pretrained=study.pretrained, train_args=study.train_args,
                  tuning=[dict(variant=t.variant, value=t.value, seed=t.seed, tuned=t.tuned, split=study.tune_split,
                               top1=records[t.name]['top1']) for t in study.tune_tasks if t.name in records],
                  picks=[dict(variant=v, value=x, tuned=c) for (v, x), c in study.picks.items()],
                  best_plain={str(k): b for k, b in study.best.items()}, runs=runs, comparisons=pairs,
                  headline=answer if verdicts else None, complete=len(done) == len(study.tasks),
                  wall_seconds=round(wall, 1), hardware=study.hardware)
    atomic_write(os.path.join(study.out, 'study.md'), lambda f: f.write('\n'.join(lines) + '\n'), mode='w')
    atomic_write(os.path.join(study.out, 'study.json'), lambda f: json.dump(result, f, indent=1), mode='w')
    plot(result, study.margin, os.path.join(study.out, 'study.png'))
    print('\n'.join(lines))
    return result


def plot(result: dict, margin: float, path: str):
    """Each paired difference (seeds as dots, mean and interval), the primary ones first, the ±margin band."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    pairs = sorted(result['comparisons'], key=lambda p: not p['primary'])
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(pairs)), 4))
    ax.axhspan(-margin, margin, color='0.92', label=f'±{margin:g} points')
    for i, p in enumerate(pairs):
        ax.plot([i] * len(p['diffs']), p['diffs'], '.', color='0.6')
        ax.errorbar([i], [p['mean']], yerr=[[p['mean'] - p['ci'][0]], [p['ci'][1] - p['mean']]], fmt='o',
                    capsize=4, color='C0' if p['primary'] else 'C7')
    ax.axhline(0, color='k', lw=0.8)
    ax.set_xticks(range(len(pairs)), [f'{p["a"]}\n− {p["b"]}' + (f'\n{p["value"]}' if p['value'] is not None else '')
                                      for p in pairs], fontsize=7)
    ax.set_ylabel('top-1 difference (points)')
    ax.set_title(f'{result["model"]}: paired differences (blue: primary, Holm-level CI; grey: exploratory, 95% CI)',
                 fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format='png', dpi=100))
    plt.close(fig)


def check_models(study, in_chans: int, num_classes: Optional[int]):
    """Build every model of the study on the meta device: a clear error for a model that is no classifier or an
    argument its trunk does not take, before any run starts."""
    import timm
    import timm_ssm  # noqa: F401  registers <arch>_ssm
    arch = study.model.split('.')[0]
    if not timm.is_model(arch) or arch.endswith('_ssm') or not timm.is_model(f'{arch}_ssm'):
        raise RunError(f'--model {study.model}: not a timm classifier to put a head on; give one such as resnet50 '
                       f'(the study builds <model>_ssm itself).')
    for value in study.values:
        for variant in study.variants:
            name, kwargs = variant_model(study.model, variant, study.num_splits)
            extra = study.model_kwargs + ([f'{study.sweep[0]}={value}'] if value is not None else [])
            try:
                with torch.device('meta'):
                    timm.create_model(name, in_chans=in_chans, num_classes=num_classes or 1000,
                                      **{k: yaml.safe_load(v) for k, v in (kv.split('=', 1) for kv in extra + kwargs)})
            except Exception as e:  # any error of the model's constructor is a bad argument here
                raise RunError(f'{name} does not take {" ".join(extra)}: {type(e).__name__}: {e}') from None


def _given(rest: List[str], dests: Sequence[str]) -> List[str]:
    """The train.py options among `dests` that `rest` (or its -c config file) sets, however they are spelled."""
    config_parser, train = train_parser()
    config, remaining = config_parser.parse_known_args(rest)
    keys = set(yaml.safe_load(Path(config.config).read_text()) or {}) if config.config else set()
    unset = object()
    train.set_defaults(**dict.fromkeys(dests, unset))
    ns, _ = train.parse_known_args(remaining)
    return [d for d in dests if d in keys or getattr(ns, d) is not unset]


def _split(root: str, dataset: str, split: str, option: str):
    """The reader of a split of an image folder (its resolved folder: `reader.root`), or the split's name."""
    if dataset:
        return argparse.Namespace(root=f'{dataset}:{split}')
    from timm.data import create_dataset
    reader = create_dataset('', root=root, split=split).reader
    if os.path.realpath(reader.root) == os.path.realpath(root):
        raise RunError(f'{option} {split}: {root} has no {split} folder: give a split folder of it.')
    return reader


def prepare(args, rest: List[str], argv: List[str]) -> argparse.Namespace:
    """The study a command line asks for, checked before any run starts; a RunError says what is wrong."""
    study = argparse.Namespace(argv=argv, model=args.model, variants=list(dict.fromkeys(args.variants)),
                               num_splits=args.num_splits, seeds=list(dict.fromkeys(args.seeds)), margin=args.margin,
                               tune_seeds=list(dict.fromkeys(args.tune_seeds)), out=os.path.abspath(args.out),
                               model_kwargs=list(args.model_kwargs), failed=[], picks={}, best={}, tasks=[])
    for v in study.variants:
        variant_model(args.model, v)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1
    study.jobs = args.jobs if args.jobs is not None else max(1, cores // 3) if args.device.startswith('cuda') else cores
    if not 1 <= study.jobs <= cores or args.threads < 1:
        raise RunError(f'--jobs {study.jobs} --threads {args.threads}: give 1 to {cores} jobs (runs at a time, at '
                       f'most one per CPU core) and 1 or more threads.')
    if args.margin <= 0 or any('=' not in kv for kv in args.model_kwargs):
        raise RunError('--margin must be > 0 points and --model-kwargs KEY=VALUE pairs.')
    study.sweep = _key_values('--sweep', args.sweep) if args.sweep else None
    study.values = study.sweep[1] if study.sweep else [None]
    study.tune = dict(_key_values('--tune', text) for text in args.tune)
    study.combos = [dict(zip(study.tune, c)) for c in itertools.product(*study.tune.values())] or [{}]
    if any(float(v) == 0 for v in study.tune.get('lr', []) if re.fullmatch(r'[\d.e+-]+', v)):
        raise RunError('--tune lr=0: train.py takes lr 0 as "compute it from --lr-base": give values above 0.')
    if study.tune and set(study.tune_seeds) & set(study.seeds):
        raise RunError('--tune-seeds and --seeds overlap: give tuning seeds distinct from the reported ones.')
    plain = [v for v in study.variants if re.fullmatch(r'baseline|\d+fc', v)]
    given = args.primary or [p for p, ok in (('ssm-bestplain', study.tune and plain), ('ssm-bn1fc', 'bn1fc' in
                                                                                         study.variants)) if ok]
    study.primary = [tuple(p.split('-', 1)) for p in dict.fromkeys(given)]
    for a, b in study.primary:
        if 'ssm' in study.variants or args.primary:
            if {a, b} - {*study.variants, 'bestplain'} or a == b or '-' in b:
                raise RunError(f'--primary {a}-{b}: give A-B with two variants of the study (or bestplain).')
            if 'bestplain' in (a, b) and not (study.tune and plain):
                raise RunError(f'--primary {a}-{b}: bestplain is picked on the tuning split: give --tune (and a plain '
                               f'head, baseline or kfc) or name the variant, such as {a}-{plain[0] if plain else "1fc"}.')
    study.primary = [(a, b) for a, b in study.primary if a in study.variants or b in study.variants]
    check_output_folder(study.out, '--out')
    parse_train_args(rest)  # train.py's own check of the user's arguments
    for dest in _given(rest, OWNED + tuple(study.tune)):
        option = '--' + dest.replace('_', '-')
        if dest in study.tune:
            raise RunError(f'{option} conflicts with --tune {dest}=...: give one of them.')
        raise RunError(f'{option} is set by the study per run: give --seeds, --out, --model, --model-kwargs, '
                       f'--data-dir, --dataset, --train-split, --val-split or --device to the study instead.')

    fashion_mnist = args.data_dir is None
    if fashion_mnist:
        from .fashion_mnist import prepare_fashion_mnist_folder
        study.data_dir = str(prepare_fashion_mnist_folder())
    elif not os.path.isdir(args.data_dir) and not args.dataset:
        raise RunError(f'--data-dir {args.data_dir} is not a folder: give the folder that holds the splits.')
    else:
        study.data_dir = os.path.abspath(args.data_dir)
    study.val_split = args.val_split or ('test' if fashion_mnist else 'validation')
    study.tune_split = args.tune_split
    if (args.train_subset or args.tune_subset) and args.dataset:
        raise RunError('--train-subset and --tune-subset take an image folder: leave out --dataset.')
    train = _split(study.data_dir, args.dataset, args.train_split, '--train-split')
    where = {'--val-split': _split(study.data_dir, args.dataset, study.val_split, '--val-split').root}
    if study.tune:
        tune = _split(study.data_dir, args.dataset, study.tune_split, '--tune-split')
        where['--tune-split'] = tune.root
    for option, folder in where.items():
        if folder == train.root or (option == '--tune-split' and folder == where['--val-split']):
            raise RunError(f'{option} reads {folder}, as {"--val-split" if folder != train.root else "--train-split"} '
                           f'does: give a split of its own (the tuning split is held out of the training images and '
                           f'is never the reported one).')
    study.train_name = f'the `{args.train_split}` split of {study.data_dir}'
    train_root = study.data_dir
    if args.train_subset:
        train_root = subset_folder(train, args.train_split, args.train_subset, study.out, '--train-subset')
        study.train_name = (f'a class-balanced subset of {args.train_subset:,} images of `{args.train_split}` (drawn '
                            f'once, seed 0; links in {train_root})')
    study.tune_root, study.tune_name = study.data_dir, f'`{study.tune_split}`'
    if study.tune and args.tune_subset:
        study.tune_root = subset_folder(tune, study.tune_split, args.tune_subset, study.out, '--tune-subset')
        study.tune_name = f'a class-balanced subset of {args.tune_subset:,} images of `{study.tune_split}`'
    study.data_name = 'Fashion-MNIST' if fashion_mnist else f'{args.dataset or "the image folder"} {study.data_dir}'
    study.num_classes = len(train.class_to_idx) if hasattr(train, 'class_to_idx') else None
    study.train_args = [*(RECIPE if fashion_mnist else []),
                        *(['--num-classes', str(study.num_classes)] if study.num_classes else []), *rest,
                        '--data-dir', train_root, *(['--dataset', args.dataset] if args.dataset else []),
                        '--train-split', args.train_split, '--val-split', '', '--device', args.device]
    ns = parse_train_args(study.train_args)
    study.pretrained = None
    if ns.pretrained_path:
        path = os.path.abspath(os.path.expanduser(ns.pretrained_path))
        if not os.path.isfile(path):
            raise RunError(f'--pretrained-path {ns.pretrained_path} is not a file: give the weights file.')
        study.train_args += ['--pretrained', '--pretrained-path', path]
        study.pretrained = path
    elif ns.pretrained:
        study.pretrained = f'{args.model} (its pretrained weights)'
    study.num_classes = ns.num_classes
    study.lr = ns.lr or f'{ns.lr_base} × batch size / 256 (--lr-base)'
    check_models(study, ns.in_chans or (ns.input_size[0] if ns.input_size else 3), ns.num_classes)
    study.eval_args = [*(['--dataset', args.dataset] if args.dataset else []), '-b', '256', '--workers',
                       str(ns.workers), '--device', args.device, '--no-progress', *(['--amp'] if ns.amp else []),
                       *(['--channels-last'] if ns.channels_last else []),
                       *(['--class-map', ns.class_map] if ns.class_map else [])]
    study.epochs = ns.epochs
    study.runs = os.path.join(study.out, 'runs')
    path = os.environ.get('PYTHONPATH')
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    study.env = dict(os.environ, PYTHONPATH=root + (os.pathsep + path if path else ''),
                     OMP_NUM_THREADS=str(args.threads))
    study.hardware = (f'{torch.cuda.get_device_name(0)}' if args.device.startswith('cuda') else
                      f'{cores} CPU cores') + f', torch {torch.__version__}, {study.jobs} runs at a time'
    study.eval_lock = threading.Lock()
    study.tune_tasks = [Task(study, v, value, s, c, True) for s in study.tune_seeds for value in study.values
                        for c in study.combos for v in study.variants] if study.tune else []
    return study


def pick(study, records: Dict[str, dict]):
    """Each variant's tuned values (the best mean top-1 on the tuning split, ties to the first listed), the best
    plain head per sweep value, and the reported runs at the picks (none for a variant whose tuning is unfinished)."""
    for value in study.values:
        means = {}
        for v in study.variants:
            for c in study.combos:
                got = [records[t.name]['top1'] for t in study.tune_tasks
                       if (t.variant, t.value, t.tuned) == (v, value, c) and t.name in records]
                if len(got) == len(study.tune_seeds):
                    means.setdefault(v, []).append((float(np.mean(got)), c))
            if v in means and len(means[v]) == len(study.combos):
                study.picks[v, value] = max(means[v], key=lambda m: m[0])[1]
        plain = [(max(m for m, _ in means[v]), v) for v in study.variants
                 if re.fullmatch(r'baseline|\d+fc', v) and (v, value) in study.picks]
        if plain:
            study.best[value] = max(plain, key=lambda m: m[0])[1]
    study.tasks = [Task(study, v, value, s, study.picks.get((v, value), {}), False) for s in study.seeds
                   for value in study.values for v in study.variants if not study.tune or (v, value) in study.picks]


def main(argv: Optional[List[str]] = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args, rest = parser.parse_known_args(argv)
    saved = Path(args.out, 'study.json')
    if args.report and not rest and args == parser.parse_args(['--out', args.out, '--report']):
        try:
            argv = json.loads(saved.read_text())['argv'] + ['--out', args.out, '--report']
        except (OSError, ValueError, KeyError):
            parser.exit(2, f'{parser.prog}: error: {saved} holds no study options: give them with --report.\n')
        args, rest = parser.parse_known_args(argv)
    start = time.perf_counter()
    try:
        study = prepare(args, rest, [a for a in argv if a != '--report'])
    except (ValueError, FileNotFoundError, RuntimeError) as e:  # RunError is a ValueError
        parser.exit(2, f'{parser.prog}: error: {e}\n')
    records = {t.name: r for t in study.tune_tasks if (r := t.finished()) is not None}
    if args.report:
        pick(study, records)
        records.update({t.name: r for t in study.tasks if (r := t.finished()) is not None})
    else:
        atomic_write(saved, lambda f: json.dump(dict(argv=study.argv), f, indent=1), mode='w')
        todo = sum(t.name not in records for t in study.tune_tasks)
        progress = Progress(todo + len(study.values) * len(study.variants) * len(study.seeds), study.epochs)
        threading.Thread(target=progress.watch, daemon=True).start()
        with Children() as study.children:  # SIGTERM, SIGHUP, Ctrl-C stop every run; finished ones are kept
            try:
                records = run_all(study, study.tune_tasks, progress) if study.tune_tasks else {}
                if not study.failed:
                    pick(study, records)
                    progress.total = progress.done + sum(t.finished() is None for t in study.tasks)
                    records.update(run_all(study, study.tasks, progress))
            except Stopped as stop:
                print(f'{stop}: the finished runs are kept in {study.runs}; run the same command again to train '
                      f'the rest, or add --report.', file=sys.stderr)
                sys.exit(stop.exit_code)
            finally:
                progress.stop.set()
    if not any(t.name in records for t in study.tasks):
        sys.exit('\n'.join(study.failed + [f'No finished reported runs in {study.runs}.']))
    result = report(study, records, time.perf_counter() - start)
    if study.failed:
        sys.exit('\n'.join(study.failed) + '\nFinished runs are kept: run the same command again to train the rest.')
    return result


if __name__ == '__main__':
    main()
