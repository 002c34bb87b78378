"""Code policies: LLM-written Python that decides which skill runs (spec §5, §6, §12.3).

The code-policy API
===================

A code policy is Python source defining one class, ``NetHackPlayer``, run in the sandbox
of :mod:`mmotif.sandbox` (no imports, no ``_`` names, a time budget per call; a
seeded ``random`` global with ``choice``, ``randint``, ``random``, ``uniform``, ``shuffle``
is provided, and ``print`` output is kept on ``CodePolicy.printed``). The class must be
constructible without arguments. Its methods:

``set_initial_values(self)``
    Called at the start of every episode, on a fresh instance. Sets the policy's starting
    state, e.g. ``self.skill`` (the first skill's name; when absent the first skill of the
    skill list is used), ``self.max_depth``, ``self.mines``,
    ``self.discoverer_skill_steps``, ``self.merchant_skill_steps``,
    ``self.worshipper_skill_steps``, and any attribute of the policy's own.

``skill_precondition(self, skill, view) -> bool``
    Initiation. Called only for the skills declared as having a precondition (for the
    paper's skills: ``merchant`` and ``worshipper``); every other skill is always
    available. ``view`` is a :class:`SurroundingsView`:

    - ``view.sees(char: str, color: int) -> bool``: is ``char`` drawn in ``color`` (NetHack
      colour 0-15) somewhere in the 7x7 window around the hero, the hero's cell excluded?
    - ``view.new_items -> int``: inventory items that are neither food nor coins and were
      not in the starting inventory.

``skill_termination(self, skill, skill_time, depth, start_depth, **preconditions) -> bool``
    Termination, asked after every env step for the active skill. ``skill_time`` is in
    game turns since the skill started, ``depth`` the current dungeon level,
    ``start_depth`` the level when the skill started. ``preconditions`` holds one keyword
    per skill with a precondition, ``<skill>_precondition=<bool>`` (for the paper's skills
    ``merchant_precondition`` and ``worshipper_precondition``), so the method may also
    name them explicitly.

``perform_task(self, current_skill, dungeon_depth, branch_number, **preconditions) -> str``
    The policy over skills, called when the active skill terminates; returns the next
    skill's name. ``branch_number`` is the dungeon number (0: Dungeons of Doom,
    2: Gnomish Mines). Same precondition keywords as above.

Attributes the environment sets before its calls (through :meth:`CodePolicy.set_attribute`):

- ``self.branch_depth``: the level of the Gnomish Mines branch, ``-2`` until known.

The built-in training policy (``CodePolicy.exploration``) adds the helpers the paper's
generated task policies reuse: ``select_skill(current_skill, dungeon_depth,
merchant_precondition, worshipper_precondition)``, ``reach_gnomish_mines(current_skill,
dungeon_depth, branch_number, merchant_precondition, worshipper_precondition)`` and
``reach_dungeons_of_doom(...)`` (same arguments).

Combining parts
===============

``CodePolicy.from_parts(parts, ...)`` builds one source the way the method's combine step
does: one part holds ``class NetHackPlayer:`` (anything after the class, typically the
LLM's unit test, is dropped); every other part is a fragment of the class body (methods
written at top level) and is indented into the class, after the class's own body and in
the order given, so a fragment's method replaces a same-named one. Errors name the part
and its line.

Checks before any game
======================

``CodePolicy`` compiles the source in the sandbox and then runs a dry run: a throwaway
instance, ``set_initial_values()``, and calls of every method with representative
arguments for every skill; a result of the wrong type (not a bool, not a known skill name)
or any failure raises ``CodePolicyError`` (``UnsafeCodeError`` for refused source) with a
message that names the method, the arguments and the line. At run time every call goes
through ``Sandbox.call_with_budget`` (default budget 0.05 s per call).
"""

from __future__ import annotations

import ast
import inspect
import itertools
import random
import re
import textwrap
import types
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from mmotif.nethack.features import UNKNOWN_BRANCH
from mmotif.sandbox import DEFAULT_BUDGET_S, MAX_ITEMS, CodePolicyError, PolicyTimeout, Sandbox, UnsafeCodeError
from mmotif.sandbox.guards import SandboxClass, _Weight

