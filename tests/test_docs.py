"""The command blocks of README.md and docs/: each one has a stated treatment, and runs or parses as written.

Every ```bash and ```python block is listed in BLOCKS by its page and first line, with its treatment:
* RUN: run as written (bash -euo pipefail, or python) in a sandbox: a temporary HOME holding the default run's image
  folder (of a tiny Fashion-MNIST) in `~/.cache/timm_ssm` and a working folder with a default-run folder (a real
  checkpoint of its model and its args.yaml, no training); offline, on CPU. Blocks with timm's scripts need TIMM_ROOT.
* FLAGS: nothing runs; each command's options are parsed by the program's own parser (`train_timm.sh --dry-run`,
  timm's scripts, timm_ssm's tools, the benchmarks, torchrun). Set-up commands (pip, git, export, ...) are passed over.
* SKIP(why): cannot run offline on a CPU in seconds (a GPU, ImageNet, the network, the whole suite).
* TODO(why): known not to run as written yet; an expected failure until the page is fixed.
A block without a treatment, or a treatment of a block no page has any more, fails: change a block's first line and
its key follows.
"""
import argparse
import contextlib
import io
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, NamedTuple

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / 'README.md'] + sorted((REPO / 'docs').glob('*.md'))
TIMM_ROOT = os.environ.get('TIMM_ROOT')


class Treatment(NamedTuple):
    kind: str
    why: str = ''


RUN, FLAGS = Treatment('run'), Treatment('flags')


def SKIP(why):  # noqa: N802
    return Treatment('skip', why)


def TODO(why):  # noqa: N802
    return Treatment('todo', why)


# page: first line of the block (a second block with the same first line: ' #2'): treatment
BLOCKS: Dict[str, Treatment] = {
    'README.md: python3 -m venv .venv && . .venv/bin/activate && pip install \'.[test]\'   # set up (Python >= 3.10)':
        FLAGS,
    'README.md: pip install .              # Python >= 3.10: torch, timm, huggingface_hub, scipy, matplotlib': FLAGS,
    'README.md: import timm': SKIP('downloads timm\'s resnet50.a1_in1k weights from the Hub'),
    'README.md: model = timm.create_model(\'hf-hub:ORG/NAME\', pretrained=True)': SKIP('ORG/NAME is a placeholder'),
    'README.md: import timm #2': RUN,
    'README.md: ./train_timm.sh --data-dir /data/imagenet --model resnet50_ssm --epochs 90 --device cuda   # any '
    'train.py argument': FLAGS,
    'README.md: RUN=$(ls -d output/train/fashion_mnist-* | tail -1)': RUN,
    'README.md: python -m pytest -q                                                 # offline, tiny models; skips say '
    'why': SKIP('the test suite itself'),
    'analyses.md: RUN=$(ls -d output/train/fashion_mnist-* | tail -1)': RUN,
    'analyses.md: python -m timm_ssm.evaluate --checkpoint $RUN --data-dir $DATA --split test \\': FLAGS,
    'analyses.md: python -m timm_ssm.evaluate --checkpoint output/train/RUN_A output/train/RUN_B --data-dir $DATA '
    '--split test': FLAGS,
    'analyses.md: RUN=output/train/cam-os8': RUN,  # on an untrained run of the recipe's model
    'analyses.md: ./train_timm.sh --model-kwargs output_stride=8 --epochs 2 --experiment cam-os8': FLAGS,
    'benchmarks.md: python benchmarks/throughput.py        # resnet50_ssm vs resnet50, inference and training step; '
    'the head vs a plain one': FLAGS,
    'evidence.md: export TIMM_ROOT=/path/to/pytorch-image-models     # timm\'s train.py (or the cached copy of '
    'timm\'s source)': FLAGS,
    'evidence.md: python benchmarks/lite0_weights.py                  # once: the mapped weights, see above': FLAGS,
    'hub.md: RUN=$(ls -d output/train/fashion_mnist-* | tail -1)          # the default run\'s folder, or any '
    'train.py run': SKIP('uploads to the Hub (hf auth login)'),
    'hub.md: import timm': SKIP('ORG/NAME is a placeholder'),
    'hub.md: import timm_ssm': SKIP('ORG/NAME is a placeholder (tests/test_hub.py loads a real export through '
                                    'transformers three ways)'),
    'models.md: model = timm.create_model(\'resnet50_ssm\', num_classes=K, checkpoint_path=\'plain_or_ssm.pth.tar\')':
        SKIP('K and the files are placeholders (tests/test_pretrained.py loads each layout every way shown)'),
    'training.md: ./train_timm.sh --data-dir /data/flowers --model resnet50_ssm --num-classes 102 \\': FLAGS,
    'models.md: pip install pytest-timeout': SKIP('downloads timm\'s source from PyPI and runs its model tests'),
    'training.md: ./train_timm.sh                      # from a checkout': FLAGS,
    'training.md: git clone --branch v1.0.31 https://github.com/huggingface/pytorch-image-models.git '
    '~/pytorch-image-models': FLAGS,
    'training.md: ./train_timm.sh -c resnet50_ssm --data-dir /data/imagenet                    # ResNet-50 + SSM':
        FLAGS,
    'training.md: ./train_timm.sh -c finetune_ssm --data-dir /data/flowers --num-classes 102': FLAGS,
    'training.md: # on each of 2 nodes of 8 GPUs (--node-rank 1 on the second)': FLAGS,
    'training.md: RUN=$(ls -d output/train/fashion_mnist-* | tail -1)': RUN,
    'training.md: python -m timm_ssm.launch benchmark.py --model resnet50_ssm --bench inference --device cpu -b 8 '
    '--num-bench-iter 5': FLAGS,  # minutes of ResNet-50 on a loaded CPU; tests/test_timm_scripts.py runs benchmark.py
    'training.md: from timm_ssm.runs import create_run_model, load_run, run_data_config': RUN,
}

