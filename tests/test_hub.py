"""timm_ssm.hub (and hub_upload/upload.py over it): train.py runs in timm's Hub format, their card, round trips
through local-dir:, hf-hub: and transformers, uploads to a local stand-in for the Hub's HTTP API.

Run folders are made as train.py makes them: timm's `CheckpointSaver` (with model EMA), args.yaml, summary.csv by
`timm.utils.update_summary`, on an image folder with train/, validation/ and test/ splits that `timm_ssm.evaluate`
evaluates. With TIMM_ROOT set, one test trains with timm's real train.py.
"""
import argparse
import contextlib
import importlib.util
import io
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
import yaml
from huggingface_hub import ModelCard, ModelCardData, constants
from PIL import Image

import timm
import timm_ssm  # noqa: F401  (registers the *_ssm models)
from timm.models import load_state_dict
from timm.utils import CheckpointSaver, ModelEmaV3, update_summary
from timm_ssm import evaluate, launch
from timm_ssm import hub as ssm_hub
from timm_ssm.hub import main
from timm_ssm.runs import Run

from hub_server import FakeHub

REPO = Path(__file__).resolve().parents[1]
CLASSES = ['boot', 'coat', 'dress', 'shirt', 'sneaker']
EXPORT_FILES = ['README.md', 'config.json', 'model.safetensors']
TOP1 = (40.0, 75.0, 60.0)  # best at epoch 1, so model_best is not the last epoch
HEAD = dict(num_splits=3, norm_all=True)
TOKEN = 'hf_SsmTestTokenDoNotPrint0123456789'


