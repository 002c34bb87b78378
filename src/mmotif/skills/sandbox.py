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
  `list.extend` are size-checked and slice assignment is refused. Guards compute on exact
  built-in values (`operator.index`), never on the policy's objects, and a policy class that
  subclasses a built-in type may not override comparison;
- **C-level work**: a builtin does its whole loop without a tick, so the inputs of the ones
  that walk a value are weighed first (items and characters, nested values and repeated
  references counted: `[big] * 1000` weighs a thousand `big`s) and refused above `MAX_ITEMS`:
  repetition, `sorted`, `min`, `max`, `sum` (numeric start only), `str`, `repr`, f-string
  fields, `%`-formatting, `print`, `list/tuple.count/index/sort`. `set`, `frozenset`, `dict`,
  `dict.fromkeys` and the set/dict update methods also refuse more than
  `MAX_HASH_COLLIDERS` integers beyond 2**61 (the only values whose hashes a policy can make
  collide: a set of them is quadratic). `map` and `filter` read the clock before every item;
- attribute reads: a literal name (`x.name`) is checked once, at compile time, and then
  read directly; a computed one (`getattr(x, name)`) is checked by `_getattr_` at run
  time; size-checked methods always go through `_getattr_`;
- attribute writes only on instances of classes defined by the policy itself, and on
  lists/dicts/sets (`_write_`);
- `print` keeps the last `MAX_PRINT_LINES` lines and `MAX_PRINT_CHARS` characters;
- the special methods a policy may define (`__eq__`, `__lt__`, ..., `__contains__`,
  `__init__`) run under the budget even when trusted code triggers them, so the budget's
  internal exception never reaches trusted code; outside any call it stops policy code at once;
- any exception from policy code (including `RecursionError` and `MemoryError`) becomes
  `CodePolicyError`, whose message names the policy file, the method, the line and its
  text, and what went wrong. Source nested too deeply to compile is an `UnsafeCodeError`;
  a refusal lists at most `MAX_LISTED_ERRORS` errors (work linear in the source).