# commands that set up a shell, an install or a checkout: FLAGS passes over them
SHELL_WORDS = {'pip', 'python3', 'export', 'git', 'cd', '.', 'source', 'mkdir', 'ls', 'tar', 'hf', 'd=$(mktemp'}


class Block(NamedTuple):
    key: str
    lang: str
    text: str


def _blocks() -> List[Block]:
    blocks, seen = [], {}
    for page in PAGES:
        for lang, text in re.findall(r'```(bash|python)\n(.*?)```', page.read_text(), re.S):
            key = f'{page.name}: {text.strip().splitlines()[0].rstrip()}'
            seen[key] = seen.get(key, 0) + 1
            blocks.append(Block(key if seen[key] == 1 else f'{key} #{seen[key]}', lang, text))
    return blocks


BLOCK_LIST = _blocks()


def test_every_block_has_a_treatment():
    keys = [b.key for b in BLOCK_LIST]
    missing = [k for k in keys if k not in BLOCKS]
    stale = [k for k in BLOCKS if k not in keys]
    assert not missing, 'blocks without a treatment in tests/test_docs.py BLOCKS:\n' + '\n'.join(missing)
    assert not stale, 'treatments of blocks no page has (update the key):\n' + '\n'.join(stale)


def _commands(text: str) -> List[List[str]]:
    """The commands of a bash block: continuation lines joined, comments dropped, `a && b` split."""
    commands, pending = [], ''
    for line in text.replace('\\\n', ' ').splitlines():
        try:
            words = shlex.split(pending + line, comments=True)
        except ValueError:  # a quoted string goes on over the next line
            pending += line + ' '
            continue
        pending = ''
        command = []
        for word in words + ['&&']:
            if word in ('&&', ';', '||', '|'):
                if command:
                    commands.append(command)
                command = []
            else:
                command.append(word)
    return commands


def _expand(words: List[str], env: Dict[str, str]) -> List[str]:
    out = []
    for word in words:
        word = re.sub(r'\$\{?(\w+)\}?', lambda m: env.get(m.group(1), 'PLACEHOLDER'), word)
        out.append(os.path.expanduser(word) if word.startswith('~') else word)
    return out


