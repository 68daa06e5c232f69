"""Helpers of the training loop: stopping cleanly on a signal, and a progress bar."""

from __future__ import annotations

import signal
import sys
import threading


class StopOnSignal:
    """Within the block, SIGINT/SIGTERM only set ``requested`` (and ``signum``, the signal that
    came): the loop stops at a batch boundary."""

    def __init__(self):
        self.requested = False
        self.signum = signal.SIGINT  # what a stop another rank asked for counts as
        self._old: dict = {}

    def _handle(self, signum, frame):
        self.requested, self.signum = True, signal.Signals(signum)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        return False


def progress_bar(items, desc: str, enabled: bool):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, leave=False, file=sys.stderr, disable=None, unit="batch")
