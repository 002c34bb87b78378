"""The sandbox's limits and its name rules: what policy code may name, catch and read."""

from __future__ import annotations

from RestrictedPython.transformer import INSPECT_ATTRIBUTES


DEFAULT_BUDGET_S = 0.05
CHECK_EVERY = 16            # `_budget_` reads the clock once per this many calls
MAX_ITEMS = 1_000_000       # longest sequence/string a single operation may build
MAX_INT_BITS = 1 << 16      # largest integer a single operation may build (~19,700 digits)
MAX_SOURCE_CHARS = 400_000
MAX_FORMAT_WIDTH = 9_999
MAX_PRINT_LINES = 1_000
MAX_PRINT_CHARS = 100_000   # characters of printed output kept, all lines together
MAX_PRINT_LINE_CHARS = 10_000

# names policy code may not use
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
