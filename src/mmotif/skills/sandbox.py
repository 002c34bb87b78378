"""A sandbox for code policies: LLM-written Python that runs inside the env step loop.

Code policies (spec §5, §6, §12) are plain Python source. They are compiled with
RestrictedPython and a stricter transformer of our own, then executed against a small
whitelist of builtins and guard functions. What the sandbox enforces:

At compile time (`UnsafeCodeError`, message names the line and the rule):
- no `import` / `from ... import` (a seeded `random` object is provided instead);
- no names or attributes that start with `_` (blocks dunder walks such as
  `().__class__.__bases__[0].__subclasses__()`), no frame/code/generator internals;
- no `exec`, `eval`, `compile`, `open`, `getattr`-family with `_` names, `setattr`,
  `delattr`, `globals`, `locals`, `vars`, `dir`, `type`, `input`, `breakpoint`, ...;
- no `global` / `nonlocal`, no `with`, no bare `except:` (handlers must name exception
  classes from the whitelist), no `try/except*`, no async;
- no `str.format` / `format_map` (use f-strings), no computed f-string format specs, no
  f-string widths above 9999.

At run time:
- a **time budget** per call: `_budget_()` is injected at the top of every loop body,
  every function body, every lambda and every comprehension; it counts calls and reads
  the clock every `CHECK_EVERY` calls. Once the deadline has passed it raises on *every*
  call, with an exception that `except Exception` cannot catch, so `try` inside a loop
  cannot swallow it. `call_with_budget` turns it into `PolicyTimeout`;
- **size guards**: `a * b`, `a ** b`, `a << b`, `a + b`, `a % b` (and their augmented
  forms) are compiled into guard calls that refuse, *before* computing, results above
  `MAX_ITEMS` elements/characters or `MAX_INT_BITS`-bit integers; `range` refuses more than
  `MAX_ITEMS` items; `str.center/ljust/rjust/zfill/expandtabs/replace/join` and
  `list.extend` are size-checked and slice assignment is refused;
- attribute reads: a literal name (`x.name`) is checked once, at compile time, and then
  read directly; a computed one (`getattr(x, name)`) is checked by `_getattr_` at run
  time; size-checked methods always go through `_getattr_`;
- attribute writes only on instances of classes defined by the policy itself, and on
  lists/dicts/sets (`_write_`);
- any exception from policy code (including `RecursionError` and `MemoryError`) becomes
  `CodePolicyError`, whose message names the policy file, the method, the line and its
  text, and what went wrong.

This is a guard against runaway or careless generated code, in-process and cheap (a call
of a small method costs a few microseconds more than plain Python), not an OS-level jail:
C-level work that is bounded by the size guards (e.g. sorting a million-item list) is not
interrupted, and memory is not metered.
"""

from __future__ import annotations

import ast
import copy
import math
import operator
import random as _random_module
import re
import time
from collections import deque
from collections.abc import Callable, Sized
from types import CodeType

from RestrictedPython import compile_restricted_exec
from RestrictedPython.Guards import guarded_iter_unpack_sequence, guarded_unpack_sequence
from RestrictedPython.transformer import INSPECT_ATTRIBUTES, RestrictingNodeTransformer, copy_locations

__all__ = [
    "CHECK_EVERY",
    "CodePolicyError",
    "DEFAULT_BUDGET_S",
    "MAX_INT_BITS",
    "MAX_ITEMS",
    "PolicyTimeout",
    "Sandbox",
    "SafeRandom",
    "UnsafeCodeError",
    "call_with_budget",
    "compile_policy_source",
]

DEFAULT_BUDGET_S = 0.05
CHECK_EVERY = 16            # `_budget_` reads the clock once per this many calls
MAX_ITEMS = 1_000_000       # longest sequence/string a single operation may build
MAX_INT_BITS = 1 << 16      # largest integer a single operation may build (~19,700 digits)
MAX_SOURCE_CHARS = 400_000
MAX_FORMAT_WIDTH = 9_999
MAX_PRINT_LINES = 1_000


# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------
# Compile time
# ---------------------------------------------------------------------------------------
FORBIDDEN_NAMES = frozenset({
    "open", "exec", "eval", "compile", "setattr", "delattr", "globals", "locals", "vars",
    "dir", "type", "input", "breakpoint", "help", "memoryview", "object", "super", "exit",
    "quit", "iter", "aiter", "anext", "format", "bytearray", "BaseException",
    "SystemExit", "KeyboardInterrupt", "GeneratorExit", "copyright", "credits", "license",
    "printed",
})
# attributes refused by name (compile time for literals, run time through getattr)
REFUSED_ATTRIBUTES = frozenset(INSPECT_ATTRIBUTES) | {
    "format", "format_map", "mro", "f_locals", "f_globals", "gi_frame", "cr_frame",
}
ALLOWED_EXCEPTIONS = (
    "Exception", "ArithmeticError", "AssertionError", "AttributeError", "IndexError",
    "KeyError", "LookupError", "NameError", "NotImplementedError", "OverflowError",
    "RuntimeError", "StopIteration", "TypeError", "ValueError", "ZeroDivisionError",
)
_GUARDED_BINOPS = {ast.Mult: "_mul_", ast.Pow: "_pow_", ast.LShift: "_lshift_", ast.Add: "_add_", ast.Mod: "_mod_"}
_GETATTR_LIKE = frozenset({"getattr", "hasattr"})


def _budget_call(node: ast.AST) -> ast.Call:
    call = ast.Call(func=ast.Name("_budget_", ast.Load()), args=[], keywords=[])
    copy_locations(call, node)
    return call


def _is_simple(node: ast.AST) -> bool:
    """An expression that can be evaluated twice without side effects."""
    if isinstance(node, (ast.Name, ast.Constant)):
        return True
    if isinstance(node, ast.Attribute):
        return _is_simple(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.operand, ast.Constant):
        return True
    return False


