"""Durable, append-only preference store: one SQLite file (WAL mode), one row per label.

- A label is keyed by (skill, order-insensitive pair of caption texts): appending a pair that
  is already stored (in either order, with any label) is a no-op, so annotators can resend a
  batch after a crash without creating duplicates. The first stored label wins.
- `append` writes a whole batch in ONE transaction: after a crash (even SIGKILL) a batch is
  either entirely in the store or not at all.
- Rows are never updated or deleted; the integer `id` (SQLite rowid) only grows, so
  `cursor()` + `iter_preferences(after_rowid=...)` resume an incremental read.
- Plain SQLite, so `sqlite3 preferences.db 'select skill, label, count(*) from preferences
  group by 1, 2'` works from a shell.

This module is stdlib + contract only (no torch), so light processes can import it.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from mmotif.contract import (
    LABEL_FIRST,
    LABEL_SECOND,
    LABEL_TIE,
    LABEL_UNKNOWN,
    Caption,
    CaptionPair,
    Preference,
)

SCHEMA_VERSION = 1
_VALID_LABELS = (LABEL_FIRST, LABEL_SECOND, LABEL_TIE, LABEL_UNKNOWN)


def pair_key(skill: str, text_a: str, text_b: str) -> str:
    """Order-insensitive identity of a labelled pair for one skill (hex sha256)."""
    lo, hi = sorted((text_a, text_b))
    return hashlib.sha256(f"{skill}\x00{lo}\x00{hi}".encode("utf-8", "surrogatepass")).hexdigest()


def preference_key(pref: Preference) -> str:
    return pair_key(pref.pair.skill, pref.pair.first.text, pref.pair.second.text)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS preferences (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    skill               TEXT    NOT NULL,
    pair_key            TEXT    NOT NULL,
    first_text          TEXT    NOT NULL,
    first_message       TEXT    NOT NULL,
    first_depth_change  INTEGER NOT NULL,
    second_text         TEXT    NOT NULL,
    second_message      TEXT    NOT NULL,
    second_depth_change INTEGER NOT NULL,
    label               INTEGER NOT NULL CHECK (label IN (0, 1, 2, 3)),
    backend             TEXT    NOT NULL,
    model               TEXT    NOT NULL,
    prompt_version      TEXT    NOT NULL,
    created_at          REAL    NOT NULL,
    stored_at           REAL    NOT NULL,
    UNIQUE (skill, pair_key)
);
CREATE INDEX IF NOT EXISTS preferences_skill_id ON preferences (skill, id);
"""

_COLUMNS = (
    "skill, pair_key, first_text, first_message, first_depth_change, second_text, "
    "second_message, second_depth_change, label, backend, model, prompt_version, created_at, stored_at"
)
_SELECT = (
    "SELECT id, skill, first_text, first_message, first_depth_change, second_text, second_message, "
    "second_depth_change, label, backend, model, prompt_version, created_at FROM preferences"
)


def _row_of(pref: Preference, stored_at: float) -> tuple:
    if not isinstance(pref, Preference):
        raise TypeError(f"expected Preference, got {type(pref).__name__}")
    if pref.label not in _VALID_LABELS:
        raise ValueError(f"invalid label {pref.label!r} (expected one of {_VALID_LABELS})")
    p = pref.pair
    a, b = p.first, p.second
    return (
        p.skill, pair_key(p.skill, a.text, b.text),
        a.text, a.message, int(a.depth_change),
        b.text, b.message, int(b.depth_change),
        int(pref.label), pref.backend, pref.model, pref.prompt_version, float(pref.created_at),
        stored_at,
    )


def _pref_of(row: tuple) -> Preference:
    (_id, skill, at, am, ad, bt, bm, bd, label, backend, model, pv, created) = row
    pair = CaptionPair(skill, Caption(at, am, int(ad)), Caption(bt, bm, int(bd)))
    return Preference(pair, int(label), backend, model, pv, float(created))