What is *not* contained here: this is an in-process guard against runaway or careless
generated code, cheap enough for the env step loop (a small call costs about a microsecond
more than plain Python), not an OS-level jail. A single C-level call on a value under the
weight limit is not interrupted (sorting a million ints: ~0.1-0.3 s); `==` and `in` on two
values each built within the limits are not weighed; memory is bounded per operation, not in
total (the policy's state between calls is weighed by `CodePolicy`). Everything that is not
on the per-step hot path (unit tests, the dry run of `mmotif plan` and `mmotif eval`) runs in
a subprocess with CPU and address-space limits (`mmotif.codegen.runner`); `mmotif eval` has a
wall-clock watchdog for the hot path.
"""

from __future__ import annotations

import ast
import copy
import math
import operator
import random as _random_module
import re
import time
import types
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
MAX_PRINT_CHARS = 100_000   # characters of printed output kept, all lines together
MAX_PRINT_LINE_CHARS = 10_000


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
        if isinstance(func, ast.Name) and func.id in _CALL_GUARDED:
            node = super().visit_Call(node)
            node.args = [ast.Name(func.id, ast.Load())] + node.args
            node.func = ast.Name("_call_guard_", ast.Load())
            for sub in (node.func, node.args[0]):
                copy_locations(sub, func)
            return node
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
        node = super().visit_FormattedValue(node)
        call = ast.Call(func=ast.Name("_fmt_", ast.Load()), args=[node.value], keywords=[])
        copy_locations(call, node.value)
        copy_locations(call.func, node.value)
        node.value = call
        return node

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
    try:
        result = compile_restricted_exec(source, filename=filename, policy=PolicyTransformer)
    except (RecursionError, MemoryError) as err:
        raise UnsafeCodeError(f"{filename}: policy source is nested too deeply to compile "
                              f"({type(err).__name__}); split long expressions") from None
    if result.errors or result.code is None:
        raise _refusal(result.errors, source, filename, describe_line)
    return result.code


MAX_LISTED_ERRORS = 20


def _refusal(messages, source: str, filename: str, describe_line) -> UnsafeCodeError:
    lines = source.splitlines()
    errors = tuple(_annotate_error(e, lines, describe_line) for e in messages[:MAX_LISTED_ERRORS])
    errors = errors or ("unknown error",)
    listing = "\n  ".join(errors)
    if len(messages) > MAX_LISTED_ERRORS:
        listing += f"\n  ... and {len(messages) - MAX_LISTED_ERRORS} more errors"
    return UnsafeCodeError(f"{filename}: code policy refused:\n  {listing}", errors, filename)


def _annotate_error(message: str, lines: list[str], describe_line) -> str:
    m = re.match(r"Line (\d+):", message)
    if not m:
        return message
    lineno = int(m.group(1))
    where = describe_line(lineno) if describe_line else ""
    text = _source_line(lines, lineno)
    out = message
    if where:
        out = f"Line {lineno} ({where}):{message[m.end():]}"
    if text and "at statement" not in message:
        out += f"  [{text}]"
    return out


MAX_SHOWN_LINE = 200


def _source_line(lines: list[str], lineno: int | None) -> str:
    if not lineno or not 0 < lineno <= len(lines):
        return ""
    text = lines[lineno - 1].strip()
    return text if len(text) <= MAX_SHOWN_LINE else text[:MAX_SHOWN_LINE] + "..."


# ---------------------------------------------------------------------------------------
# Run time: guards
# ---------------------------------------------------------------------------------------
_SEQUENCES = (str, bytes, bytearray, list, tuple)
_NUMBERS_FAST = frozenset({int, float, bool})
_FORMAT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _too_big(what: str, size) -> SandboxLimitError:
    return SandboxLimitError(f"{what} would have {size} items (limit {MAX_ITEMS})")


def _plain(n: int) -> int:
    """`n` as an exact int: a guard never asks a policy-made object how big it is."""
    return n if type(n) is int else operator.index(n)


def _int_bits(x) -> int:
    return abs(_plain(x)).bit_length()


def _check_repeat(seq, n) -> None:
    if isinstance(n, int):
        n = _plain(n)
        if n > 0:
            size = _weight_of(seq) * n
            if size > MAX_ITEMS:
                raise _too_big(f"repeating a {type(seq).__name__} of length {len(seq)} {n} times "
                               f"(nested items counted)", size)


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
    if isinstance(a, int) and isinstance(b, int):
        a, b = _plain(a), _plain(b)
    if type(a) is int and type(b) is int and b > 1 and (a > 1 or a < -1):
        if b * math.log2(abs(a)) > MAX_INT_BITS:
            raise SandboxLimitError(f"{a} ** {b} would exceed {MAX_INT_BITS} bits")
    return a ** b


def _lshift_(a, b):
    if isinstance(a, int) and isinstance(b, int):
        a, b = _plain(a), _plain(b)
    if type(a) is int and type(b) is int and a and b > 0 and _int_bits(a) + b > MAX_INT_BITS:
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
        if type(b) not in _FAST_TEXT:
            _check_weight(b, "%-formatting")
    return a % b


# ---------------------------------------------------------------------------------------
# Run time: weights (what one C-level pass over a value costs)
# ---------------------------------------------------------------------------------------
_HASH_MODULUS = (1 << 61) - 1        # ints hash modulo this: only ints beyond it can collide
MAX_HASH_COLLIDERS = 2_000           # such ints one set/dict construction may hash
_NO_WEIGHT = frozenset({float, bool, type(None), complex, range})
_SEQUENCE_TYPES = (list, tuple, set, frozenset)


class _Weight:
    """A capped walk: items and characters reachable from a value, every reference counted
    (a list holding one big list a million times weighs a million big lists)."""

    __slots__ = ("total", "colliders", "limit", "todo", "objects")

    def __init__(self, limit: int, into_objects: bool = False):
        self.total = self.colliders = 0
        self.limit = limit
        self.todo: list = []
        # the state meter also walks the attributes of policy objects, each object once
        self.objects: set[int] | None = set() if into_objects else None

    def walk(self, value) -> _Weight:
        self.todo.append(value)
        while self.todo:
            self.add(self.todo.pop())
            if self.total > self.limit:
                break
        return self

    def add(self, v) -> None:
        t = type(v)
        if t is str or t is bytes:
            self.total += len(v)
        elif t is int:
            self.add_ints((v,))
        elif t in _NO_WEIGHT:
            pass
        elif isinstance(v, dict):
            self.total += len(v)
            self.add_items(v.keys())
            self.add_items(v.values())
        elif isinstance(v, _SEQUENCE_TYPES):
            self.total += len(v)
            self.add_items(v)
        else:
            self.total += 1
            if self.objects is not None and type(t) is SandboxClass and id(v) not in self.objects:
                self.objects.add(id(v))
                self.todo.extend(vars(v).values())

    def add_items(self, items) -> None:
        kinds = set(map(type, items))
        if kinds <= _NO_WEIGHT:
            return
        if kinds == {int}:
            self.add_ints(items)
        elif kinds <= {str}:
            self.total += sum(map(len, items))
        else:
            self.todo.extend(items)

    def add_ints(self, items) -> None:
        if max(map(int.bit_length, items)) > 60:
            self.colliders += sum(1 for x in items if not -_HASH_MODULUS < x < _HASH_MODULUS)
            self.total += sum(map(int.bit_length, items)) >> 6     # long ints compare digit by digit


def _weight_of(value, limit: int = MAX_ITEMS) -> int:
    return _Weight(limit).walk(value).total


def _check_weight(value, what: str) -> None:
    weight = _weight_of(value)
    if weight > MAX_ITEMS:
        raise SandboxLimitError(f"{what} on a value of more than {MAX_ITEMS} items "
                                f"(nested items and repeated references counted) is not allowed")


def _check_hashing(items, what: str) -> None:
    walk = _Weight(MAX_ITEMS).walk(items)
    if walk.total > MAX_ITEMS:
        raise SandboxLimitError(f"{what} on more than {MAX_ITEMS} items (nested items counted) is not allowed")
    if walk.colliders > MAX_HASH_COLLIDERS:
        raise SandboxLimitError(f"{what} on {walk.colliders}+ integers beyond 2**61 is not allowed "
                                f"(their hashes can collide; limit {MAX_HASH_COLLIDERS})")


def _materialised(items):
    return items if type(items) in (list, tuple, dict, set, frozenset) else list(items)


def _guarded_sorted(iterable, /, *, key=None, reverse=False):
    items = list(iterable)
    _check_weight(items, "sorted()")
    items.sort(key=key, reverse=reverse)
    return items


def _extremum(builtin, name: str):
    def guarded(*args, **kwargs):
        items = args if len(args) > 1 else _materialised(args[0]) if args else ()
        _check_weight(items, f"{name}()")
        return builtin(items, **kwargs) if len(args) == 1 else builtin(*args, **kwargs)
    guarded.__name__ = name
    return guarded


def _guarded_sum(iterable, /, start=0):
    if not isinstance(start, (int, float, complex)):
        raise SandboxLimitError(f"sum() with a {type(start).__name__} start is not allowed "
                                f"(use list.extend or a comprehension)")
    items = _materialised(iterable)
    _check_weight(items, "sum()")
    return sum(items, start)


def _text_of(builtin):
    def guarded(*args, **kwargs):
        if args and type(args[0]) not in _FAST_TEXT:
            _check_weight(args[0], f"{builtin.__name__}()")
        return builtin(*args, **kwargs)
    guarded.__name__ = builtin.__name__
    return guarded


_FAST_TEXT = frozenset({str, int, float, bool, type(None)})


def _fmt_(value):
    """An f-string field: formatting a container is a C-level walk over it."""
    if type(value) not in _FAST_TEXT:
        _check_weight(value, "formatting")
    return value


def _call_guard_(fn, *args, **kwargs):
    """A call of `set`, `frozenset`, `dict` or `str` in policy code (names kept for isinstance)."""
    if fn is str:
        if args and type(args[0]) not in _FAST_TEXT:
            _check_weight(args[0], "str()")
    elif fn is set or fn is frozenset or fn is dict:
        if args:
            args = (_materialised(args[0]),) + args[1:]
            _check_hashing(args[0], f"{fn.__name__}()")
    return fn(*args, **kwargs)


_CALL_GUARDED = frozenset({"set", "frozenset", "dict", "str"})
_HASHING_METHODS = frozenset({
    "update", "union", "intersection", "difference", "symmetric_difference", "intersection_update",
    "difference_update", "symmetric_difference_update", "issubset", "issuperset", "isdisjoint", "fromkeys",
})
_WEIGHED_METHODS = frozenset({"count", "index", "sort"})


def _hashing_method(ob, name: str):
    method = getattr(ob, name)

    owner = ob.__name__ if isinstance(ob, type) else type(ob).__name__

    def guarded(*args, **kwargs):
        hashed = args[:1] if name == "fromkeys" else args
        hashed = tuple(_materialised(a) for a in hashed)
        for a in hashed:
            _check_hashing(a, f"{owner}.{name}()")
        return method(*hashed, *args[len(hashed):], **kwargs)
    return guarded


# map/filter read the clock before every item: the function they apply may be a builtin
# doing C-level work (`sum(map(sum, rows))`), which no tick inside policy code would see
def _make_map(check):
    def guarded_map(fn, *iterables):
        for args in zip(*iterables):
            check()
            yield fn(*args)
    guarded_map.__name__ = "map"
    return guarded_map


def _make_filter(check):
    def guarded_filter(fn, iterable):
        keep = bool if fn is None else fn
        for item in iterable:
            check()
            if keep(item):
                yield item
    guarded_filter.__name__ = "filter"
    return guarded_filter


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
            if isinstance(width, int) and _plain(width) > MAX_ITEMS:
                raise _too_big(f"str.{name}", width)
            return method(width, *rest)
        return padded
    if name == "expandtabs":
        def expanded(tabsize=8):
            tabsize = _plain(tabsize)
            if tabsize > 0 and len(ob) * tabsize > MAX_ITEMS:
                raise _too_big("str.expandtabs", len(ob) * tabsize)
            return method(tabsize)
        return expanded
    if name == "replace":
        def replaced(old, new, count=-1):
            count = _plain(count)
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


_STR_SIZED = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs", "replace", "join"})
_SIZED_METHODS = _STR_SIZED | {"extend"} | _HASHING_METHODS | _WEIGHED_METHODS


def _sized_method(ob, name: str):
    if name in _STR_SIZED and isinstance(ob, (str, bytes)):
        return _sized_str_method(ob, name)
    if name == "extend" and isinstance(ob, list):
        return _sized_extend(ob)
    if name in _WEIGHED_METHODS and isinstance(ob, (list, tuple)):
        _check_weight(ob, f"{type(ob).__name__}.{name}()")
    elif name in _HASHING_METHODS and (isinstance(ob, (set, frozenset, dict)) or ob in _HASHING_TYPES):
        return _hashing_method(ob, name)
    return getattr(ob, name)


_HASHING_TYPES = (set, frozenset, dict)
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
        return _sized_method(ob, name)
    if default is _NO_DEFAULT:
        return getattr(ob, name)
    return getattr(ob, name, default)


def _safe_getattr(ob, name, *default):
    _refuse_attr(ob, name)
    return _getattr_(ob, name, *default)


def _safe_hasattr(ob, name) -> bool:
    _refuse_attr(ob, name)
    return hasattr(ob, name)


_COMPARISONS = ("__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__contains__")
_DUNDERS = _COMPARISONS + ("__init__",)


class SandboxClass(type):
    """Metaclass of every class defined by policy code (marks instances writable).

    A subclass of a built-in value type may not override comparison: size guards and the
    builtins' own checks must see honest values. The special methods a policy may define run
    under its sandbox's budget even when trusted code triggers them (`==` on a returned list).
    """

    def __new__(mcs, name, bases, namespace, **kwargs):
        _refuse_lying_subclass(name, bases, namespace)
        for key in _DUNDERS:
            fn = namespace.get(key)
            if isinstance(fn, types.FunctionType) and isinstance(fn.__globals__.get("_sandbox_"), Sandbox):
                namespace[key] = _budgeted_dunder(fn, fn.__globals__["_sandbox_"])
        return super().__new__(mcs, name, bases, namespace, **kwargs)


def _refuse_lying_subclass(name: str, bases: tuple, namespace: dict) -> None:
    builtin = next((k for b in bases for k in b.__mro__ if k.__module__ == "builtins"
                    and k is not object and not issubclass(k, BaseException)), None)
    if builtin is None:
        return
    inherited = {k for b in bases for c in b.__mro__ if type(c) is SandboxClass for k in vars(c)}
    overridden = [k for k in _COMPARISONS if k in namespace or k in inherited]
    if overridden:
        raise TypeError(f"class {name} subclasses {builtin.__name__} and may not override comparison "
                        f"({', '.join(overridden)}) in code policies")


def _budgeted_dunder(fn, sandbox: Sandbox):
    def dunder(*args, **kwargs):
        if sandbox.budget.idle():          # trusted code compared or built a policy object
            return sandbox.call_with_budget(fn, *args, method_name=fn.__name__, **kwargs)
        return fn(*args, **kwargs)
    dunder.__name__ = dunder.__qualname__ = fn.__name__
    return dunder


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
    """`print` in policy code: the last MAX_PRINT_LINES lines, MAX_PRINT_CHARS characters in
    all, are kept on the sandbox; a longer line keeps its head and tail."""

    __slots__ = ("lines", "chars")

    def __init__(self, lines: deque):
        self.lines = lines
        self.chars = 0

    def __call__(self, _getattr_=None):          # `_print = _print_(_getattr_)`
        return self

    def _call_print(self, *objects, sep=" ", end="\n", **_ignored):
        for o in objects:
            if type(o) not in _FAST_TEXT:
                _check_weight(o, "print()")
        line = str(sep).join(str(o) for o in objects) + ("" if end == "\n" else str(end))
        if len(line) > MAX_PRINT_LINE_CHARS:
            half = MAX_PRINT_LINE_CHARS // 2
            line = f"{line[:half]}...({len(line) - 2 * half} characters cut)...{line[-half:]}"
        self.lines.append(line)
        self.chars += len(line)
        while self.chars > MAX_PRINT_CHARS or len(self.lines) > MAX_PRINT_LINES:
            self.chars -= len(self.lines.popleft())


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
    out["sorted"] = _guarded_sorted
    out["min"] = _extremum(min, "min")
    out["max"] = _extremum(max, "max")
    out["sum"] = _guarded_sum
    out["repr"] = _text_of(repr)
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
        self.check = check
        self.call = call
        self.idle = lambda: deadline == -math.inf


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
