"""The live progress line of `mmotif run`."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, skills, every_s: float = 2.0, stream=None):
        self.skills = tuple(skills)
        self.every_s = every_s
        self.stream = stream or sys.stderr  # like a progress bar: stdout stays for results
        self._last = 0.0
        self._tty = self.stream.isatty()
        if not self._tty:
            self.every_s = max(every_s, 10.0)

    def maybe_print(self, counters, stats: dict) -> None:
        now = time.time()
        if now - self._last < self.every_s:
            return
        self._last = now
        line = self.line(counters, stats)
        if self._tty:
            self.stream.write("\r" + line[:200].ljust(200))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def line(self, counters, stats: dict) -> str:
        rewards = " ".join(
            f"{name[:4]}={stats[f'skill_reward/{name}']:.3f}" for name in self.skills
            if f"skill_reward/{name}" in stats
        )
        versions = counters.reward_versions[-1] if counters.reward_versions else "const"
        return (f"steps {counters.env_steps:,}  {stats.get('env_steps_per_second', 0):,.0f}/s  "
                f"policy v{stats.get('policy_version', 0)}  reward v{versions}  "
                f"labels {counters.labels:,}{ties_text(counters.tie_shares)}  "
                f"episodes {counters.episodes:,}  r[{rewards}]")


def ties_text(shares: dict) -> str:
    """" (ties 18%, most desc 40%)": the overall tie share and the skill with the most ties."""
    known = {skill: (t, k) for skill, (t, k) in shares.items() if k}
    if not known:
        return ""
    overall = sum(t for t, _ in known.values()) / sum(k for _, k in known.values())
    worst = max(known, key=lambda skill: known[skill][0] / known[skill][1])
    t, k = known[worst]
    return f" (ties {overall:.0%}, most {worst[:4]} {t / k:.0%})"
