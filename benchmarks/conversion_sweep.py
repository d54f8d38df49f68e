""" Conversion check over many timm architectures: `<arch>_ssm` from `<arch>`'s weights gives `<arch>`'s logits

For each architecture (up to --max-params parameters), random weights of the plain model go through timm's own
pretrained loader (a `state_dict` pretrained source) into the plain model and into `<arch>_ssm`, and the two
models' eval-mode logits are compared. Prints one line per architecture that does not match or fails, then a summary.

    python benchmarks/conversion_sweep.py --max-params 10e6 --filter 'resnet*' --filter 'convnext*'
"""
import argparse
import fnmatch
import logging
import os
import sys
import time
import warnings

import torch

import timm
import timm_ssm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from progress import Progress  # noqa: E402  (benchmarks/progress.py)

parser = argparse.ArgumentParser(description='check the conversion of timm weights to <arch>_ssm')
parser.add_argument('--filter', action='append', default=None, help='architecture wildcard(s), default all')
parser.add_argument('--max-params', type=float, default=10e6)
parser.add_argument('--max-size', type=int, default=256, help='skip fixed input sizes above this')
parser.add_argument('--img-size', type=int, default=128, help='input size for models without a fixed size')
parser.add_argument('--tol', type=float, default=1e-4, help='relative tolerance on the logits')


class _Warned(logging.Handler):
    """Catches timm_ssm's warning that a classifier cannot start the head."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def check(arch: str, img_size: int, max_size: int, tol: float) -> str:
    torch.manual_seed(0)
    source = timm.create_model(arch)
    cfg = source.pretrained_cfg
    size = cfg['input_size'][1:] if cfg.get('fixed_input_size') else (img_size, img_size)
    if max(size) > max_size:
        return 'skip: input size'
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # away from the init, so a missed load shows
    weights = dict(state_dict=source.state_dict())
    # the plain model through the same loader: some architectures build differently when pretrained
    base = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=weights).eval()
    x = torch.randn(2, cfg['input_size'][0], *size)
    with torch.no_grad():
        try:
            expected = base(x)
        except Exception as e:  # noqa: BLE001 (the plain model itself does not take this input)
            return f'skip: {arch} fails on {tuple(x.shape)}: {type(e).__name__}'
    warned = _Warned()
    logger = logging.getLogger('timm_ssm')
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    logger.addHandler(warned)
    try:
        model = timm.create_model(
            arch + '_ssm', pretrained=True, pretrained_cfg_overlay=weights).eval()
    finally:
        logger.removeHandler(warned)
    if warned.messages:
        return 'warned: ' + warned.messages[0].split('(', 1)[-1].split(')')[0]
    with torch.no_grad():
        out = model(x)
    err = ((out - expected).abs().max() / expected.abs().max().clamp_min(1e-6)).item()
    return 'ok' if err <= tol else f'mismatch: relative error {err:.2e}'


def _names(results, prefix):
    names = [a for a, r in results.items() if r.startswith(prefix)]
    return f' ({", ".join(names)})' if names else ''


def main():
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    warnings.filterwarnings('ignore')
    names = [n[:-len('_ssm')] for n in timm.list_models('*_ssm')]
    if args.filter:
        names = [n for n in names if any(fnmatch.fnmatch(n, f) for f in args.filter)]
    results = {}
    start = time.time()
    progress = Progress(len(names), 'architectures', every=30.)  # on stderr
    for arch in names:
        progress.step(arch)
        with torch.device('meta'):
            try:
                params = sum(p.numel() for p in timm.create_model(arch).parameters())
            except Exception as e:  # noqa: BLE001 (report, do not stop the sweep)
                results[arch] = f'error: {type(e).__name__}: {str(e)[:120]}'
                print(f'{arch}: {results[arch]}', flush=True)
                continue
        if params > args.max_params:
            continue
        try:
            results[arch] = check(arch, args.img_size, args.max_size, args.tol)
        except Exception as e:  # noqa: BLE001
            results[arch] = f'error: {type(e).__name__}: {str(e)[:200]}'
        if results[arch] != 'ok' and not results[arch].startswith('skip'):
            print(f'{arch}: {results[arch]}', flush=True)
    count = lambda prefix: sum(r.startswith(prefix) for r in results.values())  # noqa: E731
    checked = len(results) - count('skip')
    print(f'{count("ok")}/{checked} architectures give the original logits, {count("warned")} warn that their '
          f'classifier cannot start the head (the head starts fresh), {count("mismatch")} mismatch silently, '
          f'{count("error")} fail{_names(results, "error")} ({len(names)} matched the filter, '
          f'<= {args.max_params / 1e6:.0f} M params, '
          f'{time.time() - start:.0f} s)')


if __name__ == '__main__':
    main()
