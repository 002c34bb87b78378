"""The progress view: a windowed rate, a live line that fits, plain lines in a log."""

from __future__ import annotations

import io

import pytest

from mmotif.runtime.driver import RunCounters
from mmotif.runtime.progress import LINE_WIDTH, Progress, WindowedRate

SKILLS = ("descender", "ascender", "discoverer", "worshipper", "merchant")


def _busy_counters() -> RunCounters:
    c = RunCounters(env_steps=123_456_789, labels=1_234_567, episodes=987_654, reward_versions=[1234])
    c.tie_shares = {"descender": (400, 1000), "merchant": (900, 1000)}
    return c


def _stats() -> dict:
    return {"env_steps_per_second": 123_456.7, "policy_version": 98_765,
            **{f"skill_reward/{s}": -0.1234 for s in SKILLS}}


def test_windowed_rate_follows_the_recent_pace_not_the_average_since_start():
    rate = WindowedRate(window_s=30, start_total=0, start_time=0.0)
    for t in range(0, 301, 5):  # 1,000 steps/s for 5 minutes ...
        rate.update(1000 * t, now=float(t))
    assert rate.rate() == pytest.approx(1000)
    for t in range(305, 401, 5):  # ... then 100 steps/s
        rate.update(300_000 + 100 * (t - 300), now=float(t))
    assert rate.rate() == pytest.approx(100)  # the average since start would say ~775


def test_windowed_rate_starts_from_the_run_start():
    rate = WindowedRate(window_s=30, start_total=5000, start_time=100.0)  # a resumed run
    assert rate.update(7000, now=110.0) == pytest.approx(200)


def test_live_line_fits_the_width_and_keeps_the_important_fields():
    line = Progress(SKILLS, stream=io.StringIO()).line(_busy_counters(), _stats(), width=LINE_WIDTH)
    assert len(line) <= LINE_WIDTH
    assert line.startswith("steps 123.46M  123,457/s  pol v98765  rew v1234  labels 1.23M (ties 65%")


def test_a_log_gets_plain_timestamped_lines_with_every_field():
    out = io.StringIO()  # not a TTY
    progress = Progress(SKILLS, stream=out)
    progress.maybe_print(_busy_counters(), _stats())
    progress.maybe_print(_busy_counters(), _stats())  # within the period: nothing
    progress.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and "\r" not in out.getvalue() and "\x1b" not in out.getvalue()
    assert "merc=-0.123" in lines[0] and "ep 987,654" in lines[0]


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_gets_one_live_line_no_wider_than_100_columns():
    out = _Terminal()
    progress = Progress(SKILLS, stream=out)
    for _ in range(3):
        progress._last = 0.0  # as if the period had passed
        progress.maybe_print(_busy_counters(), _stats())
    progress.close()
    import re

    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    shown = [part for part in re.split(r"[\r\n]", text) if part.strip()]
    assert shown and all(len(part) <= LINE_WIDTH for part in shown)
    assert all(part.startswith("steps 123.46M") for part in shown)
