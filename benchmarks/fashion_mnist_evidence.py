""" Evidence on real data: a baseline, its Split-and-Share twins and Table 4's controls, trained alike on Fashion-MNIST

Paper: `Exploiting Features with Split-and-Share Module` - https://doi.org/10.3390/electronics11020235
(Lee et al., Electronics 2022)

For every seed, each variant of `--model` is trained with the same recipe and seed, then evaluated on the test
split by `python -m timm_ssm.evaluate` (each seed's top-1 and top-5, each sub-classifier, the oracle, the
ensemble of the seeds, parameters and multiply-adds). Variants (`--variants`):

    baseline        `--model` with its own classifier
    ssm             `<model>_ssm`, n = `--num-splits` (the paper's SSM, shared loss on the averaged output)
    ssm_norm_all    the same with `norm_all=True` (Algorithm 1: one BatchNorm over every sub-classifier's input)
    2fc, 3fc        `<model>_ssm` with `num_splits=2/3, split=False`: k plain Linear classifiers on all C
                    channels, averaged, no BatchNorm (Table 4's controls with SSM's parameter budget)
    ssm_individual  `ssm` trained with a loss per sub-classifier (Table 2's individual scheme)

All but `ssm_individual` are trained by timm's own `train.py`, unchanged, through `python -m timm_ssm.launch`.
`ssm_individual` does NOT run through `train.py`, which cannot put a loss on each sub-classifier: it runs
`benchmarks/train_individual.py`, a short loop of timm's loader, optimizer and scheduler built from the same
`train.py` arguments by `train.py`'s own argument parser, with `timm_ssm.IndividualLoss` on `forward_splits`.

The report (`OUT/results.md`, and the terminal) gives per variant the top-1 mean ± sd over seeds, each seed,
each sub-classifier, the oracle, the ensemble of the seeds (Table 3), parameters and multiply-adds; the paired
difference of every variant to the baseline and of SSM to the 2FC/3FC controls, per seed and as mean ± sd, with
an exact two-sided sign test and a paired t-test.

Every run trains without per-epoch evaluation (`--val-split ''`) and its last checkpoint is evaluated: the test
split is never used to pick an epoch.

    TIMM_ROOT=/path/to/pytorch-image-models python benchmarks/fashion_mnist_evidence.py --out /tmp/evidence
    python benchmarks/fashion_mnist_evidence.py --device cuda --out /tmp/evidence_gpu   # resnet26, C = 2048
    python benchmarks/fashion_mnist_evidence.py --out /tmp/evidence --report   # report the finished runs only

Defaults on CPU: lcnet_050 (pooled C = 1280), every variant, seeds 0-4, 28 px, 3 epochs, 2 runs at a time with
one intra-op thread each: 30 runs, 86 minutes measured on 2 shared cores (docs/evidence.md). On CUDA: resnet26
(C = 2048), every variant, seeds 0-2, 32 px, 4 epochs, AMP, channels_last, 6 runs at a time.
Finished runs are kept and skipped when the command is run again with the same OUT and the same training
arguments (recorded in each run's `run.json`), so an interrupted benchmark continues; a run trained otherwise
is trained again. `--report` trains nothing and reports the runs that finished.
"""
import argparse
import json
import math
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence

import torch

import timm_ssm
from timm_ssm.fashion_mnist import MEAN, NUM_CLASSES, STD, prepare_fashion_mnist

_PRINT_LOCK = threading.Lock()  # runs report from several threads
RUN_RECORD = 'run.json'  # in each run's folder: its training arguments and wall time
INDIVIDUAL_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'train_individual.py')
VARIANTS = ('baseline', 'ssm', 'ssm_norm_all', '2fc', '3fc', 'ssm_individual')
# defaults that depend on the device: CPU (2 shared cores, about 90 minutes measured), CUDA (one H200-class GPU,
# sized for 8 minutes)
DEVICE_DEFAULTS = dict(
    cpu=dict(model='lcnet_050', variants=list(VARIANTS), seeds=[0, 1, 2, 3, 4], img_size=28, epochs=3, jobs=2,
             threads=1, amp=False, channels_last=False),
    cuda=dict(model='resnet26', variants=list(VARIANTS), seeds=[0, 1, 2], img_size=32, epochs=4, jobs=6, threads=2,
              amp=True, channels_last=True),
)

