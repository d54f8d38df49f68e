"""The commands of README.md and docs/ on a run write into the run's folder, not into the folder they run from."""
import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / 'README.md'] + sorted((REPO / 'docs').glob('*.md'))
OUTPUTS = {'timm_ssm.evaluate': ('--json', '--csv', '--plot'), 'timm_ssm.cam': ('--out',)}


def _commands(page: Path):
    """The shell commands of a page's bash blocks, continuation lines joined, comments dropped."""
    for block in re.findall(r'```bash\n(.*?)```', page.read_text(), re.S):
        for command in block.replace('\\\n', ' ').splitlines():
            if any(tool in command for tool in OUTPUTS):
                yield shlex.split(command, comments=True)


@pytest.mark.parametrize('page', PAGES, ids=lambda p: p.name)
def test_tool_outputs_go_into_the_run_folder(page):
    for words in _commands(page):
        for tool, options in OUTPUTS.items():
            if tool not in words:
                continue
            for option in options:
                if option in words:
                    value = words[words.index(option) + 1]
                    assert value.startswith('$RUN/'), f'{page.name}: {" ".join(words)} writes {value} into the ' \
                                                      f'current folder'
