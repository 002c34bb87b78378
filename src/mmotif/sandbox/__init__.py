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

Modules: `rules` (limits, forbidden names, allowed exceptions), `errors`, `compiler` (the
transformer and `compile_policy_source`), `guards` (size guards, weights, builtins, the
policy-class metaclass), `budget` (the time budget), `box` (`Sandbox`, `call_with_budget`) and
`child` (the limited subprocess of `mmotif.codegen.runner`, run as `python -I -m`).
"""

from mmotif.sandbox.box import Sandbox, call_with_budget
from mmotif.sandbox.compiler import compile_policy_source
from mmotif.sandbox.errors import CodePolicyError, PolicyTimeout, SandboxLimitError, UnsafeCodeError
from mmotif.sandbox.guards import SafeRandom
from mmotif.sandbox.rules import CHECK_EVERY, DEFAULT_BUDGET_S, MAX_INT_BITS, MAX_ITEMS

__all__ = [
    "CHECK_EVERY",
    "CodePolicyError",
    "DEFAULT_BUDGET_S",
    "MAX_INT_BITS",
    "MAX_ITEMS",
    "PolicyTimeout",
    "Sandbox",
    "SafeRandom",
    "SandboxLimitError",
    "UnsafeCodeError",
    "call_with_budget",
    "compile_policy_source",
]
