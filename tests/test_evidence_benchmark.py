"""benchmarks/fashion_mnist_evidence.py keeps a finished run only when it was trained with the same arguments."""
import importlib.util
import json
import os

import pytest

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks',
                     'fashion_mnist_evidence.py')


@pytest.fixture(scope='module')
def evidence():
    spec = importlib.util.spec_from_file_location('fashion_mnist_evidence', _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_run(runs, name, train_args, epochs):
    run_dir = runs / name
    run_dir.mkdir(parents=True)
    (run_dir / 'last.pth.tar').write_bytes(b'')
    (run_dir / 'summary.csv').write_text('epoch,train_loss\n' + ''.join(f'{e},1.0\n' for e in range(epochs)))
    (run_dir / 'run.json').write_text(json.dumps(dict(train_args=train_args, seconds=60.0, load=1.0)))


def test_kept_only_with_same_arguments(evidence, tmp_path, monkeypatch):
    def _no_training(*args, **kwargs):
        raise AssertionError('train.py started')

    monkeypatch.setattr(evidence.subprocess, 'call', _no_training)
    runs = tmp_path / 'runs'
    args = evidence.parser.parse_args(['--epochs', '3', '--device', 'cpu'])
    data_dir = str(tmp_path / 'data')
    train_args = ['--model', 'test_resnet_ssm', '--seed', '0', *evidence.recipe(args, data_dir),
                  '--experiment', 'test_resnet_ssm-seed0', '--model-kwargs', 'num_splits=4']
    _fake_run(runs, 'test_resnet_ssm-seed0', train_args, epochs=3)
    assert evidence.train(args, 'test_resnet_ssm', 0, data_dir, str(runs))['seconds'] == 60.0

    run_dir = str(runs / 'test_resnet_ssm-seed0')
    assert evidence.finished_run(run_dir, train_args, 3) is not None
    assert evidence.finished_run(run_dir, train_args, 2) is None  # more epochs than asked for
    assert evidence.finished_run(run_dir, train_args, 4) is None
    for i, other in enumerate([['--lr', '0.05'], ['--img-size', '32'], ['--num-splits', '2'], ['--epochs', '2'],
                               ['--train-args', '--drop', '0.1']]):
        runs = tmp_path / f'other{i}'
        _fake_run(runs, 'test_resnet_ssm-seed0', train_args, epochs=3)
        other_args = evidence.parser.parse_args(['--epochs', '3', '--device', 'cpu'] + other)
        with pytest.raises(AssertionError, match='train.py started'):  # trained again, not kept
            evidence.train(other_args, 'test_resnet_ssm', 0, data_dir, str(runs))
