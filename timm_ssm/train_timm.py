""" Train with timm's own train.py: the engine behind `train_timm.sh`

    ./train_timm.sh [LAUNCH OPTIONS] [train.py ARGS...]
    python -m timm_ssm.train_timm [LAUNCH OPTIONS] [train.py ARGS...]

Finds timm's `train.py` (`--timm-root`, `TIMM_ROOT`, or the cached source of the installed timm version) and runs
it unchanged through `python -m timm_ssm.launch`, under torchrun when several processes or nodes are asked for.
Launch options are consumed here; every other argument goes to `train.py` as it is.

With no data set in the arguments (no `--data-dir`, `--dataset`, DIR first or `-c` config), it makes the
default run: Fashion-MNIST is prepared as an image folder (`timm_ssm.fashion_mnist`), a small SSM model with
3-channel input (the grey images read as RGB, as timm's scripts and the Hub expect) is trained on a short
schedule and validated on a split held out of the training images, the checkpoint chosen on it
(`model_best.pth.tar`, which the tools default to) is evaluated once on the test split, and the places of results
and checkpoints are printed. Arguments given to the default run override its own (`train_timm.sh --epochs 1`);
a data folder after other options, which the default run would ignore, stops it with an error. Each default run
gets a folder of its own; SIGTERM, SIGHUP and Ctrl-C stop train.py too and exit 128 + the signal's number after
a partial report (`timm_ssm.process`).

`-c NAME` takes one of the recipes shipped in the package (`timm_ssm/configs/NAME.yaml`: `-c resnet50_ssm`) as
well as a path.
"""
import argparse
import contextlib
import datetime
import io
import json
import logging
import os
import runpy
import shlex
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import yaml

from .process import Children, Stopped
from .timm_source import find_timm_root

__all__ = ['main', 'split_args', 'has_data_set', 'default_run_args', 'build_command', 'launch_parser',
           'resolve_config', 'config_names', 'CONFIG_DIR', 'PROJECT_URL']

_logger = logging.getLogger(__name__)

PROJECT_URL = 'https://pypi.org/project/timm-ssm/'
CONFIG_DIR = Path(__file__).resolve().parent / 'configs'  # the paper's recipes, shipped in the package
# how the user called this: train_timm.sh sets it, a wheel has only `python -m timm_ssm.train_timm`
PROG = os.environ.get('TIMM_SSM_PROG') or 'python -m timm_ssm.train_timm'

def _processes(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f'takes a number of processes, 1 or more, got {value!r}')
    return int(value)


class _LaunchParser(argparse.ArgumentParser):
    def error(self, message):
        raise ValueError(message)


# the options train_timm.sh takes for itself; all others go to train.py as they are
launch_parser = _LaunchParser(
    prog=PROG, usage=f'{PROG} [LAUNCH OPTIONS] [train.py ARGS...]', add_help=False,
    allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
    description='Runs timm\'s own train.py, unchanged, with timm-ssm\'s <arch>_ssm models registered.',
    epilog='Without a data set (no --data-dir, --dataset, DIR first or -c config) it trains a small SSM model on '
           'Fashion-MNIST,\nevaluates it and prints where the results are: the default run. A data folder goes first '
           'or after --data-dir.\n-c NAME takes a recipe shipped in timm_ssm/configs (' +
           ', '.join(p.stem for p in sorted(CONFIG_DIR.glob('*.yaml'))) + ') or a path.\n\n'
           'timm\'s train.py wraps the model in DistributedDataParallel with device_ids, so '
           'several processes need GPUs;\non CPU use one process.')
group = launch_parser.add_argument_group('Launch options (everything else goes to train.py as it is)')
group.add_argument('--timm-root', metavar='DIR', help='pytorch-image-models checkout holding train.py (default: '
                   '$TIMM_ROOT, else the source of the installed timm version, downloaded once into ~/.cache/timm_ssm)')
