"""The eval watchdog ends a process whose main thread is stuck in one C-level call (issue 17 #3)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from mmotif.evaluation.watchdog import Watchdog

STUCK = textwrap.dedent("""
    from mmotif.evaluation.watchdog import Watchdog
    with Watchdog(1.0):
        sum(range(10**12))          # one C-level call of minutes, like a policy's sorted() on hostile data
""")


def test_watchdog_ends_a_process_stuck_in_one_call():
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", STUCK], capture_output=True, text=True, timeout=30)
    assert time.perf_counter() - t0 < 10
    assert proc.returncode == 1
    assert proc.stderr.startswith("Timeout (0:00:01)!") and "line 4" in proc.stderr


def test_watchdog_leaves_a_busy_python_loop_alone():
    with Watchdog(0.5):
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 1.0:
            sum(range(100))


def test_watchdog_limit_must_be_positive():
    with pytest.raises(ValueError, match="watchdog limit must be > 0"):
        Watchdog(0)
