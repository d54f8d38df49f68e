"""train_timm.sh: launch options against train.py's, locating train.py, torchrun commands, the default run's set-up."""
import argparse
import datetime
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from PIL import Image
from timm.utils import CheckpointSaver
from torch.distributed.run import get_args_parser

from timm_ssm import fashion_mnist, timm_source, train_timm
from timm_ssm.timm_source import installed_timm_version
from timm_ssm.train_timm import build_command, has_data_set, split_args

REPO = Path(__file__).resolve().parent.parent
TIMM_ROOT = os.environ.get('TIMM_ROOT')  # a real pytorch-image-models checkout, if any


@pytest.fixture
def fake_timm_root(tmp_path, monkeypatch):
    """A pytorch-image-models checkout of the installed version whose train.py records its command line and has a
    `parser` of a few of train.py's arguments."""
    root = tmp_path / 'pytorch-image-models'
    (root / 'timm').mkdir(parents=True)
    (root / 'timm' / 'version.py').write_text(f"__version__ = '{installed_timm_version()}'\n")
    (root / 'train.py').write_text(
        'import argparse, json, os, sys\n'
        'import timm\n'
        'parser = argparse.ArgumentParser()\n'
        'parser.add_argument("data", nargs="?")\n'
        'for name in ("--epochs", "--experiment", "--model"):\n'
        '    parser.add_argument(name)\n'
        'parser.add_argument("--mean", nargs="+")\n'
        'if __name__ == "__main__":\n'
        '    with open(os.environ["FAKE_TRAIN_OUT"], "w") as f:\n'
        '        json.dump(dict(argv=sys.argv, ssm=timm.is_model("test_resnet_ssm")), f)\n'
        '    sys.exit(int(os.environ.get("FAKE_TRAIN_EXIT", "0")))\n')
    monkeypatch.setenv('TIMM_ROOT', str(root))
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    return root


def test_split_args_keeps_train_args_unchanged():
    argv = ['--timm-root', '/src', '--model', 'resnet50_ssm', '--nproc=4', '--data-dir', '/data', '-b', '64',
            '--nnodes', '2', '--node-rank=1', '--master-addr', 'host', '--master-port', '29500', '--lr-base', '0.1',
            '--dry-run', '--model-kwargs', 'num_splits=8']
    opts, rest = split_args(argv)
    assert rest == ['--model', 'resnet50_ssm', '--data-dir', '/data', '-b', '64', '--lr-base', '0.1',
                    '--model-kwargs', 'num_splits=8']
    assert (opts.timm_root, opts.nproc, opts.nnodes, opts.node_rank) == ('/src', 4, '2', '1')
    assert (opts.master_addr, opts.master_port, opts.dry_run, opts.multi_node) == ('host', '29500', True, True)
    opts, rest = split_args(['--rdzv-endpoint', 'h:29400', '--rdzv-id', 'job', '--epochs', '1'])
    assert (opts.rdzv_endpoint, opts.rdzv_id, rest) == ('h:29400', 'job', ['--epochs', '1'])
    assert not split_args(['--epochs', '1'])[0].multi_node


@pytest.mark.parametrize('argv, message', [
    (['--nproc'], 'argument --nproc.*: expected one argument'),
    (['--nproc', '--model', 'x'], 'argument --nproc.*: expected one argument'),
    (['--nproc', 'two'], "argument --nproc.*: takes a number of processes, 1 or more, got 'two'"),
    (['--nproc=0'], "argument --nproc.*: takes a number of processes, 1 or more, got '0'"),
    (['--dry-run=yes'], "argument --dry-run: ignored explicit argument 'yes'"),
])
def test_split_args_errors(argv, message):
    with pytest.raises(ValueError, match=message):
        split_args(argv)