group.add_argument('--nproc', '--nproc-per-node', '--nproc_per_node', type=_processes, metavar='N',
                   help='processes on this node (default: the visible GPUs, 1 without GPU or with --device cpu); '
                        'N > 1 starts torchrun')
# torchrun options for several nodes, passed on in this order
_NODE_OPTIONS = ('nnodes', 'node_rank', 'master_addr', 'master_port', 'rdzv_backend', 'rdzv_endpoint', 'rdzv_id')
for _name in _NODE_OPTIONS:
    _flags = [f'--{_name.replace("_", "-")}'] + ([f'--{_name}'] if '_' in _name else [])
    group.add_argument(*_flags, dest=_name, metavar=_name.split('_')[-1].upper(), help='for torchrun')
group.add_argument('--dry-run', action='store_true', help='print the commands instead of running them (and prepare '
                                                          'no data)')
group.add_argument('-h', '--help', action='store_true', help='this help, then train.py\'s')


def split_args(argv: List[str]) -> Tuple[argparse.Namespace, List[str]]:
    """Separate the launch options from the arguments of train.py, which keep their order and spelling.

    Raises:
        ValueError: A launch option without its value, or a bad --nproc.
    """
    opts, rest = launch_parser.parse_known_args(argv)
    opts.multi_node = any(getattr(opts, k) is not None for k in _NODE_OPTIONS)
    return opts, rest


def _option_value(args: List[str], *names: str) -> Optional[str]:
    """Value of the last occurrence of an option in a train.py command line (`--x V`, `--x=V`, or `-cV` for a
    one-letter option); the first value of an option that takes several."""
    value = None
    for i, arg in enumerate(args):
        name, eq, v = arg.partition('=')
        if name in names:
            if eq:
                value = v
            elif i + 1 < len(args):
                value = args[i + 1]
            continue
        for n in names:
            if len(n) == 2 and arg.startswith(n) and len(arg) > 2 and not arg.startswith('--'):
                value = arg[2:]
    return value


def config_names() -> List[str]:
    """Names of the recipes shipped in the package, for `-c NAME`."""
    return sorted(p.stem for p in CONFIG_DIR.glob('*.yaml'))


def resolve_config(config: str) -> Path:
    """The file of a `-c` value: a path to a file, else the name of a shipped recipe (`resnet50_ssm`, with or
    without `.yaml`, or `configs/resnet50_ssm.yaml` as a checkout spelled it).

    Raises:
        ValueError: Neither, with the names there are.
    """
    if os.path.isfile(config):
        return Path(config)
    name = Path(config).name
    name = name[:-len('.yaml')] if name.endswith('.yaml') else name
    shipped = CONFIG_DIR / f'{name}.yaml'
    if shipped.is_file() and (os.sep not in config or Path(config).parent.name == 'configs'):
        return shipped
    raise ValueError(f'config file {config} does not exist, and it is none of the recipes shipped with timm-ssm '
                     f'(-c NAME: {", ".join(config_names())}). Give the path of a train.py config file or one of '
                     f'these names.')


def _with_config(args: List[str], path: Path) -> List[str]:
    """`args` with the value of its `-c`/`--config` option replaced by `path`."""
    out, skip = [], False
    for i, arg in enumerate(args):
        if skip:
            skip = False
            continue
        name, eq, _ = arg.partition('=')
        if name in ('-c', '--config'):
            if eq:
                out.append(f'{name}={path}')
            else:
                out += [arg, str(path)]
                skip = True
        elif arg.startswith('-c') and not arg.startswith('--') and len(arg) > 2:
            out.append(f'-c{path}')
        else:
            out.append(arg)
    return out