parser = argparse.ArgumentParser(description='Baseline, SSM and Table 4\'s controls on Fashion-MNIST through '
                                             'timm\'s train.py')
parser.add_argument('--model', default=None,
                    help='baseline timm model; the others are <model>_ssm (default: lcnet_050 on CPU, resnet26 '
                         'on CUDA)')
parser.add_argument('--variants', nargs='+', default=None, choices=VARIANTS,
                    help=f'variants to train (default: all: {" ".join(VARIANTS)})')
parser.add_argument('--num-splits', type=int, default=4, help='sub-classifiers n of the SSM variants (default: 4)')
parser.add_argument('--seeds', type=int, nargs='+', default=None,
                    help='seeds, the same for every variant (default: 0 1 2 3 4 on CPU, 0 1 2 on CUDA)')
parser.add_argument('--epochs', type=int, default=None, help='epochs per run (default: 3 on CPU, 4 on CUDA)')
parser.add_argument('--img-size', type=int, default=None, help='input size (default: 28 on CPU, 32 on CUDA)')
parser.add_argument('-b', '--batch-size', type=int, default=128, help='batch size (default: 128)')
parser.add_argument('--lr', type=float, default=0.1, help='SGD learning rate (default: 0.1)')
parser.add_argument('--weight-decay', type=float, default=1e-4, help='weight decay (default: 1e-4, the paper\'s)')
parser.add_argument('--workers', type=int, default=2, help='data loading workers per run (default: 2)')
parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
parser.add_argument('--amp', action=argparse.BooleanOptionalAction, default=None,
                    help='mixed precision (default: on for CUDA)')
parser.add_argument('--channels-last', action=argparse.BooleanOptionalAction, default=None,
                    help='channels_last memory layout (default: on for CUDA)')
parser.add_argument('--jobs', type=int, default=None,
                    help='runs trained at the same time (default: 2 on CPU, 6 on CUDA)')
parser.add_argument('--threads', type=int, default=None,
                    help='OMP_NUM_THREADS of each run and evaluation (default: 1 on CPU, where a second intra-op '
                         'thread gains little beside the data loading workers and, when other processes share the '
                         'cores, makes every parallel op wait for a descheduled thread: 10x slower measured here)')
parser.add_argument('--data-dir', default=None, help='Fashion-MNIST root (default: prepared by timm_ssm)')
parser.add_argument('--train-subset', type=int, default=None,
                    help='train on the first N images of the train split only (a copy in OUT; default: all 60,000)')
parser.add_argument('--out', default='output/fashion_mnist_evidence', help='output folder')
parser.add_argument('--report', action='store_true', default=False,
                    help='train nothing: evaluate and report the runs that finished')
parser.add_argument('--train-args', nargs=argparse.REMAINDER, default=[],
                    help='more train.py arguments for every run (last on the command line)')


def resolve_defaults(args) -> argparse.Namespace:
    """Fill the device-dependent defaults left unset on the command line."""
    defaults = DEVICE_DEFAULTS['cuda' if args.device.startswith('cuda') else 'cpu']
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def recipe(args, data_dir: str) -> List[str]:
    """train.py arguments shared by every run: SGD with momentum (not Nesterov, as the paper), cosine schedule,
    light augmentation, no per-epoch evaluation."""
    train_args = [
        '--data-dir', data_dir, '--dataset', 'torch/fashion_mnist', '--train-split', 'train', '--val-split', '',
        '--num-classes', str(NUM_CLASSES), '--input-size', '1', str(args.img_size), str(args.img_size),
        '--mean', *map(str, MEAN), '--std', *map(str, STD), '--crop-pct', '1.0',
        '--interpolation', 'bilinear', '--train-interpolation', 'bilinear',
        '--scale', '0.75', '1', '--color-jitter', '0', '--smoothing', '0',
        '--opt', 'momentum', '--momentum', '0.9', '--lr', str(args.lr), '--weight-decay', str(args.weight_decay),
        '--sched', 'cosine', '--epochs', str(args.epochs), '--warmup-epochs', '0', '--cooldown-epochs', '0',
        '-b', str(args.batch_size), '--workers', str(args.workers), '--device', args.device,
        '--log-interval', '100', '--checkpoint-hist', '1',
    ]
    if args.amp:
        train_args += ['--amp']
    if args.channels_last:
        train_args += ['--channels-last']
    return train_args


