"""timm_ssm.process: stop signals reach every child, the parent exits 128 + signum, Ctrl-C from a real terminal; in
this process a stop ends a loop that stops on Ctrl-C, as train.py's."""
import contextlib
import os
import pty
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from timm_ssm.process import Children, Stopped

REPO = Path(__file__).resolve().parent.parent

# A child that says it is ready, then waits; on SIGINT it stops as train.py does (KeyboardInterrupt ends its loop)
# and records how many SIGINTs it got.
CHILD = textwrap.dedent('''
    import os, signal, sys, time
    out = sys.argv[1]
    got = []
    signal.signal(signal.SIGINT, lambda s, f: got.append(s))
    open(out + '.ready', 'w').close()
    while not got:
        time.sleep(0.02)
    time.sleep(0.3)  # a second SIGINT would arrive now
    with open(out + '.sigint', 'w') as f:
        f.write(str(len(got)))
    print('child stopped', flush=True)
''')

# A parent that runs N children at once, from threads and from the main thread.
PARENT = textwrap.dedent('''
    import sys, threading
    from concurrent.futures import ThreadPoolExecutor
    from timm_ssm.process import Children, Stopped
    child, outs = sys.argv[1], sys.argv[2:]
    with Children() as children:
        try:
            with ThreadPoolExecutor(len(outs)) as pool:
                futures = [pool.submit(children.run, [sys.executable, child, o]) for o in outs[1:]]
                children.run([sys.executable, child, outs[0]])
                [f.result() for f in futures]
        except Stopped as stop:
            try:
                children.run([sys.executable, '-c', 'print("started after the stop")'])
            except Stopped:
                pass
            print(f'partial: {stop}', flush=True)
            sys.exit(stop.exit_code)
    print('not stopped')
''')


_STARTED = []


@pytest.fixture(autouse=True)
def _no_leftovers():
    """A failing test leaves no parent or child behind (each parent leads its own process group)."""
    yield
    for proc in _STARTED:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    _STARTED.clear()


def _start(tmp_path, n, **kwargs):
    (tmp_path / 'child.py').write_text(CHILD)
    (tmp_path / 'parent.py').write_text(PARENT)
    outs = [str(tmp_path / f'c{i}') for i in range(n)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, str(tmp_path / 'parent.py'), str(tmp_path / 'child.py'), *outs],
                            env=env, **kwargs)
    _STARTED.append(proc)
    deadline = time.time() + 60
    while not all(os.path.exists(o + '.ready') for o in outs):
        assert proc.poll() is None and time.time() < deadline, 'the children did not start'
        time.sleep(0.05)
    return proc, outs


def _child_pids(pid):
    pids = []
    for task in os.listdir(f'/proc/{pid}/task'):  # each thread's children
        with open(f'/proc/{pid}/task/{task}/children') as f:
            pids += [int(p) for p in f.read().split()]
    return pids


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_stop_in_this_process_ends_a_loop_as_ctrl_c_does(signum):
    """No child is live: the signal raises Stopped where this process is, which a `except KeyboardInterrupt` (train.py's
    epoch loop) takes as Ctrl-C; no child starts after it."""
    with Children() as children:
        try:
            os.kill(os.getpid(), signum)
            time.sleep(5)
        except KeyboardInterrupt as e:
            assert isinstance(e, Stopped) and e.exit_code == 128 + signum
        assert children.signum == signum
        with pytest.raises(Stopped):
            children.run([sys.executable, '-c', 'pass'])
    assert signal.getsignal(signum) != children._handle


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_stop_signal_reaches_every_child(tmp_path, signum):
    """A signal to the parent alone (a job scheduler, a closed terminal, `kill -INT` without a terminal): every child
    gets it once and is reaped, none starts after it, the parent exits 128 + signum."""
    proc, outs = _start(tmp_path, 3, stdout=subprocess.PIPE, text=True, start_new_session=True)
    children = _child_pids(proc.pid)
    assert len(children) == 3
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signum, out
    assert f'partial: stopped by {signal.Signals(signum).name}' in out
    assert 'started after the stop' not in out and 'not stopped' not in out
    assert not [pid for pid in children if os.path.exists(f'/proc/{pid}')], 'a child outlived its parent'
    if signum == signal.SIGINT:  # the children stop as train.py does, after one SIGINT each
        assert [Path(o + '.sigint').read_text() for o in outs] == ['1'] * 3


def test_ctrl_c_on_a_terminal_reaches_each_child_once(tmp_path):
    """Ctrl-C typed on a real (pseudo-)terminal: the terminal signals the whole group, the parent sends nothing
    more, every child stops after one SIGINT and the parent exits 130."""
    import fcntl
    import termios
    master, slave = pty.openpty()

    def controlling_terminal():
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)

    proc, outs = _start(tmp_path, 2, stdin=slave, stdout=slave, stderr=slave, preexec_fn=controlling_terminal)
    os.close(slave)
    os.write(master, b'\x03')  # Ctrl-C
    try:
        assert proc.wait(timeout=30) == 130
    finally:
        output = b''
        with contextlib.suppress(OSError):
            while chunk := os.read(master, 65536):
                output += chunk
        os.close(master)
    assert b'partial: stopped by SIGINT' in output, output
    assert [Path(o + '.sigint').read_text() for o in outs] == ['1', '1']
