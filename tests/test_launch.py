"""`python -m timm_ssm.launch SCRIPT.py ARGS`: the script runs as if started directly, with the SSM models."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from timm_ssm import launch

REPO = Path(__file__).resolve().parent.parent

SCRIPT = '''
import json, os, sys
info = dict(
    argv=sys.argv, name=__name__, file=__file__, path0=sys.path[0],
    main_is_self=sys.modules['__main__'].__dict__ is globals(),
    ssm_registered='timm' in sys.modules and sys.modules['timm'].is_model('resnet50_ssm'),
    rank=os.environ.get('RANK'),
)
out = os.environ['LAUNCH_TEST_OUT']
with open(os.path.join(out, 'info-%s.json' % (info['rank'] or 'single')), 'w') as f:
    json.dump(info, f)
if len(sys.argv) > 1 and sys.argv[1] == 'raise':
    raise ValueError('raised by the script')
sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
'''


def _env(out: Path) -> dict:
    env = dict(os.environ, LAUNCH_TEST_OUT=str(out))
    env['PYTHONPATH'] = os.pathsep.join([str(REPO), env.get('PYTHONPATH', '')]).rstrip(os.pathsep)
    return env


@pytest.fixture
def script(tmp_path):
    folder = tmp_path / 'scripts'
    folder.mkdir()
    path = folder / 'show.py'
    path.write_text(SCRIPT)
    return path


def test_launch_runs_script_as_main(script, tmp_path):
    """Same sys.argv, __main__, __file__, sys.path[0] and exit code as `python show.py 3`."""
    out = tmp_path / 'out'
    out.mkdir()
    cmd = [sys.executable, '-m', 'timm_ssm.launch', 'show.py', '3', '--flag', 'value with space']
    proc = subprocess.run(cmd, cwd=script.parent, env=_env(out), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    launched = json.loads((out / 'info-single.json').read_text())

    direct = subprocess.run(
        [sys.executable, 'show.py', '3', '--flag', 'value with space'],
        cwd=script.parent, env=_env(out), capture_output=True, text=True, timeout=120)
    assert direct.returncode == 3, direct.stderr
    direct_info = json.loads((out / 'info-single.json').read_text())

    assert launched['argv'] == ['show.py', '3', '--flag', 'value with space']
    assert launched['name'] == '__main__'
    assert launched['main_is_self']
    assert launched['ssm_registered']
    assert not direct_info['ssm_registered']  # the launcher is what registers them
    for key in ('argv', 'name', 'file', 'path0', 'main_is_self'):
        assert launched[key] == direct_info[key], key


def test_launch_under_torchrun(script, tmp_path):
    """torchrun ... -m timm_ssm.launch SCRIPT: every process runs the script with the models registered."""
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc-per-node=2', '--standalone',
           '-m', 'timm_ssm.launch', str(script), '0']
    proc = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in ('0', '1'):
        info = json.loads((tmp_path / f'info-{rank}.json').read_text())
        assert info['argv'] == [str(script), '0']
        assert info['name'] == '__main__' and info['ssm_registered']


def test_run_script_in_process(script, tmp_path, monkeypatch):
    monkeypatch.setenv('LAUNCH_TEST_OUT', str(tmp_path))
    monkeypatch.setattr(sys, 'argv', list(sys.argv))
    monkeypatch.setattr(sys, 'path', [os.getcwd(), *sys.path[1:]])
    monkeypatch.setitem(sys.modules, '__main__', sys.modules['__main__'])
    with pytest.raises(ValueError, match='raised by the script'):  # uncaught: the interpreter exits 1
        launch.run_script(str(script), ['raise'])
    with pytest.raises(SystemExit) as e:
        launch.run_script(str(script), ['5', 'x'])
    assert e.value.code == 5
    info = json.loads((tmp_path / 'info-single.json').read_text())
    assert info['argv'] == [str(script), '5', 'x']
    assert info['file'] == str(script)
    assert info['path0'] == str(script.parent)
    assert info['ssm_registered'] and info['main_is_self']


def test_launch_usage_and_missing_script(capsys):
    with pytest.raises(SystemExit) as e:
        launch.main([])
    assert e.value.code == 2
    assert 'usage: python -m timm_ssm.launch SCRIPT.py' in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        launch.main(['--help'])
    assert e.value.code == 0
    with pytest.raises(SystemExit) as e:
        launch.main(['no/such/script.py'])
    assert e.value.code == 2
    assert 'no/such/script.py: no such script' in capsys.readouterr().err


def test_resolve_bare_name_from_timm_root(tmp_path, monkeypatch):
    root = tmp_path / 'pytorch-image-models'
    root.mkdir()
    (root / 'train.py').write_text('')
    (root / 'validate.py').write_text('')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv('TIMM_ROOT', str(root))
    assert launch.resolve_script('validate.py') == str(root / 'validate.py')
    (tmp_path / 'validate.py').write_text('')  # a file here wins, as for `python validate.py`
    assert launch.resolve_script('validate.py') == 'validate.py'
    with pytest.raises(FileNotFoundError, match='neither a file here nor a script of timm'):
        launch.resolve_script('benchmark.py')


# timm's train.py's two parsers (a `-c` config first, then the rest), a run that holds its folder until told to end
TRAIN_PY = '''
import argparse, os, sys, time
config_parser = parser = argparse.ArgumentParser(add_help=False)
parser.add_argument('-c', '--config', default='')
parser = argparse.ArgumentParser()
parser.add_argument('--output', default='')
parser.add_argument('--experiment', default='')
if __name__ == '__main__':
    args = parser.parse_known_args(config_parser.parse_known_args()[1])[0]
    folder = os.path.join(args.output or './output/train', args.experiment)
    open(os.path.join(folder, 'started-%d' % os.getpid()), 'w').close()
    while not os.path.exists(os.path.join(folder, 'end')):
        time.sleep(0.05)
'''


def test_second_train_py_into_the_same_folder_is_refused(tmp_path):
    """Two train.py runs into one --output/--experiment folder: the second stops at once, the first runs on; the lock
    goes with the process, even one killed with SIGKILL."""
    (tmp_path / 'train.py').write_text(TRAIN_PY)
    (tmp_path / 'cfg.yaml').write_text(f'output: {tmp_path / "out"}\n')
    folder = tmp_path / 'out' / 'exp'
    cmd = [sys.executable, '-m', 'timm_ssm.launch', str(tmp_path / 'train.py'), '--experiment', 'exp']
    first = subprocess.Popen(cmd + ['--output', str(tmp_path / 'out')], env=_env(tmp_path))
    try:
        while not list(folder.glob('started-*')):
            assert first.poll() is None
        second = subprocess.run(cmd + ['-c', str(tmp_path / 'cfg.yaml')], env=_env(tmp_path), capture_output=True,
                                text=True, timeout=120)  # the same folder, named by the config's output
        assert second.returncode == 2 and 'Traceback' not in second.stderr
        assert f'another train.py run is writing {folder} now' in second.stderr
        assert 'Give this run another --experiment NAME' in second.stderr
        assert len(list(folder.glob('started-*'))) == 1 and first.poll() is None
    finally:
        first.kill()
        first.wait()
    third = subprocess.Popen(cmd + ['--output', str(tmp_path / 'out')], env=_env(tmp_path))
    while len(list(folder.glob('started-*'))) < 2:
        assert third.poll() is None, 'the lock of a killed run was not released'
    (folder / 'end').touch()
    assert third.wait(timeout=60) == 0


def test_train_output_folder_follows_train_py(tmp_path):
    (tmp_path / 'train.py').write_text(TRAIN_PY)
    train_py = str(tmp_path / 'train.py')
    assert launch.train_output_folder(train_py, ['--experiment', 'e']) == Path('./output/train/e')
    assert launch.train_output_folder(train_py, ['--output', '/o', '--experiment=e']) == Path('/o/e')
    assert launch.train_output_folder(train_py, ['--output', '/o']) is None  # train.py names it by the time
    assert launch.train_output_folder(train_py, ['-c', str(tmp_path / 'missing.yaml')]) is None  # train.py says why
