"""The limited subprocess of `mmotif.codegen.runner`: `python -I -B -m mmotif.sandbox.child KIND CPU_S MEM_BYTES`.

Limits first (CPU seconds, address space, no file writes, no core dumps, few file
descriptors), then it reads one JSON request from stdin and runs it in the sandbox:

- `unit`: module-level code (a class and its unit test) under the sandbox's budget;
- `policy`: a `CodePolicy` built (its randomised dry run) from the source and the skill names.

It prints one line, `@@RESULT@@` and a JSON object (`status`, `error`, `printed`), after
whatever the code printed (the parent reads `RESULT_MARK` from here).
"""

from __future__ import annotations

import json
import resource
import signal
import sys

from mmotif.sandbox.errors import CodePolicyError, PolicyTimeout, UnsafeCodeError

RESULT_MARK = "\n@@RESULT@@"


def set_limits(cpu_s: int, memory_bytes: int) -> None:
    # an ignored SIGXCPU is inherited across exec (a parent that runs Ray or NLE may ignore
    # it): restore the default, so the soft CPU limit ends the child and says so
    signal.signal(signal.SIGXCPU, signal.SIG_DFL)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (32, 32))


def run_unit(request: dict, mem: int) -> dict:
    from mmotif.sandbox.box import Sandbox

    box = Sandbox("<generated>", seed=request["seed"], budget_s=request["budget_s"])
    result = {"status": "ok", "error": ""}
    try:
        box.exec_source(request["code"], budget_s=request["budget_s"])
    except UnsafeCodeError as err:
        result = {"status": "refused", "error": str(err)}
    except PolicyTimeout as err:
        result = {"status": "timeout", "error": str(err)}
    except CodePolicyError as err:
        if "MemoryError" in str(err):
            result = {"status": "killed", "error": "address-space limit of %d MB reached: %s" % (mem >> 20, err)}
        else:
            result = {"status": "error", "error": str(err)}
    except MemoryError:
        result = {"status": "killed", "error": "out of memory (address-space limit)"}
    try:
        lines = list(box.printed)
    except MemoryError:
        lines = []
    result["printed"] = lines
    return result


def run_policy(request: dict, mem: int) -> dict:
    from mmotif.skills.code_policy import CodePolicy

    result = {"status": "ok", "error": "", "printed": []}
    try:
        policy = CodePolicy(request["code"], request["skills"], request["with_precondition"],
                            name=request["name"], seed=request["seed"], budget_s=request["budget_s"])
        result["printed"] = policy.printed
    except UnsafeCodeError as err:
        result = {"status": "refused", "error": str(err)}
    except PolicyTimeout as err:
        result = {"status": "timeout", "error": str(err)}
    except CodePolicyError as err:
        result = {"status": "error", "error": str(err)}
    except MemoryError:
        result = {"status": "killed", "error": "out of memory (address-space limit of %d MB)" % (mem >> 20)}
    return result


KINDS = {"unit": run_unit, "policy": run_policy}


def main(argv: list[str]) -> None:
    kind, cpu, mem = argv[0], int(argv[1]), int(argv[2])
    run = KINDS[kind]
    set_limits(cpu, mem)
    request = json.loads(sys.stdin.read())
    result = run(request, mem)
    sys.stdout.write(RESULT_MARK + json.dumps(result) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
