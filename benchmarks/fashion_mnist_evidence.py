""" Evidence on real data: a baseline and its Split-and-Share twin trained alike on Fashion-MNIST

For every seed, timm's own `train.py` (run unchanged through `python -m timm_ssm.launch`) trains `--model` and
`<model>_ssm` with the same recipe and seed; then `python -m timm_ssm.evaluate` evaluates the last checkpoints of
each model on the test split in one pass (each seed's top-1 and top-5, each sub-classifier, the oracle, the
label-free selection rules, the ensemble of the seeds, parameters and multiply-adds). A markdown table with the
mean and spread over seeds goes to `OUT/results.md` and to the terminal.

The last checkpoint is evaluated, not train.py's `model_best`: train.py picks its best epoch on the evaluation
split, which here is the test split.

    TIMM_ROOT=/path/to/pytorch-image-models python benchmarks/fashion_mnist_evidence.py
    python benchmarks/fashion_mnist_evidence.py --seeds 0 1 2 3 4 --epochs 10 --model resnet18 --img-size 56

The defaults (test_resnet, 28 px, 5 seeds, 6 epochs, one intra-op thread) take about an hour on 2 CPU cores.
Finished runs are kept and skipped when the command is run again with the same OUT and the same train.py
arguments (recorded in each run's `run.json`), so an interrupted benchmark continues; a run trained otherwise is
trained again.
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional

import torch

import timm_ssm
from timm_ssm.fashion_mnist import MEAN, NUM_CLASSES, STD, prepare_fashion_mnist

RUN_RECORD = 'run.json'  # in each run's folder: its train.py arguments and wall time

parser = argparse.ArgumentParser(description='Baseline vs SSM twin on Fashion-MNIST through timm\'s train.py')
parser.add_argument('--model', default='test_resnet', help='baseline timm model; the twin is <model>_ssm')
parser.add_argument('--num-splits', type=int, default=4, help='sub-classifiers n of the SSM head (default: 4)')
parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2, 3, 4], help='seeds (default: 0 1 2 3 4)')
parser.add_argument('--epochs', type=int, default=6, help='epochs per run (default: 6)')
parser.add_argument('--img-size', type=int, default=28, help='input size (default: 28, Fashion-MNIST\'s own)')
parser.add_argument('-b', '--batch-size', type=int, default=128, help='batch size (default: 128)')
parser.add_argument('--lr', type=float, default=0.1, help='SGD learning rate (default: 0.1)')
parser.add_argument('--weight-decay', type=float, default=1e-4, help='weight decay (default: 1e-4, the paper\'s)')
parser.add_argument('--workers', type=int, default=2, help='data loading workers (default: 2)')
parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
parser.add_argument('--threads', type=int, default=None,
                    help='OMP_NUM_THREADS of train.py and evaluate (default: 1 on CPU, where a second intra-op '
                         'thread gains little beside 2 data loading workers and, when other processes share the '
                         'cores, makes every parallel op wait for a descheduled thread: 10x slower measured here)')
parser.add_argument('--data-dir', default=None, help='Fashion-MNIST root (default: prepared by timm_ssm)')
parser.add_argument('--out', default='output/fashion_mnist_evidence', help='output folder')
parser.add_argument('--train-args', nargs=argparse.REMAINDER, default=[],
                    help='more train.py arguments for both models (last on the command line)')


def recipe(args, data_dir: str) -> List[str]:
    """train.py arguments shared by both models: SGD with momentum (not Nesterov, as the paper), cosine schedule,
    light augmentation."""
    return [
        '--data-dir', data_dir, '--dataset', 'torch/fashion_mnist', '--train-split', 'train', '--val-split', 'test',
        '--num-classes', str(NUM_CLASSES), '--input-size', '1', str(args.img_size), str(args.img_size),
        '--mean', *map(str, MEAN), '--std', *map(str, STD), '--crop-pct', '1.0',
        '--interpolation', 'bilinear', '--train-interpolation', 'bilinear',
        '--scale', '0.75', '1', '--color-jitter', '0', '--smoothing', '0',
        '--opt', 'momentum', '--momentum', '0.9', '--lr', str(args.lr), '--weight-decay', str(args.weight_decay),
        '--sched', 'cosine', '--epochs', str(args.epochs), '--warmup-epochs', '0', '--cooldown-epochs', '0',
        '-b', str(args.batch_size), '--workers', str(args.workers), '--device', args.device,
        '--log-interval', '100', '--checkpoint-hist', '1',
    ]


def _env(args) -> Dict[str, str]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(timm_ssm.__file__)))
    path = os.environ.get('PYTHONPATH')
    env = dict(os.environ, PYTHONPATH=root + (os.pathsep + path if path else ''))
    if args.threads:
        env['OMP_NUM_THREADS'] = str(args.threads)
    return env


def _epochs_done(run_dir: str) -> int:
    summary = os.path.join(run_dir, 'summary.csv')
    if not os.path.isfile(os.path.join(run_dir, 'last.pth.tar')) or not os.path.isfile(summary):
        return 0
    with open(summary) as f:
        return sum(1 for _ in f) - 1


def finished_run(run_dir: str, train_args: List[str], epochs: int) -> Optional[Dict[str, float]]:
    """The record of a run trained with exactly these train.py arguments for this many epochs, else None."""
    record = os.path.join(run_dir, RUN_RECORD)
    if not os.path.isfile(record) or _epochs_done(run_dir) != epochs:
        return None
    with open(record) as f:
        result = json.load(f)
    return result if result.get('train_args') == train_args else None


def train(args, model: str, seed: int, data_dir: str, runs: str) -> Dict[str, float]:
    """Train one model with one seed unless a run with the same train.py arguments is there; its record
    (`train_args`, wall time `seconds` and the load average `load` at its end)."""
    name = f'{model}-seed{seed}'
    run_dir = os.path.join(runs, name)
    train_args = ['--model', model, '--seed', str(seed), *recipe(args, data_dir), '--experiment', name]
    if model.endswith('_ssm'):
        train_args += ['--model-kwargs', f'num_splits={args.num_splits}']
    train_args += args.train_args
    found = finished_run(run_dir, train_args, args.epochs)
    if found is not None:
        print(f'{name}: finished run with the same train.py arguments found, kept')
        return found
    if os.path.isdir(run_dir):
        # unfinished, or trained otherwise: train.py would start a new folder beside it
        shutil.rmtree(run_dir)
    cmd = [sys.executable, '-m', 'timm_ssm.launch', 'train.py', *train_args, '--output', runs]
    print(f'{name}: training ({" ".join(cmd[2:])})', flush=True)
    start = time.perf_counter()
    with open(os.path.join(runs, f'{name}.log'), 'w') as log:
        code = subprocess.call(cmd, env=_env(args), stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if code != 0 or _epochs_done(run_dir) != args.epochs:
        sys.exit(f'{name}: train.py failed (exit code {code}), see {os.path.join(runs, name + ".log")}')
    # the load average: what others put on shared cores too
    result = dict(train_args=train_args, seconds=round(seconds, 1), load=os.getloadavg()[0])
    with open(os.path.join(run_dir, RUN_RECORD), 'w') as f:
        json.dump(result, f)
    print(f'{name}: {seconds / 60:.1f} min', flush=True)
    return result


def evaluate(args, model: str, checkpoints: List[str], data_dir: str, out: str) -> dict:
    """One timm_ssm.evaluate pass over the test split with every seed's model (and so their ensemble)."""
    json_path = os.path.join(out, f'eval_{model}.json')
    # input size, normalization, crop and interpolation: from the checkpoints' train.py arguments
    cmd = [sys.executable, '-m', 'timm_ssm.evaluate', '--model', model, '--checkpoint', *checkpoints,
           '--data-dir', data_dir, '--dataset', 'torch/fashion_mnist', '--split', 'test', '-b', '250',
           '--workers', str(args.workers), '--device', args.device, '--no-progress',
           '--json', json_path, '--csv', os.path.join(out, f'eval_{model}.csv')]
    if model.endswith('_ssm'):
        cmd += ['--plot', os.path.join(out, f'heads_{model}.png')]
    print(f'{model}: evaluating {len(checkpoints)} checkpoint(s)', flush=True)
    with open(os.path.join(out, f'eval_{model}.log'), 'w') as log:
        code = subprocess.call(cmd, env=_env(args), stdout=log, stderr=subprocess.STDOUT)
    if code != 0:
        sys.exit(f'{model}: evaluation failed (exit code {code}), see {os.path.join(out, f"eval_{model}.log")}')
    with open(json_path) as f:
        return json.load(f)


