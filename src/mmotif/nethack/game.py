"""One NetHack game on NLE's low-level interface, with the reference's macros and prompt
handling (spec §9.3). One call to `step` is one agent action; it may send several keys.

Built on `nle.nethack.Nethack` rather than the gym env so that the hot path pays for
nothing it does not use.
"""

from __future__ import annotations

import re
from typing import Callable

import numpy as np
from nle import nethack

from mmotif.nethack import actions as A
from mmotif.nethack.features import COIN_CLASS, FOOD_CLASS
from mmotif.nethack.options import PLAYER_NAME, options_for_nle

OBS_KEYS = (
    "tty_chars", "tty_colors", "blstats", "message", "glyphs",
    "inv_letters", "inv_oclasses", "inv_strs", "misc", "program_state",
)
_K = {k: i for i, k in enumerate(OBS_KEYS)}


# Single-key prompts the agent answers itself; every other one is declined (ESC), unless the
# game's `confirm` hook (set by an evaluation task) answers it yes.
YN_WHITELIST = (b"eat", b"attack", b"direction?", b"pray", b"drop", b"drink", b"Sell")
# Messages that a skipped --More-- would swallow but the reward models and tasks need.
# "You die..." is NetHack's last message of a fatal turn; NLE's final observation is blank.
DEATH_MESSAGE = b"You die..."
KEEP_THROUGH_MORE = (b"You descend the stairs", b"You climb up the stairs", b"You are frozen", DEATH_MESSAGE)
ENHANCE_TRIGGER = b"You feel more confident in"
_ITEM_PROMPT = re.compile(rb"What do you want to (eat|drink)\? \[([^\]]*)\]")

SPELL_TYPES = {b"healing": 0, b"protection": 1, b"sleep": 2}
MAX_PROMPT_KEYS = 64  # keys the prompt handler may send after one action before giving up


MAX_RESET_KEYS = 1000  # keys `reset` may send to get past the intro into the move loop


class GameOverError(RuntimeError):
    pass


class ResetError(GameOverError):
    """A new game did not reach the move loop; `state` is what the screen and prompt showed."""

    def __init__(self, message: str, state: dict):
        super().__init__(message)
        self.state = state

    def __reduce__(self):  # crosses process boundaries (a Ray task's error) with its state
        return type(self), (str(self), self.state)


