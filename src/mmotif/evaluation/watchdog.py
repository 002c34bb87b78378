"""A wall-clock watchdog for `mmotif eval`: the backstop for a policy call stuck in C-level work.

Evaluation calls the task's code policy in-process on every env step (the hot path). The
sandbox's budget stops Python-level loops and its weight limits bound each C-level call, but
nothing in-process can interrupt a C call that is already running, and such a call holds the
GIL, so no Python thread can act either. The watchdog therefore leans on `faulthandler`,
whose timer runs in a C thread: a Python daemon thread re-arms the timer every `limit_s / 4`
seconds, which it can only do while the interpreter makes progress. When one call holds the
interpreter for `limit_s` seconds, faulthandler writes "Timeout" and the traceback of every
thread (the stuck line of the policy's file among them) to stderr and ends the process with
exit code 1. Results of episodes finished before that are not saved.
"""

from __future__ import annotations

import faulthandler
import sys
import threading

__all__ = ["Watchdog"]


def _stderr_file():
    """A stream with a real file descriptor: faulthandler writes from C. `sys.stderr` may be
    replaced by one without (pytest's capture, a notebook); the process's own stderr is then
    used."""
    try:
        sys.stderr.fileno()
        return sys.stderr
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        return sys.__stderr__


class Watchdog:
    """`with Watchdog(120):` ends the process if one call holds the interpreter for 120 s."""

    def __init__(self, limit_s: float):
        if not limit_s > 0:
            raise ValueError(f"watchdog limit must be > 0 s, got {limit_s!r}")
        self.limit_s = float(limit_s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._rearm, name="mmotif-watchdog", daemon=True)

    def __enter__(self) -> Watchdog:
        self._arm()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        faulthandler.cancel_dump_traceback_later()

    def _arm(self) -> None:
        faulthandler.dump_traceback_later(self.limit_s, repeat=False, file=_stderr_file(), exit=True)

    def _rearm(self) -> None:
        while not self._stop.wait(self.limit_s / 4):
            self._arm()