class PolicyTransformer(RestrictingNodeTransformer):
    """RestrictedPython's transformer, stricter, plus budget checks and size guards."""

    # -- refusals ----------------------------------------------------------------------
    def visit_Import(self, node):
        names = ", ".join(a.name for a in node.names)
        hint = " (`random` is already available as a global)" if "random" in names else ""
        self.error(node, f"import statements are not allowed in code policies: import {names}{hint}")
        return node

    def visit_ImportFrom(self, node):
        self.error(node, f"import statements are not allowed in code policies: from {node.module} import ...")
        return node

    def visit_Global(self, node):
        self.error(node, "global statements are not allowed; keep state on `self`")
        return node

    def visit_Nonlocal(self, node):
        self.error(node, "nonlocal statements are not allowed; keep state on `self`")
        return node

    def visit_With(self, node):
        self.error(node, "with statements are not allowed in code policies")
        return node

    def visit_ExceptHandler(self, node):
        if node.type is None:
            self.error(node, "bare `except:` is not allowed; name the exception classes (e.g. `except ValueError:`)")
        else:
            names = node.type.elts if isinstance(node.type, ast.Tuple) else [node.type]
            for n in names:
                if not (isinstance(n, ast.Name) and n.id in ALLOWED_EXCEPTIONS):
                    shown = n.id if isinstance(n, ast.Name) else ast.unparse(n)
                    self.error(node, f"`except {shown}` is not allowed; allowed: {', '.join(ALLOWED_EXCEPTIONS)}")
        return super().visit_ExceptHandler(node)

    def visit_Name(self, node):
        if node.id in FORBIDDEN_NAMES:
            self.error(node, f'"{node.id}" is not available to code policies')
        return super().visit_Name(node)

    def visit_Attribute(self, node):
        attr = node.attr
        if attr in REFUSED_ATTRIBUTES and attr not in INSPECT_ATTRIBUTES:
            hint = " (use an f-string)" if attr.startswith("format") else ""
            self.error(node, f'"{attr}" is a refused attribute in code policies{hint}')
        if (isinstance(node.ctx, ast.Load) and not attr.startswith("_") and not attr.endswith("__roles__")
                and attr not in REFUSED_ATTRIBUTES and attr not in _SIZED_METHODS):
            # `_getattr_` would only check the name, and this name passed every check here:
            # read it directly (reads of `self.x` are the bulk of policy code's work)
            return self.node_contents_visit(node)
        return super().visit_Attribute(node)

    def visit_Call(self, node):
        func = node.func
        if isinstance(func, ast.Name) and func.id in _GETATTR_LIKE and len(node.args) >= 2:
            arg = node.args[1]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                if arg.value.startswith("_") or arg.value in REFUSED_ATTRIBUTES:
                    self.error(node, f'{func.id}() with the attribute name {arg.value!r} is not allowed')
        return super().visit_Call(node)

    def visit_FormattedValue(self, node):
        spec = node.format_spec
        if spec is not None:
            parts = spec.values if isinstance(spec, ast.JoinedStr) else [spec]
            if not all(isinstance(p, ast.Constant) for p in parts):
                self.error(node, "computed f-string format specs are not allowed")
            else:
                text = "".join(str(p.value) for p in parts)
                if any(int(d) > MAX_FORMAT_WIDTH for d in re.findall(r"\d+", text)):
                    self.error(node, f"f-string widths above {MAX_FORMAT_WIDTH} are not allowed")
        return super().visit_FormattedValue(node)

    def visit_Subscript(self, node):
        if isinstance(node.ctx, ast.Store) and isinstance(node.slice, ast.Slice):
            self.error(node, "slice assignment is not allowed in code policies")
        return super().visit_Subscript(node)

    # -- budget checks -----------------------------------------------------------------
    def visit_For(self, node):
        node = super().visit_For(node)
        node.body.insert(0, self._budget_stmt(node))
        return node

    def visit_While(self, node):
        node = super().visit_While(node)
        node.body.insert(0, self._budget_stmt(node))
        return node

    def visit_FunctionDef(self, node):
        node = super().visit_FunctionDef(node)
        # located on the first statement, so a runaway recursion names the recursing line
        first = next((s for s in node.body if s.lineno != node.lineno
                      and not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))), node)
        node.body.insert(0, self._budget_stmt(first))
        return node

    def visit_Lambda(self, node):
        node = super().visit_Lambda(node)
        # `_budget_()` returns True, so `True and body` is `body`
        node.body = ast.BoolOp(op=ast.And(), values=[_budget_call(node.body), node.body])
        copy_locations(node.body, node.body.values[1])
        return node

    def visit_comprehension(self, node):
        node = super().visit_comprehension(node)
        node.ifs.insert(0, _budget_call(node.iter))
        return node

    @staticmethod
    def _budget_stmt(node: ast.AST) -> ast.Expr:
        stmt = ast.Expr(value=_budget_call(node))
        copy_locations(stmt, node)
        return stmt

    # -- size guards -------------------------------------------------------------------
    def visit_BinOp(self, node):
        node = super().visit_BinOp(node)
        guard = _GUARDED_BINOPS.get(type(node.op))
        if guard is None:
            return node
        call = ast.Call(func=ast.Name(guard, ast.Load()), args=[node.left, node.right], keywords=[])
        copy_locations(call, node)
        return call

    def visit_AugAssign(self, node):
        """`t op= v` becomes `t = t op v` (so the size guards apply), for simple targets."""
        target = node.target
        if isinstance(target, ast.Subscript):
            ok = _is_simple(target.value) and _is_simple(target.slice)
        elif isinstance(target, ast.Attribute):
            ok = _is_simple(target.value)
        else:
            ok = isinstance(target, ast.Name)
        if not ok:
            self.error(node, "augmented assignment to this target is not allowed; write `x = x + ...`")
            return node
        load = copy.deepcopy(target)
        for sub in ast.walk(load):
            if hasattr(sub, "ctx"):
                sub.ctx = ast.Load()
        value = ast.BinOp(left=load, op=node.op, right=node.value)
        assign = ast.Assign(targets=[target], value=value)
        copy_locations(value, node)
        copy_locations(assign, node)
        return self.visit_Assign(assign)


