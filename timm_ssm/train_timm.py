""" Train with timm's own train.py: the engine behind `train_timm.sh`

    ./train_timm.sh [LAUNCH OPTIONS] [train.py ARGS...]
    python -m timm_ssm.train_timm [LAUNCH OPTIONS] [train.py ARGS...]

Runs timm's `train.py` unchanged, its arguments checked by its own parser, with the `<arch>_ssm` models registered: in
this process (`timm_ssm.launch`), or under torchrun for several processes or nodes; `-c NAME` also takes a shipped
recipe. With no data set, the default run: train.py with `configs/fashion_mnist.yaml` on the Fashion-MNIST image
folder, then `timm_ssm.evaluate` of the checkpoint chosen on the validation split, once, on the test split. A stop
signal ends train.py's epoch loop; the run says what it has and exits 128 + the signal's number.
"""
import argparse
import csv
import datetime
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import List, Optional

import torch
from timm.data import get_img_extensions
from timm.utils import FormatterNoInfo, get_outdir

from .launch import RunFolderBusy, run_train
from .process import Children, Stopped
from .runs import CHECKPOINT_NAMES, number_in
from .timm_source import find_timm_root, parse_train_args, train_parser

__all__ = ['main', 'resolve_config', 'config_names', 'CONFIG_DIR', 'DEFAULT_RECIPE']

PROG = os.environ.get('TIMM_SSM_PROG') or 'python -m timm_ssm.train_timm'  # train_timm.sh gives its own name
CONFIG_DIR = Path(__file__).resolve().parent / 'configs'
DEFAULT_RECIPE = CONFIG_DIR / 'fashion_mnist.yaml'
NODE_OPTIONS = ('nnodes', 'node_rank', 'master_addr', 'master_port', 'rdzv_backend', 'rdzv_endpoint', 'rdzv_id')


def config_names() -> List[str]:
    """The recipes shipped in the package, for `-c NAME`."""
    return sorted(p.stem for p in CONFIG_DIR.glob('*.yaml'))


launch_parser = argparse.ArgumentParser(
    prog=PROG, usage=f'{PROG} [LAUNCH OPTIONS] [train.py ARGS...]', add_help=False, allow_abbrev=False,
    formatter_class=argparse.RawDescriptionHelpFormatter,
    description='Runs timm\'s own train.py, unchanged, with timm-ssm\'s <arch>_ssm models registered.',
    epilog=f'Without a data set (no --data-dir, --dataset, DIR or -c config that names one) it trains a small SSM '
           f'model on Fashion-MNIST,\nevaluates it and prints where the results are: the default run.\n-c NAME takes a '
           f'recipe shipped in timm_ssm/configs ({", ".join(config_names())}) or a path.\n\n'
           f'timm\'s train.py wraps the model in DistributedDataParallel with device_ids, so several processes need '
           f'GPUs;\non CPU use one process.')
group = launch_parser.add_argument_group('Launch options (everything else goes to train.py as it is)')
group.add_argument('--timm-root', metavar='DIR', help='pytorch-image-models checkout holding train.py (default: '
                   '$TIMM_ROOT, else the source of the installed timm version, downloaded once into ~/.cache/timm_ssm)')
group.add_argument('--nproc', '--nproc-per-node', '--nproc_per_node', type=number_in(int, 1), metavar='N',
                   help='processes on this node (default: the visible GPUs, 1 without GPU or with --device cpu); '
                        'N > 1 starts torchrun')
for _name in NODE_OPTIONS:
    group.add_argument(*dict.fromkeys([f'--{_name.replace("_", "-")}', f'--{_name}']), dest=_name,
                       metavar=_name.split('_')[-1].upper(), help='for torchrun')
group.add_argument('--dry-run', action='store_true', help='print the command instead of running it; prepare no data')
group.add_argument('-h', '--help', action='store_true', help='this help, then train.py\'s')


def resolve_config(config: str) -> Path:
    """The file of a `-c` value: a file, else a shipped recipe (`resnet50_ssm`, `resnet50_ssm.yaml`, `configs/...`);
    else a ValueError with the names there are."""
    path = Path(config)
    shipped = CONFIG_DIR / f'{path.stem}.yaml'
    if path.is_file():
        return path
    if shipped.is_file() and path.suffix in ('', '.yaml') and path.parent.name in ('', 'configs'):
        return shipped
    raise ValueError(f'config file {config} does not exist, and it is none of the recipes shipped with timm-ssm '
                     f'(-c NAME: {", ".join(config_names())}).')


def _error(message) -> int:
    print(f'{PROG}: error: {message}', file=sys.stderr)
    return 2


def _command(opts: argparse.Namespace, train_py: Path, args: List[str]) -> List[str]:
    """The command that runs train.py: this launcher, under torchrun for several processes or nodes."""
    launch = ['-m', 'timm_ssm.launch', str(train_py), *args]
    if opts.nproc == 1 and not opts.multi_node:
        return [sys.executable, *launch]
    nodes = [f'--{k.replace("_", "-")}={getattr(opts, k)}' for k in NODE_OPTIONS if getattr(opts, k) is not None]
    return [sys.executable, '-m', 'torch.distributed.run', f'--nproc-per-node={opts.nproc}',
            *(nodes or ['--standalone']), *launch]