def _stats(values: List[float]) -> str:
    if len(values) == 1:
        return f'{values[0]:.2f}'
    return f'{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}'


def _per_seed(values: List[float]) -> str:
    return ', '.join(f'{v:.2f}' for v in values)


def markdown(args, results: Dict[str, dict], timings: Dict[str, List[dict]], total_seconds: float,
             hardware: str) -> str:
    base, ssm = args.model, f'{args.model}_ssm'
    b, s = results[base], results[ssm]
    seeds = ', '.join(map(str, args.seeds))
    n = len(args.seeds)
    lines = [
        f'Fashion-MNIST test split (10,000 images), `{base}` against `{ssm}` (n = {args.num_splits}), both trained '
        f'by timm\'s `train.py` with the same recipe and seeds ({seeds}): {args.epochs} epochs, SGD momentum 0.9, '
        f'lr {args.lr}, cosine schedule, weight decay {args.weight_decay}, batch {args.batch_size}, '
        f'{args.img_size} px, random-resized crop (scale 0.75-1) and flip. Top-1/top-5 in %, mean ± sample '
        f'standard deviation over the {n} seeds, last epoch\'s checkpoint (`python -m timm_ssm.evaluate`).',
        '',
        f'| | `{base}` | `{ssm}` |',
        '|---|---|---|',
    ]

    def row(label, left, right):
        lines.append(f'| {label} | {left} | {right} |')

    top1 = ([m['top1'] for m in b['models']], [m['top1'] for m in s['models']])
    row('top-1 (averaged output)', _stats(top1[0]), _stats(top1[1]))
    row('top-1 per seed', _per_seed(top1[0]), _per_seed(top1[1]))
    row('top-5', _stats([m['top5'] for m in b['models']]), _stats([m['top5'] for m in s['models']]))
    for j, head in enumerate(s['models'][0]['heads']):
        row(f'FC{j + 1} alone (channels 0-{head["width"] - 1}) top-1', '–',
            _stats([m['heads'][j]['top1'] for m in s['models']]))
    row('oracle: any FC right', '–', _stats([m['oracle']['top1'] for m in s['models']]))
    for rule in s['models'][0]['selection']:
        row(f'label-free rule `{rule}` top-1', '–', _stats([m['selection'][rule]['top1'] for m in s['models']]))
    if n > 1:
        row(f'ensemble of the {n} seeds (mean of logits) top-1', f'{b["ensemble"]["top1"]:.2f}',
            f'{s["ensemble"]["top1"]:.2f}')
    row('parameters', f'{b["models"][0]["param_count"]:,}', f'{s["models"][0]["param_count"]:,}')
    row('multiply-adds per image', f'{b["models"][0]["macs"]:,}', f'{s["models"][0]["macs"]:,}')
    row('head multiply-adds per image', f'{b["models"][0]["head_macs"]:,}', f'{s["models"][0]["head_macs"]:,}')
    row('train wall time per run (min)', _stats([t['seconds'] / 60 for t in timings[base]]),
        _stats([t['seconds'] / 60 for t in timings[ssm]]))

    diff = [y - x for x, y in zip(*top1)]
    lines += [
        '',
        f'SSM minus baseline top-1, paired by seed: {_per_seed(diff)} (mean {statistics.mean(diff):+.2f}). '
        f'Wall time {total_seconds / 60:.0f} min (training and evaluation) on {hardware}.',
    ]
    return '\n'.join(lines)


