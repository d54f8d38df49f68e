"""The default run end to end with timm's real train.py, and what a newcomer does next with its folder: timm's own
inference.py, the Hub export and transformers' image-classification pipeline, unchanged (needs TIMM_ROOT).

The run is the default run as `train_timm.sh` makes it, on a small copy of its Fashion-MNIST image folder (so that
the test takes a minute, not ten)."""
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from timm_ssm import fashion_mnist

REPO = Path(__file__).resolve().parent.parent
TIMM_ROOT = os.environ.get('TIMM_ROOT')

pytestmark = pytest.mark.skipif(
    not TIMM_ROOT, reason='needs timm\'s train.py and inference.py: set TIMM_ROOT to a pytorch-image-models checkout')


@pytest.fixture(scope='module')
def default_run(fashion_mnist_cache, tmp_path_factory):
    """The default run (1 epoch) on 30 training, 10 validation and 10 test images of each class."""
    cache = tmp_path_factory.mktemp('small_cache')
    full = fashion_mnist_cache / 'timm_ssm' / 'data'
    data = cache / 'timm_ssm' / 'data'
    shutil.copytree(full / 'FashionMNIST', data / 'FashionMNIST', copy_function=os.link)
    for split, n in (('train', 30), ('validation', 10), ('test', 10)):
        for name in fashion_mnist.CLASS_NAMES:
            (data / fashion_mnist.FOLDER_NAME / split / name).mkdir(parents=True)
            for png in sorted((full / fashion_mnist.FOLDER_NAME / split / name).iterdir())[:n]:
                os.link(png, data / fashion_mnist.FOLDER_NAME / split / name / png.name)
    shutil.copy(full / fashion_mnist.FOLDER_NAME / 'manifest.json', data / fashion_mnist.FOLDER_NAME)

    work = tmp_path_factory.mktemp('work')
    env = dict(os.environ, XDG_CACHE_HOME=str(cache), PYTHON=sys.executable, CUDA_VISIBLE_DEVICES='')
    proc = subprocess.run(['bash', str(REPO / 'train_timm.sh'), '--epochs', '1', '--workers', '0', '-b', '50'],
                          cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = next((work / 'output' / 'train').iterdir())
    return run, data / fashion_mnist.FOLDER_NAME, proc.stdout, env


def test_default_run_chooses_nothing_on_test(default_run):
    run, data, out, _ = default_run
    train_args = yaml.safe_load((run / 'args.yaml').read_text())
    assert (train_args['train_split'], train_args['val_split']) == ('train', 'validation')
    assert train_args['input_size'] == [3, 28, 28] and train_args['data_dir'] == str(data)
    # model_best is chosen on the validation split and evaluated once on the test split
    assert 'model_best.pth.tar (epoch 1, chosen on the validation split), on the test split' in out
    result = json.loads((run / 'eval_test.json').read_text())
    assert result['models'][0]['checkpoint'] == str(run / 'model_best.pth.tar')
    assert result['data']['num_samples'] == 100
    assert f'python -m timm_ssm.hub {run} --checkpoint model_best.pth.tar' in out


def test_timm_inference_py_on_the_default_run(default_run, tmp_path):
    """timm's inference.py, unchanged, on the run's checkpoint and the test images (3-channel input)."""
    run, data, _, env = default_run
    from timm_ssm.fashion_mnist import MEAN, STD
    cmd = [sys.executable, '-m', 'timm_ssm.launch', 'inference.py', '--data-dir', str(data / 'test'),
           '--model', 'test_resnet_ssm', '--num-classes', '10', '--checkpoint', str(run / 'model_best.pth.tar'),
           '--input-size', '3', '28', '28', '--mean', *map(str, MEAN * 3), '--std', *map(str, STD * 3),
           '--crop-pct', '1.0', '--interpolation', 'bilinear', '--device', 'cpu', '--workers', '0',
           '--results-dir', str(tmp_path), '--results-file', 'inference', '--no-console-results', '--include-index']
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / 'inference.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 100
    # its predictions are the model's: the same top-1 as timm_ssm.evaluate measured on the same images
    truth = {p.name: sorted(fashion_mnist.CLASS_NAMES).index(p.parent.name) for p in (data / 'test').glob('*/*.png')}
    top1 = 100 * sum(int(r['index']) == truth[r['filename']] for r in rows) / len(rows)
    result = json.loads((run / 'eval_test.json').read_text())
    assert top1 == pytest.approx(result['models'][0]['top1'], abs=1e-6)


def test_onnx_export_py_on_the_default_run(default_run, tmp_path):
    """timm's onnx_export.py builds in_chans=3, as the default run's model is (when the checkout has it)."""
    run, _, _, env = default_run
    if not (Path(TIMM_ROOT) / 'onnx_export.py').is_file():
        pytest.skip(f'{TIMM_ROOT} has no onnx_export.py')
    pytest.importorskip('onnx', reason='timm\'s onnx_export.py needs the onnx package')
    cmd = [sys.executable, '-m', 'timm_ssm.launch', 'onnx_export.py', str(tmp_path / 'model.onnx'),
           '--model', 'test_resnet_ssm', '--num-classes', '10', '--checkpoint', str(run / 'model_best.pth.tar'),
           '--img-size', '28']
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and (tmp_path / 'model.onnx').is_file(), proc.stderr[-3000:]


def test_hub_export_and_transformers_pipeline(default_run, tmp_path):
    """The Hub dry-run's folder, read by transformers' image-classification pipeline, which feeds RGB images."""
    transformers = pytest.importorskip('transformers')
    from PIL import Image
    run, data, _, env = default_run
    out = tmp_path / 'export'
    proc = subprocess.run([sys.executable, '-m', 'timm_ssm.hub', str(run), '--repo-id', 'ORG/NAME', '--dry-run',
                           '--out', str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((out / 'config.json').read_text())
    assert config['pretrained_cfg']['input_size'] == [3, 28, 28]
    assert 'num_classes' not in config['model_args']  # transformers passes it to timm.create_model itself
    import timm_ssm  # noqa: F401  registers test_resnet_ssm for transformers' timm wrapper
    classify = transformers.pipeline('image-classification', model=str(out))
    image = Image.open(next((data / 'test' / 'sneaker').iterdir()))
    assert image.mode == 'L'
    labels = [p['label'] for p in classify(image, top_k=10)]
    assert sorted(labels) == sorted(fashion_mnist.CLASS_NAMES)