def compile_policy_source(
    source: str,
    filename: str = "<policy>",
    describe_line: Callable[[int], str] | None = None,
) -> CodeType:
    """Compile policy source under the sandbox rules, or raise `UnsafeCodeError`."""
    if not isinstance(source, str):
        raise UnsafeCodeError(f"{filename}: policy source must be a str, not {type(source).__name__}")
    if len(source) > MAX_SOURCE_CHARS:
        raise UnsafeCodeError(f"{filename}: policy source is {len(source)} characters (limit {MAX_SOURCE_CHARS})")
    result = compile_restricted_exec(source, filename=filename, policy=PolicyTransformer)
    if result.errors or result.code is None:
        errors = tuple(_annotate_error(e, source, describe_line) for e in result.errors) or ("unknown error",)
        listing = "\n  ".join(errors)
        raise UnsafeCodeError(f"{filename}: code policy refused:\n  {listing}", errors, filename)
    return result.code


def _annotate_error(message: str, source: str, describe_line) -> str:
    m = re.match(r"Line (\d+):", message)
    if not m:
        return message
    lineno = int(m.group(1))
    where = describe_line(lineno) if describe_line else ""
    text = _source_line(source, lineno)
    out = message
    if where:
        out = f"Line {lineno} ({where}):{message[m.end():]}"
    if text and "at statement" not in message:
        out += f"  [{text}]"
    return out


def _source_line(source: str, lineno: int | None) -> str:
    if not lineno:
        return ""
    lines = source.splitlines()
    return lines[lineno - 1].strip() if 0 < lineno <= len(lines) else ""


# ---------------------------------------------------------------------------------------
# Run time: guards
# ---------------------------------------------------------------------------------------
_SEQUENCES = (str, bytes, bytearray, list, tuple)
_NUMBERS_FAST = frozenset({int, float, bool})
_FORMAT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _too_big(what: str, size) -> SandboxLimitError:
    return SandboxLimitError(f"{what} would have {size} items (limit {MAX_ITEMS})")


def _int_bits(x) -> int:
    return abs(int(x)).bit_length()


def _check_repeat(seq, n) -> None:
    if isinstance(n, int) and n > 0:
        size = len(seq) * n
        if size > MAX_ITEMS:
            raise _too_big(f"repeating a {type(seq).__name__} of length {len(seq)} {n} times", size)


def _mul_(a, b):
    if type(a) is int and type(b) is int:
        if a.bit_length() + b.bit_length() > MAX_INT_BITS:
            raise SandboxLimitError(f"integer product would exceed {MAX_INT_BITS} bits")
        return a * b
    if isinstance(a, _SEQUENCES):
        _check_repeat(a, b)
    elif isinstance(b, _SEQUENCES):
        _check_repeat(b, a)
    elif isinstance(a, int) and isinstance(b, int):
        if _int_bits(a) + _int_bits(b) > MAX_INT_BITS:
            raise SandboxLimitError(f"integer product would exceed {MAX_INT_BITS} bits")
    return a * b


def _pow_(a, b):
    if isinstance(a, int) and isinstance(b, int) and b > 1 and (a > 1 or a < -1):
        if b * math.log2(abs(a)) > MAX_INT_BITS:
            raise SandboxLimitError(f"{a} ** {b} would exceed {MAX_INT_BITS} bits")
    return a ** b


def _lshift_(a, b):
    if isinstance(a, int) and isinstance(b, int) and a and b > 0 and _int_bits(a) + b > MAX_INT_BITS:
        raise SandboxLimitError(f"{a} << {b} would exceed {MAX_INT_BITS} bits")
    return a << b


def _add_(a, b):
    if type(a) in _NUMBERS_FAST:
        return a + b
    if isinstance(a, _SEQUENCES) and isinstance(b, Sized):
        size = len(a) + len(b)
        if size > MAX_ITEMS:
            raise _too_big(f"concatenating two {type(a).__name__}s", size)
    return a + b


def _mod_(a, b):
    if isinstance(a, (str, bytes)):
        text = a if isinstance(a, str) else a.decode("latin-1")
        for m in _FORMAT_SPEC.finditer(text):
            for group in m.groups():
                if group == "*" or (group and int(group) > MAX_FORMAT_WIDTH):
                    raise SandboxLimitError(f"%-format widths must be literal and at most {MAX_FORMAT_WIDTH}")
    return a % b


