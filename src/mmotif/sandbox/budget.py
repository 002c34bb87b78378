"""Run time: the per-sandbox time budget (`_budget_` ticks and the budgeted call)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from mmotif.sandbox.errors import _BudgetExceeded
from mmotif.sandbox.rules import CHECK_EVERY


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
