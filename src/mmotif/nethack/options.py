"""The reference character and game options (spec §9.2), handed to NLE as a config file.

NLE passes options to NetHack through NETHACKOPTIONS, built as
``",".join(options + ["name:<playername>"] (+ ["playmode:debug"]))``. NetHack reads a
config file when NETHACKOPTIONS starts with ``@``, and treats everything after the ``@`` as
the file name. The reference patched NLE to stop the suffix being appended; instead we
write the file under the exact name NetHack will look for (suffix included), so stock NLE
reads a full config file, and with it the ``MSGTYPE`` and ``AUTOPICKUP_EXCEPTION`` lines
that cannot be given as plain options.
"""

from __future__ import annotations

import hashlib
import os
import tempfile

PLAYER_NAME = "Agent-mon-hum-neu-mal"  # Monk, human, neutral, male (NLE's default spec)

# Order matters: NetHack 3.6 checks the most recently defined exception first, so the
# broad "never" rules come before the specific "always" ones.
AUTOPICKUP_EXCEPTIONS = (
    '>.*corpse.*',
    '>.*tin.*',
    '<.*leather gloves.*',
    '<.*robe.*',
    '<.*lichen corpse.*',
    '<.*lizard corpse.*',
    '<.*newt corpse.*',
    '<.*floating eye corpse.*',
)

HIDDEN_MESSAGES = ("You see .*", "You hear .*")

GAME_OPTIONS = (
    "role:monk", "race:human", "gender:male", "align:neutral",
    "pettype:none",
    "autopickup", "pickup_types:$/%?!", "pickup_burden:unencumbered",
    "color", "disclose:+i +a +v +g +c +o",
    "nobones", "nocmdassist", "nolegacy", "nosparkle",
    "runmode:teleport", "showexp", "showscore", "time",
    "paranoid_confirmation:none",
)


def nethackrc_text(wizard: bool = False) -> str:
    lines = ["OPTIONS=name:Agent"]
    lines += [f"OPTIONS={opt}" for opt in GAME_OPTIONS]
    if wizard:
        lines.append("OPTIONS=playmode:debug")
    lines += [f'AUTOPICKUP_EXCEPTION="{rule}"' for rule in AUTOPICKUP_EXCEPTIONS]
    lines += [f'MSGTYPE=hide "{pattern}"' for pattern in HIDDEN_MESSAGES]
    return "\n".join(lines) + "\n"


def options_for_nle(wizard: bool = False, directory: str | None = None) -> tuple[str, ...]:
    """Write the config file where NetHack will look for it; return NLE's `options` tuple."""
    text = nethackrc_text(wizard)
    directory = directory or os.path.join(tempfile.gettempdir(), "mmotif-nethackrc")
    os.makedirs(directory, exist_ok=True)
    base = os.path.join(directory, "rc-" + hashlib.sha1(text.encode()).hexdigest()[:12])
    suffix = ",name:" + PLAYER_NAME + (",playmode:debug" if wizard else "")
    path = base + suffix
    if not os.path.exists(path):
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)  # atomic: parallel envs never read a half-written file
    return ("@" + base,)
