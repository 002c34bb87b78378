"""The NetHack layer on real NLE: options, macros, prompt handling."""

import numpy as np
import pytest
from nle import nethack

from mmotif.nethack import actions as A
from mmotif.nethack.game import _K, NetHackGame
from mmotif.nethack.options import nethackrc_text
from wizard import fix_dungeon, keys, screen, settle, teleport_onto, wish


@pytest.fixture
def game():
    g = NetHackGame(wizard=True)
    fix_dungeon(g, 20261208)  # a random game's monster interrupted the 25-turn rest 7 times in 200
    g.reset()
    yield g
    g.close()


def test_character_is_a_monk_without_pet():
    g = NetHackGame()
    try:
        for _ in range(3):
            g.reset()
            inventory = " ".join(g.inventory_strings())
            assert "robe" in inventory and "leather gloves" in inventory and "spellbook" in inventory
            assert "Agent the Candidate" in screen(g)  # a level-1 Monk's title
            glyphs = g.glyphs
            pets = (glyphs >= nethack.GLYPH_PET_OFF) & (glyphs < nethack.GLYPH_INVIS_OFF)
            assert not pets.any(), "pettype:none should leave the hero without a pet"
    finally:
        g.close()


def test_config_file_carries_the_lines_plain_options_cannot():
    text = nethackrc_text()
    assert 'MSGTYPE=hide "You see .*"' in text and 'MSGTYPE=hide "You hear .*"' in text
    assert 'AUTOPICKUP_EXCEPTION="<.*lichen corpse.*"' in text
    assert "pickup_types:$/%?!" in text


def test_spell_type_read_from_starting_spellbook(game):
    book = next(s for s in game.inventory_strings() if "spellbook" in s)
    expected = {"healing": 0, "protection": 1, "sleep": 2}
    assert game.spell_type == next(v for k, v in expected.items() if k in book)


def test_more_is_skipped_but_the_stair_message_is_kept(game):
    teleport_onto(game, ">")
    game.step(A.INDEX["DOWN"])
    assert game.blstats[12] == 2
    assert b"You descend the stairs." in game.message_bytes()
    assert not game._pending_prompt()
    teleport_onto(game, "<")
    game.step(A.INDEX["UP"])
    assert game.blstats[12] == 1
    assert b"You climb up the stairs." in game.message_bytes()


def test_prompt_outside_whitelist_is_declined(game):
    teleport_onto(game, "<")
    game.step(A.INDEX["UP"])  # "Beware, there will be no return! Still climb?" on DL1
    assert not game.done and not game._pending_prompt()
    assert game.blstats[12] == 1


def test_wait_rests_many_turns(game):
    before = int(game.blstats[20])
    game.step(A.INDEX["WAIT"])
    assert int(game.blstats[20]) - before > 1  # a plain `.` would take one turn


def test_eat_answer_picks_first_offered_item(game):
    game.step(A.INDEX["EAT"])
    prompt = game.message_bytes()
    assert prompt.startswith(b"What do you want to eat?")
    first_letter = prompt.split(b"[")[1][:1]
    count_before = _inventory_line(game, first_letter)
    game.step(A.ANSWER_YES)
    assert game.just_ate
    assert _inventory_line(game, first_letter) != count_before


def test_eat_prompt_cancelled_by_any_other_action(game):
    inventory = game.inventory_strings()
    game.step(A.INDEX["EAT"])
    game.step(A.INDEX["SEARCH"])
    assert not game.just_ate and not game._pending_prompt()
    assert game.inventory_strings() == inventory


def test_drop_drops_first_new_item_only(game):
    starting = game.inventory_strings()
    turn = int(game.blstats[20])
    game.step(A.INDEX["DROP"])  # nothing picked up yet: nothing happens
    assert game.inventory_strings() == starting and int(game.blstats[20]) == turn
    wish(game, "ring of adornment")
    assert len(game.inventory_strings()) == len(starting) + 1
    game.step(A.INDEX["DROP"])
    assert game.message_bytes().startswith(b"You drop")
    assert game.inventory_strings() == starting


def test_cast_casts_the_first_spell(game):
    energy = int(game.blstats[14])
    game.step(A.INDEX["CAST"])
    message = game.message_bytes()
    cast = int(game.blstats[14]) < energy
    assert cast or b"enough energy" in message
    if game._pending_prompt():  # only sleep asks, and the agent answers with a direction
        assert game.spell_type == 2 and b"direction" in message
    if cast and game.spell_type == 0:
        assert b"You feel better" in message  # healing was cast at the hero


def test_random_play_never_gets_stuck():
    g = NetHackGame()
    rng = np.random.default_rng(0)
    try:
        g.reset()
        for _ in range(3000):
            if g.step(int(rng.integers(A.NUM_ACTIONS))):
                g.reset()
            assert not g.obs[_K["misc"]][2] or g.done  # never left at a --More--
    finally:
        g.close()


def _inventory_line(game, letter: bytes) -> str:
    idx = list(game.inv_letters).index(letter[0])
    return game.inventory_strings()[idx]
