"""Observation features: shapes, crop centring, the initiation window, message counts."""

import numpy as np

from mmotif.contract import observation_spec
from mmotif.nethack.captions import caption_text, game_state, make_caption
from mmotif.nethack.features import (
    InventoryCounts, MessageCounter, window_around_hero, write_blstats, write_crop,
)


def _screen_with_hero(x, y):
    chars = np.full((24, 80), ord("."), np.uint8)
    colors = np.zeros((24, 80), np.int8)
    chars[y + 1, x] = ord("@")  # tty row = map row + 1
    return chars, colors


def test_crop_centres_the_hero_and_pads_at_edges():
    out_c, out_k = np.zeros((12, 12), np.uint8), np.zeros((12, 12), np.uint8)
    for x, y in [(40, 10), (0, 0), (78, 20)]:
        chars, colors = _screen_with_hero(x, y)
        write_crop(chars, colors, x, y, out_c, out_k)
        assert out_c[6, 6] == ord("@")
    # at the top-left corner, cells above/left of the screen are zero
    chars, colors = _screen_with_hero(0, 0)
    write_crop(chars, colors, 0, 0, out_c, out_k)
    assert (out_c[:5, :] == 0).all() and (out_c[:, :6] == 0).all()


def test_window_is_centred_on_the_real_tty_row_and_clipped_not_emptied():
    chars, colors = _screen_with_hero(1, 0)
    chars[2, 2] = ord("_")  # an altar diagonally below-right of the hero
    colors[2, 2] = 7
    wc, wk = window_around_hero(chars, colors, 1, 0)
    assert wc.shape == (5, 5)  # clipped at the top and left edges, not empty
    assert ((wc == ord("_")) & (wk == 7)).sum() == 1
    assert (wk[1, 1] != colors[1, 1])  # hero cell blanked


def test_message_counter_counts_and_evicts_least_recent():
    counter = MessageCounter(max_keys=2)
    assert [counter.add(m) for m in (b"a", b"a", b"b", b"a")] == [1, 2, 1, 3]
    counter.add(b"c")  # evicts b (least recently seen)
    assert counter.add(b"b") == 1
    assert counter.add(b"a") == 1  # a was evicted by b's return


def test_blstats_scaling_extras_and_one_hot():
    raw = np.arange(27, dtype=np.int64) + 1
    out = np.zeros(35, np.float32)
    letters = np.array([ord(c) for c in "abcd"] + [0] * 51, np.uint8)
    classes = np.array([8, 8, 7, 12] + [0] * 51, np.uint8)
    inventory = InventoryCounts()
    inventory.update(letters, classes, frozenset([ord("a")]))
    assert inventory.new_items == 1  # b: a potion picked up later; c is food, d coins
    write_blstats(raw, 2, inventory, skill=3, out=out)
    assert np.isclose(out[0], 1 / 79) and np.isclose(out[20], 21 / 1000)
    assert out[12] == 0  # depth is hidden from the policy (§7.1)
    assert list(out[27:30]) == [2, 2, 1]
    assert list(out[30:]) == [0, 0, 0, 1, 0]


def test_observation_spec_shapes():
    spec = observation_spec(5)
    assert spec["blstats"][0] == (35,) and spec["message"][0] == (256,)


def test_caption_six_lines_from_a_state_pair():
    bl = np.zeros(27, np.int64)
    bl[[12, 13, 10, 11, 18, 21]] = [1, 0, 10, 12, 1, 1]
    prev = game_state(b"You kill the newt!", bl)
    bl2 = bl.copy()
    bl2[[12, 13, 10, 18, 21]] = [2, 5, 8, 2, 2]
    cur = game_state(b"You descend the stairs.", bl2)
    lines = caption_text(prev, cur).split("\n")
    assert len(lines) == 6
    assert "You kill the newt!" in lines[0] and "You descend the stairs." in lines[0]
    assert lines[1] == "The dungeon level went down from 1 to 2"
    assert lines[2] == "The gold went up from 0 to 5"
    assert lines[3] == "The HP went down from 10/12 to 8/12"
    assert lines[4] == "The experience level went up from 1 to 2"
    assert lines[5] == "The hunger state changed from Normal to Hungry"
    caption = make_caption(prev, cur)
    assert caption.depth_change == 1 and caption.message == "You descend the stairs."
