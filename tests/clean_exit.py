"""The check shared by the tests of bad input: a tool's `main(argv)` stops with a clear message, not a traceback."""
import re

import pytest


def exits_clearly(main, argv, capsys, match: str, code: int = 2) -> str:
    """`main(argv)` exits `code` with a message on stderr matching `match` and no traceback; returns stderr."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == code and 'Traceback' not in err
    assert re.search(match, err), err
    return err
