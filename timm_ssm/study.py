""" Does SSM help my model on my data? Baseline, SSM and its controls, tuned alike, trained alike, paired tests

Each run is timm's `train.py` with the same arguments but the model, the seed and the tuned values, evaluated once by
`timm_ssm.evaluate`. Seed k of every variant starts from the same trunk and sees the same data order: the variants are
paired seed by seed. `--tune` picks each variant's values on `--tune-split`, never on the reported `--val-split`; the
primary comparisons get Holm's correction and a verdict. Variants: baseline (`--model`'s classifier), kfc (k Linear
layers on all C channels, averaged), bn1fc (BatchNorm + ReLU on all C, one Linear), ssm and ssm_norm_all (the paper's).
"""
import argparse
import contextlib
import hashlib
import itertools
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import timm
import torch
from scipy.stats import binomtest, t as student_t, ttest_rel

from .evaluate import main as evaluate
from .fashion_mnist import prepare_fashion_mnist_folder
from .files import RunError, atomic_write, check_output_folder
from .process import Children, Stopped
from .runs import split_folder
from .timm_source import parse_train_args

__all__ = ['main', 'variant_model', 'paired', 'holm', 'verdict', 'headline', 'subset_folder']

VARIANT_RE = re.compile(r'^(baseline|ssm|ssm_norm_all|bn1fc|([1-9][0-9]*)fc)$')
PLAIN_HEAD_RE = re.compile(r'^(baseline|[1-9][0-9]*fc)$')
PLAIN_VALUE_RE = re.compile(r'^[\w.+][\w.+-]*$')  # can name a folder: no path separator, no leading '-'
OWNED = ('seed', 'output', 'experiment', 'resume', 'model', 'model_kwargs', 'data', 'data_dir', 'dataset',
         'train_split', 'val_split', 'device')
RECIPE = ['--img-size', '28', '--crop-pct', '1.0', '--interpolation', 'bilinear', '--train-interpolation', 'bilinear',
          '--scale', '0.75', '1', '--color-jitter', '0', '--smoothing', '0', '--opt', 'momentum', '--momentum', '0.9',
          '--lr', '0.1', '--weight-decay', '1e-4', '--sched', 'cosine', '--epochs', '3', '--warmup-epochs', '0',
          '--cooldown-epochs', '0', '-b', '128', '--workers', '2']
ALPHA, PROGRESS_SECONDS = 0.05, 60
RULE = ('a primary comparison is *ahead* if its Holm-adjusted paired t-test p < 0.05 and its mean difference > 0, '
        '*behind* if p < 0.05 and the mean < 0, *equivalent within ±M* if its (1 − 0.05/m) two-sided t interval '
        '(m primary comparisons) lies inside ±M points, else *inconclusive*. Headline: "helps" only if every one is '
        'ahead; "hurts" if any is behind; "no difference within ±M" if every one is equivalent; else "inconclusive".')

parser = argparse.ArgumentParser(prog='python -m timm_ssm.study', allow_abbrev=False, description=__doc__.split(
    '\n')[0] + '. Other arguments go to train.py unchanged.')
