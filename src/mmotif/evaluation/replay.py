"""Episode replays: record the terminal of a game step by step, save it, render it.

* :class:`EpisodeRecorder` copies NLE's ``tty_chars`` / ``tty_colors`` (24x80) after every
  step, with the active skill and the action taken; :class:`Recording` is the result and
  saves to / loads from a compressed ``.npz``.
* :func:`render_gif` draws frames with a fixed-width bitmap font made from PIL's built-in
  bitmap font (6x11 pixels per cell) and the 16 NetHack colours, plus a status line (step,
  skill, action), and writes an animated GIF (palette mode: no dithering, small files).
* :func:`write_html` writes a self-contained HTML page (no network, no scripts from
  elsewhere) that plays the frames as coloured text, with play/pause, a slider and speed.

``mmotif replay RECORDING.npz`` (:func:`cmd_replay`; its arguments: `mmotif.cli`) writes both next to the recording
or into ``--out``.
"""

from __future__ import annotations

import html
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmotif.nethack import actions as A

__all__ = [
    "EpisodeRecorder",
    "PALETTE",
    "Recording",
    "cmd_replay",
    "frame_pixels",
    "render_gif",
    "write_html",
]

ROWS, COLS = 24, 80
# NetHack's 16 colours (CLR_BLACK .. CLR_WHITE); black glyphs are drawn dark blue-grey so
# they stay visible on the black background. Index 16 is the background.
PALETTE = np.array([
    (64, 64, 96), (170, 0, 0), (0, 170, 0), (170, 110, 0), (0, 0, 170), (170, 0, 170),
    (0, 170, 170), (170, 170, 170), (85, 85, 85), (255, 140, 0), (85, 255, 85),
    (255, 255, 85), (85, 85, 255), (255, 85, 255), (85, 255, 255), (255, 255, 255),
    (0, 0, 0),
], np.uint8)
BACKGROUND = 16
STATUS_COLOR = 7


# ---------------------------------------------------------------------------------------
# Recording
# ---------------------------------------------------------------------------------------
@dataclass
class Recording:
    """T frames of the terminal; frame t is the screen before action t (the last frame has
    no action: -1). `skills[t]` is the skill that chose action t."""

    chars: np.ndarray                     # (T, 24, 80) uint8
    colors: np.ndarray                    # (T, 24, 80) uint8, 0-15
    skills: np.ndarray                    # (T,) int16, -1 unknown
    actions: np.ndarray                   # (T,) int16, -1 none
    skill_names: tuple[str, ...] = ()
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.chars)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            path, chars=self.chars, colors=self.colors, skills=self.skills, actions=self.actions,
            skill_names=np.array(json.dumps(list(self.skill_names))),
            meta=np.array(json.dumps(self.meta, default=str)),
        )
        return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")

    @classmethod
    def load(cls, path: str | Path) -> Recording:
        with np.load(path, allow_pickle=False) as data:
            chars, colors = data["chars"], data["colors"]
            if chars.ndim != 3 or chars.shape[1:] != (ROWS, COLS) or colors.shape != chars.shape:
                raise ValueError(f"{path}: not a replay recording (chars {chars.shape}, colors {colors.shape})")
            return cls(chars.astype(np.uint8), colors.astype(np.uint8), data["skills"].astype(np.int16),
                       data["actions"].astype(np.int16), tuple(json.loads(str(data["skill_names"]))),
                       json.loads(str(data["meta"])))

    def label(self, t: int) -> str:
        skill = int(self.skills[t])
        action = int(self.actions[t])
        name = self.skill_names[skill] if 0 <= skill < len(self.skill_names) else "-"
        act = A.ACTION_NAMES[action] if 0 <= action < A.NUM_ACTIONS else "-"
        return f"step {t:>5}  skill {name:<10}  action {act}"


class EpisodeRecorder:
    """Collects frames of one episode (at most `max_frames`; later frames are dropped and
    counted in `meta['dropped_frames']`)."""

    def __init__(self, skill_names=(), max_frames: int = 10_000):
        self.skill_names = tuple(skill_names)
        self.max_frames = int(max_frames)
        self.reset()

    def reset(self) -> None:
        self._chars: list[np.ndarray] = []
        self._colors: list[np.ndarray] = []
        self._skills: list[int] = []
        self._actions: list[int] = []
        self.dropped = 0

    def frame(self, game, skill: int = -1) -> None:
        """Record the screen as it is now, with the skill about to act."""
        if len(self._chars) >= self.max_frames:
            self.dropped += 1
            return
        self._chars.append(np.array(game.tty_chars, np.uint8))
        self._colors.append(np.array(game.tty_colors, np.int16).clip(0, 15).astype(np.uint8))
        self._skills.append(int(skill))
        self._actions.append(-1)

    def action(self, action: int) -> None:
        """The action taken from the last recorded frame."""
        if self._actions and not self.dropped:
            self._actions[-1] = int(action)

    def finish(self, **meta) -> Recording:
        meta = dict(meta, dropped_frames=self.dropped)
        if not self._chars:
            empty = np.zeros((0, ROWS, COLS), np.uint8)
            return Recording(empty, empty.copy(), np.zeros(0, np.int16), np.zeros(0, np.int16),
                             self.skill_names, meta)
        return Recording(np.stack(self._chars), np.stack(self._colors),
                         np.array(self._skills, np.int16), np.array(self._actions, np.int16),
                         self.skill_names, meta)