__all__ = [
    "BUILTIN_DIR",
    "CLASS_NAME",
    "CodePolicy",
    "CodePolicyError",
    "PolicyTimeout",
    "SurroundingsView",
    "UnsafeCodeError",
    "builtin_source",
    "combine_parts",
]

CLASS_NAME = "NetHackPlayer"
BUILTIN_DIR = Path(__file__).with_name("builtin")
DEFAULT_PRECONDITION_SKILLS = ("worshipper", "merchant")
_ATTRIBUTE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_PLAIN_TYPES = (bool, int, float, str, type(None))
MAX_STATE_ITEMS = MAX_ITEMS        # what a player may keep between calls (nested items counted)
_SCALAR_STATE = frozenset({int, float, bool, type(None)})
_TEXT_STATE = _SCALAR_STATE | {str}
RANDOM_DRY_RUN_CASES = 20          # random situations per skill, on top of the fixed ones


# ---------------------------------------------------------------------------------------
# What initiation functions see
# ---------------------------------------------------------------------------------------
class SurroundingsView:
    """The hero's surroundings as initiation functions see them (read-only).

    Built by the env every step from the window of ``tty_chars`` / ``tty_colors`` around
    the hero (7x7, or fewer cells when clipped at the screen edge) whose hero cell has
    already been blanked in the colours, and the count of new items. ``sees`` searches the
    window's bytes (a construction plus two look-ups costs about a microsecond).
    """

    __slots__ = ("_chars", "_colors", "_new_items")

    def __init__(self, chars, colors, new_items: int = 0):
        cb = _as_bytes(chars)
        kb = _as_bytes(colors)
        if len(cb) != len(kb):
            raise ValueError(f"chars and colors windows differ in size ({len(cb)} vs {len(kb)} cells)")
        self._chars = cb
        self._colors = kb
        self._new_items = int(new_items)

    @property
    def new_items(self) -> int:
        return self._new_items

    def sees(self, char: str, color: int) -> bool:
        """Is `char` drawn in `color` in the window (hero's cell excluded)?"""
        code = ord(char)
        if code > 255:
            return False
        chars = self._chars
        i = chars.find(code)
        if i < 0:
            return False
        col = int(color) & 0xFF
        colors = self._colors
        while i >= 0:
            if colors[i] == col:
                return True
            i = chars.find(code, i + 1)
        return False

    @classmethod
    def from_rows(cls, rows: Sequence[str], colors: Sequence[Sequence[int]] | int = 7,
                  new_items: int = 0) -> SurroundingsView:
        """A view from text rows (tests, dry runs); `colors` is a grid or one colour."""
        chars = np.array([[ord(c) for c in row] for row in rows], dtype=np.uint8)
        if isinstance(colors, int):
            cols = np.full(chars.shape, colors, dtype=np.uint8)
        else:
            cols = np.array(colors, dtype=np.int16).astype(np.uint8)
        return cls(chars, cols, new_items)

    def __repr__(self) -> str:
        return f"SurroundingsView({len(self._chars)} cells, new_items={self._new_items})"


def _as_bytes(a) -> bytes:
    if isinstance(a, np.ndarray) and a.dtype.itemsize == 1:
        return a.tobytes()
    arr = np.asarray(a)
    if arr.dtype.kind not in "iub":
        raise TypeError(f"window arrays must hold integers, not {arr.dtype}")
    return arr.astype(np.int64).astype(np.uint8).tobytes()   # -1 (blanked) -> 255


# ---------------------------------------------------------------------------------------
# Combining parts
# ---------------------------------------------------------------------------------------
def builtin_source(name: str) -> str:
    """The text of a built-in part (`exploration`, `initiation_termination`, `initial_values`)."""
    path = BUILTIN_DIR / (name if name.endswith(".py") else f"{name}.py")
    if not path.is_file():
        known = sorted(p.stem for p in BUILTIN_DIR.glob("*.py"))
        raise FileNotFoundError(f"no built-in code-policy part {name!r}; known: {', '.join(known)}")
    return path.read_text()