class PreferenceStore:
    """Append-only SQLite preference store. Safe to share between threads of one process;
    several processes may open the same file (SQLite serialises writers, `busy_timeout`)."""

    def __init__(self, path: str | os.PathLike, *, synchronous: str = "FULL",
                 busy_timeout_s: float = 30.0) -> None:
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError(f"synchronous must be FULL, NORMAL or EXTRA, got {synchronous!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        # isolation_level=None: no implicit transactions; we issue BEGIN/COMMIT ourselves.
        self._conn = sqlite3.connect(str(self.path), timeout=busy_timeout_s,
                                     isolation_level=None, check_same_thread=False)
        try:
            mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise RuntimeError(f"{self.path}: could not switch SQLite to WAL mode (got {mode!r})")
            # FULL in WAL mode: each commit is fsynced, so a committed batch survives power loss
            # too; NORMAL survives process crashes only.
            self._conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
            self._conn.execute("BEGIN IMMEDIATE")
            for stmt in filter(str.strip, _SCHEMA.split(";")):
                self._conn.execute(stmt)
            row = self._conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                self._conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)",
                                   (str(SCHEMA_VERSION),))
            elif int(row[0]) != SCHEMA_VERSION:
                raise RuntimeError(f"{self.path}: preference store schema version {row[0]}, "
                                   f"this code reads version {SCHEMA_VERSION}")
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            self._conn.close()
            raise

    # ---------------------------------------------------------------- writing
    def append(self, preferences: Iterable[Preference]) -> int:
        """Store a batch of labels atomically; returns how many were new.

        Pairs already stored (either order, any label) and repeats inside the batch are
        skipped. Either the whole batch is committed or nothing is (an error rolls back).
        """
        now = time.time()
        rows = [_row_of(p, now) for p in preferences]  # validate everything before writing
        if not rows:
            return 0
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                before = conn.total_changes
                self._write_rows(conn, rows)
                n_new = conn.total_changes - before
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        return n_new

    def _write_rows(self, conn: sqlite3.Connection, rows: Sequence[tuple]) -> None:
        """Insert rows inside the caller's open transaction (a seam for crash tests)."""
        conn.executemany(
            f"INSERT OR IGNORE INTO preferences ({_COLUMNS}) VALUES ({', '.join('?' * 14)})", rows)

    # ---------------------------------------------------------------- reading
    def count(self, skill: str | None = None) -> int:
        with self._lock:
            if skill is None:
                return self._conn.execute("SELECT COUNT(*) FROM preferences").fetchone()[0]
            return self._conn.execute("SELECT COUNT(*) FROM preferences WHERE skill=?",
                                      (skill,)).fetchone()[0]

    def counts_by_skill(self) -> dict[str, int]:
        with self._lock:
            return dict(self._conn.execute(
                "SELECT skill, COUNT(*) FROM preferences GROUP BY skill ORDER BY skill").fetchall())

    def tie_shares(self) -> dict[str, tuple[int, int]]:
        """(ties, known labels) per skill; LABEL_UNKNOWN rows are neither."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT skill, SUM(label = ?), SUM(label != ?) FROM preferences GROUP BY skill ORDER BY skill",
                (LABEL_TIE, LABEL_UNKNOWN)).fetchall()
        return {skill: (int(ties or 0), int(known or 0)) for skill, ties, known in rows}

    def cursor(self) -> int:
        """Largest row id stored so far (0 when empty): pass it as `after_rowid` to resume."""
        with self._lock:
            return self._conn.execute("SELECT COALESCE(MAX(id), 0) FROM preferences").fetchone()[0]

    def has_pair(self, skill: str, text_a: str, text_b: str) -> bool:
        with self._lock:
            return self._conn.execute(
                "SELECT 1 FROM preferences WHERE skill=? AND pair_key=?",
                (skill, pair_key(skill, text_a, text_b))).fetchone() is not None

    def iter_rows(self, skill: str | None = None, after_rowid: int = 0, *,
                  chunk: int = 2000) -> Iterator[tuple[int, Preference]]:
        """(row id, Preference) in insertion order, for rows with id > after_rowid.

        Reads in chunks (no long-lived read transaction), so writers are never blocked and
        rows committed while iterating may or may not be seen; use the last id to resume.
        """
        last = int(after_rowid)
        while True:
            with self._lock:
                if skill is None:
                    rows = self._conn.execute(f"{_SELECT} WHERE id > ? ORDER BY id LIMIT ?",
                                              (last, chunk)).fetchall()
                else:
                    rows = self._conn.execute(
                        f"{_SELECT} WHERE skill = ? AND id > ? ORDER BY id LIMIT ?",
                        (skill, last, chunk)).fetchall()
            if not rows:
                return
            for row in rows:
                yield int(row[0]), _pref_of(row)
            last = int(rows[-1][0])

    def iter_preferences(self, skill: str | None = None, after_rowid: int = 0) -> Iterator[Preference]:
        """Preferences (of one skill, or all) stored after `after_rowid`, in insertion order."""
        for _, pref in self.iter_rows(skill, after_rowid):
            yield pref

    def preferences(self, skill: str | None = None, after_rowid: int = 0) -> list[Preference]:
        return list(self.iter_preferences(skill, after_rowid))

    def skills(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._conn.execute(
                "SELECT DISTINCT skill FROM preferences ORDER BY skill").fetchall()]

    # ---------------------------------------------------------------- lifecycle
    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "PreferenceStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PreferenceStore({str(self.path)!r})"
