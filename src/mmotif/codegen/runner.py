"""Run LLM-written code (a class plus its unit test) in a sandboxed subprocess (spec §15.1.8).

Two layers, each tested against hostile code:

1. **The code-policy sandbox** (:mod:`mmotif.sandbox`, RestrictedPython): imports,
   ``open``/``exec``/``eval``, dunder walks and the like are refused at compile time; loops
   and calls are under a time budget; single allocations are size-guarded. The unit test
   therefore follows the same rules as policy code (``random`` and ``print`` are provided).
2. **The subprocess** (:mod:`mmotif.sandbox.child`): a fresh ``python -I -B -m`` (isolated: no environment variables, no
   user site, no bytecode written) in an empty temporary folder, with a minimal environment,
   no stdin, and limits set by ``resource.setrlimit`` in the child before it reads the code:
   CPU seconds (``RLIMIT_CPU``: SIGXCPU, then SIGKILL), address space (``RLIMIT_AS``: memory
   errors), file size 0 (``RLIMIT_FSIZE``: no file can be written), no core dumps, few file
   descriptors; plus a wall-clock timeout in the parent, which kills the child.

The result (:class:`TestRun`) says what happened in words a person (and the LLM) can act on:
``ok``, ``refused`` (sandbox rules), ``error`` (an exception, with the line), ``timeout``
(the sandbox's budget), ``killed`` (CPU, memory or wall-clock limit, with the signal) — and
carries the printed trace.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

from mmotif.sandbox.child import RESULT_MARK

__all__ = ["RunLimits", "TestRun", "check_policy", "run_unit_test"]

MAX_TRACE_CHARS = 20_000
CHILD_MODULE = "mmotif.sandbox.child"  # limits first, then the request from stdin


@dataclass(frozen=True)
class RunLimits:
    cpu_s: int = 10            # RLIMIT_CPU in the child
    memory_mb: int = 512       # RLIMIT_AS in the child
    wall_s: float = 20.0       # parent-side timeout
    budget_s: float = 5.0      # the sandbox's time budget for the whole module (class + test)


@dataclass
class TestRun:
    status: str                # ok | refused | error | timeout | killed
    output: str                # what the code printed (the trace), possibly truncated
    error: str = ""            # why it did not finish, in words
    returncode: int | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def report(self) -> str:
        """Trace plus the failure, as shown to the LLM and stored."""
        text = self.output.rstrip()
        if not self.ok:
            text = (text + "\n" if text else "") + f"[{self.status}] {self.error}"
        return text or "(the code printed nothing)"

    def to_dict(self) -> dict:
        return asdict(self)


def check_policy(source: str, skill_names, skills_with_precondition, limits: RunLimits = RunLimits(),
                 name: str = "<generated>", seed: int = 0, budget_s: float = 0.05) -> TestRun:
    """Load `source` as a CodePolicy (compile, module code, dry run) in the limited subprocess."""
    request = {"code": source, "skills": list(skill_names), "with_precondition": list(skills_with_precondition),
               "name": name, "seed": seed, "budget_s": budget_s}
    return _run_child("policy", request, limits)


def _child_env() -> dict[str, str]:
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    for key in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):   # machine-specific BLAS fixes, if set
        if key in os.environ:
            env[key] = os.environ[key]
    return env


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def run_unit_test(code: str, limits: RunLimits = RunLimits(), seed: int = 0) -> TestRun:
    """Run `code` (module level: the class and its test) in the sandboxed subprocess."""
    return _run_child("unit", {"code": code, "seed": seed, "budget_s": limits.budget_s}, limits)


def _run_child(kind: str, request: dict, limits: RunLimits) -> TestRun:
    request = json.dumps(request)
    argv = [sys.executable, "-I", "-B", "-m", CHILD_MODULE, kind, str(int(limits.cpu_s)),
            str(int(limits.memory_mb) * 1024 * 1024)]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mmotif-codegen-") as cwd:
        try:
            proc = subprocess.run(argv, input=request, capture_output=True, text=True, cwd=cwd,
                                  env=_child_env(), timeout=limits.wall_s)
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode("utf-8", "replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            return TestRun("killed", out[-MAX_TRACE_CHARS:],
                           f"killed after the wall-clock limit of {limits.wall_s:g} s",
                           None, time.perf_counter() - t0)
    seconds = time.perf_counter() - t0
    head, sep, tail = proc.stdout.rpartition(RESULT_MARK)
    if sep:
        try:
            result = json.loads(tail)
        except json.JSONDecodeError:
            result = None
        if result is not None:
            printed = "\n".join(result.get("printed", []))
            if len(printed) > MAX_TRACE_CHARS:
                printed = "...(earlier lines cut)...\n" + printed[-MAX_TRACE_CHARS:]
            return TestRun(result["status"], printed, result.get("error", ""), proc.returncode, seconds)
    # no result line: the child died
    rc = proc.returncode
    stderr = proc.stderr.strip().splitlines()[-3:]
    if rc is not None and rc < 0:
        sig = _signal_name(rc)
        why = {"SIGXCPU": f"CPU-time limit of {limits.cpu_s} s", "SIGKILL": "a hard limit (CPU or memory)",
               "SIGXFSZ": "the file-size limit (no files may be written)",
               "SIGSEGV": "a crash (out of memory?)"}.get(sig, sig)
        error = f"killed by {sig}: {why}"
    elif any("MemoryError" in line for line in stderr):
        error = f"out of memory (limit {limits.memory_mb} MB)"
        return TestRun("killed", "", error, rc, seconds)
    else:
        error = f"the test process exited with code {rc} without a result: " + " | ".join(stderr)
    return TestRun("killed", head[-MAX_TRACE_CHARS:], error, rc, seconds)