def variant_model(args, variant: str) -> tuple:
    """(model name, --model-kwargs) of a variant."""
    n = str(args.num_splits)
    return {
        'baseline': (args.model, []),
        'ssm': (f'{args.model}_ssm', [f'num_splits={n}']),
        'ssm_norm_all': (f'{args.model}_ssm', [f'num_splits={n}', 'norm_all=True']),
        '2fc': (f'{args.model}_ssm', ['num_splits=2', 'split=False']),
        '3fc': (f'{args.model}_ssm', ['num_splits=3', 'split=False']),
        'ssm_individual': (f'{args.model}_ssm', [f'num_splits={n}']),
    }[variant]


def train_arguments(args, variant: str, seed: int, data_dir: str) -> List[str]:
    model, kwargs = variant_model(args, variant)
    train_args = ['--model', model, '--seed', str(seed), *recipe(args, data_dir),
                  '--experiment', f'{variant}-seed{seed}']
    if kwargs:
        train_args += ['--model-kwargs', *kwargs]
    return train_args + args.train_args


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
            data = f.read(num_train * item_size)
        with open(os.path.join(dst, name + '.tmp'), 'wb') as f:
            f.write(bytes(head) + data)
        os.replace(os.path.join(dst, name + '.tmp'), os.path.join(dst, name))
    for name in ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'):
        shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
    return target


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
    """The record of a run trained with exactly these training arguments for this many epochs, else None."""
    record = os.path.join(run_dir, RUN_RECORD)
    if not os.path.isfile(record) or _epochs_done(run_dir) != epochs:
        return None
    with open(record) as f:
        result = json.load(f)
    return result if result.get('train_args') == train_args else None


def _log(message: str):
    with _PRINT_LOCK:
        print(message, flush=True)


