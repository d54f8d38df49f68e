""" Throughput of an SSM model against its baseline, and of the SSM head against the plain per-head reference

Measured side by side in one run: the two models (or heads) alternate within every round, so load from
other processes hits both alike; the printed ratio is the median of the per-round ratios, with their range.

    python benchmarks/throughput.py                              # resnet50 vs resnet50_ssm, CPU, 224 px
    python benchmarks/throughput.py --device cuda --amp --channels-last -b 256
    python benchmarks/throughput.py --compile                    # torch.compile (inductor) both models

Target: the SSM model at >= 0.98 of the baseline's throughput, inference and training step.
"""
import argparse
import contextlib
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import timm
import timm_ssm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'tests'))
from reference import ReferenceSSM  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from progress import Progress  # noqa: E402  (benchmarks/progress.py)

parser = argparse.ArgumentParser(description='SSM vs baseline throughput')
parser.add_argument('--model', default='resnet50', help='baseline timm model; the SSM twin is <model>_ssm')
parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
parser.add_argument('-b', '--batch-size', type=int, default=None, help='default 256 on GPU, 16 on CPU')
parser.add_argument('--img-size', type=int, default=224)
parser.add_argument('--rounds', type=int, default=7)
parser.add_argument('--steps', type=int, default=None, help='steps per round, default 20 on GPU, 2 on CPU')
parser.add_argument('--amp', action='store_true', help='bfloat16 autocast')
parser.add_argument('--channels-last', action='store_true')
parser.add_argument('--compile', action='store_true', help='torch.compile both models')
parser.add_argument('--head-batch-size', type=int, default=256)


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _timed(fn, steps, device):
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return time.perf_counter() - start


def compare(name_a, step_a, name_b, step_b, samples, steps, rounds, device, progress=None):
    """Samples/s of two step functions alternating within each round: medians, and the median and range of the
    per-round ratios b / a (a round's two timings share the machine's state, so their ratio varies least)."""
    for fn in (step_a, step_b):  # warm-up (and compilation)
        _timed(fn, 2, device)
    times = {name_a: [], name_b: []}
    for r in range(rounds):
        order = [(name_a, step_a), (name_b, step_b)]
        for name, fn in order if r % 2 == 0 else reversed(order):
            times[name].append(_timed(fn, steps, device))
        if progress is not None:
            progress.step(f'{name_a} vs {name_b}, round {r + 1}')
    ratios = [t_a / t_b for t_a, t_b in zip(times[name_a], times[name_b])]
    rate = {k: samples * steps / statistics.median(v) for k, v in times.items()}
    return rate[name_a], rate[name_b], statistics.median(ratios), min(ratios), max(ratios)


def main():
    args = parser.parse_args()
    device = torch.device(args.device)
    gpu = device.type == 'cuda'
    batch_size = args.batch_size or (256 if gpu else 16)
    steps = args.steps or (20 if gpu else 2)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.amp else contextlib.nullcontext
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format

    print(f'torch {torch.__version__}, timm {timm.__version__}, timm_ssm {timm_ssm.__version__}, device {device}'
          f' ({torch.cuda.get_device_name(device) if gpu else f"{torch.get_num_threads()} threads"}), '
          f'batch {batch_size}, {args.img_size} px, amp bf16 {args.amp}, channels_last {args.channels_last}, '
          f'compile {args.compile}, {args.rounds} rounds x {steps} steps')

    torch.manual_seed(0)
    x = torch.randn(batch_size, 3, args.img_size, args.img_size, device=device).to(memory_format=memory_format)
    y = torch.randint(0, 1000, (batch_size,), device=device)
    rows = []
    progress = Progress(3 * (args.rounds + 1), 'rounds')  # warm-up and rounds of 3 comparisons, on stderr
    for mode in ('inference', 'train step'):
        steps_fns = []
        for name in (args.model, args.model + '_ssm'):
            model = timm.create_model(name).to(device, memory_format=memory_format)
            if mode == 'inference':
                model.eval()
            optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
            run = torch.compile(model) if args.compile else model

            def step(run=run, optimizer=optimizer, train=mode != 'inference'):
                if train:
                    with autocast():
                        loss = F.cross_entropy(run(x), y)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                else:
                    with torch.inference_mode(), autocast():
                        run(x)
            steps_fns.append((name, step))
        progress.step(f'{mode}: models built')
        rows.append((mode, *compare(*steps_fns[0], *steps_fns[1], batch_size, steps, args.rounds, device, progress)))
        del steps_fns

    # the head alone on pooled features, against the plain per-head reference
    features = torch.randn(args.head_batch_size, 2048, device=device)
    target = torch.randint(0, 1000, (args.head_batch_size,), device=device)
    heads = [
        ('reference', ReferenceSSM(2048, 1000).to(device)),
        ('SplitShareHead', timm_ssm.SplitShareHead(2048, 1000).to(device)),
    ]
    head_fns = []
    for name, head in heads:
        def head_step(head=head):
            with autocast():
                loss = F.cross_entropy(head(features), target)
            loss.backward()
        head_fns.append((name, head_step))
    head_steps = steps * (50 if not gpu else 10)
    progress.step('heads built')
    rows.append(('head train step', *compare(*head_fns[0], *head_fns[1], args.head_batch_size, head_steps,
                                              args.rounds, device, progress)))

    print(f'| {"mode":<16} | {"baseline (img/s)":>18} | {"SSM (img/s)":>14} | {"ratio":>6} | {"round ratios":>13} |')
    print(f'|{"-" * 18}|{"-" * 20}:|{"-" * 15}:|{"-" * 7}:|{"-" * 15}:|')
    for mode, base, ssm, ratio, low, high in rows:
        print(f'| {mode:<16} | {base:18.1f} | {ssm:14.1f} | {ratio:6.3f} | {low:5.3f} - {high:5.3f} |')
    print('(head train step: baseline = the plain per-head reference, SSM = SplitShareHead; samples/s)')


if __name__ == '__main__':
    main()