def _parse(parser: argparse.ArgumentParser, args: List[str], what: str):
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            parser.parse_args(args)
    except SystemExit as e:
        if e.code:
            pytest.fail(f'{what}: {err.getvalue().strip()}')


def _script_parser(path: Path) -> argparse.ArgumentParser:
    module = runpy.run_path(str(path), run_name='timm_ssm_docs_check')
    return module['parser']


def _check_train_timm(args: List[str], what: str):
    """train_timm's own check of its options and train.py's (`--dry-run`: nothing runs, no data is prepared)."""
    if not TIMM_ROOT:
        pytest.skip('train_timm.sh checks its arguments with train.py\'s parser: set TIMM_ROOT')
    from timm_ssm import train_timm
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        code = train_timm.main([*args, '--dry-run'])
    assert code == 0, f'{what}: {err.getvalue()}'


def _check_flags(words: List[str], env: Dict[str, str]):
    words = _expand(words, env)
    what = ' '.join(words)
    if re.match(r'^\w+=', words[0]) and len(words) == 1:
        return  # VAR=value
    if re.match(r'^\w+=\$\(', words[0]):  # VAR=$(command ...)
        words = [words[0].split('$(', 1)[1], *words[1:-1], words[-1].rstrip(')')]
    while re.match(r'^\w+=', words[0]):
        words = words[1:]  # VAR=value command
    program = words[0]
    if program in SHELL_WORDS or program.startswith('d=$('):
        return
    if program.endswith('train_timm.sh'):
        return _check_train_timm(words[1:], what)
    if program in ('python', sys.executable) and words[1:2] == ['-m']:
        module, args = words[2], words[3:]
        if module == 'timm_ssm.train_timm':
            return _check_train_timm(args, what)
        if module == 'timm_ssm.launch':
            if not TIMM_ROOT:
                pytest.skip('timm\'s scripts: set TIMM_ROOT')
            return _parse(_script_parser(Path(TIMM_ROOT) / args[0]), args[1:], what)
        if module == 'pytest':
            return
        if module == 'timm_ssm.study':  # its own options, then train.py's for the rest
            _, rest = __import__(module, fromlist=['parser']).parser.parse_known_args(args)
            if TIMM_ROOT and rest:
                module = runpy.run_path(str(Path(TIMM_ROOT) / 'train.py'), run_name='timm_ssm_docs_check')
                _parse(module['parser'], ['--data-dir', 'DATA', *rest], what)
            return
        if module.startswith('timm_ssm.'):
            return _parse(__import__(module, fromlist=['parser']).parser, args, what)
    if program == 'python' and words[1].startswith('benchmarks/'):
        return _parse(_script_parser(REPO / words[1]), words[2:], what)
    if program == 'torchrun':
        from torch.distributed.run import get_args_parser
        return _parse(get_args_parser(), words[1:], what)
    pytest.fail(f'{what}: no parser known for {program} (add it to tests/test_docs.py or give the block another '
                f'treatment)')