def has_data_set(args: List[str]) -> bool:
    """Whether a train.py command line names a data set: `--data-dir`, `--dataset`, a positional DIR first, or a
    `-c` config file that sets `data_dir` or `dataset`."""
    if args and not args[0].startswith('-'):
        return True  # train.py's (deprecated) positional DIR
    if _option_value(args, '--data-dir', '--dataset'):
        return True
    config = _option_value(args, '-c', '--config')
    if config and os.path.isfile(config):
        with open(config) as f:
            cfg = yaml.safe_load(f) or {}
        return bool(isinstance(cfg, dict) and any(cfg.get(k) for k in ('data_dir', 'data', 'dataset')))
    return False


# The default run: a small SSM model on real data, short enough for 2 CPU cores in under 10 minutes.
DEFAULT_MODEL = 'test_resnet_ssm'
DEFAULT_EPOCHS = 5
# the checkpoint the default run reports and the tools default to: chosen on the validation split held out of train
DEFAULT_CHECKPOINT = 'model_best.pth.tar'


def default_run_args(data_root: Path, output: Path, experiment: str, device: str) -> List[str]:
    """train.py arguments of the default run, before the user's own (which override them).

    Args:
        data_root: The image folder of `prepare_fashion_mnist_folder` (train/, validation/, test/).
        output: train.py's --output.
        experiment: train.py's --experiment, the run's folder in `output`.
        device: train.py's --device.
    """
    from .fashion_mnist import MEAN, NUM_CLASSES, STD
    return [
        # the validation split is held out of the training images: the test split chooses nothing
        '--data-dir', str(data_root), '--train-split', 'train', '--val-split', 'validation',
        '--model', DEFAULT_MODEL, '--num-classes', str(NUM_CLASSES),
        # grey images read as RGB: a 3-channel model, as timm's inference.py, ONNX export and the Hub expect
        '--input-size', '3', '28', '28', '--mean', *map(str, MEAN * 3), '--std', *map(str, STD * 3),
        '--crop-pct', '1.0', '--interpolation', 'bilinear', '--train-interpolation', 'bilinear',
        # a short schedule: light augmentation (mild random-resized crop, horizontal flip), cosine decay per step
        '--scale', '0.8', '1.0', '--hflip', '0.5', '--color-jitter', '0', '--smoothing', '0',
        '--epochs', str(DEFAULT_EPOCHS), '--sched', 'cosine', '--sched-on-updates', '--warmup-epochs', '0',
        '--opt', 'sgd', '--lr', '0.1', '--weight-decay', '5e-4', '-b', '128',
        '--workers', '2', '--device', device, '--log-interval', '100', '--checkpoint-hist', '1',
        '--output', str(output), '--experiment', experiment,
    ]


def _without_given(defaults: List[str], given: List[str]) -> List[str]:
    """The default arguments less the options the user gives (each with its values), so that the command shows
    each option once."""
    groups, out = [], []
    for arg in defaults:
        if arg.startswith('-') and not arg.lstrip('-').replace('.', '').isdigit():
            groups.append([arg])
        else:
            groups[-1].append(arg)
    for group in groups:
        if _option_value(given, group[0]) is None and group[0] not in given:
            out += group
    return out


def build_command(opts: argparse.Namespace, train_py: Path, args: List[str]) -> List[str]:
    """The command that runs train.py: the launcher in this Python, under torchrun for several processes or nodes.
    """
    launch = ['-m', 'timm_ssm.launch', str(train_py), *args]
    nproc = opts.nproc or 1
    if nproc == 1 and not opts.multi_node:
        return [sys.executable, *launch]
    cmd = [sys.executable, '-m', 'torch.distributed.run', f'--nproc-per-node={nproc}']
    if opts.multi_node:
        for key in _NODE_OPTIONS:
            value = getattr(opts, key)
            if value is not None:
                cmd.append(f'--{key.replace("_", "-")}={value}')
    else:
        cmd.append('--standalone')
    return cmd + launch