def _train(opts: argparse.Namespace, train_py: Path, args: List[str], children: Children) -> int:
    """Run train.py (in this process, or torchrun's children) and return its exit code; `Stopped` when a stop signal
    came, once train.py has ended its epoch loop."""
    if opts.nproc > 1 or opts.multi_node:
        return children.run(_command(opts, train_py, args))
    try:
        run_train(str(train_py), args)
        code = 0
    except RunFolderBusy as e:
        code = _error(e)
    except SystemExit as e:  # train.py's argparse, or a sys.exit of its own
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
    if children.stopped:
        raise Stopped(children.signum)
    return code


def main(argv: Optional[List[str]] = None) -> int:
    opts, args = launch_parser.parse_known_args(argv)
    opts.multi_node = any(getattr(opts, k) is not None for k in NODE_OPTIONS)
    log = logging.getLogger('timm_ssm')
    if not log.handlers:  # timm_ssm's notes; train.py sets up the root logger for its own
        log.addHandler(logging.StreamHandler())
        log.handlers[0].setFormatter(FormatterNoInfo())
        log.setLevel(logging.INFO)
        log.propagate = False
    if opts.help:
        print(launch_parser.format_help() + '\ntrain.py\'s options:', flush=True)
        try:
            train_parser(find_timm_root(opts.timm_root, download=False) / 'train.py')[1].print_help()
        except RuntimeError as e:
            print(f'(listed once timm\'s source is on this machine: the first run downloads it.) {e}')
        return 0
    if opts.timm_root is not None and not opts.timm_root.strip():
        return _error('--timm-root is empty: give the folder of a pytorch-image-models checkout, or leave the option '
                      'out to use TIMM_ROOT or the cached source.')
    try:
        train_py = find_timm_root(opts.timm_root) / 'train.py'
        config, rest = train_parser(train_py)[0].parse_known_args(args)
        if config.config:
            args = ['-c', str(resolve_config(config.config)), *rest]
        ns = parse_train_args(args, train_py, device=None)  # None: not given
        data_dir = ns.data or ns.data_dir
        default_run = not (data_dir or ns.dataset)
        if default_run and config.config:
            raise ValueError(f'no data set: neither the arguments nor {config.config} name one. Add --data-dir DIR (an '
                             f'image folder with train/ and validation/, or the root folder of --dataset NAME).')
        if default_run:
            ns = parse_train_args(['-c', str(DEFAULT_RECIPE), *args], train_py, device=None)
    except (RuntimeError, ValueError) as e:
        return _error(e)

    gpus = torch.cuda.device_count()
    device = ns.device or ('cpu' if default_run and not gpus else 'cuda')
    opts.nproc = opts.nproc or (1 if device.startswith('cpu') else max(gpus, 1))
    if (opts.nproc > 1 or opts.multi_node) and device.startswith('cpu'):
        return _error(f'{opts.nproc} processes on --device {device}: timm\'s train.py wraps the model in '
                      f'DistributedDataParallel with device_ids=[device], which works on GPUs only, so several '
                      f'processes need GPUs. Train on the CPU with one process (--nproc 1).')
    if device.startswith('cuda') and not gpus:
        print(f'{PROG}: no GPU is visible and train.py trains on --device {device}: add --device cpu to train on the '
              f'CPU.', file=sys.stderr)
    if default_run:
        try:
            args, run_dir, eval_args = _default_run(opts, ns, args, device)
        except (RuntimeError, OSError) as e:
            return _error(e)
    elif data_dir and '/' not in ns.dataset and not opts.dry_run and not any(  # stops at the first image
            p.suffix.lower() in get_img_extensions() for p in Path(data_dir).rglob('*')):
        why = 'it is empty' if os.path.isdir(data_dir) else 'it does not exist'
        return _error(f'--data-dir {data_dir} holds no images ({why}): give the folder that holds train/ and '
                      f'validation/, one sub-folder of images per class.')
    print('+ ' + shlex.join(_command(opts, train_py, args)), flush=True)
    if opts.dry_run:
        return 0
    with Children() as children:
        try:
            code = _train(opts, train_py, args, children)
            return _report(run_dir, ns, eval_args) if default_run and not code else code
        except Stopped as stop:
            if default_run:
                return _partial_report(run_dir, stop, eval_args)
            print(f'{PROG}: {stop}: train.py ended early; its checkpoints so far are kept.', file=sys.stderr)
            return stop.exit_code