def test_has_data_set(tmp_path):
    assert not has_data_set([])
    assert not has_data_set(['--model', 'resnet18_ssm', '--epochs', '1', '--dataset-download'])
    assert has_data_set(['--data-dir', '/data'])
    assert has_data_set(['--model', 'x', '--dataset=torch/cifar10'])
    assert has_data_set(['/imagenet', '--model', 'x'])  # train.py's positional DIR
    config = tmp_path / 'c.yaml'
    config.write_text('model: resnet18_ssm\n')
    assert not has_data_set(['-c', str(config)])
    config.write_text('model: resnet18_ssm\ndata_dir: /data\n')
    assert has_data_set(['-c', str(config)]) and has_data_set([f'-c{config}']) and has_data_set([f'--config={config}'])


def test_torchrun_commands_parse_as_torchrun_options():
    train_py = Path('/src/train.py')
    assert build_command(split_args([])[0], train_py, ['--lr', '0.1']) == [
        sys.executable, '-m', 'timm_ssm.launch', '/src/train.py', '--lr', '0.1']

    opts, rest = split_args(['--nproc', '8', '--model', 'resnet50_ssm'])
    cmd = build_command(opts, train_py, rest)
    assert cmd[:3] == [sys.executable, '-m', 'torch.distributed.run']
    ns = get_args_parser().parse_args(cmd[3:])
    assert (ns.nproc_per_node, ns.standalone, ns.module) == ('8', True, True)
    assert [ns.training_script, *ns.training_script_args] == [
        'timm_ssm.launch', '/src/train.py', '--model', 'resnet50_ssm']

    opts, rest = split_args(['--nproc', '4', '--nnodes', '2', '--node-rank', '1', '--master-addr', '10.1.2.3',
                             '--master-port', '29501', '-b', '32'])
    ns = get_args_parser().parse_args(build_command(opts, train_py, rest)[3:])
    assert (ns.nproc_per_node, ns.nnodes, ns.node_rank, ns.master_addr, ns.master_port, ns.standalone) == (
        '4', '2', 1, '10.1.2.3', 29501, False)
    assert ns.training_script_args == ['/src/train.py', '-b', '32']

    opts, rest = split_args(['--nproc', '8', '--nnodes', '1:4', '--rdzv-backend', 'c10d', '--rdzv-endpoint',
                             'head:29400', '--rdzv-id', 'run1'])
    ns = get_args_parser().parse_args(build_command(opts, train_py, rest)[3:])
    assert (ns.nnodes, ns.rdzv_backend, ns.rdzv_endpoint, ns.rdzv_id) == ('1:4', 'c10d', 'head:29400', 'run1')