@pytest.fixture(scope='module', autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models gain nothing from threads that spin on a shared machine
    yield
    torch.set_num_threads(threads)


def _image_folder(root: Path, split: str, per_class: int = 2) -> Path:
    for c in CLASSES:
        (root / split / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.random.randint(0, 255, (12, 12), dtype=np.uint8)).save(root / split / c / f'{i}.png')
    return root


def make_run(root: Path, ema: bool = True, **overrides):
    """A train.py output folder on an image folder; returns it and the model and EMA state dicts of each epoch."""
    for split in ('train', 'validation', 'test'):
        _image_folder(root / 'data', split)
    args = argparse.Namespace(**dict(dict(
        model='test_resnet_ssm', pretrained=False, pretrained_path=None, initial_checkpoint='', resume='',
        num_classes=len(CLASSES), in_chans=1, img_size=48, input_size=None, crop_pct=0.9, mean=[0.3], std=[0.35],
        interpolation='bicubic', gp=None, bn_momentum=None, bn_eps=None, model_kwargs=dict(HEAD),
        data_dir=str(root / 'data'), dataset='', train_split='train', val_split='validation', class_map='',
        output=str(root / 'output'), experiment='tiny', eval_metric='top1', epochs=len(TOP1), batch_size=8,
        opt='sgd', lr=0.1, sched='cosine', model_ema=ema, model_ema_decay=0.5, model_ema_force_cpu=False,
        device='cpu'), **overrides))
    run = root / 'output' / 'tiny'
    run.mkdir(parents=True)
    torch.manual_seed(0)
    model = timm.create_model(args.model, num_classes=args.num_classes, in_chans=args.in_chans, **args.model_kwargs)
    model_ema = ModelEmaV3(model, decay=args.model_ema_decay) if ema else None
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    (run / 'args.yaml').write_text(yaml.safe_dump(vars(args)))
    saver = CheckpointSaver(model, optimizer, args=args, model_ema=model_ema, checkpoint_dir=str(run),
                            recovery_dir=str(run), decreasing=False, max_history=2)
    states, ema_states = [], []
    for epoch, top1 in enumerate(TOP1):
        loss = F.cross_entropy(model(torch.randn(8, args.in_chans, 32, 32)), torch.randint(0, len(CLASSES), (8,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if model_ema is not None:
            model_ema.update(model)
            ema_states.append({k: v.clone() for k, v in model_ema.module.state_dict().items()})
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        metrics = OrderedDict(loss=2.0 - epoch / 10, top1=top1, top5=top1 + 20)
        update_summary(epoch, OrderedDict(loss=loss.item()), metrics, filename=str(run / 'summary.csv'), lr=args.lr,
                       write_header=epoch == 0)
        saver.save_checkpoint(epoch, metric=top1)
    return run, states, ema_states


def _evaluate(run: Path, json_path: Path, *extra):
    data_dir = yaml.safe_load((run / 'args.yaml').read_text())['data_dir']
    evaluate.main(['--checkpoint', str(run), '--data-dir', data_dir, '--device', 'cpu', '-b', '8', '-j', '0',
                   '--no-progress', '--json', str(json_path), *extra])


@pytest.fixture(scope='module')
def train_run(tmp_path_factory):
    """The module's run, its test split evaluated into eval_test.json (as the default run of train_timm.sh does)."""
    run, states, ema_states = make_run(tmp_path_factory.mktemp('train'))
    _evaluate(run, run / 'eval_test.json', '--split', 'test')
    return run, states, ema_states


def _dry_run(run: Path, out: Path, *extra, repo_id='someone/tiny-ssm') -> str:
    """The export's stdout."""
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main([str(run), '--repo-id', repo_id, '--dry-run', '--out', str(out), *extra]) == 0
    return stdout.getvalue()


@pytest.fixture(scope='module')
def export(train_run, tmp_path_factory):
    """The --dry-run export of the module's run, and what the tool printed."""
    out = tmp_path_factory.mktemp('export') / 'tiny-ssm'
    return out, _dry_run(train_run[0], out, '--tag', 'fashion')


@pytest.fixture(scope='module')
def rgb_export(tmp_path_factory):
    """The dry-run export of a 3-channel run."""
    root = tmp_path_factory.mktemp('rgb')
    run = make_run(root, ema=False, in_chans=3, mean=[0.3] * 3, std=[0.35] * 3)[0]
    _dry_run(run, root / 'export', repo_id='someone/rgb-ssm')
    return root / 'export'


def _reference_model(checkpoint: Path, use_ema: bool = False):
    """The checkpoint's model, built and loaded without timm_ssm's run road (timm's loader, weights_only)."""
    model = timm.create_model('test_resnet_ssm', num_classes=len(CLASSES), in_chans=1, **HEAD)
    model.load_state_dict(load_state_dict(str(checkpoint), use_ema=use_ema, weights_only=True))
    return model.eval()


def _card(out: Path):
    """The README.md text and its metadata, read by huggingface_hub's own parser."""
    return (out / 'README.md').read_text(), ModelCard.load(out / 'README.md').data


def _fails(argv, capsys, match, out=None, rc=2) -> str:
    assert main(argv) == rc
    err = capsys.readouterr().err
    assert re.search(match, err) and 'Traceback' not in err, err
    assert out is None or not Path(out).exists()
    return err


# --- the export ---

def test_export_files_weights_and_config(export, train_run):
    out, stdout = export
    _, states, _ = train_run
    assert sorted(os.listdir(out)) == EXPORT_FILES
    umask = os.umask(0)
    os.umask(umask)
    assert {(out / name).stat().st_mode & 0o777 for name in EXPORT_FILES} == {0o666 & ~umask}  # as open() makes files
    assert f'Wrote {out}:' in stdout and 'model.safetensors' in stdout and 'Nothing was sent' in stdout
    tensors = safetensors.torch.load_file(out / 'model.safetensors')
    best = states[TOP1.index(max(TOP1))]
    assert tensors.keys() == best.keys() and all(torch.equal(tensors[k], v) for k, v in best.items())
    config = json.loads((out / 'config.json').read_text())
    assert (config['architecture'], config['num_classes'], config['global_pool']) == ('test_resnet_ssm', 5, 'avg')
    # every head argument explicit; num_classes at the top level only (transformers passes its own)
    assert config['model_args'] == dict(in_chans=1, split=True, **HEAD)
    assert config['label_names'] == CLASSES
    cfg = config['pretrained_cfg']
    assert (cfg['input_size'], cfg['interpolation'], cfg['crop_pct'], cfg['mean'], cfg['std']) == (
        [1, 48, 48], 'bicubic', 0.9, [0.3], [0.35])
    assert cfg['license'] == 'apache-2.0' and not {'tag', 'hf_hub_id', 'url', 'file', 'source'} & set(cfg)


def test_card(export, train_run):
    out, stdout = export
    run = train_run[0]
    readme, meta = _card(out)
    assert (meta.library_name, meta.pipeline_tag, meta.license) == ('timm', 'image-classification', 'apache-2.0')
    assert {'timm', 'timm-ssm', 'split-and-share', 'fashion'} <= set(meta.tags) and not meta.datasets
    assert ModelCardData(**meta.to_dict()).to_dict() == meta.to_dict()
    # train.py's results: the final epoch and the published weights' (the best) from summary.csv
    assert '| Final | 2 | 60.00 | 80.00 | 1.8000 |' in readme
    assert '| Published weights, Best by top1 | 1 | 75.00 | 95.00 | 1.9000 |' in readme
    assert '`model_best.pth.tar`, epoch 1.' in readme and 'these are the non-EMA weights' in readme
    # the evaluation of the held-out test split, named by its folder, in the card and in model-index
    evaluation = json.loads((run / 'eval_test.json').read_text())['models'][0]
    assert 'eval_test.json (the held-out split `test`' in stdout
    assert "10 images at 48 x 48 (`eval_test.json`): the held-out split `test` of the run's data set." in readme
    for head, width in zip(evaluation['heads'], (32, 64, 96)):
        assert f'| {head["name"]} | 0-{width - 1} | {head["top1"]:.2f} | {head["top5"]:.2f} |' in readme
    assert f'| Oracle: any sub-classifier right | | {evaluation["oracle"]["top1"]:.2f} | |' in readme
    assert [(r.metric_type, r.metric_value, r.dataset_split, r.dataset_name) for r in meta.eval_results] == [
        ('accuracy', round(evaluation['top1'], 2), 'test', 'image folder data'),
        ('top_5_accuracy', round(evaluation['top5'], 2), 'test', 'image folder data')]
    # train.py's arguments, without a path of the machine it ran on
    args = yaml.safe_load(readme.split('```yaml\n')[1].split('```')[0])
    assert args['lr'] == 0.1 and args['model_kwargs'] == HEAD and 'data_dir' not in args
    assert 'left out as local paths: data_dir, output' in readme and str(run.parents[2]) not in readme
    assert 'doi     = {10.3390/electronics11020235}' in readme and '@misc{rw2019timm' in readme


@pytest.mark.parametrize('in_chans', [1, 3])
def test_card_usage_code_runs(in_chans, export, rgb_export, hub_cache, tmp_path, monkeypatch, capsys):
    """Every code block of the card runs as written (timm, feature maps, embeddings, transformers, fine-tuning),
    from the Hugging Face cache under the card's repo id."""
    out = export[0] if in_chans == 1 else rgb_export
    hub_cache.put('someone/tiny-ssm' if in_chans == 1 else 'someone/rgb-ssm', out)
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.random.randint(0, 255, (40, 40), dtype=np.uint8)).save('image.png')
    blocks = re.findall(r'```python\n(.*?)```', (out / 'README.md').read_text(), re.S)
    assert len(blocks) == 5
    for code in blocks:
        if 'transformers' not in code or importlib.util.find_spec('transformers'):
            exec(compile(code, 'README.md', 'exec'), {})
    printed = capsys.readouterr().out
    assert any(c in printed for c in CLASSES) and 'torch.Size([1, 96])' in printed, printed


@pytest.mark.parametrize('in_chans', [1, 3])
def test_round_trip_timm_and_transformers(in_chans, export, rgb_export, train_run, hub_cache):
    """local-dir: and hf-hub: (from the cache, offline) give the checkpoint's logits; so do transformers'
    AutoModelForImageClassification, TimmWrapperModel (the pooled feature) and the pipeline (timm's top-3)."""
    out, repo_id = (export[0], 'someone/tf1-ssm') if in_chans == 1 else (rgb_export, 'someone/tf3-ssm')
    hub_cache.put(repo_id, out)
    model = timm.create_model(f'hf-hub:{repo_id}', pretrained=True).eval()
    x = torch.randn(3, in_chans, 48, 48)
    with torch.no_grad():
        logits, features = model(x), model.forward_head(model.forward_features(x), pre_logits=True)
        torch.testing.assert_close(timm.create_model(f'local-dir:{out}', pretrained=True).eval()(x), logits)
        if in_chans == 1:
            torch.testing.assert_close(_reference_model(train_run[0] / 'model_best.pth.tar')(x), logits)
        tf = pytest.importorskip('transformers', reason='transformers is in the test extra: pip install ".[test]"')
        auto = tf.AutoModelForImageClassification.from_pretrained(repo_id).eval()
        assert auto.config.id2label == dict(enumerate(CLASSES))
        torch.testing.assert_close(auto(x).logits, logits, rtol=1e-5, atol=1e-5)
        wrapper = tf.TimmWrapperModel.from_pretrained(str(out)).eval()
        torch.testing.assert_close(wrapper(x).pooler_output, features, rtol=1e-5, atol=1e-5)
    img = Image.fromarray(np.random.randint(0, 255, (40, 40), dtype=np.uint8))
    transforms = timm.data.create_transform(**timm.data.resolve_model_data_config(model), is_training=False)
    with torch.no_grad():
        top = model(transforms(img.convert('L' if in_chans == 1 else 'RGB')).unsqueeze(0)).softmax(-1)[0].topk(3)
    pipe = tf.pipeline('image-classification', model=repo_id)
    result = pipe(np.asarray(img)[..., None] if in_chans == 1 else img.convert('RGB'), top_k=3)  # as the card says
    assert [r['label'] for r in result] == [CLASSES[i] for i in top.indices.tolist()]
    np.testing.assert_allclose([r['score'] for r in result], top.values.numpy(), rtol=1e-5)


def test_without_the_plugin_the_card_says_what_fails(export, hub_cache, tmp_path):
    """Without `import timm_ssm`, timm and transformers fail with the errors the card quotes."""
    hub_cache.put('someone/tiny-ssm', export[0])
    code = """
import timm
for load in (lambda: timm.create_model('hf-hub:someone/tiny-ssm', pretrained=True),
             lambda: __import__('transformers').AutoModelForImageClassification.from_pretrained('someone/tiny-ssm')):
    try:
        load()
    except Exception as e:
        print(f'{type(e).__name__}: {e}'.splitlines()[0])
"""
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_HUB_CACHE=str(hub_cache.path), OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, '-c', code], env=env, cwd=tmp_path, capture_output=True, text=True)
    readme = (export[0] / 'README.md').read_text()
    lines = proc.stdout.splitlines()
    assert lines[0] == 'RuntimeError: Unknown model (test_resnet_ssm)' and f'`{lines[0]}`' in readme, proc.stderr
    if not lines[1].startswith('ModuleNotFoundError'):
        quoted = "ImportError: The model architecture 'test_resnet_ssm' is not supported in your version of timm"
        assert lines[1].startswith(quoted) and f'`{quoted}`' in readme


# --- which weights, which evaluation ---

def test_ema_weights_checkpoint_choice_and_their_evaluation(train_run, tmp_path, capsys):
    """--use-ema (--ema, its earlier spelling) exports the EMA weights, --checkpoint another file. A card shows an
    evaluation of exactly its weights only: with the EMA weights evaluated (as the default run does), the non-EMA
    export says how to publish those instead, and naming that file for it is an error with the command that fixes it."""
    states, ema_states = train_run[1:]
    run = shutil.copytree(train_run[0], tmp_path / 'run')
    _evaluate(run, run / 'eval_test.json', '--split', 'test', '--use-ema', '--overwrite')
    assert ssm_hub.parser.parse_args(['RUN', '--repo-id', 'a/b', '--ema']).use_ema
    _dry_run(run, tmp_path / 'ema', '--use-ema')
    tensors = safetensors.torch.load_file(tmp_path / 'ema' / 'model.safetensors')
    assert all(torch.equal(tensors[k], v) for k, v in ema_states[TOP1.index(max(TOP1))].items())
    readme, meta = _card(tmp_path / 'ema')
    assert 'EMA weights' in readme and '## Sub-classifiers' in readme and meta.eval_results
    stdout = _dry_run(run, tmp_path / 'out')
    readme, meta = _card(tmp_path / 'out')
    assert 'evaluated other weights than the exported ones (the EMA weights: pass --use-ema to publish those)' in stdout
    assert '## Sub-classifiers' not in readme and not meta.eval_results
    err = _fails([str(run), '--repo-id', 'a/b', '--dry-run', '--out', str(tmp_path / 'x'), '--eval-json',
                  str(run / 'eval_test.json')], capsys, 'evaluated other weights.*pass --use-ema', tmp_path / 'x')
    assert f'python -m timm_ssm.evaluate --checkpoint {run / "model_best.pth.tar"} --data-dir' in err
    _dry_run(run, tmp_path / 'last', '--checkpoint', 'last.pth.tar')
    tensors = safetensors.torch.load_file(tmp_path / 'last' / 'model.safetensors')
    assert torch.equal(tensors['head.weight'], states[-1]['head.weight'])
    assert '`last.pth.tar`, epoch 2.' in (tmp_path / 'last' / 'README.md').read_text()


@pytest.fixture(scope='module')
def evaluations(train_run, tmp_path_factory):
    """Evaluations of the module's run on its validation split, its training images (`train/`), another image
    folder, and all splits (`--split ''`, as an evaluate that names no folder wrote it)."""
    run = train_run[0]
    folder = tmp_path_factory.mktemp('evaluations')
    _image_folder(folder / 'other', 'validation', per_class=1)
    for name, split in (('validation', 'validation'), ('train_slash', 'train/')):
        _evaluate(run, folder / f'{name}.json', '--split', split)
    result = json.loads((folder / 'validation.json').read_text())
    result['data'].pop('split_folder', None)
    (folder / 'all.json').write_text(json.dumps(dict(result, data=dict(result['data'], split=''))))
    evaluate.main(['--checkpoint', str(run), '--data-dir', str(folder / 'other'), '--device', 'cpu', '-j', '0',
                   '--no-progress', '--json', str(folder / 'other.json')])
    return folder


@pytest.mark.parametrize('name, kind, label', [
    ('validation', 'held-out', 'validation'),
    ('train_slash', 'train', 'train'),
    ('all', 'other', 'all splits'),
    ('other', 'other', 'validation'),
])
def test_evaluation_split_is_named_by_the_folder_timm_read(name, kind, label, evaluations, train_run, tmp_path):
    """Only a split held out from the training images is published as a result (model-index); the training
    images (`--split train/`, all splits with `--split ''`) and other data are shown, labeled as what they are."""
    stdout = _dry_run(train_run[0], tmp_path / 'out', '--eval-json', str(evaluations / f'{name}.json'))
    readme, meta = _card(tmp_path / 'out')
    assert {r.dataset_split for r in meta.eval_results or []} == ({label} if kind == 'held-out' else set())
    assert f'{name}.json' in stdout and f'`{name}.json`' in readme
    if kind == 'held-out':
        assert f'the held-out split `{label}`' in readme
    else:
        assert 'held-out split' not in readme
        assert ('**the training images** (`' if kind == 'train' else '**data not known to be held out** (`') \
            + label in readme


def test_eval_json_that_is_not_an_evaluation(train_run, tmp_path, capsys):
    (tmp_path / 'other.json').write_text('{"models": 3}')
    for path in (tmp_path / 'other.json', tmp_path / 'missing.json', tmp_path):
        _fails([str(train_run[0]), '--repo-id', 'a/b', '--dry-run', '--out', str(tmp_path / 'out'), '--eval-json',
                str(path)], capsys, f'--eval-json {path} is not the --json output of python -m timm_ssm.evaluate')
    run = shutil.copytree(train_run[0], tmp_path / 'run')
    (run / 'eval_test.json').unlink()  # without the default file: no results, and how to make them
    stdout = _dry_run(run, tmp_path / 'out')
    assert 'eval_test.json does not exist; make it with: python -m timm_ssm.evaluate' in stdout


def test_results_of_the_published_epoch_after_resume(train_run, tmp_path):
    run = shutil.copytree(train_run[0], tmp_path / 'run')
    lines = (run / 'summary.csv').read_text().splitlines()
    last = lines[-1].split(',')
    last[lines[0].split(',').index('eval_top1')] = '90.0'  # after --resume, model_best is not summary.csv's best
    (run / 'summary.csv').write_text('\n'.join([*lines[:-1], lines[0], ','.join(last)]) + '\n')  # header repeated
    _dry_run(run, tmp_path / 'out')
    readme = (tmp_path / 'out' / 'README.md').read_text()
    assert '| Published weights | 1 | 75.00 | 95.00 |' in readme and '| Final, Best by top1 | 2 | 90.00 |' in readme


# --- the weights the run started from ---

def test_pretrained_timm_weights_license_and_dataset(tmp_path):
    run = make_run(tmp_path, ema=False, model='test_resnet_ssm.r160_in1k', pretrained=True, dataset='torch/mnist')[0]
    _dry_run(run, tmp_path / 'out', '--license', 'mit')
    readme, meta = _card(tmp_path / 'out')
    assert (meta.datasets, meta.base_model, meta.license) == (['ylecun/mnist'], 'timm/test_resnet.r160_in1k', 'mit')
    assert json.loads((tmp_path / 'out' / 'config.json').read_text())['pretrained_cfg']['license'] == 'mit'
    assert ssm_hub._papers(dict(paper_ids='arXiv:2110.00476', paper_name='ResNet strikes back')) == [
        ('ResNet strikes back', 'https://arxiv.org/abs/2110.00476')]


@pytest.fixture
def base_export(train_run, tmp_path):
    """A published SSM model to fine-tune from, under the MIT license."""
    _dry_run(train_run[0], tmp_path / 'base', '--license', 'mit', repo_id='someone/base-ssm')
    return tmp_path / 'base'


def test_fine_tuned_from_published_ssm_weights(base_export, hub_cache, tmp_path, capsys):
    """From hf-hub: the card names them and takes their license; from local-dir:, no path of this machine is on
    the card; from hf-hub: weights no longer in the cache, --license stands in."""
    hub_cache.put('someone/base-ssm', base_export)
    for name, base_model in ((f'local-dir:{base_export}', None), ('hf-hub:someone/base-ssm', 'someone/base-ssm')):
        run = make_run(tmp_path / name.split(':')[0], ema=False, model=name, pretrained=True, model_kwargs={})[0]
        _dry_run(run, run / 'out')
        readme, meta = _card(run / 'out')
        assert str(tmp_path) not in readme
        if base_model is None:
            assert 'left out as local paths: data_dir, model, output' in readme
        assert (meta.base_model, meta.license) == (base_model, 'mit')
        assert json.loads((run / 'out' / 'config.json').read_text())['model_args'] == dict(in_chans=1, split=True,
                                                                                           **HEAD)
    run = tmp_path / 'hf-hub' / 'output' / 'tiny'
    args = yaml.safe_load((run / 'args.yaml').read_text())
    (run / 'args.yaml').write_text(yaml.safe_dump(dict(args, model='hf-hub:someone/gone-ssm')))
    model = ['--model', 'test_resnet_ssm', '--model-kwargs', 'num_splits=3', 'norm_all=True']
    _fails([str(run), '--repo-id', 'a/b', '--dry-run', '--out', str(tmp_path / 'x'), *model], capsys,
           'license of hf-hub:someone/gone-ssm.*--license ID', tmp_path / 'x')
    _dry_run(run, tmp_path / 'x', *model, '--license', 'mit')
    assert _card(tmp_path / 'x')[1].base_model == 'someone/gone-ssm'


def test_label_names(tmp_path):
    run = Run(source='x', checkpoint=tmp_path / 'x.pth.tar', args=dict(dataset='torch/fashion_mnist',
                                                                               data_dir=str(tmp_path / 'no')))
    model = lambda k: SimpleNamespace(num_classes=k, pretrained_cfg={})  # noqa: E731
    assert ssm_hub.label_names(run, model(10))[0] is None  # not on this machine: none, and how to give them
    (tmp_path / 'names.txt').write_text('a\nb\nc\n')
    (tmp_path / 'names.json').write_text('["x", "y", "z"]')
    assert ssm_hub.label_names(run, model(3), str(tmp_path / 'names.txt'))[0] == ['a', 'b', 'c']
    assert ssm_hub.label_names(run, model(3), str(tmp_path / 'names.json'))[0] == ['x', 'y', 'z']
    with pytest.raises(ValueError, match="does not have the model's 4 class names"):
        ssm_hub.label_names(run, model(4), str(tmp_path / 'names.txt'))


# --- outputs ---

def test_out_folder_is_replaced_only_when_asked_and_only_an_export(train_run, tmp_path, capsys):
    run = shutil.copytree(train_run[0], tmp_path / 'run')
    argv = [str(run), '--repo-id', 'ORG/NAME', '--dry-run']
    assert main([*argv, '--checkpoint', 'last.pth.tar']) == 0  # into RUN/hub-ORG--NAME
    out = run / 'hub-ORG--NAME'
    _fails(argv, capsys, f'--out {out} already holds an export: pass --overwrite to replace it.')
    assert main([*argv, '--overwrite']) == 0
    assert '`model_best.pth.tar`, epoch 1' in (out / 'README.md').read_text()
    (out / 'notes.txt').write_text('mine')
    _fails([*argv, '--overwrite'], capsys, f'not an export of this tool: give a new folder, such as --out {out}-2')
    assert sorted(os.listdir(out)) == sorted([*EXPORT_FILES, 'notes.txt'])
    assert not [p for p in run.iterdir() if p.name.startswith('.')]  # no folder left beside it


def test_interrupted_export_leaves_nothing(train_run, tmp_path, monkeypatch):
    def interrupted(model, folder, **kwargs):
        save_for_hf(model, folder, **kwargs)
        raise KeyboardInterrupt
    save_for_hf = ssm_hub.save_for_hf
    monkeypatch.setattr(ssm_hub, 'save_for_hf', interrupted)
    with pytest.raises(KeyboardInterrupt):
        main([str(train_run[0]), '--repo-id', 'a/b', '--dry-run', '--out', str(tmp_path / 'new' / 'out')])
    assert not [p for p in tmp_path.rglob('*') if not p.is_dir()]  # no file, not even a partial one


def test_full_disk_and_read_only_run_folder(train_run, tmp_path):
    """A full disk while writing and a read-only run folder under --dry-run: one clear sentence each, and no
    partial file (in a user and mount namespace, on real file systems)."""
    probe = subprocess.run(['unshare', '-Urm', 'true'], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f'cannot mount in a user namespace here (unshare -Urm: {probe.stderr.strip()[:200]})')
    run, disk = shutil.copytree(train_run[0], tmp_path / 'run'), tmp_path / 'disk'
    disk.mkdir()
    runs = [[str(run), '--repo-id', 'a/b', '--dry-run', '--out', f'{disk}/export'],
            [str(run), '--repo-id', 'a/b', '--dry-run']]
    code = f'from timm_ssm.hub import main\nfor argv in {runs!r}:\n    print(f"rc={{main(argv)}}", flush=True)'
    script = (f'mount -t tmpfs -o size=256k tmpfs {disk} && mount --bind {run} {run} && mount -o remount,bind,ro '
              f'{run} && {shlex.quote(sys.executable)} -c {shlex.quote(code)}; ls -A {disk}')
    proc = subprocess.run(['unshare', '-Urm', 'sh', '-c', script], cwd=tmp_path, capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS='1'))
    lines = proc.stdout.splitlines()
    assert [line for line in lines if line.startswith('rc=')] == ['rc=2', 'rc=2'], proc.stdout + proc.stderr[-2000:]
    assert lines[-1] == 'rc=2'  # and `ls -A` of the full disk printed nothing: no partial file
    assert 'Traceback' not in proc.stderr and 'nothing was written: free some space' in proc.stderr
    assert re.search(r'--out .*hub-a--b cannot be written: .* is not writable', proc.stderr)