def _positional_data_dir(train_py: Path, args: List[str]) -> Optional[str]:
    """The word of `args` that train.py's own parser takes for its positional DIR, which it reads anywhere among
    the options, not only first. None when there is none, or when train.py's parser cannot be read or refuses the
    arguments (train.py then says why itself)."""
    try:
        parser = runpy.run_path(str(train_py), run_name='timm_ssm_train_py').get('parser')
    except Exception as e:
        _logger.warning(f'Cannot read the options of {train_py} ({type(e).__name__}: {e}).')
        return None
    if not isinstance(parser, argparse.ArgumentParser):
        return None
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            namespace, unknown = parser.parse_known_args(args)
    except (Exception, SystemExit):  # argparse exits on a bad value
        return None
    return None if unknown else getattr(namespace, 'data', None)


def _visible_gpus() -> int:
    import torch
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


class _ResultFilter:
    """Passes train.py's output on, less its closing `--result` JSON (the epochs' metrics, which the default run's
    own table follows)."""

    def __init__(self):
        self.in_result = False

    def __call__(self, line: str):
        if line.rstrip('\n') == '--result':
            self.in_result = True
        elif not self.in_result:
            sys.stdout.write(line)
            sys.stdout.flush()
        elif line.rstrip('\n') in (']', '[]'):  # the end of the JSON list
            self.in_result = False


def _print_command(cmd: List[str]):
    print('+ ' + ' '.join(shlex.quote(c) for c in cmd), flush=True)


def _error(message: str) -> int:
    print(f'train_timm: error: {message}', file=sys.stderr)
    return 2


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(format='train_timm: %(levelname)s: %(message)s')
    logging.getLogger('timm_ssm.timm_source').setLevel(logging.INFO)  # what a checkout of another version means
    try:
        opts, args = split_args(argv)
    except ValueError as e:
        return _error(f'{e}\n\n{launch_parser.format_usage()}See {PROG} --help.')

    if opts.timm_root is not None and not opts.timm_root.strip():
        return _error('--timm-root is empty: give the folder of a pytorch-image-models checkout (it holds train.py), '
                      'or leave the option out to use TIMM_ROOT or the cached source.')
    if opts.help:
        print(launch_parser.format_help() + '\ntrain.py\'s options:', flush=True)
    try:
        train_py = find_timm_root(opts.timm_root, download=not opts.help) / 'train.py'
    except RuntimeError as e:
        if opts.help:
            print('(listed once timm\'s source is on this machine: the first run without --timm-root or TIMM_ROOT '
                  'downloads it.) Offline: ' + str(e))
            return 0
        return _error(str(e))
    if opts.help:
        with Children() as children:
            try:
                return children.run(build_command(split_args([])[0], train_py, ['--help']))
            except Stopped as stop:
                return stop.exit_code

    config = _option_value(args, '-c', '--config')
    if config is not None:
        try:
            args = _with_config(args, resolve_config(config))
        except ValueError as e:
            return _error(str(e))
    data_given = has_data_set(args)
    if not data_given and config is not None:
        return _error(
            f'no data set: neither the arguments nor {config} name one. Add --data-dir DIR (an image folder with '
            f'train/ and validation/ sub-folders, or the root folder of --dataset NAME).')

    device = _option_value(args, '--device')
    gpus = _visible_gpus()
    if device is None and not gpus:
        if data_given:
            print('train_timm: no GPU is visible and train.py defaults to --device cuda: add --device cpu to '
                  'train on the CPU.', file=sys.stderr)
        else:
            device = 'cpu'
    on_cpu = device is not None and device.startswith('cpu')
    if opts.nproc is None:
        opts.nproc = 1 if on_cpu else max(gpus, 1)
    if (opts.nproc > 1 or opts.multi_node) and on_cpu:
        return _error(
            f'{opts.nproc} processes on --device {device}: timm\'s train.py wraps the model in '
            f'DistributedDataParallel with device_ids=[device], which works on GPUs only, so several processes '
            f'need GPUs (a known limit of train.py). Train on the CPU with one process (--nproc 1).')

    if not data_given:
        with Children() as children:
            try:
                return _default_run(children, opts, train_py, args, device or 'cuda')
            except Stopped as stop:  # a signal outside train.py and the evaluation
                print(f'train_timm: {stop}.', file=sys.stderr)
                return stop.exit_code
    data_dir = _option_value(args, '--data-dir') or (args[0] if args and not args[0].startswith('-') else None)
    if data_dir is not None and not opts.dry_run:
        from .runs import RunError, check_data_dir
        try:
            check_data_dir(data_dir, '--data-dir', _option_value(args, '--dataset') or '',
                           '--dataset-download' in args)
        except RunError as e:
            return _error(str(e))
    cmd = build_command(opts, train_py, args)
    _print_command(cmd)
    if opts.dry_run:
        return 0
    os.execv(cmd[0], cmd)  # train.py (or torchrun) in this process: signals and exit code are its own


