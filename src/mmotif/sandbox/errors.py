"""What the sandbox raises: refusals, policy failures, time-outs and size limits."""

from __future__ import annotations


class UnsafeCodeError(ValueError):
    """The source was refused before running: a syntax error or a broken sandbox rule."""

    def __init__(self, message: str, errors: tuple[str, ...] = (), filename: str = ""):
        super().__init__(message)
        self.errors = errors
        self.filename = filename


class CodePolicyError(RuntimeError):
    """Policy code failed while running (exception, recursion, memory, wrong result)."""

    def __init__(self, message: str, *, filename: str = "", method: str = "", lineno: int | None = None):
        super().__init__(message)
        self.filename = filename
        self.method = method
        self.lineno = lineno


class PolicyTimeout(CodePolicyError):
    """A policy call ran past its time budget."""


class SandboxLimitError(Exception):
    """Raised inside the sandbox by a size guard (catchable by policy code, harmless)."""


class _BudgetExceeded(BaseException):
    """Raised inside the sandbox when the deadline has passed.

    A BaseException, so `except Exception` in policy code cannot swallow it (bare
    `except:` and `except BaseException` are refused at compile time).
    """