def _run_sh(args, env_extra, cwd=None):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES='', **env_extra)  # the same on a host with GPUs
    env['PYTHON'] = sys.executable
    return subprocess.run(['bash', str(REPO / 'train_timm.sh'), *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_train_timm_sh_runs_train_py_unchanged(fake_timm_root, tmp_path):
    """The shell script runs timm's train.py through the launcher, with every train.py argument as given."""
    out = tmp_path / 'argv.json'
    args = ['--model', 'test_resnet_ssm', '--data-dir', 'my data', '--device', 'cpu', '--lr', '0.1']
    (tmp_path / 'my data' / 'train' / 'a').mkdir(parents=True)  # the data check refuses a folder without images
    Image.new('L', (8, 8)).save(tmp_path / 'my data' / 'train' / 'a' / '0.png')
    proc = _run_sh(args, {'FAKE_TRAIN_OUT': str(out), 'FAKE_TRAIN_EXIT': '7'}, cwd=tmp_path)
    assert proc.returncode == 7, proc.stderr  # train.py's exit code
    recorded = yaml.safe_load(out.read_text())
    assert recorded == dict(argv=[str(fake_timm_root.resolve() / 'train.py'), *args], ssm=True)
    assert 'warning' not in proc.stderr  # same version, no GPU warning with --device given


def test_main_errors(fake_timm_root, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert train_timm.main(['--nproc', '2', '--data-dir', '/d', '--device', 'cpu']) == 2
    err = capsys.readouterr().err
    assert 'DistributedDataParallel with device_ids' in err and 'several processes need GPUs' in err
    assert train_timm.main(['-c', 'missing.yaml', '--data-dir', '/d']) == 2
    assert 'config file missing.yaml does not exist' in capsys.readouterr().err
    (tmp_path / 'c.yaml').write_text('model: resnet18_ssm\n')
    assert train_timm.main(['-c', 'c.yaml']) == 2
    assert 'no data set: neither the arguments nor c.yaml name one' in capsys.readouterr().err
    assert train_timm.main(['--timm-root', str(tmp_path), '--data-dir', '/d']) == 2
    assert 'is not a pytorch-image-models checkout' in capsys.readouterr().err


@pytest.mark.parametrize('gpus, device, nproc', [(2, 'cpu', 1), (2, 'cuda', 2), (2, None, 2), (0, None, 1)])
def test_nproc_defaults_to_gpus_but_one_on_cpu(fake_timm_root, capsys, monkeypatch, gpus, device, nproc):
    monkeypatch.setattr(train_timm, '_visible_gpus', lambda: gpus)
    device_args = ['--device', device] if device else []
    assert train_timm.main(['--dry-run', '--data-dir', '/d', *device_args]) == 0
    command = capsys.readouterr().out.strip().splitlines()[-1]
    if nproc == 1:
        assert command.startswith(f'+ {sys.executable} -m timm_ssm.launch ')
    else:
        assert command.startswith(f'+ {sys.executable} -m torch.distributed.run --nproc-per-node={nproc} --standalone ')


def test_offline_without_timm_root(tmp_path, monkeypatch, capsys):
    """No checkout and no network: the message says how to fix it."""
    monkeypatch.delenv('TIMM_ROOT', raising=False)
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
    monkeypatch.setattr(timm_source, 'ARCHIVE_URL', 'http://127.0.0.1:9/v{version}.tar.gz')  # nothing listens
    assert train_timm.main(['--data-dir', '/d']) == 2
    err = capsys.readouterr().err
    assert "train_timm: error: timm's train.py is not part of the timm wheel" in err
    assert f'git clone --branch v{installed_timm_version()}' in err and 'export TIMM_ROOT=' in err


def test_version_mismatch_warning_and_dry_run(fake_timm_root, capsys, caplog):
    (fake_timm_root / 'timm' / 'version.py').write_text("__version__ = '99.0.0.dev0'\n")
    with caplog.at_level(logging.WARNING):
        assert train_timm.main(['--dry-run', '--data-dir', '/d', '--device', 'cpu']) == 0
    captured = capsys.readouterr()
    assert 'from timm 99.0.0.dev0, newer than the installed timm' in caplog.text
    assert captured.out.startswith(f'+ {sys.executable} -m timm_ssm.launch {fake_timm_root.resolve()}/train.py')


def _not_called(*args, **kwargs):
    raise AssertionError('not to be called')


def test_default_run_command(fake_timm_root, tmp_path, capsys, monkeypatch):
    """No data set: Fashion-MNIST (prepared unless --dry-run) and the user's arguments last, so they override."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
    monkeypatch.setattr(train_timm, '_visible_gpus', lambda: 0)
    monkeypatch.setattr(fashion_mnist, 'default_root', lambda: tmp_path / 'fm')
    monkeypatch.setattr(fashion_mnist, 'prepare_fashion_mnist_folder', _not_called)
    assert train_timm.main(['--dry-run', '--epochs', '1', '--experiment', 'quick']) == 0
    out = capsys.readouterr().out
    folder = tmp_path / 'fm' / 'fashion_mnist_images'
    assert f'Fashion-MNIST would be prepared in {folder} (not with --dry-run)' in out
    assert '+ OMP_NUM_THREADS=1' in out  # on CPU, unless the user sets it
    command = out.strip().splitlines()[-1]
    args = command.split(' ')
    assert args[:4] == ['+', sys.executable, '-m', 'timm_ssm.launch']
    assert args[args.index('--data-dir') + 1] == str(folder) and '--dataset' not in args  # an image folder
    # nothing is chosen on the test split: train.py validates on the split held out of the training images
    assert args[args.index('--val-split') + 1] == 'validation' and 'test' not in args
    assert args[args.index('--input-size') + 1:args.index('--input-size') + 4] == ['3', '28', '28']  # RGB
    assert len(args[args.index('--mean') + 1:args.index('--std')]) == 3
    assert args[args.index('--model') + 1] == train_timm.DEFAULT_MODEL
    assert args[-4:] == ['--epochs', '1', '--experiment', 'quick']
    assert args[args.index('--output') + 1] == str(tmp_path / 'output' / 'train')


@pytest.mark.parametrize('timm_root', ['fake', 'real'])
def test_default_run_refuses_a_data_folder_among_options(fake_timm_root, tmp_path, capsys, monkeypatch, timm_root):
    """A data folder after other options is train.py's positional DIR too: the default run, which would ignore it,
    stops instead of training on Fashion-MNIST."""
    if timm_root == 'real':
        if not TIMM_ROOT:
            pytest.skip('needs timm\'s train.py: set TIMM_ROOT to a pytorch-image-models checkout')
        monkeypatch.setenv('TIMM_ROOT', TIMM_ROOT)
    monkeypatch.setattr(train_timm, '_visible_gpus', lambda: 0)
    monkeypatch.setattr(fashion_mnist, 'default_root', lambda: tmp_path / 'fm')
    monkeypatch.setattr(fashion_mnist, 'prepare_fashion_mnist_folder', _not_called)
    args = ['--dry-run', '--epochs', '1', '--mean', '0.5', '--model', 'test_resnet_ssm']
    assert train_timm.main([*args, '/data/imagenet']) == 2
    err = capsys.readouterr().err
    assert 'error: /data/imagenet stands where train.py takes a data folder' in err
    assert f'Put the data folder first ({train_timm.PROG} /data/imagenet ...) or give it as --data-dir' in err
    assert train_timm.main(args) == 0  # option values are no data folder
    assert train_timm.main(['--dry-run', '--epochs', '1', '--no-such-option', 'x']) == 0  # train.py's own error


def test_report_of_a_run(tmp_path, capsys):
    """The default run's last step on checkpoints written by timm's CheckpointSaver (train.py's): the top-1 table of
    timm_ssm.evaluate (averaged output and each sub-classifier) and where the files are. The run was stopped after
    its first of 2 epochs (Ctrl-C ends train.py's loop and it exits 0)."""
    data = tmp_path / 'data'
    for c in range(3):
        (data / 'validation' / f'class{c}').mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((24, 24, 3), 80 * c + 10 * i, np.uint8)).save(
                data / 'validation' / f'class{c}' / f'{c}{i}.png')
    run = tmp_path / 'run'
    run.mkdir()
    args = argparse.Namespace(
        model='test_resnet_ssm', num_classes=3, data_dir=str(data), dataset='', val_split='validation',
        in_chans=None, input_size=None, img_size=24, mean=None, std=None, crop_pct=1.0, interpolation='',
        batch_size=6, validation_batch_size=None, workers=0, device='cpu', model_ema=False, epochs=2,
        model_kwargs={})
    model = timm.create_model('test_resnet_ssm', num_classes=3)
    saver = CheckpointSaver(model, torch.optim.SGD(model.parameters(), lr=0.1), args=args, checkpoint_dir=str(run))
    saver.save_checkpoint(epoch=0, metric=50.)
    (run / 'args.yaml').write_text(yaml.safe_dump(vars(args)))
    (run / 'summary.csv').write_text('epoch,train_loss,eval_loss,eval_top1\n0,1.0,1.0,50.0\n')  # train.py's

    assert train_timm._report(run, split='validation') == 0
    out = capsys.readouterr().out
    result = json.loads((run / 'eval_validation.json').read_text())['models'][0]
    assert result['checkpoint'] == str(run / 'model_best.pth.tar')  # what the tools default to
    lines = out.splitlines()
    assert ('test_resnet_ssm interrupted after 1 of 2 epochs, model_best.pth.tar (epoch 1, chosen on the '
            'validation split), on the validation split') in out
    averaged = next(line for line in lines if line.strip().startswith('averaged (model output)'))
    assert float(averaged.split()[-1]) == pytest.approx(result['top1'], abs=0.005)
    assert [h['name'] for h in result['heads']] == ['FC1', 'FC2', 'FC3', 'FC4']
    for head, width in zip(result['heads'], (24, 48, 72, 96)):  # test_resnet: 96 features in 4 groups
        line = next(line for line in lines if line.strip().startswith(f'{head["name"]} (channels 0-{width - 1})'))
        assert float(line.split()[-1]) == pytest.approx(head['top1'], abs=0.005)
    assert f'last checkpoint:        {run / "last.pth.tar"}' in out
    assert 'FC4' in (run / 'eval_validation.txt').read_text()  # the evaluator's full table
    assert f'python -m timm_ssm.hub {run} --checkpoint model_best.pth.tar --repo-id ORG/NAME --dry-run' in out


@pytest.mark.parametrize('epochs_done, text', [
    (None, 'after 5 epochs'), (5, 'after 5 epochs'), (3, 'interrupted after 3 of 5 epochs'),
    (7, 'after 7 epochs'), (1, 'after 1 epoch'),  # 7: with --cooldown-epochs 2
])
def test_summary_names_the_epochs_trained(epochs_done, text):
    result = dict(models=[dict(top1=90., heads=[])], data=dict(num_samples=10))
    train_args = dict(model='m', epochs=1 if epochs_done == 1 else 5, val_split='test', dataset='torch/fashion_mnist')
    summary = train_timm.format_summary(result, train_args, Path('last.pth.tar'), epochs_done)
    assert f'm {text}, last.pth.tar, on the test split of torch/fashion_mnist (10 images):' in summary


def test_empty_timm_root(fake_timm_root, tmp_path, capsys):
    assert train_timm.main(['--timm-root=', '--data-dir', str(tmp_path), '--dry-run']) == 2
    err = capsys.readouterr().err
    assert 'error: --timm-root is empty: give the folder of a pytorch-image-models checkout' in err
    assert 'Traceback' not in err


def test_help_without_timm_root_does_not_download(tmp_path, monkeypatch, capsys):
    """--help prints the launch options at once; train.py's follow only when timm's source is already there."""
    monkeypatch.delenv('TIMM_ROOT', raising=False)
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    monkeypatch.setattr(timm_source, '_download_source', _not_called)
    assert train_timm.main(['--help']) == 0
    out = capsys.readouterr().out
    assert out.startswith(f'usage: {train_timm.PROG}') and '--timm-root DIR' in out
    assert "(listed once timm's source is on this machine: the first run without --timm-root or TIMM_ROOT " \
           "downloads it" in out and "timm's scripts are not in the cache" in out
    assert not (tmp_path / 'cache').exists()


@pytest.mark.parametrize('where', ['option', 'positional'])
def test_missing_data_dir(fake_timm_root, tmp_path, capsys, monkeypatch, where):
    monkeypatch.setattr(train_timm, '_visible_gpus', lambda: 0)
    monkeypatch.setattr(train_timm.Children, 'run', _not_called)
    monkeypatch.setattr(os, 'execv', _not_called)
    data = str(tmp_path / 'imagenet')
    args = ['--data-dir', data] if where == 'option' else [data]
    assert train_timm.main([*args, '--device', 'cpu', '--model', 'test_resnet_ssm']) == 2
    err = capsys.readouterr().err
    assert f'error: --data-dir {data} does not exist (the nearest existing folder is {tmp_path})' in err
    assert 'Traceback' not in err


def test_default_run_shows_each_option_once(fake_timm_root, tmp_path, capsys, monkeypatch):
    """The user's --model (and any other option of the default run) replaces the default's in the command."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(train_timm, '_visible_gpus', lambda: 0)
    monkeypatch.setattr(fashion_mnist, 'default_root', lambda: tmp_path / 'fm')
    assert train_timm.main(['--dry-run', '--model', 'test_convnext_ssm', '--mean', '0.5', '--epochs', '1']) == 0
    args = capsys.readouterr().out.strip().splitlines()[-1].split(' ')
    for option in ('--model', '--mean', '--epochs', '--std', '--input-size'):
        assert args.count(option) == 1, option
    assert args[args.index('--model') + 1] == 'test_convnext_ssm'
    assert args[args.index('--mean') + 1:args.index('--mean') + 3] == ['0.5', '--epochs']
    assert args[args.index('--input-size') + 1:args.index('--input-size') + 4] == ['3', '28', '28']


def test_default_run_leaves_out_train_py_result_json(capfd):
    """train.py's closing `--result` JSON (its last epochs' metrics) is not shown before the default run's table."""
    script = ('import json\nprint("epoch 4 done")\nprint("--result")\n'
              'print(json.dumps([{"epoch": 1}, {"epoch": 0}], indent=4))\nprint("after")\n')
    with train_timm.Children() as children:
        assert children.run([sys.executable, '-c', script], on_line=train_timm._ResultFilter()) == 0
        assert capfd.readouterr().out == 'epoch 4 done\nafter\n'
        assert children.run([sys.executable, '-c', script]) == 0
        assert '--result' in capfd.readouterr().out
        assert children.run([sys.executable, '-c', script.replace('[{"epoch": 1}, {"epoch": 0}]', '[]')],
                            on_line=train_timm._ResultFilter()) == 0
        assert capfd.readouterr().out == 'epoch 4 done\nafter\n'


def test_default_run_with_a_cache_that_is_a_file(fake_timm_root, tmp_path, capsys, monkeypatch):
    """The default run's data folder (`<cache>/timm_ssm/data`) under a file: a clear error before train.py."""
    monkeypatch.setattr(train_timm, '_visible_gpus', lambda: 0)
    monkeypatch.setattr(train_timm.Children, 'run', _not_called)
    (tmp_path / 'cache').write_text('x')  # fake_timm_root's XDG_CACHE_HOME
    assert train_timm.main(['--epochs', '1']) == 2
    err = capsys.readouterr().err
    assert f'error: The data cache folder {tmp_path / "cache" / "timm_ssm" / "data"} cannot be used as a folder: ' \
           f'{tmp_path / "cache"} is a file' in err
    assert 'Traceback' not in err and (tmp_path / 'cache').read_text() == 'x'


# a train.py that trains until stopped: a SIGINT ends its loop and it exits 0 (timm's train.py does the same)
SLEEPY_TRAIN_PY = '''
import os, sys, time
if __name__ == '__main__':
    out = os.environ['FAKE_TRAIN_OUT']
    args = sys.argv
    folder = os.path.join(args[args.index('--output') + 1], args[args.index('--experiment') + 1])
    with open(os.path.join(folder, 'summary.csv'), 'w') as f:
        f.write('epoch,train_loss,eval_loss,eval_top1\\n0,1.0,1.0,42.5\\n')
    with open(out + '.pid', 'w') as f:
        f.write(str(os.getpid()))
    try:
        while True:
            time.sleep(0.05)
    except KeyboardInterrupt:
        open(out + '.interrupted', 'w').close()
'''


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])  # SIGHUP as SIGTERM: tests/test_process.py
def test_signal_to_train_timm_sh_stops_train_py(fake_timm_root, fashion_mnist_cache, tmp_path, signum):
    """SIGTERM or SIGHUP (a job scheduler, a closed terminal) or SIGINT to train_timm.sh during the default run:
    train.py stops too, the partial report follows, the exit code is 128 + the signal's (130 for Ctrl-C)."""
    (fake_timm_root / 'train.py').write_text(SLEEPY_TRAIN_PY)
    out = tmp_path / 'train'
    env = dict(os.environ, CUDA_VISIBLE_DEVICES='', PYTHON=sys.executable, FAKE_TRAIN_OUT=str(out),
               XDG_CACHE_HOME=str(fashion_mnist_cache))
    proc = subprocess.Popen(['bash', str(REPO / 'train_timm.sh'), '--epochs', '3'], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not Path(f'{out}.pid').is_file() or not Path(f'{out}.pid').read_text():
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.05)
        train_pid = int(Path(f'{out}.pid').read_text())
        proc.send_signal(signum)  # to train_timm.sh alone, as a scheduler sends it
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # a failure above: leave nothing running
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 128 + signum, stderr
    assert not os.path.exists(f'/proc/{train_pid}'), 'train.py outlived train_timm.sh'
    name = signal.Signals(signum).name
    assert f'stopped by {name}: the default run is partial' in stderr and 'Traceback' not in stderr
    assert 'train.py finished 1 epoch (validation top-1 of the last: 42.50%)' in stderr
    assert 'timm_ssm.evaluate' not in stdout  # no evaluation started after the stop
    assert Path(f'{out}.interrupted').exists() == (signum == signal.SIGINT)  # train.py's own stop on Ctrl-C


def test_default_run_folders_are_unique(tmp_path, monkeypatch):
    """Two default runs started in the same second get two folders (made at once, so the second sees the first's)."""
    class _Now(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 12, 1, 10, 0, 0)
    monkeypatch.setattr(train_timm.datetime, 'datetime', _Now)
    first = train_timm._run_folder(tmp_path, None, 'test_resnet_ssm', dry_run=False)
    second = train_timm._run_folder(tmp_path, None, 'test_resnet_ssm', dry_run=False)
    assert first.name == 'fashion_mnist-test_resnet_ssm-20261201-100000' and first.is_dir()
    assert second.name == 'fashion_mnist-test_resnet_ssm-20261201-100000-2' and second.is_dir()
    assert train_timm._run_folder(tmp_path, 'mine', 'm', dry_run=False) == tmp_path / 'mine'  # the user's name


def test_config_by_name(fake_timm_root, tmp_path, capsys, monkeypatch):
    """`-c resnet50_ssm`: the recipe shipped in the package, as a wheel has it; a path still works."""
    monkeypatch.setattr(train_timm, '_visible_gpus', lambda: 0)
    shipped = train_timm.CONFIG_DIR / 'resnet50_ssm.yaml'
    for config in ('resnet50_ssm', 'resnet50_ssm.yaml', 'configs/resnet50_ssm.yaml', str(shipped)):
        assert train_timm.main(['--dry-run', '-c', config, '--data-dir', '/d', '--device', 'cpu']) == 0
        args = capsys.readouterr().out.strip().splitlines()[-1].split(' ')
        assert args[args.index('-c') + 1] == str(shipped)
    assert train_timm.main(['--dry-run', '-c', 'resnet51_ssm', '--data-dir', '/d']) == 2
    err = capsys.readouterr().err
    assert 'config file resnet51_ssm does not exist, and it is none of the recipes shipped with timm-ssm' in err
    assert 'finetune_ssm, resnet101_ssm, resnet18_ssm, resnet50_ssm, resnext101_ssm, resnext50_ssm' in err
    assert train_timm.config_names() == ['finetune_ssm', 'resnet101_ssm', 'resnet18_ssm', 'resnet50_ssm',
                                         'resnext101_ssm', 'resnext50_ssm']