# ---------------------------------------------------------------------------------------
# The bitmap font
# ---------------------------------------------------------------------------------------
_ATLAS: np.ndarray | None = None


def glyph_atlas() -> np.ndarray:
    """(256, cell_h, cell_w) bool: pixels of each byte in PIL's built-in bitmap font
    (printable ASCII; other bytes are blank)."""
    global _ATLAS
    if _ATLAS is None:
        from PIL import Image, ImageDraw, ImageFont

        load = getattr(ImageFont, "load_default_imagefont", None)
        font = load() if load is not None else ImageFont.load_default()
        boxes = [font.getbbox(chr(c)) for c in range(32, 127)]
        cell_w = max(b[2] for b in boxes)
        cell_h = max(b[3] for b in boxes)
        atlas = np.zeros((256, cell_h, cell_w), bool)
        for c in range(33, 127):
            img = Image.new("L", (cell_w, cell_h), 0)
            ImageDraw.Draw(img).text((0, 0), chr(c), fill=255, font=font)
            atlas[c] = np.asarray(img) > 127
        _ATLAS = atlas
    return _ATLAS


def cell_size() -> tuple[int, int]:
    """(height, width) in pixels of one terminal cell at scale 1."""
    atlas = glyph_atlas()
    return atlas.shape[1], atlas.shape[2]


def _text_row(text: str) -> tuple[np.ndarray, np.ndarray]:
    codes = np.frombuffer(text[:COLS].ljust(COLS).encode("ascii", "replace"), np.uint8)
    return codes[None, :], np.full((1, COLS), STATUS_COLOR, np.uint8)


def frame_pixels(chars: np.ndarray, colors: np.ndarray, status: str | None = None,
                 scale: int = 1) -> np.ndarray:
    """Palette indices (H, W) uint8 of one screen: glyph pixels take the cell's colour
    (0-15), everything else the background (16). `status` adds one text row below."""
    if status is not None:
        extra_c, extra_k = _text_row(status)
        chars = np.concatenate([chars, extra_c])
        colors = np.concatenate([colors, extra_k])
    atlas = glyph_atlas()
    rows, cols = chars.shape
    ch, cw = atlas.shape[1:]
    mask = atlas[chars]                                            # (rows, cols, ch, cw)
    idx = np.where(mask, (colors.astype(np.uint8) & 15)[:, :, None, None], BACKGROUND).astype(np.uint8)
    out = idx.transpose(0, 2, 1, 3).reshape(rows * ch, cols * cw)
    if scale > 1:
        out = out.repeat(scale, axis=0).repeat(scale, axis=1)
    return out


def _frame_indices(n: int, every: int, max_frames: int) -> list[int]:
    idx = list(range(0, n, max(1, every)))
    if n and idx[-1] != n - 1:
        idx.append(n - 1)                                          # always show the end
    if len(idx) > max_frames:
        step = len(idx) / max_frames
        idx = [idx[int(i * step)] for i in range(max_frames - 1)] + [idx[-1]]
    return idx


def render_gif(recording: Recording, path: str | Path, every: int = 1, max_frames: int = 1000,
               frame_ms: int = 80, scale: int = 1, status: bool = True) -> Path:
    """Write an animated GIF of `recording` (every `every`-th frame, at most `max_frames`,
    the last frame always included). Returns the path."""
    from PIL import Image

    if len(recording) == 0:
        raise ValueError("the recording has no frames")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    palette = PALETTE.flatten().tolist()
    palette += [0] * (768 - len(palette))
    images = []
    for t in _frame_indices(len(recording), every, max_frames):
        pixels = frame_pixels(recording.chars[t], recording.colors[t],
                              recording.label(t) if status else None, scale)
        img = Image.fromarray(pixels, mode="P")
        img.putpalette(palette)
        images.append(img)
    images[0].save(path, save_all=True, append_images=images[1:], duration=frame_ms, loop=0,
                   optimize=False, disposal=1)
    return path


