"""Run time: the size guards, weights, attribute reads and builtins that policy code calls."""

from __future__ import annotations

import math
import operator
import random as _random_module
import re
import types
from collections import deque
from collections.abc import Sized

from mmotif.sandbox.errors import SandboxLimitError
from mmotif.sandbox.rules import (ALLOWED_EXCEPTIONS, MAX_FORMAT_WIDTH, MAX_INT_BITS, MAX_ITEMS, MAX_PRINT_CHARS,
                                  MAX_PRINT_LINE_CHARS, MAX_PRINT_LINES, REFUSED_ATTRIBUTES)


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


class SandboxBase:
    """What `SandboxClass` needs of the sandbox that runs a class body: its `budget` and
    `call_with_budget`. `mmotif.sandbox.box.Sandbox` is its one subclass."""

    budget: object

    def call_with_budget(self, fn, *args, budget_s: float | None = None, method_name: str | None = None, **kwargs):
        raise NotImplementedError


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
            if isinstance(fn, types.FunctionType) and isinstance(fn.__globals__.get("_sandbox_"), SandboxBase):
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


def _budgeted_dunder(fn, sandbox: SandboxBase):
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