def _hardware(device: str) -> str:
    if device.startswith('cuda') and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    return f'{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}'


def main(argv: Optional[List[str]] = None):
    args = parser.parse_args(argv)
    if args.threads is None and not args.device.startswith('cuda'):
        args.threads = 1
    data_dir = args.data_dir or str(prepare_fashion_mnist())
    out = os.path.abspath(args.out)
    runs = os.path.join(out, 'runs')
    os.makedirs(runs, exist_ok=True)
    models = [args.model, f'{args.model}_ssm']
    timings = {m: [] for m in models}
    for seed in args.seeds:
        for model in models:
            timings[model].append(train(args, model, seed, data_dir, runs))
    results = {}
    eval_start = time.perf_counter()
    for model in models:
        checkpoints = [os.path.join(runs, f'{model}-seed{seed}', 'last.pth.tar') for seed in args.seeds]
        results[model] = evaluate(args, model, checkpoints, data_dir, out)
    # runs kept from an earlier invocation count with their own time
    total = sum(t['seconds'] for m in models for t in timings[m]) + time.perf_counter() - eval_start
    hardware = _hardware(args.device)
    if not args.device.startswith('cuda'):
        loads = [t['load'] for m in models for t in timings[m]]
        hardware += (f', OMP_NUM_THREADS={args.threads}; 1-minute load average {min(loads):.1f}-{max(loads):.1f} '
                     f'at the end of the training runs')
    table = markdown(args, results, timings, total, hardware)
    with open(os.path.join(out, 'results.md'), 'w') as f:
        f.write(table + '\n')
    print(table)


if __name__ == '__main__':
    main()
