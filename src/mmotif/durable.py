"""Files on disk: writes that survive a crash, reads that fail in one line.

Checkpoints and reward-model versions are written into a temporary folder with these,
then renamed into place, so a reader sees a whole folder or none. Text files a user hands
in (configs, captions) are read with `read_text`, whose every failure is one line.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_durably(path: Path, data: bytes) -> None:
    """Write `data` to `path` and fsync it."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """fsync a folder, so the entries created or renamed in it are on disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_text(path: Path, what: str, kind: str, error: type[Exception], encoding: str = "utf-8") -> str:
    """The text of the user's `what` file (e.g. "config file"), expected to be `kind` (e.g. "a
    YAML file"); a missing, unreadable or non-UTF-8 file raises `error` with one line."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise error(f"{what} {path} is a directory, not {kind}") from None
    except OSError as err:
        raise error(f"{what} {path} cannot be read ({err.strerror or err})") from None
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as err:
        raise error(f"{what} {path} is not UTF-8 text (bad byte at offset {err.start})") from None
