"""Compile time: the RestrictedPython transformer of our own and `compile_policy_source`."""

from __future__ import annotations

import ast
import copy
import re
from collections.abc import Callable
from types import CodeType

from RestrictedPython import compile_restricted_exec
from RestrictedPython.transformer import INSPECT_ATTRIBUTES, RestrictingNodeTransformer, copy_locations

from mmotif.sandbox.errors import UnsafeCodeError
from mmotif.sandbox.guards import _CALL_GUARDED, _SIZED_METHODS
from mmotif.sandbox.rules import (ALLOWED_EXCEPTIONS, FORBIDDEN_NAMES, MAX_FORMAT_WIDTH, MAX_SOURCE_CHARS,
                                  REFUSED_ATTRIBUTES)


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
