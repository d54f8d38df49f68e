"""The default run end to end with timm's real train.py, in one process, on a tiny Fashion-MNIST of random images, and
what a newcomer does next with its folder: timm's own inference.py with the classes' names (needs TIMM_ROOT)."""
import contextlib
import csv
import io
import json
import os
import subprocess

import pytest
import yaml

from timm_ssm import launch, train_timm

pytestmark = pytest.mark.skipif(not os.environ.get('TIMM_ROOT'), reason='needs timm\'s train.py and inference.py: set '
                                'TIMM_ROOT to a pytorch-image-models checkout')


@pytest.fixture(scope='module')
def default_run(tiny_cache, tmp_path_factory):
    """`./train_timm.sh --epochs 2 --workers 0 -b 50`, run in this process; no child process may start."""
    work = tmp_path_factory.mktemp('work')
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setenv('XDG_CACHE_HOME', str(tiny_cache))
        mp.setenv('OMP_NUM_THREADS', '1')
        mp.setattr('torch.cuda.device_count', lambda: 0)
        mp.setattr(subprocess.Popen, '__init__', lambda *args, **kwargs: pytest.fail('a child process started'))
        with contextlib.redirect_stdout(io.StringIO()) as out:
            assert train_timm.main(['--epochs', '2', '--workers', '0', '-b', '50']) == 0
    run = next((work / 'output' / 'train').iterdir())
    return run, tiny_cache / 'timm_ssm' / 'data' / 'fashion_mnist_images', out.getvalue()


def test_default_run_chooses_nothing_on_test(default_run):
    run, data, out = default_run
    train_args = yaml.safe_load((run / 'args.yaml').read_text())
    assert (train_args['train_split'], train_args['val_split'], train_args['data_dir']) == ('train', 'validation',
                                                                                            str(data))
    assert train_args['input_size'] == [3, 28, 28] and train_args['epochs'] == 2 and train_args['device'] == 'cpu'
    result = json.loads((run / 'eval_test.json').read_text())  # what the Hub tool reads by default
    model = result['models'][0]
    assert model['checkpoint'] == str(run / 'model_best.pth.tar') and result['data']['num_samples'] == 20
    best = max(csv.DictReader(open(run / 'summary.csv')), key=lambda r: float(r['eval_top1']))
    assert model['epoch'] == int(best['epoch'])  # train.py's count, from 0, as the checkpoint, the hub and the card
    assert (f'test_resnet_ssm, model_best.pth.tar of epoch {model["epoch"]} (train.py counts from 0; the best on the '
            f'validation split): top-1 {model["top1"]:.2f}% on the 20 test images') in out
    assert f'python -m timm_ssm.hub {run} --checkpoint model_best.pth.tar --repo-id ORG/NAME --dry-run' in out


def test_timm_inference_py_names_the_classes(default_run, capsys):
    """docs/training.md's inference.py command: the folder's class names in the CSV, the evaluator's top-1."""
    run, data, _ = default_run
    names = sorted(os.listdir(data / 'test'))
    launch.main(['inference.py', '--data-dir', str(data / 'test'), '--model', 'test_resnet_ssm', '--num-classes', '10',
                 '--input-size', '3', '28', '28', '--mean', '0.286', '0.286', '0.286', '--std', '0.353', '0.353',
                 '0.353', '--crop-pct', '1.0', '--interpolation', 'bilinear', '--device', 'cpu', '--workers', '0',
                 '--checkpoint', str(run / 'model_best.pth.tar'), '--topk', '1', '--results-dir', str(run / 'pred'),
                 '--no-console-results', '--label-type', 'name', '--model-kwargs',
                 f'pretrained_cfg_overlay={{"label_names": {names}}}'])
    assert 'Cannot deduce ImageNet subset' not in capsys.readouterr().err
    with open(next((run / 'pred').glob('*.csv')), newline='') as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 20 and {r['label'] for r in rows} <= set(names)
    truth = {p.name: p.parent.name for p in (data / 'test').glob('*/*.png')}
    top1 = 100 * sum(r['label'] == truth[r['filename']] for r in rows) / len(rows)
    assert top1 == pytest.approx(json.loads((run / 'eval_test.json').read_text())['models'][0]['top1'])
