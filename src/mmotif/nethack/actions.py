"""The 28-action set of the reference (spec §9.3), in index order.

Each action names the key NetHack receives. Several are macros that the game layer
(`mmotif.nethack.game`) expands into more keys: EAT/QUAFF answers, DROP, WAIT (rest 25
turns), CAST.
"""

from __future__ import annotations

ESC = 27
SPACE = ord(" ")
ENTER = 13
META_ENHANCE = 0x80 | ord("e")  # #enhance
META_PRAY = 0x80 | ord("p")  # #pray
CTRL_D = 4  # kick

# (name, key) in index order.
ACTIONS: tuple[tuple[str, int], ...] = (
    ("MORE", ENTER),
    ("N", ord("k")), ("E", ord("l")), ("S", ord("j")), ("W", ord("h")),
    ("NE", ord("u")), ("SE", ord("n")), ("SW", ord("b")), ("NW", ord("y")),
    ("RUN_N", ord("K")), ("RUN_E", ord("L")), ("RUN_S", ord("J")), ("RUN_W", ord("H")),
    ("RUN_NE", ord("U")), ("RUN_SE", ord("N")), ("RUN_SW", ord("B")), ("RUN_NW", ord("Y")),
    ("UP", ord("<")), ("DOWN", ord(">")), ("WAIT", ord(".")),
    ("KICK", CTRL_D), ("EAT", ord("e")), ("SEARCH", ord("s")),
    ("CAST", ord("Z")), ("ENHANCE", META_ENHANCE), ("PRAY", META_PRAY),
    ("QUAFF", ord("q")), ("DROP", ord("d")),
)

ACTION_NAMES: tuple[str, ...] = tuple(name for name, _ in ACTIONS)
ACTION_KEYS: tuple[int, ...] = tuple(key for _, key in ACTIONS)
NUM_ACTIONS = len(ACTIONS)
INDEX = {name: i for i, name in enumerate(ACTION_NAMES)}

# Answering a pending "What do you want to eat/drink?" prompt with this action picks the
# first item the prompt offers (the NW key is `y`, as in the reference).
ANSWER_YES = INDEX["NW"]

WAIT_COUNT = 25
