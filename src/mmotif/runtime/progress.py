"""The progress view of `mmotif run`.

On a terminal: one live line (rich), at most LINE_WIDTH columns, redrawn in place; log lines
(Ray's forwarded actor output, warnings) print above it. Elsewhere (a log file, a CI job): a
plain line every LOG_EVERY_S. The steps/s shown is the rate over the last RATE_WINDOW_S, not
the average since start.
"""

from __future__ import annotations

import sys
import time
from collections import deque

LINE_WIDTH = 100
TTY_EVERY_S = 1.0
LOG_EVERY_S = 30.0
RATE_WINDOW_S = 30.0


class WindowedRate:
    """Events per second over the last `window_s` seconds of (time, running total) samples."""

    def __init__(self, window_s: float = RATE_WINDOW_S, start_total: float = 0.0, start_time: float | None = None):
        self.window_s = window_s
        self._samples: deque[tuple[float, float]] = deque([(start_time or time.time(), start_total)])

    def update(self, total: float, now: float | None = None) -> float:
        now = time.time() if now is None else now
        self._samples.append((now, total))
        # keep one sample at or before the window's start, so the span covers the whole window
        while len(self._samples) > 2 and self._samples[1][0] <= now - self.window_s:
            self._samples.popleft()
        return self.rate()

    def rate(self) -> float:
        (t0, n0), (t1, n1) = self._samples[0], self._samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


class Progress:
    """`maybe_print(counters, stats)` from the driver's loop; `close()` when the loop ends."""

    def __init__(self, skills, stream=None, width: int = LINE_WIDTH):
        self.skills = tuple(skills)
        self.stream = stream or sys.stderr  # like a progress bar: stdout stays for results
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every_s = TTY_EVERY_S if self._tty else LOG_EVERY_S
        self.width = width
        self._last = 0.0
        self._live = self._start_live() if self._tty else None

    def _start_live(self):
        from rich.console import Console
        from rich.live import Live

        console = Console(file=self.stream)
        self.width = min(self.width, max(console.width - 1, 20))
        live = Live("", console=console, auto_refresh=False, transient=False,
                    redirect_stdout=True, redirect_stderr=True)
        live.start()
        return live

    def maybe_print(self, counters, stats: dict) -> None:
        now = time.time()
        if now - self._last < self.every_s:
            return
        self._last = now
        if self._live is not None:
            from rich.text import Text

            self._live.update(Text(self.line(counters, stats, self.width), no_wrap=True, overflow="crop"),
                              refresh=True)
        else:
            self.stream.write(time.strftime("%H:%M:%S ") + self.line(counters, stats) + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def line(self, counters, stats: dict, width: int | None = None) -> str:
        """The status fields in order of importance; with `width`, only those that fit."""
        fields = status_fields(counters, stats, self.skills)
        if width is None:
            return "  ".join(fields)
        out = ""
        for field in fields:
            candidate = f"{out}  {field}" if out else field
            if len(candidate) > width:
                break
            out = candidate
        return out[:width]


def status_fields(counters, stats: dict, skills) -> list[str]:
    version = counters.reward_versions[-1] if counters.reward_versions else "const"
    fields = [
        f"steps {_short(counters.env_steps)}",
        f"{stats.get('env_steps_per_second', 0):,.0f}/s",
        f"pol v{stats.get('policy_version', 0)}",
        f"rew v{version}",
        f"labels {_short(counters.labels)}{ties_text(counters.tie_shares)}",
        f"ep {counters.episodes:,}",
    ]
    rewards = [f"{name[:4]}={stats[f'skill_reward/{name}']:.3f}" for name in skills
               if f"skill_reward/{name}" in stats]
    if rewards:
        fields.append("r " + " ".join(rewards))
    return fields


def _short(n: int) -> str:
    """12,345 -> '12.3k', 4,500,000 -> '4.50M'; small numbers as they are."""
    if n >= 1_000_000:
        return f"{n / 1e6:.2f}M"
    if n >= 10_000:
        return f"{n / 1e3:.1f}k"
    return f"{n:,}"


def ties_text(shares: dict) -> str:
    """" (ties 18%, most desc 40%)": the overall tie share and the skill with the most ties."""
    known = {skill: (t, k) for skill, (t, k) in shares.items() if k}
    if not known:
        return ""
    overall = sum(t for t, _ in known.values()) / sum(k for _, k in known.values())
    worst = max(known, key=lambda skill: known[skill][0] / known[skill][1])
    t, k = known[worst]
    return f" (ties {overall:.0%}, most {worst[:4]} {t / k:.0%})"
