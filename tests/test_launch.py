"""`python -m timm_ssm.launch SCRIPT.py ARGS`: the script runs in this process as `python SCRIPT.py ARGS` would, with
the SSM models registered; train.py's run folder is locked while it runs."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from timm_ssm import launch

from clean_exit import exits_clearly

REPO = Path(__file__).resolve().parent.parent

SCRIPT = '''
import json, os, sys
import timm
info = dict(argv=sys.argv[1:], name=__name__, path0=sys.path[0], main=sys.modules['__main__'].__dict__ is globals(),
            ssm=timm.is_model('resnet50_ssm'), rank=os.environ.get('RANK'))
with open(os.path.join(os.environ['LAUNCH_TEST_OUT'], 'info-%s.json' % info['rank']), 'w') as f:
    json.dump(info, f)
if sys.argv[1] == 'raise':
    raise ValueError('raised by the script')
sys.exit(int(sys.argv[1]))
'''


@pytest.fixture
def script(tmp_path, monkeypatch):
    (tmp_path / 'scripts').mkdir()
    (tmp_path / 'scripts' / 'show.py').write_text(SCRIPT)
    monkeypatch.setenv('LAUNCH_TEST_OUT', str(tmp_path))
    return tmp_path / 'scripts' / 'show.py'


def test_script_runs_as_main_in_this_process(script, tmp_path):
    argv, path = list(sys.argv), list(sys.path)
    with pytest.raises(SystemExit) as e:
        launch.main([str(script), '5', '--flag', 'a value'])
    assert e.value.code == 5 and (sys.argv, sys.path) == (argv, path)
    info = json.loads((tmp_path / 'info-None.json').read_text())
    assert info == dict(argv=['5', '--flag', 'a value'], name='__main__', path0=str(script.parent), main=True, ssm=True,
                        rank=None)
    with pytest.raises(ValueError, match='raised by the script'):  # uncaught: the interpreter would exit 1
        launch.run_script(str(script), ['raise'])


def test_launch_under_torchrun(script, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')]))
    proc = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc-per-node=2', '--standalone', '-m',
                           'timm_ssm.launch', str(script), '0'], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in ('0', '1'):
        info = json.loads((tmp_path / f'info-{rank}.json').read_text())
        assert info['argv'] == ['0'] and info['name'] == '__main__' and info['ssm']


def test_script_names(tmp_path, monkeypatch, capsys):
    root = tmp_path / 'pytorch-image-models'
    root.mkdir()
    (root / 'train.py').write_text('')
    (root / 'validate.py').write_text('import sys\nprint("validate", sys.argv[1:])\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv('TIMM_ROOT', str(root))
    launch.main(['validate.py', '-b', '1'])  # a bare name: timm's source
    assert capsys.readouterr().out == "validate ['-b', '1']\n"
    for argv, message in (([], 'the following arguments are required: SCRIPT.py'),
                          (['no/such/script.py'], 'no/such/script.py is neither a file here nor a script'),
                          (['benchmark.py'], 'benchmark.py is neither a file here nor a script of timm')):
        exits_clearly(launch.main, argv, capsys, message)


# timm's train.py's two parsers (a `-c` config first, then the rest)
TRAIN_PY = '''
import argparse
config_parser = parser = argparse.ArgumentParser(add_help=False)
parser.add_argument('-c', '--config', default='')
parser = argparse.ArgumentParser()
parser.add_argument('--output', default='')
parser.add_argument('--experiment', default='')
if __name__ == '__main__':
    print('train.py ran')
'''


def test_second_run_into_a_live_folder_is_refused(tmp_path, capsys):
    """The lock another run holds on --output/--experiment (named on the command line or in a -c config) stops a
    second run at once; once the first ends, the folder is free."""
    (tmp_path / 'train.py').write_text(TRAIN_PY)
    (tmp_path / 'cfg.yaml').write_text(f'output: {tmp_path / "out"}\n')
    argv = [str(tmp_path / 'train.py'), '-c', str(tmp_path / 'cfg.yaml'), '--experiment', 'exp']
    with launch.run_folder_lock(tmp_path / 'out' / 'exp'):
        message = f'another train.py run is writing {tmp_path / "out" / "exp"} now: give this run another --experiment'
        exits_clearly(launch.main, argv, capsys, re.escape(message))
    launch.main(argv)
    assert capsys.readouterr().out == 'train.py ran\n'
