"""train_timm.sh: launch options beside train.py's, train.py's own parser, the default run's command, errors, stops."""
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from torch.distributed.run import get_args_parser

from timm_ssm import timm_source, train_timm
from timm_ssm.train_timm import CONFIG_DIR, DEFAULT_RECIPE

REPO = Path(__file__).resolve().parent.parent
TIMM_ROOT = os.environ.get('TIMM_ROOT') and Path(os.environ['TIMM_ROOT']).resolve()  # as timm_source resolves it
needs_train_py = pytest.mark.skipif(not TIMM_ROOT, reason='needs timm\'s train.py: set TIMM_ROOT to a '
                                                          'pytorch-image-models checkout')


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    """A working folder, its own cache, no GPU, one thread."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 0)
    return tmp_path


def _command(argv, capsys) -> list:
    assert train_timm.main(['--dry-run', *argv]) == 0
    return capsys.readouterr().out.strip().splitlines()[-1].split(' ')


@needs_train_py
def test_default_run_command(cwd, capsys):
    """No data set: the recipe, the image folder (not prepared with --dry-run), the user's arguments over them, and
    each option the user gives once."""
    args = _command(['--epochs', '1', '--experiment', 'quick'], capsys)
    folder = cwd / 'cache' / 'timm_ssm' / 'data' / 'fashion_mnist_images'
    assert args[:5] == ['+', sys.executable, '-m', 'timm_ssm.launch', f'{TIMM_ROOT}/train.py']
    assert args[5:] == ['-c', str(DEFAULT_RECIPE), '--data-dir', str(folder), '--epochs', '1', '--experiment', 'quick',
                        '--device', 'cpu', '--output', str(cwd / 'output' / 'train')]
    assert not (cwd / 'cache').exists()
    args = _command(['--device', 'cuda', '--output', 'o', '--model', 'test_vit_ssm'], capsys)
    assert args.count('--device') == args.count('--output') == args.count('--model') == 1
    assert args[args.index('--experiment') + 1].startswith('fashion_mnist-test_vit_ssm-')


SHIPPED = str(CONFIG_DIR / 'resnet50_ssm.yaml')


@needs_train_py
@pytest.mark.parametrize('argv, gpus, train_args, torchrun', [
    (['--data-dir', 'd', '--device', 'cpu'], 2, ['--data-dir', 'd', '--device', 'cpu'], None),
    (['--data-dir', 'd', '-c', 'resnet50_ssm'], 2, ['-c', SHIPPED, '--data-dir', 'd'],
     dict(nproc_per_node='2', standalone=True)),
    (['--nproc', '4', '--nnodes', '2', '--node-rank', '1', '--master-addr', '10.1.2.3', '--master-port', '29501',
      '-c', 'configs/resnet50_ssm.yaml', '--data-dir', 'd'], 0, ['-c', SHIPPED, '--data-dir', 'd'],
     dict(nproc_per_node='4', nnodes='2', node_rank=1, master_addr='10.1.2.3', master_port=29501, standalone=False)),
    (['--nproc', '8', '--nnodes', '1:4', '--rdzv-backend', 'c10d', '--rdzv-endpoint', 'head:29400', '--rdzv-id', 'r1',
      '-c', SHIPPED, 'd'], 0, ['-c', SHIPPED, 'd'],
     dict(nnodes='1:4', rdzv_backend='c10d', rdzv_endpoint='head:29400', rdzv_id='r1')),
])
def test_processes_and_torchrun(cwd, capsys, monkeypatch, argv, gpus, train_args, torchrun):
    """One process on the CPU, one per visible GPU by default; torchrun's own parser reads the command, and train.py
    gets its arguments as given (-c NAME: the shipped recipe)."""
    (cwd / 'd').mkdir()
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: gpus)
    args = _command(argv, capsys)[1:]
    launch = ['timm_ssm.launch', f'{TIMM_ROOT}/train.py', *train_args]
    if torchrun is None:
        assert args == [sys.executable, '-m', *launch]
    else:
        ns = get_args_parser().parse_args(args[3:])
        assert {k: getattr(ns, k) for k in torchrun} == torchrun and ns.module
        assert [ns.training_script, *ns.training_script_args] == launch


@needs_train_py
@pytest.mark.parametrize('argv, message', [
    (['--nproc', '2', '--data-dir', '.', '--device', 'cpu'], 'DistributedDataParallel with device_ids=.* several '
                                                              'processes need GPUs'),
    (['-c', 'resnet51_ssm', '--data-dir', '.'],
     'config file resnet51_ssm does not exist, and it is none of the recipes shipped with timm-ssm \\(-c NAME: '
     'fashion_mnist, finetune_ssm, '),
    (['-c', 'c.yaml'], 'no data set: neither the arguments nor c.yaml name one. Add --data-dir DIR'),
    (['-c', 'python.yaml', '--data-dir', '.'], '-c python.yaml is not a config file train.py can read .*without '
                                               '!!python tags'),
    (['--epochs', '1', '--no-such-option'], 'train.py does not take these arguments: unrecognized arguments: '
                                            '--no-such-option'),
    (['--data-dir', 'imagenet', '--device', 'cpu'], '--data-dir imagenet holds no images \\(it does not exist\\)'),
    (['.', '--device', 'cpu'], '--data-dir . holds no images \\(it is empty\\): give the folder that holds train/'),
    (['--timm-root', '.', '--data-dir', '.'], '--timm-root .* is not a pytorch-image-models checkout'),
    (['--timm-root=', '--data-dir', '.'], '--timm-root is empty'),
])
def test_errors(cwd, capsys, argv, message):
    (cwd / 'c.yaml').write_text('model: resnet18_ssm\n')
    (cwd / 'python.yaml').write_text('model: !!python/object/apply:os.system ["true"]\n')
    assert train_timm.main(argv) == 2
    err = capsys.readouterr().err
    assert re.search(f'error: .*{message}', err) and 'Traceback' not in err, err


def test_launch_option_errors_and_help_offline(cwd, capsys, monkeypatch):
    """Launch options are argparse's; --help lists them at once and train.py's only when timm's source is there:
    it downloads nothing, and a run without the source and network says how to fix it."""
    with pytest.raises(SystemExit) as e:
        train_timm.main(['--nproc', 'two'])
    assert e.value.code == 2 and '--nproc_per_node: two is not an integer' in capsys.readouterr().err
    monkeypatch.delenv('TIMM_ROOT', raising=False)
    monkeypatch.setattr(timm_source, 'ARCHIVE_URL', 'http://127.0.0.1:9/v{version}.tar.gz')  # nothing listens
    assert train_timm.main(['--help']) == 0
    out = capsys.readouterr().out
    assert out.startswith(f'usage: {train_timm.PROG}') and '--timm-root DIR' in out
    assert "(listed once timm's source is on this machine" in out and not (cwd / 'cache').exists()
    assert train_timm.main(['--data-dir', '.']) == 2
    err = capsys.readouterr().err
    assert "timm's train.py is not part of the timm wheel" in err and 'export TIMM_ROOT=' in err


def test_train_timm_sh(tmp_path):
    """The shell script runs the launcher with this checkout's timm_ssm, and its messages give its own name."""
    env = dict(os.environ, PYTHON=sys.executable, TIMM_ROOT=str(tmp_path))
    proc = subprocess.run(['bash', str(REPO / 'train_timm.sh'), '--data-dir', '.'], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.startswith(f'{REPO}/train_timm.sh: error: TIMM_ROOT {tmp_path}')


@needs_train_py
@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_stop_ends_the_default_run_with_a_partial_report(cwd, tiny_cache, capsys, monkeypatch, signum):
    """A stop signal during the default run (train.py in this process): train.py ends its epoch loop as on Ctrl-C,
    no evaluation starts, and the run says what it has and exits 128 + the signal's number (130 for Ctrl-C)."""
    monkeypatch.setenv('XDG_CACHE_HOME', str(tiny_cache))

    def stop_after_an_epoch():
        while not list(cwd.glob('output/train/*/model_best.pth.tar')):
            time.sleep(0.05)
        os.kill(os.getpid(), signum)

    threading.Thread(target=stop_after_an_epoch, daemon=True).start()
    assert train_timm.main(['--epochs', '1000', '--workers', '0', '-b', '50']) == 128 + signum
    err = capsys.readouterr().err
    run = next(cwd.glob('output/train/*'))
    assert f'stopped by {signal.Signals(signum).name}: the default run is partial' in err and 'Traceback' not in err
    assert 'train.py finished epoch ' in err and '(counted from 0, validation top-1 ' in err
    assert f'Evaluate its checkpoint {run / "model_best.pth.tar"} on the test split with:' in err
    assert not (run / 'eval_test.json').exists()
