""" Child processes that stop with their parent: one road for signals in the launcher, the default run and the study

A tool that runs timm's `train.py` or `timm_ssm.evaluate` as child processes starts them through `Children`:

    from timm_ssm.process import Children, Stopped

    def main() -> int:
        with Children() as children:  # in the main thread: installs the signal handlers, restores them at the end
            try:
                code = children.run([sys.executable, '-m', 'timm_ssm.launch', 'train.py', ...],
                                    on_line=lambda line: print(line, end=''))  # stdout filtered line by line
                # several at once, from threads: pool.submit(children.run, cmd, stdout=log, stderr=STDOUT)
            except Stopped as stop:
                print(f'{stop}: the runs so far are ...', file=sys.stderr)  # what is partial
                return stop.exit_code  # 130 after Ctrl-C, 128 + signum after SIGTERM or SIGHUP
        return code

What a signal to the parent does while `Children` is active:
  * SIGTERM and SIGHUP (a job scheduler, a closed terminal) are forwarded to every live child.
  * SIGINT (Ctrl-C): a terminal sends it to its whole foreground process group, children included, so it is not
    sent again to children of the same group; sent to the parent alone (`kill -INT`, no terminal), it is forwarded.
    timm's train.py stops its epoch loop on it and exits after saving.
  * No new child starts after a signal: `run` raises `Stopped` at once. A `run` whose child was live raises
    `Stopped` when the child has ended, so nothing goes on to the next step with the output of a stopped child.
    A signal that finds no live child raises `Stopped` in the main thread where it is.
"""
import os
import signal
import subprocess
import sys
import threading
from typing import Callable, List, Optional, Sequence

__all__ = ['Children', 'Stopped', 'STOP_SIGNALS']

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stopped(BaseException):
    """A stop signal reached the parent; raised by `Children.run` (or in the main thread when no child was live).

    A BaseException, as KeyboardInterrupt is, so that `except Exception` in between does not swallow it.

    Attributes:
        signum: The first stop signal received.
        exit_code: What the parent should exit with: 128 + signum (130 for SIGINT), as a shell reports it.
        returncode: The exit code of the child whose end raised it, None when no child was waited for.
    """

    def __init__(self, signum: int, returncode: Optional[int] = None):
        self.signum = signum
        self.exit_code = 128 + signum
        self.returncode = returncode
        super().__init__(f'stopped by {signal.Signals(signum).name}')


def _terminal_sends_to_group() -> bool:
    """Whether this process is in the foreground process group of its controlling terminal, which then sends
    Ctrl-C's SIGINT to all of the group, children included."""
    try:
        fd = os.open('/dev/tty', os.O_RDONLY | os.O_NOCTTY)
    except OSError:
        return False  # no controlling terminal
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False
    finally:
        os.close(fd)


class Children:
    """Runs child processes that end when the parent is stopped; thread-safe, used once, as a context manager.

    Enter it in the main thread (Python delivers signals there); `run` may be called from any thread.
    """

    def __init__(self, signals: Sequence[int] = STOP_SIGNALS):
        self._signals = tuple(signals)
        self._lock = threading.RLock()  # the handler runs in the main thread, which may hold it already
        self._live: List[subprocess.Popen] = []
        self._starting = 0  # children being started, not yet in _live
        self._sent = set()  # pids of the children a stop signal was forwarded to
        self._previous = {}
        self.signum: Optional[int] = None  # the first stop signal received

    @property
    def stopped(self) -> bool:
        """Whether a stop signal has arrived."""
        return self.signum is not None

    def __enter__(self) -> 'Children':
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError('Children must be entered in the main thread, where Python delivers signals.')
        for signum in self._signals:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.signum is None:
            self.signum = signum
        with self._lock:
            live = [p for p in self._live if p.poll() is None]
        if not live and not self._starting:
            raise Stopped(self.signum)
        for proc in live:
            self._forward(proc, signum)

    def _forward(self, proc: subprocess.Popen, signum: int) -> None:
        self._sent.add(proc.pid)
        try:
            if signum == signal.SIGINT and _terminal_sends_to_group() and os.getpgid(proc.pid) == os.getpgrp():
                return  # it has this SIGINT from the terminal already
            proc.send_signal(signum)
        except (ProcessLookupError, PermissionError):
            pass  # it has just ended

    def run(self, cmd: List[str], on_line: Optional[Callable[[str], None]] = None, **popen_kwargs) -> int:
        """Run a command to its end and return its exit code.

        Args:
            cmd: The command.
            on_line: Called with each line of the child's stdout (with its newline), which is then a text pipe;
                without it stdout is the parent's or `popen_kwargs['stdout']`.
            **popen_kwargs: For `subprocess.Popen` (`env`, `stdout`, `stderr`, `cwd`).

        Raises:
            Stopped: A stop signal arrived, before the start (nothing is started) or while the child ran (raised
                once it has ended).
        """
        if on_line is not None:
            popen_kwargs.update(stdout=subprocess.PIPE, text=True, bufsize=1)
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
            if on_line is not None:
                for line in proc.stdout:
                    on_line(line)
                proc.stdout.close()
            code = proc.wait()
        except BaseException:
            if proc.poll() is None:  # the parent fails: the child must not outlive it
                proc.terminate()
                proc.wait()
            raise
        finally:
            with self._lock:
                self._live.remove(proc)
        if self.stopped:
            raise Stopped(self.signum, code)
        return code

