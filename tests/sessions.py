"""For tests that start Ray clusters of their own with `ray start`: free ports, and processes
started in a session of their own and ended as one (`ray start`'s daemons outlive the command,
so the session id is what finds them again). Never `ray stop`, which kills every Ray instance
on the machine."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_ports(n: int) -> list[int]:
    """`n` distinct TCP ports free on 127.0.0.1 right now."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# The session's leader, a shell, runs the command, records its exit status, then sleeps for
# the session's lifetime: the session id stays taken, so it cannot be handed to an unrelated
# process when pids wrap around (at 32,768 here) and then be killed with this session.
_LEADER = '"$@" >"$0.log" 2>&1; echo $? >"$0.tmp" && mv "$0.tmp" "$0.rc"; exec sleep 1000000'


def run_in_own_session(cmd: list[str], env: dict, log_base: Path, timeout_s: float = 180) -> int:
    """Run `cmd` (e.g. `ray start`) in a new session whose leader stays; returns the session
    id. Raises with the command's output when it fails."""
    leader = subprocess.Popen(["sh", "-c", _LEADER, str(log_base), *cmd], env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rc, deadline = Path(f"{log_base}.rc"), time.monotonic() + timeout_s
    while not rc.exists() and leader.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    code = rc.read_text().strip() if rc.exists() else "none"
    if code != "0":
        log = Path(f"{log_base}.log")
        raise RuntimeError(f"{' '.join(cmd[:3])} failed ({code}):\n{log.read_text()[-3000:] if log.exists() else ''}")
    return leader.pid  # setsid: the session id is the leader's pid


def session_pids(sid: int) -> list[int]:
    """Live processes whose session id is `sid`."""
    pids = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state, ppid, pgrp, session, ...
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(entry))
    return pids


def end_sessions(sids: list[int], grace_s: float = 10.0) -> list[int]:
    """SIGTERM, then SIGKILL, every process of the sessions; returns the pids still alive."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for sid in sids:
            for pid in session_pids(sid):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(session_pids(s) for s in sids):
            time.sleep(0.25)
    return [p for s in sids for p in session_pids(s)]
