""" Stop signals for the launcher, the default run and the study, and child processes that stop with them

    with Children() as children:  # in the main thread: installs the handlers, restores them at the end
        try:
            code = children.run([sys.executable, '-m', 'torch.distributed.run', ...])  # also from threads
        except Stopped as stop:
            return stop.exit_code  # 130 after Ctrl-C, 128 + signum after SIGTERM or SIGHUP

SIGTERM, SIGHUP and SIGINT (unless a terminal's Ctrl-C reached the children already) go to every live child; none
starts after a signal. With no live child, `Stopped`, a `KeyboardInterrupt`, is raised where the main thread is: timm's
train.py run in this process ends its epoch loop on it as on Ctrl-C.
"""
import os
import signal
import subprocess
import threading
from typing import List, Optional

__all__ = ['Children', 'Stopped', 'STOP_SIGNALS']

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stopped(KeyboardInterrupt):
    """A stop signal `signum` reached this process, which should exit with `exit_code` (128 + signum, as a shell)."""

    def __init__(self, signum: int):
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f'stopped by {signal.Signals(signum).name}')


def _terminal_sent_it(proc: subprocess.Popen) -> bool:
    """Whether Ctrl-C on the controlling terminal reached `proc` already (it is in the terminal's foreground group)."""
    try:
        with open('/dev/tty', 'rb', buffering=0) as tty:
            return os.tcgetpgrp(tty.fileno()) == os.getpgrp() == os.getpgid(proc.pid)
    except OSError:
        return False  # no controlling terminal, or the child has ended


class Children:
    """Runs child processes that end when this process is stopped; enter it once, in the main thread."""

    def __init__(self):
        self._lock = threading.RLock()  # the handler runs in the main thread, which may hold it already
        self._live: List[subprocess.Popen] = []
        self._starting = 0  # children being started, not yet in _live
        self._sent = set()  # pids a stop signal was forwarded to
        self.signum: Optional[int] = None  # the first stop signal received

    @property
    def stopped(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> 'Children':
        self._previous = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame) -> None:
        self.signum = self.signum or signum
        with self._lock:
            live = [p for p in self._live if p.poll() is None]
        if not live and not self._starting:
            raise Stopped(self.signum)
        for proc in live:
            self._forward(proc, signum)

    def _forward(self, proc: subprocess.Popen, signum: int) -> None:
        self._sent.add(proc.pid)
        if signum != signal.SIGINT or not _terminal_sent_it(proc):
            proc.send_signal(signum)  # does nothing once it has ended

    def run(self, cmd: List[str], **popen_kwargs) -> int:
        """Run a command to its end and return its exit code (`popen_kwargs` go to `subprocess.Popen`).

        Raises:
            Stopped: A stop signal came before the start (nothing starts) or while the child ran (once it ended).
        """
        with self._lock:
            if self.stopped:
                raise Stopped(self.signum)
            self._starting += 1
            try:
                proc = subprocess.Popen(cmd, **popen_kwargs)
                self._live.append(proc)
            finally:
                self._starting -= 1
        if self.stopped and proc.pid not in self._sent:
            self._forward(proc, self.signum)  # the signal came while it started
        try:
            code = proc.wait()
        except BaseException:  # this process fails: the child must not outlive it
            proc.terminate()
            proc.wait()
            raise
        finally:
            with self._lock:
                self._live.remove(proc)
        if self.stopped:
            raise Stopped(self.signum)
        return code