@pytest.fixture(scope='module')
def sandbox(tmp_path_factory, tiny_cache):
    """A HOME and working folder as after the default run: the image folder (of a tiny Fashion-MNIST) in its cache and
    a run folder with a checkpoint of its model, as train.py writes them (and one of the Grad-CAM recipe's model)."""
    import timm
    import torch
    import yaml
    from timm.utils import CheckpointSaver

    home = tmp_path_factory.mktemp('home')
    shutil.copytree(tiny_cache / 'timm_ssm', home / '.cache' / 'timm_ssm', copy_function=os.link)
    data = home / '.cache' / 'timm_ssm' / 'data' / 'fashion_mnist_images'
    work = home / 'work'
    run = work / 'output' / 'train' / 'fashion_mnist-test_resnet_ssm-20261201-100000'
    args = dict(  # the default run's args.yaml, as far as the tools read it
        model='test_resnet_ssm', num_classes=10, data_dir=str(data), dataset='', train_split='train',
        val_split='validation', input_size=[3, 28, 28], img_size=None, in_chans=None, mean=[0.286] * 3,
        std=[0.353] * 3, crop_pct=1.0, crop_mode=None, interpolation='bilinear', batch_size=50,
        validation_batch_size=None, workers=0, device='cpu', model_ema=False, epochs=5, gp=None, bn_eps=None,
        bn_momentum=None, output=str(run.parent))
    for folder, kwargs in ((run, {}), (run.parent / 'cam-os8', dict(output_stride=8))):
        folder.mkdir(parents=True)
        model = timm.create_model('test_resnet_ssm', num_classes=10, **kwargs)
        run_args = dict(args, model_kwargs=kwargs, experiment=folder.name)
        saver = CheckpointSaver(model, torch.optim.SGD(model.parameters(), lr=0.1),
                                args=argparse.Namespace(**run_args), checkpoint_dir=str(folder), max_history=1)
        saver.save_checkpoint(epoch=0, metric=10.)
        (folder / 'args.yaml').write_text(yaml.safe_dump(run_args))
    (work / 'output' / 'train' / 'RUN').symlink_to(run.name)
    env = dict(os.environ, HOME=str(home), CUDA_VISIBLE_DEVICES='', HF_HUB_OFFLINE='1', OMP_NUM_THREADS='1')
    env.pop('XDG_CACHE_HOME', None)
    env['PYTHONPATH'] = os.pathsep.join([str(REPO), env.get('PYTHONPATH', '')]).rstrip(os.pathsep)
    env['PATH'] = os.pathsep.join([str(Path(sys.executable).parent), env.get('PATH', '')])
    return work, env


@pytest.mark.parametrize('block', BLOCK_LIST, ids=lambda b: b.key[:90])
def test_block(block, request):
    treatment = BLOCKS.get(block.key)
    if treatment is None:
        pytest.fail(f'no treatment for {block.key} (see test_every_block_has_a_treatment)')
    if treatment.kind == 'skip':
        pytest.skip(treatment.why)
    if treatment.kind == 'todo':
        pytest.xfail(treatment.why)
    if treatment.kind == 'flags':
        env = {'HOME': os.path.expanduser('~'), 'RUN': 'output/train/RUN', 'DATA': 'DATA'}
        for words in _commands(block.text):
            _check_flags(words, env)
        return
    if 'timm_ssm.launch' in block.text and not TIMM_ROOT:
        pytest.skip('runs timm\'s scripts: set TIMM_ROOT')
    work, env = request.getfixturevalue('sandbox')
    if block.lang == 'bash':
        cmd = ['bash', '-euo', 'pipefail', '-c', block.text]
    else:
        cmd = [sys.executable, '-c', block.text]
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f'{block.key}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}'


OUTPUTS = {'timm_ssm.evaluate': ('--json', '--csv', '--plot'), 'timm_ssm.cam': ('--out',)}


@pytest.mark.parametrize('page', PAGES, ids=lambda p: p.name)
def test_tool_outputs_go_into_the_run_folder(page):
    """The commands of README.md and docs/ on a run write into the run's folder, not into the folder they run
    from."""
    for block in re.findall(r'```bash\n(.*?)```', page.read_text(), re.S):
        for words in _commands(block):
            for tool, options in OUTPUTS.items():
                if tool not in words:
                    continue
                for option in options:
                    if option in words:
                        value = words[words.index(option) + 1]
                        assert value.startswith('$RUN/'), f'{page.name}: {" ".join(words)} writes {value} into ' \
                                                          f'the current folder'


def test_timm_root_that_is_no_checkout_skips(tmp_path):
    """The quick start's placeholder TIMM_ROOT=/path/to/pytorch-image-models: the tests of timm's scripts skip,
    saying why, instead of failing."""
    env = dict(os.environ, TIMM_ROOT='/path/to/pytorch-image-models')
    proc = subprocess.run([sys.executable, '-m', 'pytest', '-rs', '-p', 'no:cacheprovider',
                           str(REPO / 'tests' / 'test_configs.py'), '-k', 'train_py'], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert 'TIMM_ROOT=/path/to/pytorch-image-models is not a pytorch-image-models checkout' in proc.stdout
    assert 'skipped' in proc.stdout and 'failed' not in proc.stdout and 'error' not in proc.stdout