class _LineMap:
    """Maps lines of a combined source back to (part name, line in part)."""

    def __init__(self):
        self.segments: list[tuple[int, int, str, int]] = []   # (first, last, part, offset)

    def add(self, first: int, last: int, part: str, part_first: int) -> None:
        if last >= first:
            self.segments.append((first, last, part, part_first - first))

    def __call__(self, lineno: int) -> str:
        for first, last, part, offset in self.segments:
            if first <= lineno <= last:
                return f"{part} line {lineno + offset}"
        return ""


def combine_parts(
    parts: Iterable[str | tuple[str, str]], class_name: str = CLASS_NAME,
) -> tuple[str, _LineMap]:
    """One source from a class part and class-body fragments (see the module docstring)."""
    named: list[tuple[str, str]] = []
    for i, part in enumerate(parts):
        name, text = part if isinstance(part, tuple) else (f"part {i + 1}", part)
        if not isinstance(text, str):
            raise UnsafeCodeError(f"{name}: a policy part must be a str, not {type(text).__name__}")
        named.append((name, text.expandtabs(8)))
    if not named:
        raise UnsafeCodeError("no code-policy parts given")

    class_parts = []
    for name, text in named:
        try:
            tree = ast.parse(text)
        except SyntaxError as err:
            raise UnsafeCodeError(
                f"{name}: line {err.lineno}: SyntaxError: {err.msg}", (f"Line {err.lineno}: {err.msg}",), name,
            ) from None
        node = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name), None)
        if node is not None:
            class_parts.append((name, text, node))
    if len(class_parts) > 1:
        raise UnsafeCodeError(
            f"only one part may define class {class_name}; found it in: {', '.join(p[0] for p in class_parts)}"
        )

    lines: list[str] = []
    linemap = _LineMap()
    if class_parts:
        cname, ctext, cnode = class_parts[0]
        clines = ctext.splitlines()[: cnode.end_lineno]
        first_body = clines[cnode.body[0].lineno - 1]
        indent = first_body[: len(first_body) - len(first_body.lstrip())] or "    "
        lines.extend(clines)
        linemap.add(1, len(lines), cname, 1)
    else:
        cname = None
        indent = "    "
        lines.append(f"class {class_name}:")
        lines.append(f"{indent}pass")
    for name, text in named:
        if name == cname:
            continue
        frag = textwrap.dedent(text).splitlines()
        lines.append("")
        start = len(lines) + 1
        lines.extend(indent + line if line.strip() else "" for line in frag)
        linemap.add(start, len(lines), name, 1)
    return "\n".join(lines) + "\n", linemap


