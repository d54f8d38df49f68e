""" Stop signals for the launcher, the default run and the study, and child processes that stop with them

    with Children() as children:  # in the main thread: installs the handlers, restores them at the end
        try:
            code = children.run([sys.executable, '-m', 'torch.distributed.run', ...])  # also from threads
        except Stopped as stop:
            return stop.exit_code  # 130 after Ctrl-C, 128 + signum after SIGTERM or SIGHUP

While `Children` is active, SIGTERM and SIGHUP (a job scheduler, a closed terminal) are forwarded to every live
child; SIGINT too, unless a terminal sent Ctrl-C to the whole process group, children included. No child starts
after a signal, `run` raises `Stopped` once its child has ended, and a signal that finds no live child raises
`Stopped` where the main thread is: as `Stopped` is a `KeyboardInterrupt`, timm's train.py run in this process ends
its epoch loop on it as on Ctrl-C, and `Children.signum` tells afterwards that it came.
"""
import os
import signal
import subprocess
import threading
from typing import List, Optional, Sequence

__all__ = ['Children', 'Stopped', 'STOP_SIGNALS']

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stopped(KeyboardInterrupt):
    """A stop signal reached this process.

    Attributes:
        signum: The first stop signal received.
        exit_code: What the process should exit with: 128 + signum (130 for SIGINT), as a shell reports it.
    """

    def __init__(self, signum: int):
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f'stopped by {signal.Signals(signum).name}')


def _terminal_sent_it(proc: subprocess.Popen) -> bool:
    """Whether Ctrl-C on the controlling terminal reached `proc` already (it is in the terminal's foreground group)."""
    try:
        fd = os.open('/dev/tty', os.O_RDONLY | os.O_NOCTTY)
    except OSError:
        return False  # no controlling terminal
    try:
        return os.tcgetpgrp(fd) == os.getpgrp() == os.getpgid(proc.pid)
    except OSError:
        return False
    finally:
        os.close(fd)


class Children:
    """Runs child processes that end when this process is stopped; enter it once, in the main thread."""

    def __init__(self, signals: Sequence[int] = STOP_SIGNALS):
        self._signals = tuple(signals)
        self._lock = threading.RLock()  # the handler runs in the main thread, which may hold it already
        self._live: List[subprocess.Popen] = []
        self._starting = 0  # children being started, not yet in _live
        self._sent = set()  # pids a stop signal was forwarded to
        self._previous = {}
        self.signum: Optional[int] = None  # the first stop signal received

    @property
    def stopped(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> 'Children':
        for signum in self._signals:
            self._previous[signum] = signal.signal(signum, self._handle)
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
        try:
            if signum != signal.SIGINT or not _terminal_sent_it(proc):
                proc.send_signal(signum)
        except (ProcessLookupError, PermissionError):
            pass  # it has just ended

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
        except BaseException:
            if proc.poll() is None:  # this process fails: the child must not outlive it
                proc.terminate()
                proc.wait()
            raise
        finally:
            with self._lock:
                self._live.remove(proc)
        if self.stopped:
            raise Stopped(self.signum)
        return code