_INPLACE = {
    "+=": _add_, "-=": operator.sub, "*=": _mul_, "/=": operator.truediv, "%=": _mod_,
    "**=": _pow_, "<<=": _lshift_, ">>=": operator.rshift, "|=": operator.or_,
    "^=": operator.xor, "&=": operator.and_, "//=": operator.floordiv,
}


def _inplacevar_(op: str, x, y):
    fn = _INPLACE.get(op)
    if fn is None:
        raise SandboxLimitError(f"operator {op} is not allowed")
    return fn(x, y)


def _guarded_range(*args):
    r = range(*args)
    try:
        n = len(r)
    except OverflowError:
        n = math.inf
    if n > MAX_ITEMS:
        raise _too_big("range", n)
    return r


def _sized_str_method(ob, name: str):
    method = getattr(ob, name)

    if name in ("center", "ljust", "rjust", "zfill"):
        def padded(width, *rest):
            if isinstance(width, int) and width > MAX_ITEMS:
                raise _too_big(f"str.{name}", width)
            return method(width, *rest)
        return padded
    if name == "expandtabs":
        def expanded(tabsize=8):
            if isinstance(tabsize, int) and tabsize > 0 and len(ob) * tabsize > MAX_ITEMS:
                raise _too_big("str.expandtabs", len(ob) * tabsize)
            return method(tabsize)
        return expanded
    if name == "replace":
        def replaced(old, new, count=-1):
            hits = ob.count(old) if len(old) else len(ob) + 1
            if count >= 0:
                hits = min(hits, count)
            size = len(ob) + hits * max(len(new) - len(old), 0)
            if size > MAX_ITEMS:
                raise _too_big("str.replace", size)
            return method(old, new, count)
        return replaced
    # join
    def joined(parts):
        parts = list(parts)
        size = sum(len(p) for p in parts if isinstance(p, Sized)) + len(ob) * max(len(parts) - 1, 0)
        if size > MAX_ITEMS:
            raise _too_big("str.join", size)
        return method(parts)
    return joined


def _sized_extend(ob: list):
    method = ob.extend

    def extend(items):
        if not isinstance(items, Sized):
            items = list(items)
        size = len(ob) + len(items)
        if size > MAX_ITEMS:
            raise _too_big("list.extend", size)
        method(items)
    return extend


_SIZED_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs", "replace", "join", "extend"})
_NO_DEFAULT = object()


def _refuse_attr(ob, name) -> None:
    if type(name) is not str:
        raise TypeError("attribute name must be a string")
    if name.startswith("_") or name in REFUSED_ATTRIBUTES:
        raise AttributeError(f"access to attribute {name!r} is not allowed in code policies")


def _getattr_(ob, name, default=_NO_DEFAULT):
    if name.startswith("_") or name in REFUSED_ATTRIBUTES:
        _refuse_attr(ob, name)
    if name in _SIZED_METHODS:
        if isinstance(ob, (str, bytes)):
            return _sized_str_method(ob, name)
        if name == "extend" and isinstance(ob, list):
            return _sized_extend(ob)
    if default is _NO_DEFAULT:
        return getattr(ob, name)
    return getattr(ob, name, default)


def _safe_getattr(ob, name, *default):
    _refuse_attr(ob, name)
    return _getattr_(ob, name, *default)


def _safe_hasattr(ob, name) -> bool:
    _refuse_attr(ob, name)
    return hasattr(ob, name)


class SandboxClass(type):
    """Metaclass of every class defined by policy code (marks instances writable)."""


_WRITABLE = frozenset({list, dict, set})


def _write_(ob):
    t = type(ob)
    if t in _WRITABLE or type(t) is SandboxClass:
        return ob
    raise TypeError(f"code policies may not modify {t.__name__} objects")


def _apply_(fn, *args, **kwargs):
    return fn(*args, **kwargs)