def train(args, variant: str, seed: int, data_dir: str, runs: str) -> Dict[str, float]:
    """Train one variant with one seed unless a run with the same training arguments is there; its record
    (`train_args`, wall time `seconds` and the load average `load` at its end)."""
    name = f'{variant}-seed{seed}'
    run_dir = os.path.join(runs, name)
    train_args = train_arguments(args, variant, seed, data_dir)
    found = finished_run(run_dir, train_args, args.epochs)
    if found is not None:
        _log(f'{name}: finished run with the same training arguments found, kept')
        return found
    if os.path.isdir(run_dir):
        # unfinished, or trained otherwise: train.py would start a new folder beside it
        shutil.rmtree(run_dir)
    if variant == 'ssm_individual':
        cmd = [sys.executable, INDIVIDUAL_SCRIPT, *train_args, '--output', runs]
    else:
        cmd = [sys.executable, '-m', 'timm_ssm.launch', 'train.py', *train_args, '--output', runs]
    _log(f'{name}: training ({" ".join(cmd[1:3])} ...)')
    start = time.perf_counter()
    with open(os.path.join(runs, f'{name}.log'), 'w') as log:
        code = subprocess.call(cmd, env=_env(args), stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if code != 0 or _epochs_done(run_dir) != args.epochs:
        raise RuntimeError(f'{name}: training failed (exit code {code}), see {os.path.join(runs, name + ".log")}')
    # the load average: what others put on shared cores too
    result = dict(train_args=train_args, seconds=round(seconds, 1), load=os.getloadavg()[0])
    with open(os.path.join(run_dir, RUN_RECORD), 'w') as f:
        json.dump(result, f)
    _log(f'{name}: {seconds / 60:.1f} min')
    return result


def evaluate(args, variant: str, checkpoints: List[str], data_dir: str, out: str) -> dict:
    """One timm_ssm.evaluate pass over the test split with every seed's model (and so their ensemble)."""
    model, _ = variant_model(args, variant)
    json_path = os.path.join(out, f'eval_{variant}.json')
    # input size, normalization, crop, interpolation and model kwargs: from the checkpoints' train.py arguments
    cmd = [sys.executable, '-m', 'timm_ssm.evaluate', '--model', model, '--checkpoint', *checkpoints,
           '--data-dir', data_dir, '--dataset', 'torch/fashion_mnist', '--split', 'test', '-b', '250',
           '--workers', str(args.workers), '--device', args.device, '--no-progress',
           '--json', json_path, '--csv', os.path.join(out, f'eval_{variant}.csv')]
    if args.amp:
        cmd += ['--amp']
    if args.channels_last:
        cmd += ['--channels-last']
    _log(f'{variant}: evaluating {len(checkpoints)} checkpoint(s)')
    with open(os.path.join(out, f'eval_{variant}.log'), 'w') as log:
        code = subprocess.call(cmd, env=_env(args), stdout=log, stderr=subprocess.STDOUT)
    if code != 0:
        raise RuntimeError(f'{variant}: evaluation failed (exit code {code}), see '
                           f'{os.path.join(out, f"eval_{variant}.log")}')
    with open(json_path) as f:
        return json.load(f)


def sign_test(diffs: Sequence[float]) -> float:
    """Exact two-sided sign test of a zero median difference (zero differences dropped)."""
    pos, neg = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    n = pos + neg
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(pos, neg) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def _t_sf(t: float, df: int, steps: int = 20000) -> float:
    """P(T > t) of Student's t with df degrees of freedom, t >= 0 (Simpson's rule on the density)."""
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def density(x):
        return math.exp(log_c - (df + 1) / 2 * math.log1p(x * x / df))

    h = t / steps
    area = density(0) + density(t) + sum((4 if i % 2 else 2) * density(i * h) for i in range(1, steps))
    return max(0.0, 0.5 - area * h / 3)


def paired_t(diffs: Sequence[float]) -> tuple:
    """(t statistic, degrees of freedom, two-sided p) of the paired t-test of a zero mean difference."""
    n = len(diffs)
    if n < 2:
        return float('nan'), 0, float('nan')
    sd = statistics.stdev(diffs)
    mean = statistics.mean(diffs)
    if sd == 0:
        return (math.copysign(math.inf, mean) if mean else float('nan')), n - 1, (0.0 if mean else 1.0)
    t = mean / (sd / math.sqrt(n))
    return t, n - 1, 2 * _t_sf(abs(t), n - 1)


def _plural(count: int, word: str, plural: Optional[str] = None) -> str:
    return f'{count} {word if count == 1 else plural or word + "s"}'


def _p(p: float) -> str:
    return '< 0.001' if p < 0.0005 else f'{p:.3f}'


def _stats(values: List[float]) -> str:
    if len(values) == 1:
        return f'{values[0]:.2f}'
    return f'{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}'


def _per_seed(values: List[float], signed: bool = False) -> str:
    return ', '.join(f'{v:+.2f}' if signed else f'{v:.2f}' for v in values)


def _label(args, variant: str) -> str:
    model, kwargs = variant_model(args, variant)
    text = f'`{model}`' + (f' `{" ".join(kwargs)}`' if kwargs else '')
    return text + (' (individual loss, not train.py)' if variant == 'ssm_individual' else '')


def comparisons(variants: Sequence[str]) -> List[tuple]:
    """(variant, reference) pairs of the paired table: every variant against the baseline, SSM against Table 4's
    controls, and Algorithm 1's BatchNorm and Table 2's individual scheme against SSM."""
    pairs = [(v, 'baseline') for v in variants if v != 'baseline' and 'baseline' in variants]
    pairs += [('ssm', c) for c in ('2fc', '3fc') if 'ssm' in variants and c in variants]
    pairs += [(v, 'ssm') for v in ('ssm_norm_all', 'ssm_individual') if 'ssm' in variants and v in variants]
    return pairs


def markdown(args, results: Dict[str, dict], seeds: Dict[str, List[int]], timings: Dict[str, List[dict]],
             wall_seconds: float, hardware: str, complete: bool) -> str:
    variants = [v for v in args.variants if v in results]
    top1 = {v: dict(zip(seeds[v], [m['top1'] for m in results[v]['models']])) for v in variants}
    num_samples = results[variants[0]]['data']['num_samples']
    lines = [
        f'Fashion-MNIST test split ({num_samples:,} images). Every variant of `{args.model}` trained with the same '
        f'recipe and seeds: {_plural(args.epochs, "epoch")}, SGD momentum 0.9, lr {args.lr}, cosine schedule, '
        f'weight decay {args.weight_decay}, batch {args.batch_size}, {args.img_size} px, random-resized crop '
        f'(scale 0.75-1) and flip{", AMP" if args.amp else ""}{", channels_last" if args.channels_last else ""}; no '
        f'per-epoch evaluation, the last '
        f'checkpoint is evaluated by `python -m timm_ssm.evaluate`. Top-1 in %, mean ± sample standard deviation '
        f'over seeds.',
        '',
    ]
    if not complete:
        lines += ['**Partial report: only the runs that finished are included (seeds per variant in the table).**',
                  '']
    lines += [
        '| variant | model | seeds | top-1 | top-1 per seed | top-5 | oracle (any FC right) | ensemble of seeds '
        'top-1 | parameters | multiply-adds / image | head multiply-adds | train min / run |',
        '|---|---|---|---|---|---|---|---|---|---|---|---|',
    ]
    for v in variants:
        r = results[v]
        m0 = r['models'][0]
        oracle = [m['oracle']['top1'] for m in r['models'] if m.get('oracle')]
        ens = f'{r["ensemble"]["top1"]:.2f}' if r.get('ensemble') else '–'
        lines.append(
            f'| {v} | {_label(args, v)} | {", ".join(map(str, seeds[v]))} | {_stats(list(top1[v].values()))} | '
            f'{_per_seed(list(top1[v].values()))} | {_stats([m["top5"] for m in r["models"]])} | '
            f'{_stats(oracle) if oracle else "–"} | {ens} | {m0["param_count"]:,} | {m0["macs"]:,} | '
            f'{m0["head_macs"]:,} | {_stats([t["seconds"] / 60 for t in timings[v]])} |')

    split_variants = [v for v in variants if results[v]['models'][0].get('heads')]
    if split_variants:
        width = max(len(results[v]['models'][0]['heads']) for v in split_variants)
        lines += [
            '',
            'Each sub-classifier alone (top-1 mean ± sd; FCj of SSM sees channels 0..width-1, of 2FC/3FC all C):',
            '',
            '| variant | ' + ' | '.join(f'FC{j + 1}' for j in range(width)) + ' | averaged output |',
            '|---|' + '---|' * (width + 1),
        ]
        for v in split_variants:
            heads = results[v]['models'][0]['heads']
            cells = [f'{_stats([m["heads"][j]["top1"] for m in results[v]["models"]])} (w {heads[j]["width"]})'
                     for j in range(len(heads))]
            cells += ['–'] * (width - len(heads))
            lines.append(f'| {v} | ' + ' | '.join(cells) + f' | {_stats(list(top1[v].values()))} |')

    pairs = [(a, b) for a, b in comparisons(variants)]
    findings = []
    if pairs:
        lines += [
            '',
            'Paired differences of top-1 (percentage points), seed by seed (seed i of one variant against seed i '
            'of the other; same data order and initialization seed):',
            '',
            '| difference | seeds | per seed | mean ± sd | wins / losses | sign test p (two-sided, exact) | '
            'paired t (df) | paired t p (two-sided) |',
            '|---|---|---|---|---|---|---|---|',
        ]
        for a, b in pairs:
            common = [s for s in seeds[a] if s in top1[b]]
            if not common:
                continue
            diffs = [top1[a][s] - top1[b][s] for s in common]
            t, df, p_t = paired_t(diffs)
            p_sign = sign_test(diffs)
            wins, losses = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
            mean_sd = f'{statistics.mean(diffs):+.2f}' + (f' ± {statistics.stdev(diffs):.2f}' if len(diffs) > 1
                                                         else '')
            lines.append(
                f'| {a} − {b} | {", ".join(map(str, common))} | {_per_seed(diffs, signed=True)} | {mean_sd} | '
                f'{wins} / {losses} | {p_sign:.3f} | {t:+.2f} ({df}) | {_p(p_t)} |')
            verdict = 'beyond seed noise (paired t p < 0.05)' if p_t < 0.05 else 'within seed noise'
            findings.append(f'- {a} − {b}: {statistics.mean(diffs):+.2f} points over {_plural(len(diffs), "seed")} '
                            f'({_plural(wins, "win")}, {_plural(losses, "loss", "losses")}), {verdict}.')
        n_min = min(len(seeds[v]) for v in variants)
        floor = sign_test([1.0] * n_min)
        if floor >= 0.05:
            findings.append(f'- With {_plural(n_min, "seed")} the exact two-sided sign test cannot go below '
                            f'p = {floor:.3f}, so only the paired t-test (which assumes normal seed-to-seed '
                            f'differences) can reach 5 %.')
        findings.append(
            f'- This is one data set (Fashion-MNIST, 10 classes, 28x28 grey images), one trunk (`{args.model}`), a '
            f'short schedule ({_plural(args.epochs, "epoch")}) and no tuning per variant; it does not test the '
            f'paper\'s ImageNet or CIFAR numbers.')
        lines += ['', 'What it shows:', '', *findings]
    lines += ['', f'Wall time of this invocation {wall_seconds / 60:.0f} min (training the runs not kept from an '
                  f'earlier invocation, and evaluation) on {hardware}.']
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
    start = time.perf_counter()
    args = resolve_defaults(parser.parse_args(argv))
    data_dir = args.data_dir or str(prepare_fashion_mnist())
    out = os.path.abspath(args.out)
    if args.train_subset:
        data_dir = subset_fashion_mnist(data_dir, os.path.join(out, f'data-train{args.train_subset}'),
                                        args.train_subset)
    runs = os.path.join(out, 'runs')
    os.makedirs(runs, exist_ok=True)
    # seeds outer: an interrupted benchmark leaves whole seeds of every train.py variant; the loop of
    # ssm_individual last
    tasks = [(v, s) for s in args.seeds for v in args.variants if v != 'ssm_individual']
    tasks += [('ssm_individual', s) for s in args.seeds if 'ssm_individual' in args.variants]
    records = {}
    if args.report:
        for v, s in tasks:
            found = finished_run(os.path.join(runs, f'{v}-seed{s}'), train_arguments(args, v, s, data_dir),
                                 args.epochs)
            if found is not None:
                records[v, s] = found
    else:
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            futures = {task: pool.submit(train, args, *task, data_dir, runs) for task in tasks}
            failed = []
            for task, future in futures.items():
                try:
                    records[task] = future.result()
                except RuntimeError as e:
                    failed.append(str(e))
        if failed:
            sys.exit('\n'.join(failed) + '\nFinished runs are kept; run the same command again to continue, or '
                                         'add --report to report the finished runs.')
    seeds = {v: [s for s in args.seeds if (v, s) in records] for v in args.variants}
    seeds = {v: s for v, s in seeds.items() if s}
    if not seeds:
        sys.exit(f'No finished runs in {runs}.')
    timings = {v: [records[v, s] for s in seeds[v]] for v in seeds}
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {v: pool.submit(
            evaluate, args, v, [os.path.join(runs, f'{v}-seed{s}', 'last.pth.tar') for s in seeds[v]], data_dir,
            out) for v in seeds}
        results = {v: f.result() for v, f in futures.items()}
    hardware = _hardware(args.device)
    if not args.device.startswith('cuda'):
        loads = [t['load'] for v in timings for t in timings[v]]
        hardware += (f', OMP_NUM_THREADS={args.threads}, {args.jobs} runs at a time; 1-minute load average '
                     f'{min(loads):.1f}-{max(loads):.1f} at the end of the training runs')
    complete = len(records) == len(tasks)
    table = markdown(args, results, seeds, timings, time.perf_counter() - start, hardware, complete)
    with open(os.path.join(out, 'results.md'), 'w') as f:
        f.write(table + '\n')
    print(table)


if __name__ == '__main__':
    main()
