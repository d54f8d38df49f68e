""" Throughput of `python -m timm_ssm.evaluate` against timm's `validate.py` on the same model and data

Both run as the user runs them, as subprocesses: `python -m timm_ssm.launch validate.py ...` (timm's script,
unchanged) and `python -m timm_ssm.evaluate ...`, on the same checkpoint (a randomly initialized SSM model written
in train.py's format; weights do not change the speed), the same data and the same loader options. They alternate
within every round, in swapped order every other round, so load from other processes hits both alike. Printed:
per round, the images/s of each evaluation loop (validate.py's own `rate_avg` of its last log line, the
evaluator's `throughput` from its JSON; both time the loop from its first batch to its last) and the wall time of
each command, and its CPU time (user + system, data loading workers included: less sensitive than wall time to
other processes on a shared machine); then the median ratios.

    python benchmarks/evaluate_throughput.py                       # test_resnet_ssm, Fashion-MNIST test images
    python benchmarks/evaluate_throughput.py --model resnet18_ssm --img-size 64 --num-classes 1000 --rounds 5

Needs timm's validate.py: TIMM_ROOT=/path/to/pytorch-image-models (or the cached copy `timm_ssm.launch` finds).
Target: evaluate at >= 0.95 of validate.py's images/s.
"""
import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from progress import Progress  # noqa: E402  (benchmarks/progress.py)

import timm
import timm_ssm  # noqa: F401  (registers the *_ssm models)
from timm_ssm.fashion_mnist import MEAN, STD, prepare_fashion_mnist_folder

parser = argparse.ArgumentParser(description='evaluate vs validate.py throughput, side by side')
parser.add_argument('--model', default='test_resnet_ssm', help='SSM model to evaluate (default: test_resnet_ssm)')
parser.add_argument('--num-classes', type=int, default=10,
                    help='classes of the model (default: 10; more classes cost the evaluator more per image)')
parser.add_argument('--img-size', type=int, default=28, help='input size (default: 28, Fashion-MNIST\'s own)')
parser.add_argument('--data-dir', default=None,
                    help='image folder (default: the Fashion-MNIST image folder prepared by timm_ssm)')
parser.add_argument('--dataset', default='', help='timm data set (default: an image folder)')
parser.add_argument('--split', default='test', help='split (default: test, 10000 images)')
parser.add_argument('--in-chans', type=int, default=1, help='image channels (default: 1)')
parser.add_argument('-b', '--batch-size', type=int, default=250,
                    help='batch size (default: 250, which divides 10000, so that validate.py\'s last logged rate is '
                         'its average rate)')
parser.add_argument('-j', '--workers', type=int, default=2, help='data loading workers (default: 2)')
parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
parser.add_argument('--rounds', type=int, default=5, help='rounds, each runs both commands once (default: 5)')
parser.add_argument('--threads', type=int, default=None,
                    help='OMP_NUM_THREADS of both commands (default: unset, torch\'s own choice)')


def _run(cmd, env):
    """Run a command; its output, wall time and CPU time (user + system, its data loading workers included)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f'{" ".join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}')
    cpu = after.ru_utime - usage.ru_utime + after.ru_stime - usage.ru_stime
    return proc, wall, cpu


def _measure(args, data_dir: str, tmp: str):
    """Write the checkpoint into tmp, run the rounds and print the results."""
    checkpoint = os.path.join(tmp, 'model.pth.tar')
    model = timm.create_model(args.model, num_classes=args.num_classes, in_chans=args.in_chans)
    train_args = argparse.Namespace(model=args.model, num_classes=args.num_classes, in_chans=args.in_chans,
                                    model_kwargs={})
    torch.save({'state_dict': model.state_dict(), 'args': train_args}, checkpoint)

    common = [
        '--model', args.model, '--checkpoint', checkpoint, '--num-classes', str(args.num_classes),
        '--in-chans', str(args.in_chans), '--img-size', str(args.img_size),
        '--mean', *map(str, MEAN), '--std', *map(str, STD), '--crop-pct', '1.0', '--interpolation', 'bilinear',
        '--data-dir', data_dir, *(['--dataset', args.dataset] if args.dataset else []), '--split', args.split,
        '-b', str(args.batch_size), '-j', str(args.workers), '--device', args.device,
    ]
    commands = {
        'validate.py': [sys.executable, '-m', 'timm_ssm.launch', 'validate.py', *common, '--log-freq', '1'],
        'evaluate': [sys.executable, '-m', 'timm_ssm.evaluate', *common, '--no-progress', '--overwrite',
                     '--json', os.path.join(tmp, 'eval.json')],
    }
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(timm_ssm.__file__)))] +
        ([os.environ['PYTHONPATH']] if os.environ.get('PYTHONPATH') else [])))
    if args.threads:
        env['OMP_NUM_THREADS'] = str(args.threads)

    rates = {name: [] for name in commands}
    walls = {name: [] for name in commands}
    cpus = {name: [] for name in commands}
    order = list(commands)
    print(f'{args.model} ({args.num_classes} classes), {args.dataset or data_dir} {args.split} at {args.img_size} px, '
          f'batch {args.batch_size}, {args.workers} workers, {args.device}, torch {torch.__version__}, '
          f'{os.cpu_count()} CPUs, OMP_NUM_THREADS={env.get("OMP_NUM_THREADS", "unset")}')
    progress = Progress(args.rounds * len(order), 'commands', every=0.)  # on stderr
    for r in range(args.rounds):
        for name in (order if r % 2 == 0 else order[::-1]):
            proc, wall, cpu = _run(commands[name], env)
            progress.step(f'round {r + 1}, {name}')
            if name == 'validate.py':
                lines = re.findall(r'Test: \[\s*\d+/\d+\].*?,\s*([\d.]+)/s\)', proc.stdout + proc.stderr)
                if not lines:
                    sys.exit(f'No rate in validate.py\'s output:\n{proc.stderr[-2000:]}')
                rate = float(lines[-1])
            else:
                with open(os.path.join(tmp, 'eval.json')) as f:
                    rate = json.load(f)['throughput']
            rates[name].append(rate)
            walls[name].append(wall)
            cpus[name].append(cpu)
        print(f'round {r + 1}: ' + '   '.join(
            f'{n}: {rates[n][-1]:7.1f} images/s, {walls[n][-1]:6.1f} s wall, {cpus[n][-1]:6.1f} s CPU'
            for n in commands), flush=True)

    ratio = [e / v for e, v in zip(rates['evaluate'], rates['validate.py'])]
    wall_ratio = [v / e for e, v in zip(walls['evaluate'], walls['validate.py'])]
    print(f'median images/s: validate.py {statistics.median(rates["validate.py"]):.1f}, '
          f'evaluate {statistics.median(rates["evaluate"]):.1f}')
    print(f'throughput ratio evaluate / validate.py: median {statistics.median(ratio):.3f} '
          f'(per round {", ".join(f"{x:.3f}" for x in ratio)})')
    cpu_ratio = [v / e for e, v in zip(cpus['evaluate'], cpus['validate.py'])]
    print(f'whole command, validate.py / evaluate (above 1: evaluate is faster): wall time median '
          f'{statistics.median(wall_ratio):.3f}, CPU time median {statistics.median(cpu_ratio):.3f}')


def main():
    args = parser.parse_args()
    data_dir = args.data_dir or str(prepare_fashion_mnist_folder())
    with tempfile.TemporaryDirectory(prefix='eval_throughput_') as tmp:
        _measure(args, data_dir, tmp)


if __name__ == '__main__':
    main()