# --- bad input: a clear error before anything is written or sent ---

@pytest.mark.parametrize('case, match', [
    ('no_checkpoint', 'No model_best.pth.tar or last.pth.tar'),
    ('truncated', 'Cannot read .*model_best.pth.tar as a checkpoint of tensors'),
    ('pickled', 'weights_only=True \\(UnpicklingError: Unsupported global'),
    ('random', 'Cannot read .*model_best.pth.tar as a checkpoint of tensors'),
    ('num_splits', r'do not fit (.|\n)*size mismatch for head\.bias'),
    ('not_ssm', r'test_resnet is not an SSM model \(<arch>_ssm\)'),
    ('bare_state_dict', '--model'),
])
def test_bad_run(case, match, train_run, tmp_path, capsys):
    run = shutil.copytree(train_run[0], tmp_path / 'run')
    best, args = run / 'model_best.pth.tar', yaml.safe_load((run / 'args.yaml').read_text())
    if case == 'no_checkpoint':
        best.unlink()
        (run / 'last.pth.tar').unlink()
    elif case == 'truncated':
        best.write_bytes(best.read_bytes()[:best.stat().st_size // 2])
    elif case == 'pickled':
        torch.save({'state_dict': train_run[1][0], 'extra': Path('x')}, best)  # Path: not allowed by weights_only
    elif case == 'random':
        best.write_bytes(np.random.default_rng(0).bytes(4096))
    elif case == 'num_splits':
        (run / 'args.yaml').write_text(yaml.safe_dump(dict(args, model_kwargs=dict(num_splits=4))))
    elif case == 'not_ssm':  # a run of a plain timm model
        (run / 'args.yaml').write_text(yaml.safe_dump(dict(args, model='test_resnet', model_kwargs={})))
        torch.save(timm.create_model('test_resnet', num_classes=5, in_chans=1).state_dict(), best)
    else:
        (run / 'args.yaml').unlink()
        torch.save(train_run[1][0], best)
    _fails([str(run), '--repo-id', 'a/b', '--dry-run', '--out', str(tmp_path / 'out')], capsys, match, tmp_path / 'out')
    if case == 'bare_state_dict':
        _dry_run(run, tmp_path / 'out', '--model', 'test_resnet_ssm', '--model-kwargs', 'num_classes=5', 'in_chans=1',
                 'num_splits=3', 'norm_all=True')
        config = json.loads((tmp_path / 'out' / 'config.json').read_text())
        assert config['model_args'] == dict(in_chans=1, split=True, **HEAD)
        assert 'came without its train.py arguments' in (tmp_path / 'out' / 'README.md').read_text()


@pytest.mark.parametrize('repo_id, fix', [
    ('tiny-ssm', '--repo-id alice/'), ('a/b/c', '--repo-id alice/'), ('hf-hub:a/b', '--repo-id a/b.'),
    ('a/b c', '--repo-id alice/')])
def test_bad_repo_id(repo_id, fix, tmp_path, capsys):
    _fails([str(tmp_path / 'nowhere'), '--repo-id', repo_id, '--dry-run'], capsys, f'not ORG/NAME.*{re.escape(fix)}')


def test_model_kwargs_are_name_value_pairs(capsys):
    with pytest.raises(SystemExit):
        main(['RUN', '--repo-id', 'a/b', '--model-kwargs', 'num_splits'])  # was a ValueError traceback
    assert "argument --model-kwargs: 'num_splits' is no NAME=VALUE pair" in capsys.readouterr().err


def test_no_token(train_run, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv('HF_TOKEN', raising=False)
    monkeypatch.setattr(constants, 'HF_TOKEN_PATH', str(tmp_path / 'no-token'))
    _fails([str(train_run[0]), '--repo-id', 'a/b', '--out', str(tmp_path / 'out')], capsys,
           'No Hugging Face token: log in once with `hf auth login`', tmp_path / 'out')


# --- upload, by the real huggingface_hub client to a local stand-in for the Hub's HTTP API ---

OWN_CARD = b'---\nlicense: mit\n---\n# Our own card\n'


@pytest.fixture(scope='module')
def uploads(train_run, tmp_path_factory):
    """Uploads of the module's run to a FakeHub: the hub, the first upload's export folder, each upload's exit
    code and output, and everything the clients logged at DEBUG level."""
    run, tmp = str(train_run[0]), tmp_path_factory.mktemp('uploads')
    scenarios = dict(
        new=(TOKEN, [run, '--repo-id', 'someone/up-ssm', '--out', str(tmp / 'out'), '--private', '--revision', 'v1',
                     '--commit-message', 'First weights']),
        carded=(TOKEN, [run, '--repo-id', 'someone/carded']),
        overwrite=(TOKEN, [run, '--repo-id', 'someone/carded', '--overwrite-card']),
        public=(TOKEN, [run, '--repo-id', 'someone/public', '--private']),
        bad_token=('hf_NotTheTokenTheHubExpects', [run, '--repo-id', 'someone/refused']))
    log, results = io.StringIO(), {}
    handler, root = logging.StreamHandler(log), logging.getLogger()
    with FakeHub(TOKEN) as hub, pytest.MonkeyPatch.context() as mp:
        hub.add_repo('someone/carded', {'README.md': OWN_CARD})
        hub.add_repo('someone/public', private=False)
        mp.setattr(constants, 'ENDPOINT', hub.url)  # as HF_ENDPOINT sets them when huggingface_hub is imported
        mp.setattr(constants, 'HUGGINGFACE_CO_URL_TEMPLATE', hub.url + '/{repo_id}/resolve/{revision}/{filename}')
        mp.setattr(constants, 'HF_HUB_OFFLINE', False)
        level = root.level
        root.setLevel(logging.DEBUG)
        root.addHandler(handler)
        try:
            for name, (token, argv) in scenarios.items():
                mp.setenv('HF_TOKEN', token)
                out, err = io.StringIO(), io.StringIO()
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    results[name] = dict(rc=main(argv))
                results[name].update(out=out.getvalue(), err=err.getvalue())
        finally:
            root.removeHandler(handler)
            root.setLevel(level)
    return hub, tmp / 'out', results, log.getvalue()


def test_uploads_never_show_the_token(uploads):
    hub, out, results, log = uploads
    assert 'whoami' in log and TOKEN not in log  # the clients' debug log was on, and is clean
    for name, result in results.items():
        assert TOKEN not in result['out'] + result['err'], name
    assert not [p for p in out.iterdir() if TOKEN.encode() in p.read_bytes()]
    # sent as a bearer token in the authorization header only
    assert [r for r in hub.requests if r['headers'].get('authorization') == f'Bearer {TOKEN}']
    for r in hub.requests:
        assert TOKEN not in r['path'] and not [k for k, v in r['headers'].items()
                                               if TOKEN in v and k.lower() != 'authorization'], r


def test_upload_commits_the_export(uploads, train_run, hub_cache, tmp_path):
    hub, out, results, _ = uploads
    assert results['new']['rc'] == 0 and 'Uploaded: ' in results['new']['out'], results['new']['err']
    files = hub.files('someone/up-ssm', 'v1')
    assert files == {name: (out / name).read_bytes() for name in EXPORT_FILES}
    assert hub.repos['someone/up-ssm']['private'] is True and hub.files('someone/up-ssm', 'main') == {}
    assert [c for c in hub.commits if c['repo_id'] == 'someone/up-ssm'] == [
        dict(repo_id='someone/up-ssm', branch='v1', message='First weights', files=EXPORT_FILES)]
    for name, data in files.items():  # what the Hub received loads back with hf-hub: and gives the checkpoint's logits
        (tmp_path / name).write_bytes(data)
    hub_cache.put('someone/up-ssm', tmp_path)
    model = timm.create_model('hf-hub:someone/up-ssm', pretrained=True).eval()
    x = torch.randn(2, 1, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _reference_model(train_run[0] / 'model_best.pth.tar')(x))


def test_remote_card_kept_public_repo_refused_bad_token_reported(uploads):
    hub, _, results, _ = uploads
    assert results['carded']['rc'] == results['overwrite']['rc'] == 0 and 'kept it' in results['carded']['out']
    first, second = [c['files'] for c in hub.commits if c['repo_id'] == 'someone/carded']
    assert (first, second) == (['config.json', 'model.safetensors'], EXPORT_FILES)
    assert results['public']['rc'] == 2 and 'exists and is public' in results['public']['err']
    assert not [c for c in hub.commits if c['repo_id'] == 'someone/public']
    assert results['bad_token']['rc'] == 1 and 'the Hub refused to check the token' in results['bad_token']['err']
    assert 'someone/refused' not in hub.repos


def test_unreachable_hub(train_run, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv('HF_TOKEN', TOKEN)
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', False)
    monkeypatch.setattr(constants, 'ENDPOINT', 'http://127.0.0.1:9')  # nothing listens on the discard port
    err = _fails([str(train_run[0]), '--repo-id', 'a/b', '--out', str(tmp_path / 'out')], capsys,
                 'cannot reach the Hub at http://127.0.0.1:9', tmp_path / 'out', rc=1)
    assert TOKEN not in err


# --- timm's real train.py, and the repository's script ---

@pytest.mark.skipif(not os.environ.get('TIMM_ROOT'), reason='needs timm\'s train.py: set TIMM_ROOT to a checkout of '
                    'pytorch-image-models at the tag of the installed timm (git clone --branch v1.0.31 '
                    'https://github.com/huggingface/pytorch-image-models.git)')
def test_real_train_py_run_as_the_default_run_publishes_it(hub_cache, tmp_path, capsys):
    """timm's train.py with model EMA (in this process), then evaluate's EMA evaluation of the test split (as the
    default run), then the export into RUN/hub-ORG--NAME: the card shows that evaluation, hf-hub: loads the EMA
    weights."""
    data = tmp_path / 'data'
    for split in ('train', 'validation', 'test'):
        _image_folder(data, split, per_class=3)
    launch.main(['train.py', '--data-dir', str(data), '--model', 'test_resnet_ssm', '--num-classes', '5', '--in-chans',
                 '1', '--img-size', '32', '--model-kwargs', 'num_splits=2', '-b', '5', '--epochs', '2',
                 '--warmup-epochs', '0', '--model-ema', '--model-ema-decay', '0.5', '--device', 'cpu', '--workers',
                 '0', '--output', str(tmp_path / 'output'), '--experiment', 'fm'])
    run = tmp_path / 'output' / 'fm'
    _evaluate(run, run / 'eval_test.json', '--split', 'test', '--use-ema')
    assert main([str(run), '--repo-id', 'someone/fm-ssm', '--dry-run', '--use-ema']) == 0
    assert f'Wrote {run / "hub-someone--fm-ssm"}' in capsys.readouterr().out
    readme, meta = _card(run / 'hub-someone--fm-ssm')
    assert '| Final | 1 |' in readme and {r.dataset_split for r in meta.eval_results} == {'test'}
    hub_cache.put('someone/fm-ssm', run / 'hub-someone--fm-ssm')
    model = timm.create_model('hf-hub:someone/fm-ssm', pretrained=True).eval()
    reference = timm.create_model('test_resnet_ssm', num_classes=5, in_chans=1, num_splits=2).eval()
    reference.load_state_dict(load_state_dict(str(run / 'model_best.pth.tar'), use_ema=True, weights_only=True))
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))


def test_repository_script_runs_the_package_tool(tmp_path):
    """hub_upload/upload.py, run as a script from another folder, is timm_ssm.hub."""
    proc = subprocess.run([sys.executable, str(REPO / 'hub_upload' / 'upload.py'), 'run', '--repo-id', 'tiny-ssm'],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --repo-id 'tiny-ssm' is not ORG/NAME"), proc.stderr