def _run_folder(output: Path, experiment: Optional[str], model: str, dry_run: bool) -> Path:
    """The default run's folder: the user's --experiment, else `fashion_mnist-MODEL-YYYYmmdd-HHMMSS`, made here
    (unless dry_run) so that two runs started in the same second get two folders (`-2`, `-3`, ... as needed)."""
    if experiment is not None:
        return output / experiment
    name = '-'.join(['fashion_mnist', model.replace('/', '_').replace(':', '_'),
                     datetime.datetime.now().strftime('%Y%m%d-%H%M%S')])
    if dry_run:
        return output / name
    output.mkdir(parents=True, exist_ok=True)
    for count in range(1, 1000):
        run_dir = output / (name if count == 1 else f'{name}-{count}')
        try:
            run_dir.mkdir()  # atomic: one process wins each name
            return run_dir
        except FileExistsError:
            continue
    raise RuntimeError(f'{output} holds 999 runs named {name}: give --experiment NAME.')


def _default_run(children: Children, opts: argparse.Namespace, train_py: Path, user_args: List[str],
                 device: str) -> int:
    from .fashion_mnist import FOLDER_NAME, default_root, prepare_fashion_mnist_folder
    from .runs import RunError, check_output_folder

    data_dir = _positional_data_dir(train_py, user_args)
    if data_dir is not None:
        return _error(
            f'{data_dir} stands where train.py takes a data folder, but the arguments name no data set, so this '
            f'would be the default run on Fashion-MNIST, which ignores it. Put the data folder first '
            f'({PROG} {data_dir} ...) or give it as --data-dir {data_dir}.')

    output = Path(_option_value(user_args, '--output') or Path.cwd() / 'output' / 'train').resolve()
    model = _option_value(user_args, '--model') or DEFAULT_MODEL
    print(f'No data set given: the default run trains {model} on Fashion-MNIST, chooses its checkpoint on a '
          f'validation split held out of the training images and evaluates that one on the test split. Train on '
          f'your own data with --data-dir DIR (see {PROG} --help).', flush=True)
    if opts.dry_run:
        data_root = default_root() / FOLDER_NAME
        print(f'Fashion-MNIST would be prepared in {data_root} (not with --dry-run)', flush=True)
    else:
        try:
            check_output_folder(output, '--output')
            data_root = prepare_fashion_mnist_folder()
        except (RuntimeError, RunError) as e:
            return _error(str(e))
        print(f'Fashion-MNIST is ready in {data_root}', flush=True)
    try:
        run_dir = _run_folder(output, _option_value(user_args, '--experiment'), model, opts.dry_run)
    except (RuntimeError, OSError) as e:
        return _error(str(e))

    args = _without_given(default_run_args(data_root, output, run_dir.name, device), user_args) + user_args
    cmd = build_command(opts, train_py, args)
    env = None
    if device == 'cpu' and 'OMP_NUM_THREADS' not in os.environ:
        # one thread per process: the 28x28 convolutions gain little from a second one, and threads that wait
        # for each other at every operation slow training down many times when the cores are shared
        env = dict(os.environ, OMP_NUM_THREADS='1')
        print('+ OMP_NUM_THREADS=1 (set OMP_NUM_THREADS to choose another number of threads)')
    _print_command(cmd)
    if opts.dry_run:
        return 0
    try:
        code = children.run(cmd, env=env, on_line=_ResultFilter())
    except Stopped as stop:
        _partial_report(run_dir, stop)
        return stop.exit_code
    if code != 0:
        return code
    try:
        return _report(run_dir, env=env, children=children)
    except Stopped as stop:
        _partial_report(run_dir, stop)
        return stop.exit_code