add = parser.add_argument
add('--model', default='lcnet_050', help='the baseline timm classifier (default: lcnet_050)')
add('--variants', nargs='+', default=['baseline', 'ssm', '4fc'], help='of baseline, ssm, ssm_norm_all, bn1fc, kfc')
add('--num-splits', type=int, default=4, help='sub-classifiers n of the SSM variants (default: 4)')
add('--seeds', type=int, nargs='+', default=[0, 1, 2, 3, 4], help='the reported seeds (default: 0-4)')
add('--model-kwargs', nargs='*', default=[], metavar='KEY=VALUE', help='trunk arguments of every variant')
add('--data-dir', help='an image folder with split folders, or a --dataset root (default: Fashion-MNIST)')
add('--dataset', default='', help='train.py\'s --dataset (default: an image folder)')
add('--train-split', default='train', help='the split to train on (default: train)')
add('--val-split', help='the reported split (default: test on Fashion-MNIST, else validation)')
add('--train-subset', type=int, metavar='N', help='train on a class-balanced draw of N images, links in OUT')
add('--tune', action='append', default=[], metavar='KEY=V1,V2', help='a train.py option each variant tunes')
add('--tune-split', default='validation', help='the tuning split, held out of the training images')
add('--tune-subset', type=int, metavar='N', help='tune on a class-balanced draw of N images of it')
add('--tune-seeds', type=int, nargs='+', default=[100, 101], help='the tuning seeds (default: 100 101)')
add('--primary', nargs='+', metavar='A-B', help='primary comparisons (default with --tune: ssm-bestplain ssm-bn1fc)')
add('--margin', type=float, default=0.5, help='M of the equivalence verdict, in points (default: 0.5)')
add('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
add('--jobs', type=int, help='runs at a time (default: one per CPU core, on CUDA one per 3 cores)')
add('--threads', type=int, default=1, help='OMP_NUM_THREADS of each run (default: 1)')
add('--out', default='output/study', help='output folder (default: output/study)')
add('--report', action='store_true', help='train nothing, report the finished runs (--out alone: the saved options)')


def variant_model(model: str, variant: str, num_splits: int = 4) -> tuple:
    """(model name, model kwargs) of a variant; a RunError for an unknown one."""
    if not (match := VARIANT_RE.match(variant)):
        raise RunError(f'Unknown variant {variant!r}: give baseline, ssm, ssm_norm_all, bn1fc or kfc for any k >= 1 '
                       f'(1fc, 2fc, 4fc, ...).')
    kwargs = {'baseline': None, 'bn1fc': ['num_splits=1', 'norm_all=True'], 'ssm': [f'num_splits={num_splits}'],
              'ssm_norm_all': [f'num_splits={num_splits}', 'norm_all=True']}.get(variant, [f'num_splits={match[2]}',
                                                                                         'split=False'])
    return (model, []) if kwargs is None else (f'{model}_ssm', kwargs)


def _tune_values(text: str) -> tuple:
    key, values = text.partition('=')[::2]
    values = list(dict.fromkeys(v for v in values.split(',') if v))
    bad = [v for v in values if not PLAIN_VALUE_RE.match(v)]
    if bad or not values or not key.replace('-', '_').isidentifier():
        raise RunError(f'--tune {text}: give KEY=V1,V2,... of plain values (letters, digits, . + - _, no path '
                       f'separator{f"; not {bad[0]!r}" if bad else ""}), such as lr=0.01,0.03,0.1.')
    if key == 'lr' and any(re.fullmatch(r'[0.]+(e.*)?', v) for v in values):
        raise RunError('--tune lr=0: train.py takes lr 0 as "compute it from --lr-base": give values above 0.')
    return key.replace('-', '_'), values


class Task:
    """One run: a variant, a seed and its tuned values, for tuning or for the report."""

    def __init__(self, study, variant: str, seed: int, tuned: Dict[str, str], tuning: bool):
        self.variant, self.seed, self.tuned = variant, seed, tuned
        self.name = '-'.join(['tune'] * tuning + [variant] + [f'{k}{v}' for k, v in tuned.items()] * tuning +
                             [f'seed{seed}'])
        self.dir = os.path.join(study.runs, self.name)
        self.model, kwargs = variant_model(study.model, variant, study.num_splits)
        self.kwargs = study.model_kwargs + kwargs
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
            return record if (record['train_args'], record['eval_args']) == (self.train_args, self.eval_args) else None


def _part(log: str, epochs: int) -> float:
    """How far a training run is, from the last `Train: EPOCH [BATCH/BATCHES` line of train.py's log."""
    with contextlib.suppress(OSError):  # not started yet
        if found := re.findall(rb'Train: (\d+) \[\s*(\d+)/(\d+)', Path(log).read_bytes()[-8192:]):
            return (int(found[-1][0]) + (int(found[-1][1]) + 1) / int(found[-1][2])) / epochs
    return 0.0


def say(study, text: str):
    """Print a progress line with the time left for the study, from the runs done and the epochs of those training."""
    work = study.done + sum(_part(log, study.epochs) for log in list(study.running.values()))
    left = (time.perf_counter() - study.start) / work * (study.total - work) / 60 if work else 0
    print(f'{text}; ' + (f'about {left:.0f} min left for the study' if work else 'time left unknown yet'),
          file=study.stdout, flush=True)


def watch(study, stop: threading.Event):
    """Say where every training run is, once a minute."""
    while not stop.wait(PROGRESS_SECONDS):
        if running := list(study.running.items()):
            say(study, f'[{study.done}/{study.total} done] ' + ', '.join(
                f'{n} at epoch {_part(log, study.epochs) * study.epochs:.1f} of {study.epochs}' for n, log in running))


def run_task(task: Task, study) -> dict:
    """Train one run (a child process), evaluate it (in this process, one at a time); its record."""
    shutil.rmtree(task.dir, ignore_errors=True)  # unfinished or trained otherwise (names are plain: inside --out)
    start, log = time.perf_counter(), os.path.join(study.runs, f'{task.name}.log')
    study.running[task.name] = log
    try:
        with open(log, 'w') as f:
            code = study.children.run([sys.executable, '-m', 'timm_ssm.launch', 'train.py', *task.train_args],
                                      env=study.env, stdout=f, stderr=subprocess.STDOUT)
    finally:
        study.running.pop(task.name)
    if code != 0:
        raise RuntimeError(f'{task.name}: train.py failed (exit code {code}), see {log}')
    log = log[:-4] + '.eval.log'
    with study.eval_lock, open(log, 'w') as f, contextlib.redirect_stdout(f):
        try:
            result = evaluate(task.eval_args)
        except SystemExit as e:
            raise RuntimeError(f'{task.name}: the evaluation failed ({e}), see {log}') from None
    m = result['models'][0]
    record = dict(train_args=task.train_args, eval_args=task.eval_args, seconds=round(time.perf_counter() - start, 1),
                  load=round(os.getloadavg()[0], 2), top1=m['top1'], top5=m['top5'], param_count=m['param_count'],
                  heads=[dict(width=h['width'], top1=h['top1']) for h in m['heads']],
                  split=result['data']['split'], num_samples=result['data']['num_samples'])
    atomic_write(os.path.join(task.dir, 'run.json'), lambda f: json.dump(record, f, indent=1), mode='w')
    return record


def run_all(study, tasks: List[Task]) -> Dict[str, dict]:
    """Train and evaluate the runs not finished, `study.jobs` at a time; the records of all that finished."""
    records = {t.name: r for t in tasks if (r := t.finished()) is not None}
    todo = [t for t in tasks if t.name not in records]
    say(study, f'{len(tasks)} runs: {len(records)} finished and kept, {len(todo)} to train, {study.jobs} at a '
                  f'time, in {study.runs}')
    os.makedirs(study.runs, exist_ok=True)
    pool = ThreadPoolExecutor(max_workers=study.jobs)
    try:
        futures = {pool.submit(run_task, t, study): t.name for t in todo}
        for future in as_completed(futures):
            study.done += 1
            try:
                records[futures[future]] = r = future.result()
            except RuntimeError as e:
                study.failed.append(str(e))
                say(study, f'[{study.done}/{study.total}] {e}')
                continue
            say(study, f'[{study.done}/{study.total}] {futures[future]}: top-1 {r["top1"]:.2f} on {r["split"]}, '
                          f'{r["seconds"] / 60:.1f} min (load {r["load"]:.1f})')
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # after a stop signal, no queued run starts
    return records


def subset_folder(reader, split: str, num: int, out: str, option: str) -> Tuple[str, str]:
    """A root under `out` whose `split` links a class-balanced draw (seed 0) of `num` images of timm's folder `reader`
    (the first `num % classes` classes get one more), named by the draw's digest and made once; and its description."""
    classes = sorted(reader.class_to_idx, key=reader.class_to_idx.get)
    files = [sorted(p for p, t in reader.samples if t == c) for c in range(len(classes))]
    quota = [num // len(classes) + (c < num % len(classes)) for c in range(len(classes))]
    if short := [(name, len(f)) for name, f, q in zip(classes, files, quota) if len(f) < q or q == 0]:
        raise RunError(f'{option} {num}: a class-balanced subset of {len(classes)} classes needs {max(quota)} images '
                       f'of each, class {short[0][0]} has {short[0][1]}: give N from {len(classes)} to '
                       f'{len(classes) * min(map(len, files))}.')
    rng = np.random.RandomState(0)
    rel = [os.path.relpath(p, reader.root) for f, q in zip(files, quota) for p in sorted(rng.permutation(f)[:q])]
    target = os.path.join(out, 'data', f'{split}-{num}-{hashlib.sha256(chr(10).join(rel).encode()).hexdigest()[:8]}')
    if not os.path.isdir(target):
        tmp = f'{target}.{os.getpid()}.tmp'
        shutil.rmtree(tmp, ignore_errors=True)
        for name in rel:
            os.makedirs(os.path.dirname(os.path.join(tmp, split, name)), exist_ok=True)
            os.symlink(os.path.realpath(os.path.join(reader.root, name)), os.path.join(tmp, split, name))
        os.replace(tmp, target)
    return target, f'a class-balanced draw of {num:,} images of `{split}`'


def paired(a: Dict[int, float], b: Dict[int, float], level: float = 0.95) -> dict:
    """The paired difference a − b of top-1 by seed over the seeds both have: per seed, mean, sd, the two-sided t
    interval at `level`, the paired t-test and the exact sign test."""
    seeds = [s for s in a if s in b]
    diffs, n = [a[s] - b[s] for s in seeds], len(seeds)
    mean, sd = float(np.mean(diffs)) if n else math.nan, float(np.std(diffs, ddof=1)) if n > 1 else math.nan
    p = float(ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).pvalue) if n > 1 else math.nan
    half = float(student_t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n) if n > 1 else math.nan
    wins, losses = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    return dict(seeds=seeds, diffs=diffs, mean=mean, sd=sd, level=level, ci=[mean - half, mean + half], p=p,
                wins=wins, losses=losses, sign_p=float(binomtest(wins, wins + losses).pvalue) if wins + losses else 1.)


def holm(ps: Sequence[float]) -> List[float]:
    """Holm's step-down adjustment of a family of p-values (NaN counts as 1)."""
    ps = np.nan_to_num(np.asarray(ps, dtype=float), nan=1.0)
    order, adjusted = np.argsort(ps, kind='stable'), np.empty_like(ps)
    adjusted[order] = np.maximum.accumulate(np.minimum(1.0, (len(ps) - np.arange(len(ps))) * ps[order]))
    return adjusted.tolist()


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


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> List[str]:
    return [f'| {" | ".join(header)} |', '|' + '---|' * len(header), *(f'| {" | ".join(map(str, r))} |' for r in rows)]


def compare(study, top1: Dict[str, Dict[int, float]]) -> List[dict]:
    """The primary comparisons (bestplain resolved) and every other pair, each family Holm-adjusted."""
    named = [(study.best if a == 'bestplain' else a, study.best if b == 'bestplain' else b, f'{a}-{b}')
             for a, b in study.primary]
    pairs = [(x, y) if x.startswith('ssm') and not y.startswith('ssm') else (y, x)
             for x, y in itertools.combinations(study.variants, 2)]
    pairs = named + [(a, b, '') for a, b in pairs if {a, b} not in [{x, y} for x, y, _ in named]]
    out = [dict(a=a, b=b, primary=name, **paired(top1.get(a, {}), top1.get(b, {}), 1 - ALPHA / len(named) if name
                                                 else 1 - ALPHA)) for a, b, name in pairs if a and b]
    for primary in (True, False):
        family = [p for p in out if bool(p['primary']) == primary]
        for p, adjusted in zip(family, holm([p['p'] for p in family])):
            p.update(p_holm=adjusted, verdict=verdict(adjusted, p['mean'], p['ci'], study.margin) if primary else '')
    return out


def report(study, records: Dict[str, dict], wall: float) -> dict:
    """Write OUT/study.md, study.json and study.png from the finished runs; return the JSON."""
    done, tuned = ([t for t in tasks if t.name in records] for tasks in (study.tasks, study.tune_tasks))
    runs = [dict(variant=t.variant, seed=t.seed, model=t.model, model_kwargs=t.kwargs, tuned=t.tuned,
                 **records[t.name]) for t in done]
    pairs = compare(study, {v: {r['seed']: r['top1'] for r in runs if r['variant'] == v} for v in study.variants})
    primary = [p for p in pairs if p['primary']]
    answer = headline([p['verdict'] for p in primary], study.margin, ' and '.join({p['a']: 0 for p in primary}))
    lines = [f'# `{study.model}` on {study.data_name}: baseline, SSM and controls', '',
             f'Top-1 (%) of the model\'s output on `{study.val_split}` ({runs[0]["num_samples"]:,} images), used once '
             f'per reported run and for no choice; every variant ' + (f'starts from the pretrained trunk of '
             f'`{study.pretrained}` and its head starts fresh for the data\'s {study.num_classes} classes'
             if study.pretrained else 'trains from scratch') + '. Seed k of every variant starts from the same trunk '
             f'weights, sees the same data order and seeds the head\'s own generator alike: the variants are paired '
             f'seed k against seed k. Training data: {study.train_name}.', '']
    if study.tune:
        cell = lambda got: f'{np.mean(got):.2f} ({", ".join(f"{x:.2f}" for x in got)})' if got else '–'  # noqa: E731
        rows = [[v, *(f'**{cell(got)}**' if study.picks.get(v) == c else cell(got)
                      for c, got in zip(study.combos, study.scores[v]))] for v in study.variants]
        lines += [f'## Tuning on {study.tune_name}, seeds {", ".join(map(str, study.tune_seeds))}', '',
                  'Mean top-1 (per seed); **bold**: the pick (the highest mean, ties to the first listed value), which '
                  'the reported runs use.', '',
                  *_table(['variant'] + [' '.join(f'{k}={x}' for k, x in c.items()) for c in study.combos], rows),
                  '', f'Best plain head on the tuning split: {study.best}.', '']
    else:
        lines += [f'The learning rate was not tuned: every variant ran at lr {study.lr}.', '']
    rows = []
    for v in study.variants:
        if rs := [r for r in runs if r['variant'] == v]:
            heads = zip(rs[0]['heads'], *[r['heads'] for r in rs])  # per sub-classifier: its width, then each seed
            rows.append([v, ' '.join([f'`{rs[0]["model"]}`', *rs[0]['model_kwargs']]),
                         ' '.join(f'{k}={x}' for k, x in rs[0]['tuned'].items()) or '–', _ms([r['top1'] for r in rs]),
                         ', '.join(f'{r["seed"]}: {r["top1"]:.2f}' for r in rs),
                         '; '.join(f'{_ms([h["top1"] for h in hs])} (w {w["width"]})' for w, *hs in heads),
                         f'{rs[0]["param_count"]:,}', _ms([r['seconds'] / 60 for r in rs])])
    lines += ['## Results', '', *_table(['variant', 'model', 'tuned', 'top-1', 'per seed', 'each sub-classifier',
                                         'parameters', 'min / run'], rows)]
    cells = lambda p: [f'{p["a"]} − {p["b"]}' + ' (best plain head)' * ('bestplain' in p['primary']),  # noqa: E731
                       ', '.join(f'{s}: {d:+.2f}' for s, d in zip(p['seeds'], p['diffs'])),
                       _ms(p['diffs'], '+') if p['diffs'] else '–', f'{p["ci"][0]:+.2f} to {p["ci"][1]:+.2f}',
                       f'{p["wins"]} / {p["losses"]}', *(f'{x:.3g}' for x in (p['sign_p'], p['p'], p['p_holm']))]
    header = ['comparison', 'per seed', 'mean ± sd', '{} CI', 'wins / losses', 'sign test p', 'paired t p', 'Holm p']
    lines += ['', f'## Primary comparisons (named before the runs; Holm over {len(study.primary)})', '',
              f'Rule: {RULE.replace("±M", f"±{study.margin:g}")}', '']
    lines += [*_table([h.format(f'{100 * (1 - ALPHA / len(primary)):g}%') for h in header] + ['verdict'], [
        cells(p) + [f'**{p["verdict"]}**'] for p in primary]), '', f'**Headline: {answer}.**'] if primary else [
        'None named (without --tune, name them with --primary A-B): every comparison is exploratory.']
    loads = [records[t.name]['load'] for t in done + tuned]
    lines += ['', '## Secondary comparisons (exploratory; Holm over their own family)', '',
              *_table([h.format('95%') for h in header], [cells(p) for p in pairs if not p['primary']]), '',
              f'Wall time of this invocation {wall / 60:.1f} min on {study.hardware}; 1-minute load average at the end '
              f'of the runs {min(loads):.1f}-{max(loads):.1f}. train.py arguments of every run (then its model, seed '
              f'and tuned values):', '', '    ' + ' '.join(map(shlex.quote, study.train_args))]
    if len(done) < len(study.tasks):
        lines[1:1] = ['', f'**Partial report: {len(done)} of {len(study.tasks)} reported runs finished.**']
    result = dict(argv=study.argv, model=study.model, val_split=study.val_split, pretrained=study.pretrained,
                  train_args=study.train_args, tuning=[dict(variant=t.variant, seed=t.seed, tuned=t.tuned,
                                                            top1=records[t.name]['top1']) for t in tuned],
                  picks=[dict(variant=v, tuned=c) for v, c in study.picks.items()], best_plain=study.best, runs=runs,
                  comparisons=pairs, headline=answer if primary else None, complete=len(done) == len(study.tasks),
                  wall_seconds=round(wall, 1), hardware=study.hardware)
    atomic_write(os.path.join(study.out, 'study.md'), lambda f: f.write('\n'.join(lines) + '\n'), mode='w')
    atomic_write(os.path.join(study.out, 'study.json'), lambda f: json.dump(result, f, indent=1), mode='w')
    plot(result, study.margin, os.path.join(study.out, 'study.png'))
    print('\n'.join(lines))
    return result


def plot(result: dict, margin: float, path: str):
    """Each paired difference (seeds as dots, mean and interval), the primary ones first, and the ±margin band."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display
    pairs = sorted(result['comparisons'], key=lambda p: not p['primary'])
    fig = Figure(figsize=(max(6, 0.9 * len(pairs)), 4), layout='tight')
    ax = fig.subplots()
    ax.axhspan(-margin, margin, color='0.9', label=f'±{margin:g} points')
    for i, p in enumerate(pairs):
        ax.plot([i] * len(p['diffs']), p['diffs'], '.', color='0.6')
        ax.errorbar([i], [p['mean']], yerr=[[p['mean'] - p['ci'][0]], [p['ci'][1] - p['mean']]], fmt='o',
                    capsize=4, color='C0' if p['primary'] else 'C7')
    ax.axhline(0, color='k', lw=0.8)
    ax.set_xticks(range(len(pairs)), [f'{p["a"]}\n− {p["b"]}' for p in pairs], fontsize=7)
    ax.set_ylabel('top-1 difference (points)')
    ax.set_title(f'{result["model"]}: paired differences by seed\nblue: primary, Holm-level interval; grey: '
                 f'exploratory, 95%', fontsize=8)
    ax.legend(fontsize=7)
    atomic_write(path, lambda f: fig.savefig(f, format='png', dpi=100))


def prepare(args, rest: List[str], argv: List[str]) -> argparse.Namespace:
    """The study a command line asks for, checked before any run starts; a RunError says what is wrong."""
    if args.model.split('.')[0].endswith('_ssm') or not timm.is_model(args.model.split('.')[0] + '_ssm'):
        raise RunError(f'--model {args.model}: not a timm classifier to put a head on; give one such as resnet50 (the '
                       f'study builds <model>_ssm itself).')
    study = argparse.Namespace(argv=argv, model=args.model, variants=list(dict.fromkeys(args.variants)),
                               num_splits=args.num_splits, seeds=list(dict.fromkeys(args.seeds)), margin=args.margin,
                               tune_seeds=list(dict.fromkeys(args.tune_seeds)), out=os.path.abspath(args.out),
                               model_kwargs=args.model_kwargs, tune_split=args.tune_split, failed=[], tasks=[],
                               tune=dict(_tune_values(text) for text in args.tune), eval_lock=threading.Lock(),
                               done=0, running={}, stdout=sys.stdout)
    for v in study.variants:
        variant_model(args.model, v)  # a RunError for an unknown one
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1
    study.jobs = args.jobs if args.jobs is not None else max(1, cores // 3) if args.device.startswith('cuda') else cores
    if not 1 <= study.jobs <= cores or args.threads < 1 or args.margin <= 0:
        raise RunError(f'--jobs {study.jobs} --threads {args.threads} --margin {args.margin:g}: give 1 to {cores} jobs '
                       f'(at most one run per CPU core), 1 or more threads and a margin above 0 points.')
    study.combos = [dict(zip(study.tune, c)) for c in itertools.product(*study.tune.values())]
    if study.tune and set(study.tune_seeds) & set(study.seeds):
        raise RunError('--tune-seeds and --seeds overlap: give tuning seeds distinct from the reported ones.')
    plain = [v for v in study.variants if PLAIN_HEAD_RE.match(v)]
    default = ['ssm-bestplain'] * bool(study.tune and plain) + ['ssm-bn1fc'] * ('bn1fc' in study.variants)
    primary = args.primary or default * ('ssm' in study.variants)
    study.primary = [tuple(p.partition('-')[::2]) for p in dict.fromkeys(primary)]
    for a, b in study.primary:
        if {a, b} - {*study.variants, 'bestplain'} or a == b:
            raise RunError(f'--primary {a}-{b}: give A-B with two variants of the study (or bestplain).')
        if 'bestplain' in (a, b) and not (study.tune and plain):
            raise RunError(f'--primary {a}-{b}: bestplain is picked on the tuning split: give --tune (and a plain '
                           f'head, baseline or kfc) or name the variant, such as {a}-{plain[0] if plain else "1fc"}.')
    check_output_folder(study.out, '--out')
    parse_train_args([a for k, vs in study.tune.items() for v in vs for a in (f'--{k.replace("_", "-")}', v)])
    unset = object()  # a default that tells an option given on the command line or in its -c file
    given = vars(parse_train_args(rest, **dict.fromkeys(OWNED + tuple(study.tune), unset)))
    for dest in (d for d in OWNED + tuple(study.tune) if given[d] is not unset):
        if dest in study.tune:
            raise RunError(f'--{dest.replace("_", "-")} conflicts with --tune {dest}=...: give one of them.')
        raise RunError(f'--{dest.replace("_", "-")} is set by the study per run: give --seeds, --out, --model, '
                       f'--model-kwargs, --data-dir, --dataset, --train-split, --val-split or --device instead.')
    fashion_mnist = args.data_dir is None
    if not fashion_mnist and not os.path.isdir(args.data_dir):
        raise RunError(f'--data-dir {args.data_dir} is not a folder: give the folder that holds the splits.')
    study.data_dir = os.path.abspath(prepare_fashion_mnist_folder() if fashion_mnist else args.data_dir)
    study.val_split = args.val_split or ('test' if fashion_mnist else 'validation')
    if (args.train_subset or args.tune_subset) and args.dataset:
        raise RunError('--train-subset and --tune-subset take an image folder: leave out --dataset.')
    splits = {'--train-split': args.train_split, '--val-split': study.val_split, '--tune-split': study.tune_split}
    roots = {o: split_folder(study.data_dir, sp, args.dataset) or f'{args.dataset}:{sp}' for o, sp in splits.items()
             if study.tune or o != '--tune-split'}
    if len(set(roots.values())) < len(roots):
        raise RunError(', '.join(f'{o} reads {r}' for o, r in roots.items()) + ': give each a split folder of its own '
                       '(the tuning split is held out of the training images and is never the reported one).')
    reader = lambda split: timm.data.create_dataset('', root=study.data_dir, split=split).reader  # noqa: E731
    train = reader(args.train_split) if not args.dataset else None
    train_root, study.train_name = study.data_dir, f'the `{args.train_split}` split of {study.data_dir}'
    study.tune_root, study.tune_name = study.data_dir, f'`{study.tune_split}`'
    if args.train_subset:
        train_root, study.train_name = subset_folder(train, args.train_split, args.train_subset, study.out,
                                                     '--train-subset')
    if study.tune and args.tune_subset:
        study.tune_root, study.tune_name = subset_folder(reader(study.tune_split), study.tune_split, args.tune_subset,
                                                         study.out, '--tune-subset')
    study.data_name = 'Fashion-MNIST' if fashion_mnist else f'{args.dataset or "the image folder"} {study.data_dir}'
    dataset = ['--dataset', args.dataset] if args.dataset else []
    classes = ['--num-classes', str(len(train.class_to_idx))] if train else []
    study.train_args = [*(RECIPE if fashion_mnist else []), *classes, *rest, '--data-dir', train_root, *dataset,
                        '--train-split', args.train_split, '--val-split', '', '--device', args.device]
    ns = parse_train_args(study.train_args)
    study.pretrained = f'{args.model} (timm\'s pretrained weights)' if ns.pretrained else None
    if ns.pretrained_path:
        study.pretrained = os.path.abspath(os.path.expanduser(ns.pretrained_path))
        if not os.path.isfile(study.pretrained):
            raise RunError(f'--pretrained-path {ns.pretrained_path} is not a file: give the weights file.')
        study.train_args += ['--pretrained', '--pretrained-path', study.pretrained]  # train.py needs both
    study.num_classes, study.epochs = ns.num_classes, ns.epochs
    study.lr = ns.lr or f'{ns.lr_base} × batch size / 256 (--lr-base)'
    study.eval_args = [*dataset, '-b', '256', '--workers', str(ns.workers), '--device', args.device, '--no-progress',
                       *(['--amp'] if ns.amp else []), *(['--channels-last'] if ns.channels_last else []),
                       *(['--class-map', ns.class_map] if ns.class_map else [])]
    study.runs = os.path.join(study.out, 'runs')
    path = [str(Path(__file__).resolve().parents[1])] + [os.environ['PYTHONPATH']] * ('PYTHONPATH' in os.environ)
    study.env = dict(os.environ, PYTHONPATH=os.pathsep.join(path), OMP_NUM_THREADS=str(args.threads))
    study.hardware = (torch.cuda.get_device_name(0) if args.device.startswith('cuda') else f'{cores} CPU cores') + \
        f', torch {torch.__version__}, {study.jobs} runs at a time'
    study.tune_tasks = [Task(study, v, s, c, True) for s in study.tune_seeds for c in study.combos
                        for v in study.variants] if study.tune else []
    return study


def pick(study, records: Dict[str, dict]):
    """Each variant's tuned values (the best mean top-1 on the tuning split, ties to the first listed), the best
    plain head, and the reported runs (only for variants whose tuning finished)."""
    done = [t for t in study.tune_tasks if t.name in records]
    study.scores = {v: [[records[t.name]['top1'] for t in done if (t.variant, t.tuned) == (v, c)] for c in study.combos]
                    for v in study.variants}  # top-1 per tuned value, per seed
    study.picks = {v: study.combos[int(np.argmax([np.mean(s) for s in got]))]  # ties: the first listed
                   for v, got in study.scores.items() if all(len(s) == len(study.tune_seeds) for s in got)}
    plain = [v for v in study.picks if PLAIN_HEAD_RE.match(v)]
    study.best = max(plain, key=lambda v: np.mean(study.scores[v][study.combos.index(study.picks[v])]), default=None)
    study.tasks = [Task(study, v, s, study.picks.get(v, {}), False) for s in study.seeds for v in study.variants
                   if not study.tune or v in study.picks]


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
    torch.set_num_threads(args.threads)  # the evaluations run here, beside the training runs
    records = {t.name: r for t in study.tune_tasks if (r := t.finished()) is not None}
    if args.report:
        pick(study, records)
        records.update({t.name: r for t in study.tasks if (r := t.finished()) is not None})
    else:
        atomic_write(saved, lambda f: json.dump(dict(argv=study.argv), f, indent=1), mode='w')
        study.total = sum(t.name not in records for t in study.tune_tasks) + len(study.variants) * len(study.seeds)
        study.start, stop = time.perf_counter(), threading.Event()
        threading.Thread(target=watch, args=(study, stop), daemon=True).start()
        with Children() as study.children:  # SIGTERM, SIGHUP, Ctrl-C stop every run; finished ones are kept
            try:
                records = run_all(study, study.tune_tasks) if study.tune_tasks else {}
                if not study.failed:
                    pick(study, records)
                    study.total = study.done + sum(t.finished() is None for t in study.tasks)
                    records.update(run_all(study, study.tasks))
            except Stopped as e:
                print(f'{e}: the finished runs are kept in {study.runs}; run the same command again to train '
                      f'the rest, or add --report.', file=sys.stderr)
                sys.exit(e.exit_code)
            finally:
                stop.set()
    if not any(t.name in records for t in study.tasks):
        sys.exit('\n'.join(study.failed + [f'No finished reported runs in {study.runs}.']))
    result = report(study, records, time.perf_counter() - start)
    if study.failed:
        sys.exit('\n'.join(study.failed) + '\nFinished runs are kept: run the same command again to train the rest.')
    return result


if __name__ == '__main__':
    main()
