"""Replays: record a real NLE episode, save/load it, render a GIF and an HTML player."""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image

from mmotif.nethack import actions as A
from mmotif.nethack.game import NetHackGame
from mmotif.cli import add_replay_arguments
from mmotif.evaluation.replay import (
    PALETTE, EpisodeRecorder, Recording, cell_size, cmd_replay, frame_pixels, render_gif,
)

MOVES = ["E", "E", "S", "W", "N", "SEARCH", "RUN_E", "RUN_W", "WAIT", "NE", "SW"]


def record_episode(steps: int = 30) -> Recording:
    game = NetHackGame()
    game.reset()
    rec = EpisodeRecorder(skill_names=("discoverer", "descender"))
    rec.frame(game, 0)
    for i in range(steps):
        action = A.INDEX[MOVES[i % len(MOVES)]]
        rec.action(action)
        if game.step(action):
            break
        rec.frame(game, i % 2)
    game.close()
    return rec.finish(task="test")


def test_recording_round_trips_through_npz(tmp_path):
    rec = record_episode(20)
    path = rec.save(tmp_path / "ep.npz")
    back = Recording.load(path)
    assert len(back) == len(rec) == 21
    assert np.array_equal(back.chars, rec.chars) and np.array_equal(back.colors, rec.colors)
    assert back.actions[0] == A.INDEX["E"] and back.actions[-1] == -1
    assert back.skill_names == ("discoverer", "descender") and back.meta["task"] == "test"
    assert "skill discoverer" in back.label(0) and "action E" in back.label(0)


def test_gif_shows_the_map(tmp_path):
    rec = record_episode(30)
    gif = render_gif(rec, tmp_path / "ep.gif")
    ch, cw = cell_size()
    with Image.open(gif) as img:
        assert img.n_frames == len(rec)
        img.seek(0)
        rgb = np.asarray(img.convert("RGB"))
    assert rgb.shape == ((24 + 1) * ch, 80 * cw, 3)                # + the status row
    chars, colors = rec.chars[0], rec.colors[0]
    # the hero: its cell has pixels in the hero's colour, and only glyph pixels are lit
    rows, cols = np.nonzero(chars[1:22] == ord("@"))
    row, col = int(rows[0]) + 1, int(cols[0])
    cell = rgb[row * ch:(row + 1) * ch, col * cw:(col + 1) * cw].reshape(-1, 3)
    lit = (cell != 0).any(axis=1)
    assert 5 < lit.sum() < ch * cw
    assert (cell[lit] == PALETTE[colors[row, col] & 15]).all()
    # a wall row ('-' cells) has drawn pixels; an empty row has none
    wall_row = next(r for r in range(1, 22) if (chars[r] == ord("-")).sum() >= 3)
    band = rgb[wall_row * ch:(wall_row + 1) * ch]
    wall_cols = np.nonzero(chars[wall_row] == ord("-"))[0]
    assert all((band[:, c * cw:(c + 1) * cw] != 0).any() for c in wall_cols)
    empty_row = next(r for r in range(1, 22) if (chars[r] == ord(" ")).all())
    assert not rgb[empty_row * ch:(empty_row + 1) * ch].any()
    # the frames change as the hero moves
    with Image.open(gif) as img:
        img.seek(len(rec) - 1)
        last = np.asarray(img.convert("RGB"))
    assert not np.array_equal(last, rgb)


def test_frame_pixels_paint_cells_in_their_colours():
    chars = np.full((2, 3), ord(" "), np.uint8)
    chars[0, 1] = ord("#")
    colors = np.full((2, 3), 7, np.uint8)
    colors[0, 1] = 1
    px = frame_pixels(chars, colors)
    ch, cw = cell_size()
    assert px.shape == (2 * ch, 3 * cw)
    assert set(np.unique(px[:ch, cw:2 * cw])) == {1, 16}
    assert (px[:ch, :cw] == 16).all() and (px[ch:] == 16).all()
    assert frame_pixels(chars, colors, scale=2).shape == (4 * ch, 6 * cw)


def test_cmd_replay_writes_gif_and_html(tmp_path, capsys):
    rec = record_episode(12)                 # 13 frames unless the game ended early (rare)
    path = rec.save(tmp_path / "ep.npz")
    parser = argparse.ArgumentParser()
    add_replay_arguments(parser)
    assert cmd_replay(parser.parse_args([str(path), "--out", str(tmp_path / "out"), "--every", "2"])) == 0
    gif, page = tmp_path / "out" / "ep.gif", tmp_path / "out" / "ep.html"
    with Image.open(gif) as img:
        assert img.n_frames == len(range(0, len(rec), 2)) + (len(rec) % 2 == 0)  # 0, 2, ..., last
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and "const F = [[" in text and "http" not in text
    assert "ep.gif" in capsys.readouterr().out