def _epochs_done(run_dir: Path) -> Tuple[int, Optional[float]]:
    """Epochs train.py finished in a run (rows of its summary.csv) and the last one's validation top-1."""
    import csv
    try:
        with open(run_dir / 'summary.csv', newline='') as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error):
        return 0, None
    if not rows:
        return 0, None
    try:
        return len(rows), float(rows[-1]['eval_top1'])
    except (KeyError, ValueError):
        return len(rows), None


def _partial_report(run_dir: Path, stop: Stopped):
    """What a stopped default run leaves: the epochs done and the checkpoints, with the command that evaluates
    them."""
    done, top1 = _epochs_done(run_dir)
    lines = [f'\ntrain_timm: {stop}: the default run is partial, it ends here (exit code {stop.exit_code}).']
    if done:
        lines.append(f'train.py finished {done} epoch{"" if done == 1 else "s"}' +
                     (f' (validation top-1 of the last: {top1:.2f}%)' if top1 is not None else '') + '.')
    checkpoints = [p for p in (run_dir / DEFAULT_CHECKPOINT, run_dir / 'last.pth.tar') if p.is_file()]
    if checkpoints:
        lines.append(f'Checkpoints in {run_dir}: {", ".join(p.name for p in checkpoints)}. Evaluate one on the test '
                     f'split with:')
        lines.append(f'  {" ".join(shlex.quote(c) for c in _evaluate_command(run_dir, checkpoints[0], "test"))}')
    else:
        lines.append(f'No checkpoint was saved in {run_dir}.')
    print('\n'.join(lines), file=sys.stderr, flush=True)


def _evaluate_command(run_dir: Path, checkpoint: Path, split: str, train_args: Optional[Dict] = None) -> List[str]:
    """`timm_ssm.evaluate` of a checkpoint of the run on a split of the run's data (the model, its options and the
    data config come from the run, `timm_ssm.runs`)."""
    if train_args is None:
        with open(run_dir / 'args.yaml') as f:
            train_args = yaml.safe_load(f)
    cmd = [sys.executable, '-m', 'timm_ssm.evaluate', '--checkpoint', str(checkpoint), '--split', split,
           '-b', str(train_args.get('validation_batch_size') or train_args.get('batch_size') or 128)]
    for option, key in (('--data-dir', 'data_dir'), ('--dataset', 'dataset'), ('--workers', 'workers'),
                        ('--device', 'device')):
        if train_args.get(key) not in (None, ''):
            cmd += [option, str(train_args[key])]
    if train_args.get('model_ema'):
        cmd.append('--use-ema')  # train.py validated the EMA weights
    return cmd


