""" Conversion check over many timm architectures: `<arch>_ssm` from `<arch>`'s weights gives `<arch>`'s logits

For each architecture (up to --max-params parameters), random weights of the plain model go through timm's own
pretrained loader (a `state_dict` pretrained source) into `<arch>_ssm`, and the two models' eval-mode logits are
compared. Prints one line per architecture that does not match or fails, then a summary.

    python benchmarks/conversion_sweep.py --max-params 10e6 --filter 'resnet*' --filter 'convnext*'
"""
import argparse
import fnmatch
import logging
import time
import warnings

import torch

import timm
import timm_ssm

parser = argparse.ArgumentParser(description='check the conversion of timm weights to <arch>_ssm')
parser.add_argument('--filter', action='append', default=None, help='architecture wildcard(s), default all')
parser.add_argument('--max-params', type=float, default=10e6)
parser.add_argument('--max-size', type=int, default=256, help='skip fixed input sizes above this')
parser.add_argument('--img-size', type=int, default=128, help='input size for models without a fixed size')
parser.add_argument('--tol', type=float, default=1e-4, help='relative tolerance on the logits')


def check(arch: str, img_size: int, max_size: int, tol: float) -> str:
    torch.manual_seed(0)
    base = timm.create_model(arch).eval()
    cfg = base.pretrained_cfg
    size = cfg['input_size'][1:] if cfg.get('fixed_input_size') else (img_size, img_size)
    if max(size) > max_size:
        return 'skip: input size'
    with torch.no_grad():
        for p in base.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # away from the init, so a missed load shows
    model = timm.create_model(
        arch + '_ssm', pretrained=True, pretrained_cfg_overlay=dict(state_dict=base.state_dict())).eval()
    x = torch.randn(2, cfg['input_size'][0], *size)
    with torch.no_grad():
        expected, out = base(x), model(x)
    err = ((out - expected).abs().max() / expected.abs().max().clamp_min(1e-6)).item()
    return 'ok' if err <= tol else f'mismatch: relative error {err:.2e}'


def main():
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    warnings.filterwarnings('ignore')
    names = [n[:-len('_ssm')] for n in timm.list_models('*_ssm')]
    if args.filter:
        names = [n for n in names if any(fnmatch.fnmatch(n, f) for f in args.filter)]
    results = {}
    start = time.time()
    for arch in names:
        with torch.device('meta'):
            try:
                params = sum(p.numel() for p in timm.create_model(arch).parameters())
            except Exception as e:  # noqa: BLE001 (report, do not stop the sweep)
                results[arch] = f'error: {type(e).__name__}: {str(e)[:120]}'
                continue
        if params > args.max_params:
            continue
        try:
            results[arch] = check(arch, args.img_size, args.max_size, args.tol)
        except Exception as e:  # noqa: BLE001
            results[arch] = f'error: {type(e).__name__}: {str(e)[:200]}'
        if results[arch] != 'ok' and not results[arch].startswith('skip'):
            print(f'{arch}: {results[arch]}', flush=True)
    ok = sum(r == 'ok' for r in results.values())
    checked = sum(not r.startswith('skip') for r in results.values())
    print(f'{ok}/{checked} architectures give the original logits '
          f'({len(names)} matched the filter, <= {args.max_params / 1e6:.0f} M params, {time.time() - start:.0f} s)')


if __name__ == '__main__':
    main()
