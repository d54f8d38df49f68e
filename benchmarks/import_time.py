""" What `import timm_ssm` costs on top of `import timm`

Fresh interpreters alternate between `import timm` and `import timm, timm_ssm`; the medians and their
difference are printed. Target: at most 0.3 s more than `import timm`.

    python benchmarks/import_time.py --runs 15
"""
import argparse
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from progress import Progress  # noqa: E402  (benchmarks/progress.py)

parser = argparse.ArgumentParser(description='import time of timm_ssm over timm')
parser.add_argument('--runs', type=int, default=11)

_TIMED = 'import time; t = time.perf_counter(); {}; print(time.perf_counter() - t)'


def _time(statement: str) -> float:
    out = subprocess.run(
        [sys.executable, '-c', _TIMED.format(statement)],
        check=True, capture_output=True, text=True, env=dict(os.environ, PYTHONDONTWRITEBYTECODE='1'),
    )
    return float(out.stdout.strip().splitlines()[-1])


def main():
    args = parser.parse_args()
    progress = Progress(1 + 3 * args.runs, 'interpreters')  # on stderr
    _time('import timm, timm_ssm')  # warm the file system cache
    progress.step('warm-up')
    times = {'import timm': [], 'import timm, timm_ssm': []}
    for _ in range(args.runs):
        for statement in times:
            times[statement].append(_time(statement))
            progress.step(statement)
    base, ssm = (statistics.median(v) for v in times.values())
    # the registration alone, in one interpreter: what timm_ssm adds once timm is imported
    added = []
    for _ in range(args.runs):
        added.append(_time('import timm; t0 = time.perf_counter(); import timm_ssm; t = t0'))
        progress.step('import timm_ssm after timm')
    print(f'{args.runs} runs each, medians')
    print(f'import timm            {base:.3f} s')
    print(f'import timm, timm_ssm  {ssm:.3f} s  (+{ssm - base:.3f} s, ratio {ssm / base:.3f})')
    print(f'import timm_ssm after timm: {statistics.median(added):.3f} s (target: <= 0.300 s)')


if __name__ == '__main__':
    main()