def _default_run(opts: argparse.Namespace, ns: argparse.Namespace, args: List[str], device: str):
    """The default run's train.py arguments, run folder and evaluation arguments; its data prepared (not with
    --dry-run), or a RuntimeError or OSError."""
    from .fashion_mnist import FOLDER_NAME, default_root, prepare_fashion_mnist_folder
    print(f'No data set given: the default run trains {ns.model} on Fashion-MNIST, chooses its checkpoint on a '
          f'validation split held out of the training images and evaluates that one on the test split. Train on your '
          f'own data with --data-dir DIR ({PROG} --help).', flush=True)
    output = Path(ns.output or 'output/train').resolve()
    name = f'fashion_mnist-{ns.model.replace("/", "_").replace(":", "_")}-{datetime.datetime.now():%Y%m%d-%H%M%S}'
    if opts.dry_run:
        data, run_dir = default_root() / FOLDER_NAME, output / (ns.experiment or name)
        print(f'Fashion-MNIST would be prepared in {data} (not with --dry-run)')
    else:
        data = prepare_fashion_mnist_folder()
        run_dir = output / ns.experiment if ns.experiment else Path(get_outdir(output, name, inc=True))
        print(f'Fashion-MNIST is ready in {data}', flush=True)
    if device == 'cpu' and 'OMP_NUM_THREADS' not in os.environ:
        # one thread: the 28x28 convolutions gain little from more, and on shared cores threads that wait for each
        # other at every operation slow training down many times
        torch.set_num_threads(1)
        print('+ OMP_NUM_THREADS=1 (set OMP_NUM_THREADS to choose another number of threads)')
    args = ['-c', str(DEFAULT_RECIPE), '--data-dir', str(data), *args] + ['--device', device] * (not ns.device)
    args += ([] if ns.output else ['--output', str(output)]) + ([] if ns.experiment else ['--experiment', run_dir.name])
    eval_args = ['--data-dir', str(data), '--split', 'test', '-b', str(ns.validation_batch_size or ns.batch_size),
                 '--workers', str(ns.workers), '--device', device] + ['--use-ema'] * bool(ns.model_ema)
    return args, run_dir, eval_args


def _checkpoint(run_dir: Path) -> Optional[Path]:
    """The checkpoint train.py chose on the validation split, else its last one."""
    return next((run_dir / name for name in CHECKPOINT_NAMES if (run_dir / name).is_file()), None)


def _report(run_dir: Path, ns: argparse.Namespace, eval_args: List[str]) -> int:
    """Evaluate the chosen checkpoint once on the test split (`timm_ssm.evaluate`) and say where everything is."""
    from . import evaluate
    checkpoint = _checkpoint(run_dir)
    if checkpoint is None:
        return _error(f'train.py finished but wrote no checkpoint in {run_dir}.')
    argv = ['--checkpoint', str(checkpoint), *eval_args, '--json', str(run_dir / 'eval_test.json'), '--overwrite']
    print('+ python -m timm_ssm.evaluate ' + shlex.join(argv), flush=True)
    try:
        result = evaluate.main(argv)  # --overwrite: this run's evaluation replaces an earlier one of the same run
    except SystemExit as e:
        return e.code
    model = result['models'][0]
    chosen = '; the best on the validation split' if checkpoint.name == 'model_best.pth.tar' else ''
    print(f'\n{ns.model}, {checkpoint.name} of epoch {model["epoch"]} (train.py counts from 0{chosen}): top-1 '
          f'{model["top1"]:.2f}% on the {result["data"]["num_samples"]} test images, evaluated once (each '
          f'sub-classifier\'s in the table above).\nResults and checkpoints are in {run_dir}:')
    for name in (*CHECKPOINT_NAMES, 'summary.csv', 'args.yaml', 'eval_test.json'):
        if (run_dir / name).exists():
            print(f'  {run_dir / name}')
    print(f'Publish it on the Hugging Face Hub (python -m timm_ssm.hub --help):\n'
          f'  python -m timm_ssm.hub {run_dir} --checkpoint {checkpoint.name} --repo-id ORG/NAME --dry-run')
    return 0


def _partial_report(run_dir: Path, stop: Stopped, eval_args: List[str]) -> int:
    """What a stopped default run has: the last epoch done, and the command that evaluates its checkpoint."""
    try:
        with open(run_dir / 'summary.csv', newline='') as f:
            rows = list(csv.DictReader(f))
    except OSError:
        rows = []
    print(f'\n{PROG}: {stop}: the default run is partial, it ends here (exit code {stop.exit_code}).', file=sys.stderr)
    if rows:
        top1 = f', validation top-1 {float(rows[-1]["eval_top1"]):.2f}%' if rows[-1].get('eval_top1') else ''
        print(f'train.py finished epoch {rows[-1]["epoch"]} (counted from 0{top1}).', file=sys.stderr)
    checkpoint = _checkpoint(run_dir)
    print(f'Evaluate its checkpoint {checkpoint} on the test split with:\n  python -m timm_ssm.evaluate '
          f'{shlex.join(["--checkpoint", str(checkpoint), *eval_args])}' if checkpoint else
          f'No checkpoint was saved in {run_dir}.', file=sys.stderr, flush=True)
    return stop.exit_code


if __name__ == '__main__':
    sys.exit(main())
