"""The sandbox: one policy's restricted namespace, budget, random generator and print capture."""

from __future__ import annotations

import operator
from collections import deque
from collections.abc import Callable

from RestrictedPython.Guards import guarded_iter_unpack_sequence, guarded_unpack_sequence

from mmotif.sandbox.budget import Budget
from mmotif.sandbox.compiler import _source_line, compile_policy_source
from mmotif.sandbox.errors import CodePolicyError, PolicyTimeout, _BudgetExceeded
from mmotif.sandbox.guards import (_BUILTINS, SafeRandom, SandboxBase, SandboxClass, _PrintSink, _add_, _apply_,
                                   _call_guard_, _fmt_, _getattr_, _inplacevar_, _lshift_, _make_filter, _make_map,
                                   _mod_, _mul_, _pow_, _write_)
from mmotif.sandbox.rules import DEFAULT_BUDGET_S


class Sandbox(SandboxBase):
    """One policy's restricted namespace, budget, random generator and print capture."""

    def __init__(
        self,
        filename: str = "<policy>",
        *,
        seed=None,
        budget_s: float = DEFAULT_BUDGET_S,
        describe_line: Callable[[int], str] | None = None,
    ):
        if budget_s <= 0:
            raise ValueError("budget_s must be > 0")
        self.filename = filename
        self.budget_s = float(budget_s)
        self.describe_line = describe_line
        self.source = ""
        self.source_lines: list[str] = []
        self.random = SafeRandom(seed)
        self.printed: deque[str] = deque()
        self.budget = Budget(self._error)
        self._call = self.budget.call
        self.globals: dict = {
            "__builtins__": {**_BUILTINS, "map": _make_map(self.budget.check),
                             "filter": _make_filter(self.budget.check)},
            "__name__": "mmotif_policy",
            "__metaclass__": SandboxClass,
            "_getattr_": _getattr_,
            "_getitem_": operator.getitem,
            "_getiter_": iter,
            "_iter_unpack_sequence_": guarded_iter_unpack_sequence,
            "_unpack_sequence_": guarded_unpack_sequence,
            "_write_": _write_,
            "_inplacevar_": _inplacevar_,
            "_apply_": _apply_,
            "_print_": _PrintSink(self.printed),
            "_budget_": self.budget.tick,
            "_mul_": _mul_,
            "_pow_": _pow_,
            "_lshift_": _lshift_,
            "_add_": _add_,
            "_mod_": _mod_,
            "_fmt_": _fmt_,
            "_call_guard_": _call_guard_,
            "_sandbox_": self,
            "random": self.random,
        }

    # -- loading -------------------------------------------------------------------------
    def exec_source(self, source: str, budget_s: float | None = None) -> dict:
        """Compile and run module-level code (class definitions) under the budget."""
        code = compile_policy_source(source, self.filename, self.describe_line)
        self.source = source
        self.source_lines = source.splitlines()
        self.call_with_budget(exec, code, self.globals, budget_s=budget_s, method_name="<module>")
        return self.globals

    # -- calling ---------------------------------------------------------------------------
    def call_with_budget(self, fn, *args, budget_s: float | None = None, method_name: str | None = None, **kwargs):
        """Call `fn` under the time budget; failures become `CodePolicyError`/`PolicyTimeout`."""
        return self._call(fn, self.budget_s if budget_s is None else budget_s, method_name, args, kwargs)

    def _error(self, fn, method_name, exc: BaseException, budget_s: float) -> CodePolicyError:
        cls = PolicyTimeout if isinstance(exc, _BudgetExceeded) else CodePolicyError
        method = method_name or getattr(fn, "__name__", repr(fn))
        lineno, func = self._policy_location(exc)
        where = ""
        if lineno is not None:
            extra = self.describe_line(lineno) if self.describe_line else ""
            where = f" at line {lineno}" + (f" ({extra})" if extra else "")
            if func and func not in (method, "<module>"):
                where += f" in {func}()"
            text = _source_line(self.source_lines, lineno)
            if text:
                where += f" `{text}`"
        if cls is PolicyTimeout:
            what = f"ran past its time budget of {budget_s * 1000:.0f} ms (stopped{where or ' outside policy code'})"
            return PolicyTimeout(f"{self.filename}: {method}() {what}",
                                 filename=self.filename, method=method, lineno=lineno)
        if isinstance(exc, RecursionError):
            detail = "RecursionError: recursion too deep (runaway recursion?)"
        elif isinstance(exc, MemoryError):
            detail = "MemoryError: out of memory"
        else:
            detail = f"{type(exc).__name__}: {exc}"
        return CodePolicyError(f"{self.filename}: {method}() failed{where}: {detail}",
                               filename=self.filename, method=method, lineno=lineno)

    def _policy_location(self, exc: BaseException) -> tuple[int | None, str | None]:
        tb = exc.__traceback__
        found = (None, None)
        while tb is not None:
            code = tb.tb_frame.f_code
            if code.co_filename == self.filename:
                found = (tb.tb_lineno, code.co_name)
            tb = tb.tb_next
        return found


def call_with_budget(fn, *args, budget_s: float | None = None, **kwargs):
    """Call a function or bound method defined by policy code under its sandbox's budget."""
    func = getattr(fn, "__func__", fn)
    sandbox = getattr(func, "__globals__", {}).get("_sandbox_")
    if not isinstance(sandbox, Sandbox):
        raise TypeError(f"{fn!r} was not defined by code running in a Sandbox")
    return sandbox.call_with_budget(fn, *args, budget_s=budget_s, **kwargs)