class SafeRandom:
    """The `random` global of code policies: a few methods over a seeded generator."""

    __slots__ = ("_rng",)

    def __init__(self, seed=None):
        self._rng = _random_module.Random(seed)

    def seed(self, seed=None) -> None:
        self._rng.seed(seed)

    def random(self) -> float:
        return self._rng.random()

    def uniform(self, a, b) -> float:
        return self._rng.uniform(a, b)

    def randint(self, a: int, b: int) -> int:
        return self._rng.randint(a, b)

    def choice(self, seq):
        return self._rng.choice(seq)

    def shuffle(self, seq: list) -> None:
        if type(seq) is not list:
            raise TypeError("random.shuffle needs a list")
        self._rng.shuffle(seq)


class _PrintSink:
    """`print` in policy code: lines are kept (the last MAX_PRINT_LINES) on the sandbox."""

    __slots__ = ("lines",)

    def __init__(self, lines: deque):
        self.lines = lines

    def __call__(self, _getattr_=None):          # `_print = _print_(_getattr_)`
        return self

    def _call_print(self, *objects, sep=" ", end="\n", **_ignored):
        self.lines.append(str(sep).join(str(o) for o in objects) + ("" if end == "\n" else str(end)))


def _safe_builtins() -> dict:
    import builtins
    names = (
        "abs", "all", "any", "bool", "callable", "chr", "dict", "divmod", "enumerate", "filter",
        "float", "frozenset", "int", "isinstance", "issubclass", "len", "list", "map", "max",
        "min", "next", "ord", "repr", "reversed", "round", "set", "slice", "sorted", "str",
        "sum", "tuple", "zip", "staticmethod", "classmethod", "property",
        "True", "False", "None",
    ) + ALLOWED_EXCEPTIONS
    out = {n: getattr(builtins, n) for n in names}
    out["__build_class__"] = builtins.__build_class__
    out["range"] = _guarded_range
    out["getattr"] = _safe_getattr
    out["hasattr"] = _safe_hasattr
    return out


_BUILTINS = _safe_builtins()


# ---------------------------------------------------------------------------------------
# Run time: the budget
# ---------------------------------------------------------------------------------------
class Budget:
    """The per-sandbox deadline and the budgeted call.

    `tick` (the `_budget_` global) and `call` are closures over the same counter and
    deadline: a tick is a decrement and a compare; the clock is read every CHECK_EVERY ticks.
    """

    def __init__(self, on_error: Callable):
        perf = time.perf_counter
        # idle (outside any call) counts as expired: policy code that runs outside a budgeted
        # call (e.g. a generator's `finally` at garbage collection) is stopped at once
        left = 0
        deadline = -math.inf
        expired = True

        def tick():
            nonlocal left
            left -= 1
            if left < 0:
                check()
            return True

        def check():
            nonlocal left, expired
            if expired or perf() > deadline:
                expired = True
                left = 0
                raise _BudgetExceeded()
            left = CHECK_EVERY

        def call(fn, budget_s, method_name, args, kwargs):
            nonlocal left, deadline, expired
            previous = deadline, expired
            deadline = perf() + budget_s
            expired = False
            left = CHECK_EVERY
            try:
                return fn(*args, **kwargs)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:    # budget, RecursionError, MemoryError, anything raised
                raise on_error(fn, method_name, exc, budget_s) from (
                    None if isinstance(exc, _BudgetExceeded) else exc)
            finally:
                deadline, expired = previous
                left = 0

        self.tick = tick
        self.call = call


# ---------------------------------------------------------------------------------------
# The sandbox
# ---------------------------------------------------------------------------------------
class Sandbox:
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
        self.random = SafeRandom(seed)
        self.printed: deque[str] = deque(maxlen=MAX_PRINT_LINES)
        self.budget = Budget(self._error)
        self._call = self.budget.call
        self.globals: dict = {
            "__builtins__": _BUILTINS,
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
            "_sandbox_": self,
            "random": self.random,
        }

    # -- loading -------------------------------------------------------------------------
    def exec_source(self, source: str, budget_s: float | None = None) -> dict:
        """Compile and run module-level code (class definitions) under the budget."""
        code = compile_policy_source(source, self.filename, self.describe_line)
        self.source = source
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
            text = _source_line(self.source, lineno)
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