# ---------------------------------------------------------------------------------------
# The policy
# ---------------------------------------------------------------------------------------
class CodePolicy:
    """A compiled, dry-run-checked code policy over skills, with its own sandbox."""

    def __init__(
        self,
        source: str,
        skill_names: Sequence[str],
        skills_with_precondition: Iterable[str] | None = None,
        *,
        name: str = "<policy>",
        seed: int | None = None,
        budget_s: float = DEFAULT_BUDGET_S,
        describe_line=None,
        dry_run: bool = True,
    ):
        names = tuple(skill_names)
        if not names or len(set(names)) != len(names) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"skill_names must be distinct strings, got {names!r}")
        if skills_with_precondition is None:
            skills_with_precondition = [s for s in DEFAULT_PRECONDITION_SKILLS if s in names]
        skills_with_precondition = tuple(skills_with_precondition)
        pre = tuple(s for s in names if s in set(skills_with_precondition))
        unknown = set(skills_with_precondition) - set(names)
        if unknown:
            raise ValueError(f"skills_with_precondition names unknown skills: {sorted(unknown)}")
        self.name = name
        self.seed = seed
        self.skill_names = names
        self.skills_with_precondition = pre
        self.precondition_keywords = tuple(f"{s}_precondition" for s in pre)
        self._names_set = frozenset(names)
        self._pre_set = frozenset(pre)
        self.source = source
        self.sandbox = Sandbox(name, seed=seed, budget_s=budget_s, describe_line=describe_line)
        self._call = self.sandbox.call_with_budget
        namespace = self.sandbox.exec_source(source)
        cls = namespace.get(CLASS_NAME)
        if not isinstance(cls, SandboxClass):
            raise UnsafeCodeError(f"{name}: the source must define class {CLASS_NAME}", (), name)
        required = ["set_initial_values", "skill_termination", "perform_task"]
        if pre:
            required.append("skill_precondition")
        missing = [m for m in required if inspect.getattr_static(cls, m, None) is None]
        if missing:
            raise UnsafeCodeError(f"{name}: class {CLASS_NAME} lacks method(s): {', '.join(missing)}", (), name)
        self._methods = {}
        for m in required:
            fn = inspect.getattr_static(cls, m)
            if not isinstance(fn, types.FunctionType):
                raise UnsafeCodeError(f"{name}: {CLASS_NAME}.{m} must be a plain method (def {m}(self, ...))", (), name)
            self._methods[m] = fn
        self._cls = cls
        self.budget_s = float(budget_s)
        self._describe_line = describe_line
        self._clear_player()
        if dry_run:
            self.dry_run()
            self.sandbox.random.seed(seed)       # episodes start from the seed's state

    # -- constructors ----------------------------------------------------------------------
    @classmethod
    def from_source(cls, source: str, skill_names: Sequence[str],
                    skills_with_precondition: Iterable[str] | None = None, **kwargs) -> CodePolicy:
        """A policy from one complete source defining class NetHackPlayer."""
        return cls(source, skill_names, skills_with_precondition, **kwargs)

    @classmethod
    def from_parts(cls, parts: Iterable[str | tuple[str, str]], skill_names: Sequence[str],
                   skills_with_precondition: Iterable[str] | None = None, **kwargs) -> CodePolicy:
        """A policy from a class part plus class-body fragments, each `text` or `(name, text)`."""
        source, linemap = combine_parts(parts)
        kwargs.setdefault("describe_line", linemap)
        return cls(source, skill_names, skills_with_precondition, **kwargs)

    @classmethod
    def exploration(cls, skill_names: Sequence[str] | None = None,
                    skills_with_precondition: Iterable[str] | None = None, *,
                    seed: int | None = None, budget_s: float = DEFAULT_BUDGET_S, **kwargs) -> CodePolicy:
        """The paper's training-time policy over skills (spec §6), from the built-in parts."""
        if skill_names is None:
            from mmotif.skills.specs import PAPER_SKILLS
            skill_names = tuple(s.name for s in PAPER_SKILLS)
        missing = {"discoverer", "descender", "ascender"} - set(skill_names)
        if missing:
            raise ValueError(f"the built-in exploration policy needs the skills {sorted(missing)}")
        parts = [(f"builtin/{p}.py", builtin_source(p))
                 for p in ("exploration", "initiation_termination", "initial_values")]
        kwargs.setdefault("name", "builtin:exploration")
        return cls.from_parts(parts, skill_names, skills_with_precondition,
                              seed=seed, budget_s=budget_s, **kwargs)

    # -- the env-facing API ------------------------------------------------------------------
    def _clear_player(self) -> None:
        self._player = None
        self._precondition = self._termination = self._perform = self._no_episode

    def _no_episode(self, *args, **kwargs):
        raise CodePolicyError(f"{self.name}: no episode has started (new_episode() has not succeeded)",
                              filename=self.name)

    def new_episode(self) -> str:
        """A fresh NetHackPlayer with its initial values; returns the first skill's name."""
        self._clear_player()
        player = self._call(self._cls, method_name=f"{CLASS_NAME}()")
        state = player.__dict__        # written directly: no descriptor runs outside the budget
        state["branch_depth"] = UNKNOWN_BRANCH
        bind, methods = types.MethodType, self._methods
        self._call(bind(methods["set_initial_values"], player))
        first = state.get("skill", self.skill_names[0])
        if type(first) is not str or first not in self._names_set:
            raise CodePolicyError(
                f"{self.name}: set_initial_values() set self.skill = {first!r}, not one of "
                f"{', '.join(self.skill_names)}", filename=self.name, method="set_initial_values",
            )
        self._player = player
        pre = methods.get("skill_precondition")
        self._precondition = bind(pre, player) if pre is not None else None
        self._termination = bind(methods["skill_termination"], player)
        self._perform = bind(methods["perform_task"], player)
        return first

    def _metered(self, fn, method: str, *args, **kwargs):
        """A player call, then its state weighed: memory kept between calls is bounded, and so is
        every C-level pass a later call makes over it."""
        try:
            return self._call(fn, *args, **kwargs)
        finally:
            if self._player is not None:
                self._check_state(method)

    def _check_state(self, method: str) -> None:
        values = self._player.__dict__.values()
        kinds = set(map(type, values))
        if kinds <= _SCALAR_STATE:          # the common cases, at a fraction of a walk's cost
            return
        if kinds <= _TEXT_STATE and sum(len(v) for v in values if type(v) is str) <= MAX_STATE_ITEMS:
            return
        walk = _Weight(MAX_STATE_ITEMS, into_objects=True)
        for value in values:
            walk.walk(value)
            if walk.total > MAX_STATE_ITEMS:
                self._clear_player()
                raise CodePolicyError(
                    f"{self.name}: {method}() left more than {MAX_STATE_ITEMS} items in the player's "
                    f"attributes (nested items counted); the episode's player is dropped",
                    filename=self.name, method=method)

    def initiation(self, skill: str, view: SurroundingsView) -> bool:
        """May `skill` start now? True without calling code for skills with no precondition."""
        if skill not in self._pre_set:
            return True
        result = self._metered(self._precondition, "skill_precondition", skill, view)
        if result is True or result is False:
            return result
        raise self._bad_result("skill_precondition", (skill, view), {}, result, "True or False")

    def terminates(self, skill: str, skill_time: int, depth: int, start_depth: int, **preconditions: bool) -> bool:
        """Does the active `skill` end now?"""
        result = self._metered(self._termination, "skill_termination", skill, skill_time, depth, start_depth, **preconditions)
        if result is True or result is False:
            return result
        raise self._bad_result("skill_termination", (skill, skill_time, depth, start_depth),
                               preconditions, result, "True or False")

    def next_skill(self, current_skill: str, dungeon_depth: int, branch_number: int, **preconditions: bool) -> str:
        """The skill to run after `current_skill` terminated."""
        result = self._metered(self._perform, "perform_task", current_skill, dungeon_depth, branch_number, **preconditions)
        if type(result) is str and result in self._names_set:
            return result
        raise self._bad_result("perform_task", (current_skill, dungeon_depth, branch_number),
                               preconditions, result, f"one of {', '.join(self.skill_names)}")

    def set_attribute(self, name: str, value) -> None:
        """Set an env-supplied attribute (e.g. `branch_depth`) on the current player."""
        if not isinstance(name, str) or not _ATTRIBUTE_NAME.match(name):
            raise ValueError(f"invalid policy attribute name {name!r}")
        if isinstance(value, (list, tuple)):
            if not all(isinstance(v, _PLAIN_TYPES) for v in value):
                raise TypeError(f"policy attribute {name!r}: only lists of plain values are allowed")
            value = list(value)
        elif isinstance(value, np.generic):
            value = value.item()
        elif not isinstance(value, _PLAIN_TYPES):
            raise TypeError(f"policy attribute {name!r}: {type(value).__name__} values are not allowed")
        if self._player is None:
            raise RuntimeError("call new_episode() before set_attribute()")
        self._player.__dict__[name] = value

    def attribute(self, name: str, default=None):
        """Read a plain attribute of the current player (logging, tests)."""
        if self._player is None or name.startswith("_"):
            return default
        value = self._player.__dict__.get(name, default)
        return value if isinstance(value, _PLAIN_TYPES + (list, tuple, dict, set)) else default

    @property
    def printed(self) -> list[str]:
        """Lines the policy printed (the last 1,000)."""
        return list(self.sandbox.printed)

    # -- checks ----------------------------------------------------------------------------
    def dry_run(self) -> None:
        """Call every method with representative arguments on a throwaway player."""
        saved = self._player, self._precondition, self._termination, self._perform
        try:
            self._dry_run()
        except CodePolicyError as err:
            if str(err).startswith(f"{self.name}: dry run"):
                raise
            raise type(err)(f"{self.name}: dry run (before any game): {_strip_prefix(str(err), self.name)}",
                            filename=err.filename, method=err.method, lineno=err.lineno) from err
        finally:
            self._player, self._precondition, self._termination, self._perform = saved

    def _dry_run(self) -> None:
        self.new_episode()
        views = [
            SurroundingsView.from_rows(["   ", " . ", "   "], 7, 0),
            SurroundingsView.from_rows(["...", ".._", "..."], 7, 0),
            SurroundingsView.from_rows(["...", "._.", "..@"], [[7, 7, 7], [7, 7, 7], [7, 7, 15]], 2),
            SurroundingsView.from_rows(["#..", "...", ".._"], 7, 1),
            SurroundingsView.from_rows(["@..", "...", "..."], 15, 1),
        ]
        for skill in self.skills_with_precondition:
            for view in views:
                self.initiation(skill, view)
        keywords = self.precondition_keywords
        combos = [dict.fromkeys(keywords, False)]
        for kw in keywords:
            combos.append({k: k == kw for k in keywords})
        situations = [(0, 1, 1), (1, 2, 1), (1, 1, 2), (600, 3, 3), (50_000, 3, 3)]
        for skill, (t, depth, start), pre in itertools.product(self.skill_names, situations, combos):
            self.terminates(skill, t, depth, start, **pre)
        for branch_depth in (UNKNOWN_BRANCH, 3):
            self.set_attribute("branch_depth", branch_depth)
            for skill, depth, branch, pre in itertools.product(self.skill_names, range(1, 6), (0, 2), combos):
                self.next_skill(skill, depth, branch, **pre)
        self._random_dry_run(views, keywords)

    def _random_dry_run(self, views, keywords) -> None:
        # drawn afresh each time: a policy cannot special-case arguments it cannot predict
        rng = random.SystemRandom()
        self.set_attribute("branch_depth", rng.choice([UNKNOWN_BRANCH, rng.randint(2, 4)]))
        for skill in self.skill_names:
            for _ in range(RANDOM_DRY_RUN_CASES):
                pre = {k: rng.random() < 0.3 for k in keywords}
                depth, start = rng.randint(1, 50), rng.randint(1, 50)
                if skill in self._pre_set:
                    self.initiation(skill, rng.choice(views))
                self.terminates(skill, rng.randint(0, 100_000), depth, start, **pre)
                self.next_skill(skill, depth, rng.choice((0, 2)), **pre)

    def _bad_result(self, method, args, kwargs, result, expected) -> CodePolicyError:
        shown = ", ".join([repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()])
        return CodePolicyError(
            f"{self.name}: {method}({shown}) returned {result!r}; expected {expected}",
            filename=self.name, method=method,
        )

    def __reduce__(self):
        # rebuilt (and checked again) from its source; the episode state is not kept
        return (_rebuild, (self.source, self.skill_names, self.skills_with_precondition, self.name,
                           self.seed, self.budget_s, self._describe_line))

    def __repr__(self) -> str:
        return f"CodePolicy({self.name!r}, skills={self.skill_names})"


def _rebuild(source, skill_names, skills_with_precondition, name, seed, budget_s, describe_line) -> CodePolicy:
    return CodePolicy(source, skill_names, skills_with_precondition, name=name, seed=seed,
                      budget_s=budget_s, describe_line=describe_line)


def _strip_prefix(message: str, name: str) -> str:
    prefix = f"{name}: "
    return message[len(prefix):] if message.startswith(prefix) else message
