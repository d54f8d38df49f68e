"""timm_ssm.hub (and hub_upload/upload.py over it): export of train.py runs in timm's Hub format, round trips
through local-dir:/hf-hub:, uploads.

Run folders are made as train.py makes them: a checkpoint written by timm's own `CheckpointSaver` (with model
EMA), an args.yaml dumped from the arguments Namespace, a summary.csv by `timm.utils.update_summary`, and an
image folder data set with class names. With TIMM_ROOT set, one test runs timm's real train.py as well.
"""
import argparse
import contextlib
import gzip
import json
import os
import re
import shlex
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

import timm
import timm_ssm  # noqa: F401
from timm_ssm import complexity, evaluate
from huggingface_hub import ModelCard, ModelCardData, constants
from timm.models import load_state_dict
from timm.utils import CheckpointSaver, ModelEmaV3, update_summary

from hub_server import FakeHub
from timm_ssm import hub as ssm_hub
from timm_ssm.hub import main
from timm_ssm.runs import Run, RunError

REPO = Path(__file__).resolve().parents[1]
CLASSES = ['boot', 'coat', 'dress', 'shirt', 'sneaker']
EXPORT_FILES = ['README.md', 'config.json', 'model.safetensors']
TOP1 = (40.0, 75.0, 60.0)  # best at epoch 1, so model_best is not the last epoch
HEAD = dict(num_splits=3, norm_all=True)