# ---------------------------------------------------------------------------------------
# HTML player
# ---------------------------------------------------------------------------------------
_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ background:#111; color:#ccc; font-family:sans-serif; margin:1em; }}
pre {{ background:#000; font:14px/1.15 monospace; padding:6px; display:inline-block; margin:0; }}
#bar {{ margin:.5em 0; }} #bar input[type=range] {{ width:420px; vertical-align:middle; }}
{css}
</style></head><body>
<h3>{title}</h3>
<div id="bar"><button id="play">pause</button>
<input id="pos" type="range" min="0" max="0" value="0">
<span id="where"></span>
speed <select id="speed"><option value="250">slow</option><option value="80" selected>normal</option>
<option value="20">fast</option></select></div>
<pre id="screen"></pre>
<div id="label"></div>
<script>
const F = {frames};
const labels = {labels};
const scr = document.getElementById('screen'), pos = document.getElementById('pos');
const where = document.getElementById('where'), label = document.getElementById('label');
const play = document.getElementById('play'), speed = document.getElementById('speed');
pos.max = F.length - 1;
function esc(c) {{ return c === '<' ? '&lt;' : c === '>' ? '&gt;' : c === '&' ? '&amp;' : c; }}
function show(i) {{
  const f = F[i]; let out = '';
  for (let r = 0; r < f[0].length; r++) {{
    const line = f[0][r], col = f[1][r]; let cur = null;
    for (let c = 0; c < line.length; c++) {{
      const k = col[c];
      if (k !== cur) {{ if (cur !== null) out += '</span>'; out += '<span class="c' + k + '">'; cur = k; }}
      out += esc(line[c]);
    }}
    if (cur !== null) out += '</span>';
    out += '\\n';
  }}
  scr.innerHTML = out; pos.value = i; where.textContent = (i + 1) + ' / ' + F.length;
  label.textContent = labels[i];
}}
let i = 0, playing = true, timer = null;
function tick() {{ if (playing) {{ i = (i + 1) % F.length; show(i); }} timer = setTimeout(tick, +speed.value); }}
play.onclick = () => {{ playing = !playing; play.textContent = playing ? 'pause' : 'play'; }};
pos.oninput = () => {{ i = +pos.value; show(i); }};
show(0); timer = setTimeout(tick, +speed.value);
</script></body></html>
"""


def write_html(recording: Recording, path: str | Path, every: int = 1, max_frames: int = 500,
               title: str = "mmotif replay") -> Path:
    """A self-contained HTML player of the recording (coloured text, no external files)."""
    if len(recording) == 0:
        raise ValueError("the recording has no frames")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames, labels = [], []
    hexdigits = np.frombuffer(b"0123456789abcdef", np.uint8)
    for t in _frame_indices(len(recording), every, max_frames):
        chars = recording.chars[t].copy()
        chars[(chars < 32) | (chars > 126)] = 32
        rows = [bytes(r).decode("ascii").rstrip() for r in chars]
        cols = [bytes(hexdigits[recording.colors[t][r] & 15][: len(rows[r])]).decode()
                for r in range(ROWS)]
        frames.append([rows, cols])
        labels.append(recording.label(t))
    css = "\n".join(f".c{k:x} {{ color: rgb({r},{g},{b}); }}" for k, (r, g, b) in enumerate(PALETTE[:16]))
    text = _HTML.format(title=html.escape(title), css=css,
                        frames=json.dumps(frames, separators=(",", ":")).replace("</", "<\\/"),
                        labels=json.dumps(labels).replace("</", "<\\/"))
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------
def _load_recording(path: Path) -> Recording:
    """Recording.load, with every way a file can fail to be a recording as one ValueError line."""
    import zipfile

    if path.is_dir():
        raise ValueError(f"{path} is a directory, not a recording (.npz)")
    if not path.exists():
        raise ValueError(f"recording {path} not found")
    try:
        return Recording.load(path)
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as err:
        detail = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path} is not a replay recording ({detail}); expected an .npz from "
                         f"`mmotif eval --record`") from None


def cmd_replay(args) -> int:
    try:
        recording = _load_recording(Path(args.recording))
    except ValueError as err:
        print(f"mmotif replay: {err}", file=sys.stderr)
        return 2
    out = args.out or args.recording.parent
    stem = args.recording.stem
    gif = render_gif(recording, Path(out) / f"{stem}.gif", every=args.every, max_frames=args.max_frames,
                     frame_ms=args.frame_ms, scale=args.scale)
    print(f"replay: {len(recording)} recorded steps -> {gif}")
    if not args.no_html:
        page = write_html(recording, Path(out) / f"{stem}.html", every=args.every,
                          max_frames=min(args.max_frames, 500), title=f"mmotif replay: {stem}")
        print(f"replay: HTML player -> {page}")
    return 0
