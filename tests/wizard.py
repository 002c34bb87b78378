"""Scripted situations on real NLE through NetHack's wizard (debug) mode."""

from __future__ import annotations

from mmotif.nethack.game import _K as game_keys
from mmotif.nethack.game import NetHackGame

CTRL_F, CTRL_T, CTRL_W = 6, 20, 23


def fix_dungeon(game: NetHackGame, seed: int) -> None:
    """Make the next `reset` deal a fixed game (NLE seeds each game at random): in random
    ones a monster now and then interrupts a rest or stands where a test looks."""
    game._nh.set_initial_seeds(core=seed, disp=seed, reseed=False)


def keys(game: NetHackGame, *sequence: int | str) -> None:
    """Send raw keys, bypassing macros and prompt handling."""
    for item in sequence:
        for key in ([ord(c) for c in item] if isinstance(item, str) else [item]):
            game._send(key)


def settle(game: NetHackGame) -> None:
    """Dismiss whatever --More-- the raw keys left on screen."""
    game._handle_prompts()
    game._refresh_message()


def reveal_map(game: NetHackGame) -> None:
    keys(game, CTRL_F)
    settle(game)


def teleport_onto(game: NetHackGame, feature: str) -> None:
    """Stand on the staircase `feature` ('<' or '>') of this level (checked with `:`)."""
    wanted = b"staircase up" if feature == "<" else b"staircase down"
    for _ in range(5):  # a monster standing on the stairs makes the teleport land elsewhere
        reveal_map(game)
        keys(game, CTRL_T, feature, ".")
        settle(game)
        keys(game, ":")
        # with objects on the stairs `:` lists them in a window, the staircase line included
        here = game.obs[game_keys["message"]].tobytes() + game.tty_chars.tobytes()
        settle(game)
        if wanted in here:
            return
    raise AssertionError(f"could not stand on {feature!r}")


def wish(game: NetHackGame, item: str) -> None:
    keys(game, CTRL_W, item + "\r")
    settle(game)


def screen(game: NetHackGame) -> str:
    return "\n".join(bytes(r).decode("latin-1").rstrip() for r in game.tty_chars)
