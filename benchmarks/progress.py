""" Progress of a long benchmark on stderr: `[k/N] what, elapsed, about T left`

    from progress import Progress
    progress = Progress(total=7 * 3, what='rounds')
    for ...:
        ...
        progress.step('inference round 3')

What the benchmark measures and prints on stdout is unchanged; these lines go to stderr, at most one every
`every` seconds (and the last one).
"""
import sys
import time


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f'{seconds // 60} min {seconds % 60:02d} s' if seconds >= 60 else f'{seconds} s'


class Progress:
    """Counts steps of equal expected length and prints the time left from the mean step so far."""

    def __init__(self, total: int, what: str = 'steps', every: float = 10., stream=None):
        self.total, self.what, self.every = max(1, total), what, every
        self.stream = stream or sys.stderr
        self.done, self.start, self.last = 0, time.perf_counter(), float('-inf')

    def step(self, label: str = '', n: int = 1):
        self.done += n
        now = time.perf_counter()
        if now - self.last < self.every and self.done < self.total:
            return
        self.last = now
        elapsed = now - self.start
        left = elapsed / self.done * (self.total - self.done)
        label = f' {label}' if label else ''
        print(f'[{self.done}/{self.total} {self.what}]{label}: {_clock(elapsed)} elapsed, about {_clock(left)} left',
              file=self.stream, flush=True)