@pytest.fixture(scope='module', autouse=True)
def _one_thread():
    # tiny models gain nothing from more threads, and idle OpenMP threads spinning on a shared machine cost more
    # than the models' whole run
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _image_folder(root: Path, classes, per_class=2, split='validation') -> Path:
    for c in classes:
        (root / split / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(np.random.randint(0, 255, (12, 12), dtype=np.uint8)).save(root / split / c / f'{i}.png')
    return root


def _train_args(data_dir: Path, output: Path, **overrides) -> argparse.Namespace:
    """The train.py arguments that shape the model, its data and its card, under train.py's names."""
    args = dict(
        model='test_resnet_ssm', pretrained=False, pretrained_path=None, initial_checkpoint='', resume='',
        num_classes=len(CLASSES), in_chans=1, img_size=48, input_size=None, crop_pct=0.9, mean=[0.3], std=[0.35],
        interpolation='bicubic', gp=None, bn_momentum=None, bn_eps=None, model_kwargs=dict(HEAD),
        data_dir=str(data_dir), dataset='', train_split='train', val_split='validation', class_map='',
        output=str(output), experiment='tiny', eval_metric='top1', epochs=len(TOP1), batch_size=8, opt='sgd',
        lr=0.1, sched='cosine', model_ema=True, model_ema_decay=0.5, model_ema_force_cpu=False, device='cpu',
    )
    args.update(overrides)
    return argparse.Namespace(**args)


def make_run(root: Path, ema: bool = True, **overrides):
    """A train.py output folder; returns it and the model/EMA state dicts of each epoch."""
    torch.manual_seed(0)
    data = _image_folder(root / 'data', CLASSES)
    run = root / 'output' / 'tiny'
    run.mkdir(parents=True)
    args = _train_args(data, root / 'output', **overrides)
    model = timm.create_model(
        args.model, num_classes=args.num_classes, in_chans=args.in_chans, **args.model_kwargs)
    model_ema = ModelEmaV3(model, decay=args.model_ema_decay) if ema else None
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    (run / 'args.yaml').write_text(yaml.safe_dump(args.__dict__, default_flow_style=False))
    saver = CheckpointSaver(
        model, optimizer, args=args, model_ema=model_ema, checkpoint_dir=str(run), recovery_dir=str(run),
        decreasing=False, max_history=2)
    states, ema_states = [], []
    for epoch, top1 in enumerate(TOP1):
        model.train()
        x = torch.randn(8, args.in_chans, 32, 32)
        loss = F.cross_entropy(model(x), torch.randint(0, args.num_classes, (8,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if model_ema is not None:
            model_ema.update(model)
            ema_states.append({k: v.clone() for k, v in model_ema.module.state_dict().items()})
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        update_summary(
            epoch, OrderedDict(loss=loss.item()), OrderedDict(loss=2.0 - epoch / 10, top1=top1, top5=top1 + 20),
            filename=str(run / 'summary.csv'), lr=args.lr, write_header=epoch == 0)
        saver.save_checkpoint(epoch, metric=top1)
    return run, states, ema_states


@pytest.fixture(scope='module')
def train_run(tmp_path_factory):
    root = tmp_path_factory.mktemp('train')
    run, states, ema_states = make_run(root)
    # the per-sub-classifier results of the analysis tool, written next to the checkpoint
    evaluate.main([
        '--checkpoint', str(run), '--data-dir', str(root / 'data'), '--device', 'cpu', '-b', '4', '-j', '0',
        '--json', str(run / 'eval.json'), '--no-progress'])  # model, channels, size, normalization: the run's
    return run, states, ema_states


@pytest.fixture(scope='module')
def dry_run_export(train_run, tmp_path_factory):
    """The --dry-run export of the module's run, and what the tool printed."""
    run, _, _ = train_run
    out = tmp_path_factory.mktemp('export') / 'tiny-ssm'
    stdout = tmp_path_factory.mktemp('log') / 'stdout.txt'
    # capsys is function scoped: capture this one call by redirecting stdout
    with open(stdout, 'w') as f, contextlib.redirect_stdout(f):
        rc = main([str(run), '--repo-id', 'someone/tiny-ssm', '--dry-run', '--out', str(out), '--tag', 'fashion'])
    assert rc == 0, stdout.read_text()
    return out, stdout.read_text()


def _reference_model(checkpoint: Path, use_ema: bool = False, **kwargs):
    """The checkpoint's model, built and loaded independently of timm_ssm (timm's loader, weights_only)."""
    model = timm.create_model('test_resnet_ssm', num_classes=len(CLASSES), in_chans=1, **(kwargs or HEAD))
    model.load_state_dict(load_state_dict(str(checkpoint), use_ema=use_ema, weights_only=True))
    return model.eval()


@pytest.fixture(scope='module')
def rgb_export(tmp_path_factory):
    """The dry-run export of a 3-channel run (no evaluation JSON)."""
    root = tmp_path_factory.mktemp('rgb')
    run = make_run(root, ema=False, in_chans=3, mean=[0.3] * 3, std=[0.35] * 3)[0]
    out = root / 'export'
    assert main([str(run), '--repo-id', 'someone/rgb-ssm', '--dry-run', '--out', str(out)]) == 0
    return out


def _has_transformers() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def _transformers():
    try:
        import transformers
    except ImportError as e:
        pytest.skip(f'transformers is not installed (it is in the test extra: pip install ".[test]"): {e}')
    return transformers


def _front_matter(readme: str) -> dict:
    assert readme.startswith('---\n')
    return yaml.safe_load(readme.split('---\n')[1])


def _no_leftovers(folder: Path, keep=()):
    """Nothing in `folder` but `keep`: no partial export was left behind."""
    assert sorted(p.name for p in folder.iterdir()) == sorted(keep)


# --- the export, file by file ---

def test_dry_run_writes_the_three_files_only(dry_run_export, train_run):
    out, stdout = dry_run_export
    assert sorted(os.listdir(out)) == EXPORT_FILES
    for name in EXPORT_FILES:
        head = (out / name).read_bytes()[:2]
        assert head not in (b'PK', b'\x80\x02', b'\x80\x04', b'\x80\x05'), f'{name} is a pickle/torch.save file'
    for name in EXPORT_FILES:
        assert re.search(rf'{re.escape(name)}\s+[\d.]+ k?M?B', stdout), stdout
    assert 'Dry run' in stdout and 'Nothing was sent' in stdout
    umask = os.umask(0)
    os.umask(umask)
    assert {(out / name).stat().st_mode & 0o777 for name in EXPORT_FILES} == {0o666 & ~umask}  # as open() makes files
    assert 'https://huggingface.co/someone/tiny-ssm' in stdout


def test_weights_are_the_best_epoch_as_safetensors(dry_run_export, train_run):
    out, _ = dry_run_export
    _, states, _ = train_run
    with safetensors.safe_open(out / 'model.safetensors', 'pt') as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    best = states[TOP1.index(max(TOP1))]
    assert tensors.keys() == best.keys()
    for k, v in best.items():
        torch.testing.assert_close(tensors[k], v, rtol=0, atol=0, msg=k)
    assert not torch.equal(tensors['head.weight'], states[-1]['head.weight'])  # not the last epoch


def test_config_json_fields(dry_run_export):
    out, _ = dry_run_export
    config = json.loads((out / 'config.json').read_text())
    assert config['architecture'] == 'test_resnet_ssm'
    assert config['num_classes'] == len(CLASSES)
    assert config['num_features'] == 96
    # every head argument explicit; num_classes at the top level only (transformers passes it itself)
    assert config['model_args'] == dict(in_chans=1, split=True, **HEAD)
    assert config['global_pool'] == 'avg'  # the trunk's pooling, as timm's own exports name it
    assert config['label_names'] == CLASSES  # the image folder's class folders, in index order
    cfg = config['pretrained_cfg']
    assert cfg['input_size'] == [1, 48, 48]  # the run's --in-chans and --img-size
    assert (cfg['interpolation'], cfg['crop_pct'], cfg['mean'], cfg['std']) == ('bicubic', 0.9, [0.3], [0.35])
    assert cfg['num_classes'] == len(CLASSES)
    assert cfg['classifier'] == 'head'
    assert cfg['first_conv'] == 'trunk.conv1.0'
    assert cfg['license'] == 'apache-2.0'
    for key in ('tag', 'hf_hub_id', 'url', 'file', 'source', 'test_input_size'):
        assert key not in cfg, key  # nothing of the architecture's registered weights


def test_model_card_metadata_and_sections(dry_run_export, train_run):
    out, _ = dry_run_export
    run, _, _ = train_run
    readme = (out / 'README.md').read_text()
    meta = _front_matter(readme)
    assert meta['library_name'] == 'timm'
    assert meta['pipeline_tag'] == 'image-classification'
    assert meta['license'] == 'apache-2.0'
    assert {'timm', 'image-classification', 'timm-ssm', 'split-and-share', 'fashion'} <= set(meta['tags'])
    assert 'datasets' not in meta  # an image folder has no Hub data set
    assert '# Model card for tiny-ssm' in readme
    assert 'Split-and-Share Module' in readme and 'n = 3 groups' in readme
    # results from summary.csv: final (epoch 2) and best (epoch 1, the published weights) top-1/top-5
    assert re.search(r'\| Final \| 2 \| 60\.00 \| 80\.00 \|', readme)
    assert re.search(r'\| Published weights, best by top1 \| 1 \| 75\.00 \| 95\.00 \|', readme)
    assert '`model_best.pth.tar`, epoch 1' in readme
    assert 'these are the non-EMA weights' in readme  # train.py reports the EMA's accuracy when it has one
    # per-sub-classifier accuracies from the analysis tool's JSON
    evaluation = json.loads((run / 'eval.json').read_text())['models'][0]
    section = readme.split('## Sub-classifiers')[1].split('## Training')[0]
    for head, width in zip(evaluation['heads'], (32, 64, 96)):
        assert f'| {head["name"]} | 0-{width - 1} | {head["top1"]:.2f} | {head["top5"]:.2f} |' in section
    assert f'| Averaged (the model) | all | {evaluation["top1"]:.2f} |' in section
    assert f'| Oracle: any sub-classifier right | | {evaluation["oracle"]["top1"]:.2f} |' in section
    assert f'| Label-free: max_prob | | {evaluation["selection"]["max_prob"]["top1"]:.2f}' in section
    # training arguments, without the paths of the machine it ran on
    args_yaml = readme.split('```yaml\n')[1].split('```')[0]
    args = yaml.safe_load(args_yaml)
    assert args['lr'] == 0.1 and args['model'] == 'test_resnet_ssm' and args['model_kwargs'] == HEAD
    assert 'data_dir' not in args and str(run.parent.parent) not in readme
    # usage and citation
    assert 'import timm_ssm' in readme and "timm.create_model('hf-hub:someone/tiny-ssm', pretrained=True)" in readme
    assert 'doi     = {10.3390/electronics11020235}' in readme
    assert readme.index('## Results') < readme.index('## Training') < readme.index('## Citation')


def test_card_parses_with_huggingface_hub_and_round_trips(dry_run_export, train_run):
    """huggingface_hub's own parser reads the card; its model-index holds the evaluate JSON's top-1/top-5 of the
    averaged output with the split and data set, and the metadata round-trips through ModelCardData."""
    out, _ = dry_run_export
    run, _, _ = train_run
    card = ModelCard.load(out / 'README.md')  # raises on metadata it cannot parse (ignore_metadata_errors=False)
    evaluation = json.loads((run / 'eval.json').read_text())['models'][0]
    results = {r.metric_type: r for r in card.data.eval_results}
    assert sorted(results) == ['accuracy', 'top_5_accuracy']
    assert results['accuracy'].metric_value == round(evaluation['top1'], 2)
    assert results['top_5_accuracy'].metric_value == round(evaluation['top5'], 2)
    for r in results.values():
        assert (r.task_type, r.dataset_split, r.dataset_type) == ('image-classification', 'validation', 'imagefolder')
        assert r.dataset_name == 'image folder data'  # the folder's name, not its path on the machine it ran on
    assert card.data.model_name == 'tiny-ssm'
    again = ModelCardData(**card.data.to_dict())
    assert again.to_dict() == card.data.to_dict() == _front_matter((out / 'README.md').read_text())
    assert again.eval_results == card.data.eval_results


def test_card_install_link_params_gmacs_and_citations(dry_run_export, train_run):
    out, _ = dry_run_export
    readme = (out / 'README.md').read_text()
    assert '```bash\npip install timm-ssm\n```' in readme and ssm_hub.PROJECT_URL in readme
    assert 'RuntimeError: Unknown model (test_resnet_ssm)' in readme  # what fails without the plugin
    model = _reference_model(train_run[0] / 'model_best.pth.tar')
    cost = complexity.model_complexity(model, (1, 48, 48))
    assert f'Params (M): {cost["param_count"] / 1e6:.3f}' in readme
    assert f'GMACs: {cost["macs"] / 1e9:.3g}' in readme
    assert 'doi     = {10.3390/electronics11020235}' in readme and '@misc{rw2019timm' in readme
    for section in ('### Feature Map Extraction', '### Image Embeddings', '### Transformers', '### Fine-tuning'):
        assert section in readme, section
    # a wheel user has no docs/ or train_timm.sh: no message, help or card points there
    upload = (REPO / 'hub_upload' / 'upload.py').read_text()
    for text in (readme, ssm_hub.parser.format_help(), ssm_hub.__doc__, upload):
        assert 'docs/' not in text and 'train_timm' not in text


def test_card_cites_the_trunk_weights_paper(tmp_path):
    run = make_run(tmp_path / 'train', ema=False, model='test_resnet_ssm.r160_in1k', pretrained=True)[0]
    cfg = timm.models.get_pretrained_cfg('test_resnet.r160_in1k')
    out = tmp_path / 'out'
    # timm's test weights name no paper: the card then cites none of them, only the SSM paper and timm
    assert not cfg.paper_ids and not cfg.paper_name
    assert main([str(run), '--repo-id', 'someone/ft-ssm', '--dry-run', '--out', str(out)]) == 0
    assert "the trunk's pretrained weights" not in (out / 'README.md').read_text()
    papers = ssm_hub._papers(dict(paper_ids='arXiv:2110.00476', paper_name='ResNet strikes back'))
    assert papers == [('ResNet strikes back', 'https://arxiv.org/abs/2110.00476')]
    model = timm.create_model('test_resnet_ssm', num_classes=5, in_chans=1, **HEAD)
    card = ssm_hub.model_card(Run(source='x', checkpoint=tmp_path / 'x.pth.tar'), model, 'a/b',
                              dict(input_size=(1, 32, 32)), 'mit', trunk_papers=papers).content
    assert "ResNet strikes back (the trunk's pretrained weights): https://arxiv.org/abs/2110.00476" in card
    assert card.index('ResNet strikes back, https://arxiv.org/abs/2110.00476') > card.index('## Citation')


def _python_blocks(readme: str):
    return re.findall(r'```python\n(.*?)```', readme, re.S)


@pytest.mark.parametrize('in_chans', [1, 3])
def test_card_usage_code_runs(in_chans, dry_run_export, rgb_export, hub_cache, tmp_path, monkeypatch, capsys):
    """Every code block of the card runs as written (timm, feature maps, embeddings, transformers, fine-tuning),
    from the Hugging Face cache under the card's repo id."""
    out = dry_run_export[0] if in_chans == 1 else rgb_export
    repo_id = 'someone/tiny-ssm' if in_chans == 1 else 'someone/rgb-ssm'
    hub_cache.put(repo_id, out)
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.random.randint(0, 255, (40, 40), dtype=np.uint8)).save('image.png')
    blocks = _python_blocks((out / 'README.md').read_text())
    assert len(blocks) == 5
    for code in blocks:
        if 'transformers' in code and not _has_transformers():
            continue
        exec(compile(code, 'README.md', 'exec'), {})
    printed = capsys.readouterr().out
    assert any(c in printed for c in CLASSES), printed
    assert 'torch.Size([1, 96])' in printed  # the embedding
    assert re.search(r'torch.Size\(\[1, \d+, \d+, \d+\]\)', printed)  # a feature map


# --- round trips ---

@pytest.mark.parametrize('head', [HEAD, dict(num_splits=4)], ids=['n3_norm_all', 'n4'])
def test_local_dir_and_hf_hub_give_the_checkpoint_logits(head, train_run, hub_cache, tmp_path):
    if head == HEAD:
        run = train_run[0]
    else:
        run = make_run(tmp_path / 'train', model_kwargs=head)[0]
    out = tmp_path / 'export'
    assert main([str(run), '--repo-id', 'someone/rt-ssm', '--out', str(out), '--dry-run']) == 0
    # the head's arguments are explicit also where the run left them at their defaults (n4: norm_all, split)
    assert json.loads((out / 'config.json').read_text())['model_args'] == dict(
        in_chans=1, num_splits=head['num_splits'], norm_all=head.get('norm_all', False), split=True)
    reference = _reference_model(run / 'model_best.pth.tar', **head)
    local = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    hub_cache.put('someone/rt-ssm', out)
    hub = timm.create_model('hf-hub:someone/rt-ssm', pretrained=True).eval()
    x = torch.randn(3, 1, 48, 48)
    with torch.no_grad():
        expected = reference(x)
        for model in (local, hub):
            assert isinstance(model, timm_ssm.SplitShareNet)
            assert (model.head.num_splits, model.head.norm_all) == (head['num_splits'], head.get('norm_all', False))
            torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(model.forward_splits(x), reference.forward_splits(x), rtol=1e-5, atol=1e-5)
    assert hub.pretrained_cfg['label_names'] == CLASSES
    assert tuple(hub.pretrained_cfg['input_size']) == (1, 48, 48)


@pytest.mark.parametrize('in_chans', [1, 3])
def test_transformers_loads_the_export(in_chans, dry_run_export, rgb_export, hub_cache, tmp_path):
    """After `import timm_ssm`, transformers' AutoModelForImageClassification, TimmWrapperModel and image
    classification pipeline load the export (folder and Hub id, offline) and give timm's logits and features."""
    tf = _transformers()
    out = dry_run_export[0] if in_chans == 1 else rgb_export
    repo_id = f'someone/tf{in_chans}-ssm'
    hub_cache.put(repo_id, out)
    model = timm.create_model(f'hf-hub:{repo_id}', pretrained=True).eval()
    local = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    x = torch.randn(3, in_chans, 48, 48)
    with torch.no_grad():
        logits, features = model(x), model.forward_head(model.forward_features(x), pre_logits=True)
        torch.testing.assert_close(local(x), logits, rtol=0, atol=0)
        for source in (repo_id, str(out)):
            auto = tf.AutoModelForImageClassification.from_pretrained(source).eval()
            assert auto.config.id2label == dict(enumerate(CLASSES))
            torch.testing.assert_close(auto(x).logits, logits, rtol=1e-5, atol=1e-5)
            wrapper = tf.TimmWrapperModel.from_pretrained(source).eval()
            torch.testing.assert_close(wrapper(x).pooler_output, features, rtol=1e-5, atol=1e-5)
        # the same feature from timm as the card shows it (num_classes=0), and the trunk's stages
        embeddings = timm.create_model(f'hf-hub:{repo_id}', pretrained=True, num_classes=0).eval()
        torch.testing.assert_close(embeddings(x), features, rtol=1e-5, atol=1e-5)
        stages = timm.create_model(f'hf-hub:{repo_id}', pretrained=True, features_only=True).eval()
        torch.testing.assert_close(stages(x)[-1], model.forward_features(x), rtol=1e-5, atol=1e-5)
    # the pipeline's top-3 are timm's, on the same image
    pipe = tf.pipeline('image-classification', model=repo_id)
    img = Image.fromarray(np.random.randint(0, 255, (40, 40), dtype=np.uint8))
    transforms = timm.data.create_transform(**timm.data.resolve_model_data_config(model), is_training=False)
    with torch.no_grad():
        probs = model(transforms(img.convert('L' if in_chans == 1 else 'RGB')).unsqueeze(0)).softmax(-1)[0]
    top = probs.topk(3)
    # a 1-channel model takes the grey image as an (H, W, 1) array, as its card says
    result = pipe(np.asarray(img)[..., None] if in_chans == 1 else img.convert('RGB'), top_k=3)
    assert [r['label'] for r in result] == [CLASSES[i] for i in top.indices.tolist()]
    np.testing.assert_allclose([r['score'] for r in result], top.values.numpy(), rtol=1e-5)
    if in_chans == 1:  # what the card warns of: the pipeline reads a PIL image or a file as RGB
        with pytest.raises(RuntimeError, match='to have 1 channels, but got 3'):
            pipe(img)


def test_without_the_plugin_the_card_says_what_fails(dry_run_export, hub_cache, tmp_path):
    """Without `import timm_ssm`, timm and transformers fail with the errors the card quotes (and says how to fix)."""
    out, _ = dry_run_export
    hub_cache.put('someone/tiny-ssm', out)
    code = """
import sys, timm
try:
    timm.create_model('hf-hub:someone/tiny-ssm', pretrained=True)
except Exception as e:
    print(f'{type(e).__name__}: {e}')
try:
    import transformers
except ImportError:
    print('no transformers')
else:
    try:
        transformers.AutoModelForImageClassification.from_pretrained('someone/tiny-ssm')
    except Exception as e:
        print(f'{type(e).__name__}: {e}')
assert 'timm_ssm' not in sys.modules
"""
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_HUB_CACHE=str(hub_cache.path), OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, '-c', code], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    readme = (out / 'README.md').read_text()
    assert lines[0] == 'RuntimeError: Unknown model (test_resnet_ssm)' and f'`{lines[0]}`' in readme
    if lines[1] != 'no transformers':
        quoted = "ImportError: The model architecture 'test_resnet_ssm' is not supported in your version of timm"
        assert lines[1].startswith(quoted) and f'`{quoted}`' in readme
    assert 'installing and importing timm-ssm does' in readme and 'pip install timm-ssm' in readme


def test_hf_hub_fine_tune_keeps_trunk_and_head_norm(dry_run_export, hub_cache):
    out, _ = dry_run_export
    hub_cache.put('someone/tiny-ssm', out)
    exported = safetensors.torch.load_file(out / 'model.safetensors')
    tuned = timm.create_model('hf-hub:someone/tiny-ssm', pretrained=True, num_classes=3)
    assert tuned.num_classes == 3
    for k, v in tuned.state_dict().items():
        if k in ('head.weight', 'head.bias'):
            assert v.shape[-1 if k == 'head.bias' else 0] == 3, k
        else:
            torch.testing.assert_close(v, exported[k], rtol=0, atol=0, msg=k)  # trunk and head.norm
    assert any(k.startswith('head.norm.') for k in tuned.state_dict())


def test_ema_weights(train_run, tmp_path, capsys):
    run, states, ema_states = train_run
    out = tmp_path / 'ema'
    assert main([str(run), '--repo-id', 'someone/tiny-ssm', '--dry-run', '--out', str(out), '--ema']) == 0
    tensors = safetensors.torch.load_file(out / 'model.safetensors')
    best = TOP1.index(max(TOP1))
    for k, v in ema_states[best].items():
        torch.testing.assert_close(tensors[k], v, rtol=0, atol=0, msg=k)
    assert not torch.equal(tensors['head.weight'], states[best]['head.weight'])
    readme = (out / 'README.md').read_text()
    assert 'EMA weights' in readme and 'non-EMA' not in readme
    assert '## Sub-classifiers' not in readme  # eval.json in the folder evaluated the non-EMA weights
    reference = _reference_model(run / 'model_best.pth.tar', use_ema=True)
    local = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    x = torch.randn(2, 1, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(local(x), reference(x), rtol=1e-5, atol=1e-5)


def test_checkpoint_file_and_checkpoint_name(train_run, tmp_path):
    run, states, _ = train_run
    for i, source in enumerate(([str(run / 'last.pth.tar')], [str(run), '--checkpoint', 'last.pth.tar'])):
        out = tmp_path / f'out{i}'
        assert main([*source, '--repo-id', 'someone/tiny-ssm', '--dry-run', '--out', str(out)]) == 0
        tensors = safetensors.torch.load_file(out / 'model.safetensors')
        torch.testing.assert_close(tensors['head.weight'], states[-1]['head.weight'], rtol=0, atol=0)
        readme = (out / 'README.md').read_text()
        assert '`last.pth.tar`, epoch 2' in readme
        assert '## Sub-classifiers' not in readme  # eval.json in the folder is about model_best.pth.tar


def test_bare_state_dict_needs_model(train_run, tmp_path, capsys):
    _, states, _ = train_run
    path = tmp_path / 'weights.pth'
    torch.save(states[0], path)
    out = tmp_path / 'out'
    assert main([str(path), '--repo-id', 'someone/tiny-ssm', '--dry-run', '--out', str(out)]) == 2
    assert '--model' in capsys.readouterr().err and not out.exists()
    kwargs = ['num_classes=5', 'in_chans=1', 'num_splits=3', 'norm_all=True']
    assert main([str(path), '--repo-id', 'someone/tiny-ssm', '--dry-run', '--out', str(out),
                 '--model', 'test_resnet_ssm', '--model-kwargs', *kwargs]) == 0
    config = json.loads((out / 'config.json').read_text())
    assert config['model_args'] == dict(in_chans=1, split=True, **HEAD)
    assert 'no accuracy' in (out / 'README.md').read_text()


def test_dataset_metadata_license_and_base_model(tmp_path):
    run = make_run(
        tmp_path / 'train', ema=False, model='test_resnet_ssm.r160_in1k', pretrained=True, dataset='torch/mnist')[0]
    out = tmp_path / 'out'
    assert main([str(run), '--repo-id', 'someone/ft-ssm', '--dry-run', '--out', str(out), '--license', 'mit']) == 0
    meta = _front_matter((out / 'README.md').read_text())
    assert meta['datasets'] == ['ylecun/mnist']
    assert meta['base_model'] == 'timm/test_resnet.r160_in1k'  # the weights train.py --pretrained started from
    assert meta['license'] == 'mit'
    assert json.loads((out / 'config.json').read_text())['pretrained_cfg']['license'] == 'mit'



@pytest.fixture
def base_export(train_run, tmp_path):
    """A published SSM model to fine-tune from: the module's run exported under the MIT license."""
    out = tmp_path / 'base'
    assert main([str(train_run[0]), '--repo-id', 'someone/base-ssm', '--dry-run', '--out', str(out),
                 '--license', 'mit']) == 0
    return out


def test_fine_tuned_from_hf_hub_ssm_weights(base_export, hub_cache, tmp_path, capsys):
    hub_cache.put('someone/base-ssm', base_export)
    # train.py --model hf-hub:someone/base-ssm --pretrained: num_splits and norm_all come from its config.json
    run = make_run(tmp_path / 'train', ema=False, model='hf-hub:someone/base-ssm', pretrained=True, model_kwargs={})[0]
    for i, extra in enumerate(([], ['--model', 'test_resnet_ssm', '--model-kwargs', 'num_splits=3', 'norm_all=True'])):
        out = tmp_path / f'out{i}'
        assert main([str(run), '--repo-id', 'someone/ft-ssm', '--dry-run', '--out', str(out), *extra]) == 0
        readme = (out / 'README.md').read_text()
        meta = _front_matter(readme)
        assert meta['base_model'] == 'someone/base-ssm'  # not timm's weights of the trunk
        assert meta['license'] == 'mit'  # the license of the weights it started from
        assert 'Fine-tuned from [someone/base-ssm](https://huggingface.co/someone/base-ssm)' in readme
        config = json.loads((out / 'config.json').read_text())
        assert config['architecture'] == 'test_resnet_ssm'
        assert config['model_args'] == dict(in_chans=1, split=True, **HEAD)
        assert config['pretrained_cfg']['license'] == 'mit'
        assert 'hf_hub_id' not in config['pretrained_cfg']


def test_fine_tuned_from_hf_hub_weights_not_in_the_cache(tmp_path, capsys):
    run = make_run(tmp_path / 'train', ema=False)[0]
    args = yaml.safe_load((run / 'args.yaml').read_text())
    (run / 'args.yaml').write_text(yaml.safe_dump(
        dict(args, model='hf-hub:someone/gone-ssm', pretrained=True, model_kwargs={})))
    out = tmp_path / 'out'
    err = _fails([str(run), '--repo-id', 'a/b', '--dry-run', '--out', str(out)], capsys, 'config.json', out)
    assert 'hf-hub:someone/gone-ssm' in err and '--model' in err and 'is not an SSM model' not in err
    # with --model, the card still names the Hub weights; their license is not known here
    _fails([str(run), '--repo-id', 'a/b', '--dry-run', '--out', str(out), '--model', 'test_resnet_ssm',
            '--model-kwargs', 'num_splits=3', 'norm_all=True'], capsys, '--license', out)
    assert main([str(run), '--repo-id', 'a/b', '--dry-run', '--out', str(out), '--model', 'test_resnet_ssm',
                 '--model-kwargs', 'num_splits=3', 'norm_all=True', '--license', 'mit']) == 0
    assert _front_matter((out / 'README.md').read_text())['base_model'] == 'someone/gone-ssm'


def test_fine_tuned_from_local_dir(base_export, tmp_path):
    run = make_run(tmp_path / 'train', ema=False, model=f'local-dir:{base_export}', pretrained=True, model_kwargs={})[0]
    out = tmp_path / 'out'
    assert main([str(run), '--repo-id', 'someone/ft-ssm', '--dry-run', '--out', str(out)]) == 0
    readme = (out / 'README.md').read_text()
    meta = _front_matter(readme)
    assert 'base_model' not in meta and meta['license'] == 'mit'
    assert 'Fine-tuned from pretrained weights' in readme
    assert json.loads((out / 'config.json').read_text())['model_args'] == dict(in_chans=1, split=True, **HEAD)


def test_hf_hub_model_that_is_not_ssm(hub_cache, tmp_path, capsys):
    (tmp_path / 'base').mkdir()
    (tmp_path / 'base' / 'config.json').write_text(json.dumps(dict(architecture='test_resnet', num_classes=5)))
    hub_cache.put('someone/plain', tmp_path / 'base')
    run = _copy_run(make_run(tmp_path / 'train', ema=False)[0], tmp_path / 'run')
    args = yaml.safe_load((run / 'args.yaml').read_text())
    (run / 'args.yaml').write_text(yaml.safe_dump(dict(args, model='hf-hub:someone/plain', pretrained=True)))
    err = _fails([str(run), '--repo-id', 'a/b', '--dry-run'], capsys, 'is not an SSM model')
    assert 'architecture test_resnet' in err and 'e.g. test_resnet_ssm' in err


def test_eval_json_of_the_exported_weights(train_run, tmp_path, capsys):
    """eval.json (the fixture's) evaluated model_best.pth.tar's non-EMA weights: the card of those weights shows it,
    that of the EMA weights does not, and naming it for the EMA weights is an error."""
    run = train_run[0]
    for i, ema in enumerate((True, False)):
        out = tmp_path / f'out{i}'
        assert main([str(run), '--repo-id', 'a/b', '--dry-run', '--out', str(out)] + ['--ema'] * ema) == 0
        assert ('## Sub-classifiers' in (out / 'README.md').read_text()) != ema
    _fails([str(run), '--repo-id', 'a/b', '--dry-run', '--out', str(tmp_path / 'x'), '--ema', '--eval-json',
            str(run / 'eval.json')], capsys, 'no evaluation of the exported weights.*--use-ema')


def test_default_run_then_upload_shows_its_evaluation(train_run, tmp_path):
    """The default run evaluates last.pth.tar; when model_best.pth.tar holds the same weights (train.py's link of
    the last epoch when it is the best), the upload of model_best shows that evaluation."""
    run = _copy_run(train_run[0], tmp_path / 'run')
    (run / 'eval.json').unlink()
    (run / 'model_best.pth.tar').unlink()
    os.link(run / 'last.pth.tar', run / 'model_best.pth.tar')
    evaluate.main(['--checkpoint', str(run / 'last.pth.tar'), '--data-dir', str(train_run[0].parent.parent / 'data'),
                   '--device', 'cpu', '-b', '4', '-j', '0', '--json', str(run / 'eval_validation.json'),
                   '--no-progress'])
    assert main([str(run), '--repo-id', 'a/b', '--dry-run', '--out', str(tmp_path / 'out')]) == 0
    readme = (tmp_path / 'out' / 'README.md').read_text()
    assert '`model_best.pth.tar`, epoch 2' in readme and '`eval_validation.json`' in readme


@pytest.fixture(scope='module')
def evaluated_splits(tmp_path_factory):
    """A run whose folder holds evaluations of its weights on its train, validation and test splits and on an
    unrelated folder (a 5-image check), named so that the alphabet would pick the wrong one."""
    root = tmp_path_factory.mktemp('splits')
    run = make_run(root, ema=False)[0]
    for split in ('train', 'test'):
        _image_folder(root / 'data', CLASSES, split=split)
    _image_folder(root / 'other', CLASSES, per_class=1)
    for name, data, split in (('eval_check', 'other', 'validation'), ('eval_test', 'data', 'test'),
                              ('eval_train', 'data', 'train'), ('eval_validation', 'data', 'validation')):
        evaluate.main(['--checkpoint', str(run), '--data-dir', str(root / data), '--split', split, '--device', 'cpu',
                       '-b', '8', '-j', '0', '--json', str(run / f'{name}.json'), '--no-progress'])
    return run


def _chosen(run: Path, out: Path, capsys, *extra) -> tuple:
    assert main([str(run), '--repo-id', 'a/b', '--dry-run', '--out', str(out), *extra]) == 0
    stdout = capsys.readouterr().out
    card = ModelCard.load(out / 'README.md')
    splits = {r.dataset_split for r in card.data.eval_results or []}
    return card.content, splits, stdout


def test_card_evaluation_is_the_held_out_split_of_the_run_data(evaluated_splits, tmp_path, capsys):
    """Test before validation, never train, never other data; the card and the output say which file and split."""
    run = evaluated_splits
    readme, splits, stdout = _chosen(run, tmp_path / 'out', capsys)
    assert splits == {'test'}
    assert 'on the `test` split of `an image folder`' in readme and '`eval_test.json`' in readme
    assert 'test before validation, never the training split' in readme
    assert 'Evaluation on the card: ' in stdout and 'eval_test.json (the test split of the run\'s data set)' in stdout
    assert 'left out eval_train.json: the training split' in stdout
    assert 'left out eval_check.json: other data' in stdout
    assert 'left out eval_validation.json: the validation split, after test' in stdout
    results = json.loads((run / 'eval_test.json').read_text())['models'][0]
    assert f'| Averaged (the model) | all | {results["top1"]:.2f} | {results["top5"]:.2f} |' in readme

    # without the test split's evaluation: validation; with neither: no results, not those of train or the check
    work = _copy_run(run, tmp_path / 'run')
    (work / 'eval_test.json').unlink()
    readme, splits, _ = _chosen(work, tmp_path / 'out2', capsys)
    assert splits == {'validation'} and '`eval_validation.json`' in readme
    (work / 'eval_validation.json').unlink()
    readme, splits, stdout = _chosen(work, tmp_path / 'out3', capsys)
    assert not splits and '## Sub-classifiers' not in readme and 'model-index' not in readme
    assert 'Evaluation on the card: none' in stdout


def test_eval_json_of_the_training_split_is_labeled(evaluated_splits, tmp_path, capsys):
    readme, splits, stdout = _chosen(evaluated_splits, tmp_path / 'out', capsys, '--eval-json',
                                     str(evaluated_splits / 'eval_train.json'))
    assert splits == {'train'} and '**the training split**, not held-out data' in readme
    readme, splits, _ = _chosen(evaluated_splits, tmp_path / 'out2', capsys, '--eval-json',
                                str(evaluated_splits / 'eval_check.json'))
    assert "**not the run's data set** (folder other" in readme
    meta = ModelCard.load(tmp_path / 'out2' / 'README.md').data
    assert {r.dataset_name for r in meta.eval_results} == {'image folder other'}


def test_second_dry_run_replaces_its_own_earlier_one(train_run, tmp_path, capsys):
    """README's dry run (last.pth.tar) then docs/hub.md's (model_best) on the same run and repo id: the second
    replaces the first's folder; a folder that is not such an export, or an explicit --out, is never replaced."""
    run = _copy_run(train_run[0], tmp_path / 'run')
    before = sorted(p.name for p in run.iterdir())
    assert main([str(run), '--checkpoint', 'last.pth.tar', '--repo-id', 'ORG/NAME', '--dry-run']) == 0
    assert '`last.pth.tar`, epoch 2' in (run / 'hub-ORG--NAME' / 'README.md').read_text()
    assert main([str(run), '--repo-id', 'ORG/NAME', '--dry-run']) == 0
    assert 'Replacing the earlier dry run in' in capsys.readouterr().out
    assert '`model_best.pth.tar`, epoch 1' in (run / 'hub-ORG--NAME' / 'README.md').read_text()
    _no_leftovers(run, before + ['hub-ORG--NAME'])
    _no_leftovers(run / 'hub-ORG--NAME', EXPORT_FILES)
    # not an export of this tool: kept as it is
    (run / 'hub-ORG--MINE').mkdir()
    (run / 'hub-ORG--MINE' / 'README.md').write_text('my notes')
    _fails([str(run), '--repo-id', 'ORG/MINE', '--dry-run'], capsys, 'already exists')
    assert (run / 'hub-ORG--MINE' / 'README.md').read_text() == 'my notes'
    _fails([str(run), '--repo-id', 'ORG/NAME', '--dry-run', '--out', str(run / 'hub-ORG--NAME')], capsys,
           'already exists')
    _no_leftovers(run, before + ['hub-ORG--NAME', 'hub-ORG--MINE'])


def _in_mount_namespace(script: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run a shell script in a new user and mount namespace, where it may mount a tmpfs or make a folder read-only
    (real file systems, not a stand-in); skip where this machine allows no such namespace."""
    probe = subprocess.run(['unshare', '-Urm', 'sh', '-c', f'mount -t tmpfs -o size=64k tmpfs {cwd}'],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f'cannot mount in a user namespace here (unshare -Urm: {probe.stderr.strip()[:200]})')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')]),
               OMP_NUM_THREADS='1')
    return subprocess.run(['unshare', '-Urm', 'sh', '-c', script], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_full_disk_and_read_only_run_folder(train_run, tmp_path):
    """A full disk while writing: a clear error and no partial file; --dry-run on a read-only run folder: a clear
    error that names --out, before anything is exported."""
    run = _copy_run(train_run[0], tmp_path / 'run')
    disk = tmp_path / 'disk'
    disk.mkdir()
    runs = [[str(run), '--repo-id', 'a/b', '--dry-run', '--out', f'{disk}/export/x'],  # onto the full disk
            [str(run), '--repo-id', 'a/b', '--dry-run']]  # into the read-only run folder
    code = f'from timm_ssm.hub import main\nfor argv in {runs!r}:\n    print(f"rc={{main(argv)}}", flush=True)'
    script = (f'mount -t tmpfs -o size=256k tmpfs {disk} && mount --bind {run} {run} && '
              f'mount -o remount,bind,ro {run} && {shlex.quote(sys.executable)} -c {shlex.quote(code)}; ls -A {disk}')
    proc = _in_mount_namespace(script, tmp_path)
    assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    assert [line for line in proc.stdout.splitlines() if line.startswith('rc=')] == ['rc=2', 'rc=2'], proc.stdout
    assert proc.stdout.splitlines()[-1] == 'rc=2'  # and `ls -A` of the full disk printed nothing: no partial file
    assert 'the disk is full' in proc.stderr and 'nothing was written' in proc.stderr
    assert re.search(r"The dry run's export folder .*hub-a--b cannot be written: .* is not writable", proc.stderr)
    assert '--out DIR' in proc.stderr
    assert not (run / 'hub-a--b').exists()


def test_deprecated_positional_data_path(tmp_path):
    run = _copy_run(make_run(tmp_path / 'train', ema=False)[0], tmp_path / 'run')
    args = yaml.safe_load((run / 'args.yaml').read_text())
    data = args.pop('data_dir')
    (run / 'args.yaml').write_text(yaml.safe_dump(dict(args, data=data)))  # train.py DIR: the positional path
    out = tmp_path / 'out'
    assert main([str(run), '--repo-id', 'a/b', '--dry-run', '--out', str(out)]) == 0
    assert json.loads((out / 'config.json').read_text())['label_names'] == CLASSES
    readme = (out / 'README.md').read_text()
    assert str(data) not in readme and str(tmp_path) not in readme


def test_results_of_the_published_epoch_after_resume(train_run, tmp_path):
    run = _copy_run(train_run[0], tmp_path / 'run')
    # a resumed run's checkpoint saver starts over: model_best.pth.tar (epoch 1) is not summary.csv's best
    lines = (run / 'summary.csv').read_text().splitlines()
    header = lines[0].split(',')
    last = lines[-1].split(',')
    last[header.index('eval_top1')] = '90.0'
    (run / 'summary.csv').write_text('\n'.join(lines[:-1] + [','.join(last)]) + '\n')
    out = tmp_path / 'out'
    assert main([str(run), '--repo-id', 'a/b', '--dry-run', '--out', str(out)]) == 0
    readme = (out / 'README.md').read_text()
    assert re.search(r'\| Published weights \| 1 \| 75\.00 \| 95\.00 \|', readme)
    assert re.search(r'\| Best \(by top1\) \| 2 \| 90\.00 \| 80\.00 \|', readme)
    # an --eval-metric that summary.csv has no column of names no row
    args = yaml.safe_load((run / 'args.yaml').read_text())
    (run / 'args.yaml').write_text(yaml.safe_dump(dict(args, eval_metric='auc')))
    assert main([str(run), '--repo-id', 'a/b', '--dry-run', '--out', str(tmp_path / 'out2')]) == 0
    readme = (tmp_path / 'out2' / 'README.md').read_text()
    assert 'auc' not in readme.split('## Results')[1].split('## ')[0]
    assert '| Best (by top1) | 2 |' in readme


def test_programming_errors_are_not_hub_errors(train_run, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise AttributeError('a bug, not the Hub')
    monkeypatch.setenv('HF_TOKEN', TOKEN)
    monkeypatch.setattr(ssm_hub, 'check_remote', broken)
    with pytest.raises(AttributeError, match='a bug'):
        main([str(train_run[0]), '--repo-id', 'a/b', '--out', str(tmp_path / 'out')])


def test_failed_export_removes_the_folders_it_created(train_run, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(ssm_hub.timm, 'create_model', interrupted)  # the check after writing
    (tmp_path / 'kept').mkdir()
    with pytest.raises(KeyboardInterrupt):
        main([str(train_run[0]), '--repo-id', 'a/b', '--dry-run', '--out', str(tmp_path / 'kept' / 'new' / 'out')])
    _no_leftovers(tmp_path, ['kept'])
    _no_leftovers(tmp_path / 'kept')

# --- label names ---

def _write_idx(path: Path, array: np.ndarray):
    dims = array.shape
    header = bytes([0, 0, 8, len(dims)]) + b''.join(d.to_bytes(4, 'big') for d in dims)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_label_names_from_torchvision_dataset(tmp_path):
    raw = tmp_path / 'FashionMNIST' / 'raw'
    raw.mkdir(parents=True)
    for prefix in ('train', 't10k'):
        _write_idx(raw / f'{prefix}-images-idx3-ubyte', np.zeros((3, 28, 28)))
        _write_idx(raw / f'{prefix}-labels-idx1-ubyte', np.arange(3))
    run = Run(source='x', checkpoint=tmp_path / 'x.pth.tar',
              args=dict(dataset='torch/fashion_mnist', data_dir=str(tmp_path), val_split='test'))
    names, note = ssm_hub.label_names(run, 10)
    assert names == ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag',
                     'Ankle boot']
    names, note = ssm_hub.label_names(run, 7)
    assert names is None and 'has 10 classes, the model 7' in note
    missing = Run(source='x', checkpoint=run.checkpoint, args=dict(run.args, data_dir=str(tmp_path / 'no')))
    names, note = ssm_hub.label_names(missing, 10)
    assert names is None and '--label-names' in note


def test_label_names_file(tmp_path):
    run = Run(source='x', checkpoint=tmp_path / 'x.pth.tar')
    (tmp_path / 'names.txt').write_text('a\nb\nc\n')
    (tmp_path / 'names.json').write_text('["x", "y", "z"]')
    assert ssm_hub.label_names(run, 3, tmp_path / 'names.txt')[0] == ['a', 'b', 'c']
    assert ssm_hub.label_names(run, 3, tmp_path / 'names.json')[0] == ['x', 'y', 'z']
    with pytest.raises(RunError, match='has 3 names, but the model has 4 classes'):
        ssm_hub.label_names(run, 4, tmp_path / 'names.txt')


def test_eval_json_that_is_not_an_evaluation(train_run, tmp_path, capsys):
    (tmp_path / 'other.json').write_text('{"models": 3}')
    _fails([str(train_run[0]), '--repo-id', 'a/b', '--dry-run', '--out', str(tmp_path / 'out'),
            '--eval-json', str(tmp_path / 'other.json')], capsys, 'not the --json output of', tmp_path / 'out')


# --- bad input: a clear error before anything is written or sent ---

def _copy_run(run: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in run.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def _fails(argv, capsys, match, out=None, rc=2):
    assert main(argv) == rc
    err = capsys.readouterr().err
    assert re.search(match, err), err
    if out is not None:
        assert not Path(out).exists()
    return err


def test_missing_checkpoint(train_run, tmp_path, capsys):
    run = _copy_run(train_run[0], tmp_path / 'run')
    (run / 'model_best.pth.tar').unlink()
    (run / 'last.pth.tar').unlink()
    out = tmp_path / 'out'
    err = _fails([str(run), '--repo-id', 'a/b', '--dry-run', '--out', str(out)], capsys,
                 'No model_best.pth.tar or last.pth.tar', out)
    assert 'it has checkpoint-' in err
    _fails([str(tmp_path / 'nowhere'), '--repo-id', 'a/b', '--dry-run'], capsys, 'does not exist')


def test_truncated_checkpoint(train_run, tmp_path, capsys):
    run = _copy_run(train_run[0], tmp_path / 'run')
    data = (run / 'model_best.pth.tar').read_bytes()
    (run / 'model_best.pth.tar').write_bytes(data[:len(data) // 2])
    out = tmp_path / 'out'
    _fails([str(run), '--repo-id', 'a/b', '--dry-run', '--out', str(out)], capsys, 'truncated', out)
    _no_leftovers(tmp_path, ['run'])


def test_checkpoint_with_pickled_objects_is_not_loaded(train_run, tmp_path, capsys):
    path = tmp_path / 'unsafe.pth.tar'
    torch.save({'state_dict': train_run[1][0], 'extra': Path('x')}, path)  # Path: not allowed by weights_only
    _fails([str(path), '--repo-id', 'a/b', '--dry-run', '--model', 'test_resnet_ssm'], capsys, 'weights_only=True')


def test_random_bytes_are_not_a_checkpoint(tmp_path, capsys):
    """A file of random bytes is no checkpoint, not one with pickled objects to re-save; the same through
    hub_upload/upload.py, run as a script: a clear error, no traceback, nothing written."""
    path = tmp_path / 'random.pth.tar'
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    out = tmp_path / 'out'
    err = _fails([str(path), '--repo-id', 'a/b', '--dry-run', '--model', 'test_resnet_ssm', '--out', str(out)],
                 capsys, 'random.pth.tar is not a checkpoint: it is neither a PyTorch checkpoint')
    assert 'pickled Python objects' not in err
    proc = subprocess.run(
        [sys.executable, str(REPO / 'hub_upload' / 'upload.py'), str(path), '--repo-id', 'a/b', '--dry-run', '--model',
         'test_resnet_ssm', '--out', str(out)], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2 and 'is not a checkpoint' in proc.stderr and 'Traceback' not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ['random.pth.tar']


@pytest.mark.parametrize('change, match', [
    (dict(model_kwargs=dict(num_splits=4)), r'do not fit (.|\n)*size mismatch for head\.bias: copying a param with '
                                            r'shape torch.Size\(\[3, 5\]\) from checkpoint, the shape in current model '
                                            r'is torch.Size\(\[4, 5\]\)'),
    (dict(num_classes=7), r'size mismatch for head\.weight: copying a param with shape torch.Size\(\[5, 192\]\)'),
    (dict(model='test_convnext_ssm', model_kwargs=dict(num_splits=4)), 'do not fit test_convnext_ssm'),
    (dict(model='test_resnet'), 'test_resnet .* is not an SSM model'),
], ids=['num_splits', 'num_classes', 'architecture', 'not_ssm'])
def test_args_yaml_not_matching_checkpoint(change, match, train_run, tmp_path, capsys):
    run = _copy_run(train_run[0], tmp_path / 'run')
    args = yaml.safe_load((run / 'args.yaml').read_text())
    (run / 'args.yaml').write_text(yaml.safe_dump(dict(args, **change)))
    out = tmp_path / 'out'
    err = _fails([str(run), '--repo-id', 'a/b', '--dry-run', '--out', str(out)], capsys, match, out)
    assert 'args.yaml' in err
    _no_leftovers(tmp_path, ['run'])


@pytest.mark.parametrize('repo_id', ['tiny-ssm', 'a/b/c', 'hf-hub:a/b', 'a/b c', '/b', 'a/'])
def test_bad_repo_id(repo_id, tmp_path, capsys):
    # checked first: the run does not even need to exist
    _fails([str(tmp_path / 'nowhere'), '--repo-id', repo_id, '--dry-run'], capsys, '--repo-id')


def test_no_token(train_run, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv('HF_TOKEN', raising=False)
    monkeypatch.delenv('HUGGING_FACE_HUB_TOKEN', raising=False)
    monkeypatch.setattr(constants, 'HF_TOKEN_PATH', str(tmp_path / 'no-token'))
    out = tmp_path / 'out'
    _fails([str(train_run[0]), '--repo-id', 'a/b', '--out', str(out)], capsys, 'No Hugging Face token.*HF_TOKEN', out)


def test_existing_out_folder_is_never_touched(train_run, tmp_path, capsys):
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'mine.txt').write_text('keep me')
    _fails([str(train_run[0]), '--repo-id', 'a/b', '--dry-run', '--out', str(out)], capsys, 'already exists')
    _no_leftovers(out, ['mine.txt'])
    assert (out / 'mine.txt').read_text() == 'keep me'
    _no_leftovers(tmp_path, ['out'])


def test_interrupted_export_leaves_nothing(train_run, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # after the weights, config and card were written
    monkeypatch.setattr(ssm_hub.timm, 'create_model', interrupted)  # the check after writing
    with pytest.raises(KeyboardInterrupt):
        main([str(train_run[0]), '--repo-id', 'a/b', '--dry-run', '--out', str(tmp_path / 'out')])
    _no_leftovers(tmp_path)


# --- upload, against a local stand-in for the Hub's HTTP API ---

TOKEN = 'hf_SsmTestTokenDoNotPrint0123456789'
OWN_CARD = b'---\nlicense: mit\n---\n# Our own card\n'

# Runs the tool as a user does, with HF_ENDPOINT and HF_TOKEN in the environment, for several uploads in one process.
# Everything huggingface_hub, httpx/requests and timm log goes to stderr at DEBUG level.
_UPLOADS = """
import contextlib, io, json, logging, os, sys
logging.basicConfig(level=logging.DEBUG)
from timm_ssm.hub import main
results = []
for token, argv in json.loads(sys.argv[1]):
    os.environ['HF_TOKEN'] = token
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    results.append(dict(rc=rc, out=out.getvalue(), err=err.getvalue()))
with open(sys.argv[2], 'w') as f:
    json.dump(results, f)
"""


@pytest.fixture(scope='module')
def uploads(train_run, tmp_path_factory):
    """Uploads of the module's run to a FakeHub: the hub, the export folder of the first, each upload's result and
    the process's own output."""
    run = str(train_run[0])
    tmp = tmp_path_factory.mktemp('uploads')
    with FakeHub(TOKEN) as hub:
        hub.add_repo('someone/carded', {'README.md': OWN_CARD})
        hub.add_repo('someone/public', private=False)
        scenarios = dict(
            new=(TOKEN, [run, '--repo-id', 'someone/up-ssm', '--out', str(tmp / 'out'), '--private',
                         '--revision', 'v1', '--commit-message', 'First weights']),
            carded=(TOKEN, [run, '--repo-id', 'someone/carded']),
            overwrite=(TOKEN, [run, '--repo-id', 'someone/carded', '--overwrite-card']),
            public=(TOKEN, [run, '--repo-id', 'someone/public', '--private']),
            bad_token=('hf_NotTheTokenTheHubExpects', [run, '--repo-id', 'someone/refused']),
        )
        env = dict(
            os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')]),
            HF_ENDPOINT=hub.url, HF_HUB_OFFLINE='0', HF_HOME=str(tmp / 'hf_home'), OMP_NUM_THREADS='1')
        env.pop('HF_TOKEN', None)
        proc = subprocess.run(
            [sys.executable, '-c', _UPLOADS, json.dumps(list(scenarios.values())), str(tmp / 'results.json')],
            env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    results = dict(zip(scenarios, json.loads((tmp / 'results.json').read_text())))
    return hub, tmp / 'out', results, proc


def test_uploads_never_show_the_token(uploads):
    hub, out, results, proc = uploads
    assert TOKEN not in proc.stdout and TOKEN not in proc.stderr
    assert 'DEBUG' in proc.stderr  # the client's debug log was on, and is clean
    for name, result in results.items():
        assert TOKEN not in result['out'] + result['err'], name
    for p in out.iterdir():
        assert TOKEN.encode() not in p.read_bytes(), p
    # it was sent, as a bearer token in the authorization header only: in no path, in no other header
    assert [r for r in hub.requests if r['headers'].get('authorization') == f'Bearer {TOKEN}']
    for r in hub.requests:
        assert TOKEN not in r['path'], r['path']
        assert not [k for k, v in r['headers'].items() if TOKEN in v and k.lower() != 'authorization'], r['headers']


def test_upload_commits_the_export(uploads, train_run, hub_cache, tmp_path):
    hub, out, results, _ = uploads
    assert results['new']['rc'] == 0, results['new']['err']
    assert 'Uploaded:' in results['new']['out']
    files = hub.files('someone/up-ssm', 'v1')
    assert sorted(files) == EXPORT_FILES
    for name, data in files.items():
        assert data == (out / name).read_bytes(), name
    assert hub.repos['someone/up-ssm']['private'] is True
    assert hub.files('someone/up-ssm', 'main') == {}  # committed to the branch only
    assert [c for c in hub.commits if c['repo_id'] == 'someone/up-ssm'] == [
        dict(repo_id='someone/up-ssm', branch='v1', message='First weights', files=EXPORT_FILES)]

    # what the Hub received loads back with hf-hub: (from the cache) and gives the checkpoint's logits
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    hub_cache.put('someone/up-ssm', tmp_path)
    model = timm.create_model('hf-hub:someone/up-ssm', pretrained=True).eval()
    reference = _reference_model(train_run[0] / 'model_best.pth.tar')
    x = torch.randn(2, 1, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-5)


def test_existing_remote_card_is_kept_unless_asked(uploads):
    hub, _, results, _ = uploads
    assert results['carded']['rc'] == 0 and results['overwrite']['rc'] == 0
    assert 'kept it' in results['carded']['out']
    first, second = [c for c in hub.commits if c['repo_id'] == 'someone/carded']
    assert first['files'] == ['config.json', 'model.safetensors']  # README.md left as it was
    assert second['files'] == EXPORT_FILES
    assert hub.files('someone/carded')['README.md'].startswith(b'---\n') != OWN_CARD


def test_private_refuses_an_existing_public_repo(uploads):
    hub, _, results, _ = uploads
    assert results['public']['rc'] == 2
    assert 'exists and is public' in results['public']['err']
    assert not [c for c in hub.commits if c['repo_id'] == 'someone/public']


def test_refused_token_is_reported(uploads):
    hub, _, results, _ = uploads
    assert results['bad_token']['rc'] == 1
    err = results['bad_token']['err']
    assert 'the Hub refused to check the token' in err
    assert 'Invalid user token' in err, err  # the Hub's 401 reply, as huggingface_hub's whoami words it
    assert 'someone/refused' not in hub.repos


def test_unreachable_hub_is_a_clear_error(train_run, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv('HF_TOKEN', TOKEN)
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', False)
    monkeypatch.setattr(constants, 'ENDPOINT', 'http://127.0.0.1:9')  # nothing listens on the discard port
    out = tmp_path / 'out'
    err = _fails([str(train_run[0]), '--repo-id', 'a/b', '--out', str(out)], capsys, 'cannot reach the Hub', out, 1)
    assert TOKEN not in err


# --- a real train.py run ---

def _fashion_mnist_folder(root: Path, per_class: dict) -> Path:
    """An image folder data set of Fashion-MNIST images (the Debian package), else of random images."""
    names = [c.replace('/', '_') for c in ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt',
                                            'Sneaker', 'Bag', 'Ankle boot')]
    src = Path('/usr/share/datasets/fashion-mnist')
    if (src / 't10k-images-idx3-ubyte.gz').is_file():
        images = np.frombuffer(gzip.open(src / 't10k-images-idx3-ubyte.gz').read()[16:], np.uint8).reshape(-1, 28, 28)
        labels = np.frombuffer(gzip.open(src / 't10k-labels-idx1-ubyte.gz').read()[8:], np.uint8)
    else:
        labels = np.arange(10).repeat(20)
        images = np.random.randint(0, 255, (len(labels), 28, 28), dtype=np.uint8)
    start = 0
    for split, n in per_class.items():
        for c, name in enumerate(names):
            (root / split / name).mkdir(parents=True)
            for i in np.flatnonzero(labels == c)[start:start + n]:
                Image.fromarray(images[i]).save(root / split / name / f'{i}.png')
        start += n
    return root


@pytest.mark.skipif(
    not os.environ.get('TIMM_ROOT'),
    reason='needs timm\'s train.py: set TIMM_ROOT to a checkout of pytorch-image-models at the tag of the installed '
           'timm (git clone --branch v1.0.31 https://github.com/huggingface/pytorch-image-models.git)')
def test_real_train_py_run(hub_cache, tmp_path):
    data = _fashion_mnist_folder(tmp_path / 'data', dict(train=6, validation=3))
    train_py = Path(os.environ['TIMM_ROOT']) / 'train.py'
    cmd = [
        sys.executable, '-m', 'timm_ssm.launch', str(train_py), '--data-dir', str(data), '--model', 'test_resnet_ssm',
        '--num-classes', '10', '--in-chans', '1', '--img-size', '32', '--mean', '0.286', '--std', '0.353',
        '--model-kwargs', 'num_splits=2', 'norm_all=True', '-b', '12', '--epochs', '2', '--warmup-epochs', '0',
        '--lr', '0.05', '--model-ema', '--model-ema-decay', '0.5', '--device', 'cpu', '--workers', '1',
        '--output', str(tmp_path / 'output'), '--experiment', 'fm', '--log-interval', '100',
    ]
    path = os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')])
    env = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS='1')  # one thread: a tiny model on a shared machine
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / 'output' / 'fm'
    assert {'model_best.pth.tar', 'args.yaml', 'summary.csv'} <= {p.name for p in run.iterdir()}

    out = tmp_path / 'export'
    assert main([str(run), '--repo-id', 'someone/fm-ssm', '--dry-run', '--out', str(out), '--ema']) == 0
    config = json.loads((out / 'config.json').read_text())
    assert config['model_args'] == dict(in_chans=1, num_splits=2, norm_all=True, split=True)
    assert config['pretrained_cfg']['input_size'] == [1, 32, 32]
    assert config['pretrained_cfg']['mean'] == [0.286] and config['pretrained_cfg']['std'] == [0.353]
    assert config['label_names'] == sorted(p.name for p in (data / 'validation').iterdir())
    summary = (run / 'summary.csv').read_text().splitlines()
    final_top1 = float(summary[-1].split(',')[summary[0].split(',').index('eval_top1')])
    assert f'| Final | 1 | {final_top1:.2f} |' in (out / 'README.md').read_text()

    hub_cache.put('someone/fm-ssm', out)
    model = timm.create_model('hf-hub:someone/fm-ssm', pretrained=True).eval()
    reference = timm.create_model(
        'test_resnet_ssm', num_classes=10, in_chans=1, num_splits=2, norm_all=True).eval()
    reference.load_state_dict(load_state_dict(str(run / 'model_best.pth.tar'), use_ema=True, weights_only=True))
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-5)


def test_repository_script_runs_the_package_tool(train_run, tmp_path):
    """hub_upload/upload.py, run as a script from another folder, is timm_ssm.hub."""
    out = tmp_path / 'out'
    proc = subprocess.run(
        [sys.executable, str(REPO / 'hub_upload' / 'upload.py'), str(train_run[0]), '--repo-id', 'a/b', '--dry-run',
         '--out', str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(os.listdir(out)) == EXPORT_FILES and 'Nothing was sent' in proc.stdout