class NetHackGame:
    """A Monk game with macros. `obs` holds NLE's live buffers (read, don't keep)."""

    def __init__(self, wizard: bool = False, yn_whitelist: tuple[bytes, ...] = YN_WHITELIST):
        self._nh = nethack.Nethack(
            observation_keys=OBS_KEYS,
            options=options_for_nle(wizard),
            playername=PLAYER_NAME,
            ttyrec=None,
            wizard=wizard,
        )
        self.yn_whitelist = tuple(yn_whitelist)
        self.confirm: Callable[[bytes], bool] | None = None  # prompt text -> answer yes?
        self.obs: tuple[np.ndarray, ...] = ()
        self.done = True
        self.message = np.zeros(nethack.MESSAGE_SHAPE, np.uint8)
        self.starting_letters: frozenset[int] = frozenset()
        self.spell_type = 0
        self.just_ate = False
        self.keys_sent = 0

    # -- views on the live buffers -------------------------------------------------
    @property
    def blstats(self) -> np.ndarray:
        return self.obs[_K["blstats"]]

    @property
    def tty_chars(self) -> np.ndarray:
        return self.obs[_K["tty_chars"]]

    @property
    def tty_colors(self) -> np.ndarray:
        return self.obs[_K["tty_colors"]]

    @property
    def glyphs(self) -> np.ndarray:
        return self.obs[_K["glyphs"]]

    @property
    def inv_letters(self) -> np.ndarray:
        return self.obs[_K["inv_letters"]]

    @property
    def inv_oclasses(self) -> np.ndarray:
        return self.obs[_K["inv_oclasses"]]

    @property
    def escaped(self) -> bool:
        """The game ended with the hero leaving the dungeon (up the stairs of DL1)."""
        return self.done and self._nh.how_done() == nethack.ESCAPED

    def message_bytes(self) -> bytes:
        return self.message.tobytes().rstrip(b"\0")

    def inventory_strings(self) -> list[str]:
        strs = self.obs[_K["inv_strs"]]
        return [bytes(row).rstrip(b"\0").decode("latin-1") for row in strs if row[0]]

    # -- episode -------------------------------------------------------------------
    def reset(self, max_keys: int = MAX_RESET_KEYS) -> None:
        self.obs = self._nh.reset()
        self.done = False
        self.keys_sent = 0
        for _ in range(max_keys):  # get past the intro --More--s into the move loop
            if self.obs[_K["program_state"]][3] and not self._pending_prompt():
                break
            self._send(A.SPACE)
        else:
            raise ResetError(f"NetHack did not reach the move loop after {max_keys} keys", self.screen_state())
        self._refresh_message()
        letters = self.inv_letters
        self.starting_letters = frozenset(int(c) for c in letters[letters > 0])
        self.spell_type = self._starting_spell_type()
        self.keys_sent = 0

    def step(self, action: int) -> bool:
        """Play one agent action; return True when the game is over."""
        if self.done:
            raise GameOverError("step() called on a finished game; call reset()")
        self.just_ate = False
        pending = self.message.tobytes() if self._pending_prompt() else b""
        self._play(action, pending)
        kept = self._handle_prompts()
        self._refresh_message(kept)
        if self.done:
            self._show_death()
        return self.done

    def close(self) -> None:
        self._nh.close()

    def screen_state(self) -> dict:
        """What the game shows now, as plain values (for a log line or a JSON record): the
        screen's non-blank lines, the message, the prompt flags (misc: yn, getline, --More--),
        program_state and whether the game is over."""
        if not self.obs:
            return {"screen": [], "message": "", "misc": [], "program_state": [], "done": self.done}
        lines = [bytes(row).decode("latin-1").rstrip() for row in self.tty_chars]
        return {
            "screen": [line for line in lines if line.strip()],
            "message": self.obs[_K["message"]].tobytes().rstrip(b"\0").decode("latin-1"),
            "misc": self.obs[_K["misc"]].tolist(),
            "program_state": self.obs[_K["program_state"]].tolist(),
            "done": bool(self.done), "keys_sent": self.keys_sent,
        }

    # -- internals -----------------------------------------------------------------
    def _send(self, key: int) -> None:
        self.obs, self.done = self._nh.step(key)
        self.keys_sent += 1

    def _pending_prompt(self) -> bool:
        misc = self.obs[_K["misc"]]
        return bool(misc[0] or misc[1] or misc[2])

    def _play(self, action: int, pending_prompt: bytes) -> None:
        item_prompt = _ITEM_PROMPT.search(pending_prompt) if pending_prompt else None
        if item_prompt is not None:
            self._answer_item_prompt(action, item_prompt)
            return
        name = A.ACTION_NAMES[action]
        if name == "WAIT":
            for key in (ord("2"), ord("5"), ord(".")):
                self._send(key)
        elif name == "DROP":
            letter = self._first_new_item()
            if letter is not None:  # nothing to drop: send nothing (the reference sends d, ESC)
                self._send(ord("d"))
                if not self.done:
                    self._send(letter)
        elif name == "CAST":
            self._send(ord("Z"))
            if not self.done and self._pending_prompt():
                self._send(ord("a"))
            if not self.done and self.spell_type == 0 and b"direction" in self.obs[_K["message"]].tobytes():
                self._send(ord("."))  # healing: cast at self
        else:
            self._send(A.ACTION_KEYS[action])

    def _answer_item_prompt(self, action: int, prompt: re.Match) -> None:
        choices = prompt.group(2)
        first = choices[:1]
        if action == A.ANSWER_YES and first.isalpha():
            self._send(first[0])
            self.just_ate = prompt.group(1) == b"eat"
        else:
            self._send(A.ESC)

    def _first_new_item(self) -> int | None:
        letters, classes = self.inv_letters, self.inv_oclasses
        for letter, oclass in zip(letters.tolist(), classes.tolist()):
            if letter == 0:
                break
            if oclass not in (FOOD_CLASS, COIN_CLASS) and letter not in self.starting_letters:
                return letter
        return None

    def _handle_prompts(self) -> list[bytes]:
        """Skip --More--, decline prompts outside the whitelist (unless `confirm` says yes),
        auto-#enhance.

        Returns the messages worth keeping that a --More-- (or a confirmed prompt) would have
        swallowed.
        """
        kept: list[bytes] = []
        want_enhance = enhanced = False
        for _ in range(MAX_PROMPT_KEYS):
            if self.done:
                break
            misc = self.obs[_K["misc"]]
            message = self.obs[_K["message"]].tobytes()
            want_enhance = want_enhance or ENHANCE_TRIGGER in message
            if misc[2]:  # --More--
                if any(phrase in message for phrase in KEEP_THROUGH_MORE):
                    kept.append(message.rstrip(b"\0"))
                self._send(A.SPACE)
            elif misc[1]:  # text entry: we never type text
                self._send(A.ESC)
            elif misc[0]:  # single-key prompt
                if any(word in message for word in self.yn_whitelist):
                    break
                if self.confirm is not None and self.confirm(message.rstrip(b"\0")):
                    kept.append(message.rstrip(b"\0"))  # the answer may end the game: keep the question
                    self._send(ord("y"))
                else:
                    self._send(A.ESC)
            elif want_enhance and not enhanced:  # back in the move loop: advance a skill
                enhanced = True
                self._send(A.META_ENHANCE)
                if not self.done and self._pending_prompt():
                    self._send(ord("a"))
            else:
                break
        else:
            self._escape_everything()
        return kept

    def _escape_everything(self) -> None:
        for _ in range(8):
            if self.done or not self._pending_prompt():
                return
            self._send(A.ESC)

    def _refresh_message(self, kept: list[bytes] | None = None) -> None:
        current = self.obs[_K["message"]]
        if not kept:
            np.copyto(self.message, current)
            return
        text = b"  ".join(kept + [current.tobytes().rstrip(b"\0")]).rstrip()
        self.message[:] = 0
        raw = np.frombuffer(text[: len(self.message)], np.uint8)
        self.message[: len(raw)] = raw

    def _show_death(self) -> None:
        """A macro or prompt answer can skip the fatal turn's "You die..." --More--; NLE's
        final observation is blank. The message then ends with NetHack's own death line,
        so captions and the reward models see the game end as a death."""
        if self._nh.how_done() != nethack.DIED or DEATH_MESSAGE in self.message_bytes():
            return
        text = b"  ".join(part for part in (self.message_bytes(), DEATH_MESSAGE) if part)
        raw = np.frombuffer(text[-len(self.message):], np.uint8)
        self.message[:] = 0
        self.message[: len(raw)] = raw

    def _starting_spell_type(self) -> int:
        for line in self.inventory_strings():
            if "spellbook" in line:
                for word, kind in SPELL_TYPES.items():
                    if word.decode() in line:
                        return kind
        return 0
