"""Parameters and multiply-adds (`timm_ssm.complexity`, the paper's Table 4)."""
import pytest

import timm_ssm  # noqa: F401
from timm_ssm.complexity import main, profile


def test_head_macs_agree_with_the_flop_counter():
    row = profile('resnet50')
    assert row['head_macs'] == 2048 * 1000 and row['ssm_head_macs'] == (512 + 1024 + 1536 + 2048) * 1000
    assert row['ssm_macs'] - row['macs'] == row['ssm_head_macs'] - row['head_macs']
    assert 25.55e6 <= row['params'] <= 25.56e6 and 28.63e6 <= row['ssm_params'] <= 28.64e6  # the paper's Table 4


def test_unknown_model_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(['resnet50', 'no_such_net'])
    err = capsys.readouterr().err
    assert e.value.code == 2 and 'Traceback' not in err
    assert 'no_such_net: no timm architecture of that name' in err