def _report(run_dir: Path, env: Optional[Dict[str, str]] = None, children: Optional[Children] = None,
            split: str = 'test') -> int:
    """Evaluate the checkpoint train.py chose on its validation split (`model_best.pth.tar`, else `last.pth.tar`)
    once on `split` with `timm_ssm.evaluate`, print the top-1 table and where results and checkpoints are.

    Raises:
        Stopped: A signal stopped the evaluation.
    """
    args_file = run_dir / 'args.yaml'
    checkpoint = next((p for p in (run_dir / DEFAULT_CHECKPOINT, run_dir / 'last.pth.tar') if p.is_file()), None)
    if checkpoint is None or not args_file.is_file():
        return _error(f'train.py finished but wrote no checkpoint or args.yaml in {run_dir}.')
    with open(args_file) as f:
        train_args = yaml.safe_load(f)

    eval_json = run_dir / f'eval_{split}.json'
    eval_table = run_dir / f'eval_{split}.txt'
    cmd = _evaluate_command(run_dir, checkpoint, split, train_args) + ['--json', str(eval_json)]
    _print_command(cmd)
    with open(eval_table, 'w') as f:
        if children is None:
            with Children() as children:
                code = children.run(cmd, stdout=f, env=env)
        else:
            code = children.run(cmd, stdout=f, env=env)
    if code != 0:
        return code
    with open(eval_json) as f:
        result = json.load(f)

    epoch = result['models'][0]['epoch']  # counted from 0
    done, _ = _epochs_done(run_dir)
    print(format_summary(result, dict(train_args, val_split=split), checkpoint, epoch_of_checkpoint=epoch,
                         epochs_done=done or None), flush=True)
    print(f'\nResults and checkpoints are in {run_dir}:')
    for name, path in (
            ('best checkpoint', run_dir / DEFAULT_CHECKPOINT),
            ('last checkpoint', run_dir / 'last.pth.tar'),
            ('per-epoch metrics', run_dir / 'summary.csv'),
            ('train.py arguments', args_file),
            (f'{split} evaluation', eval_json),
            ('full evaluation table', eval_table),
    ):
        if path.exists():
            print(f'  {name + ":":24s}{path}')
    print(f'Publish the evaluated weights on the Hugging Face Hub (python -m timm_ssm.hub --help):\n'
          f'  python -m timm_ssm.hub {run_dir} --checkpoint {checkpoint.name} --repo-id ORG/NAME --dry-run')
    return 0


def format_summary(result: Dict, train_args: Dict, checkpoint: Path, epochs_done: Optional[int] = None,
                   epoch_of_checkpoint: Optional[int] = None) -> str:
    """The default run's final table: top-1 of the averaged output and of each sub-classifier.

    Args:
        result: What `timm_ssm.evaluate` wrote for the checkpoint.
        train_args: train.py's args.yaml of the run, with `val_split` the evaluated split.
        checkpoint: The evaluated checkpoint.
        epochs_done: Epochs train.py finished, `train_args['epochs']` if None; fewer when train.py was stopped.
        epoch_of_checkpoint: The epoch (from 0) the checkpoint was saved after, when it is not the last.
    """
    model = result['models'][0]
    epochs = train_args['epochs']
    if epochs_done is not None and epochs_done < epochs:
        trained = f'interrupted after {epochs_done} of {epochs} epochs'
    else:
        done = epochs if epochs_done is None else epochs_done
        trained = f'after {done} epoch{"" if done == 1 else "s"}'
    name = checkpoint.name
    if epoch_of_checkpoint is not None and checkpoint.name == DEFAULT_CHECKPOINT:
        name += f' (epoch {epoch_of_checkpoint + 1}, chosen on the validation split)'
    lines = [
        '',
        f'{train_args["model"]} {trained}, {name}, on the '
        f'{train_args["val_split"]} split of {train_args.get("dataset") or train_args.get("data_dir")} '
        f'({result["data"]["num_samples"]} images):',
        f'  {"output":<32}{"top-1 (%)":>10}',
        f'  {"averaged (model output)":<32}{model["top1"]:>10.2f}',
    ]
    for head in model['heads']:
        name = f'{head["name"]} (channels 0-{head["width"] - 1})'
        lines.append(f'  {name:<32}{head["top1"]:>10.2f}')
    return '\n'.join(lines)


if __name__ == '__main__':
    sys.exit(main())
