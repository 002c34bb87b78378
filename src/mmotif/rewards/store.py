"""Durable preference store: one SQLite file (WAL mode), one row per label.

- A label is keyed by (skill, order-insensitive pair of caption texts). The key is the sha256
  of a length-prefixed encoding of (skill, texts), so two different pairs never share a key,
  whatever characters the texts hold. Appending a pair that is already stored (in either
  order) is a no-op, so annotators can resend a batch after a crash without creating
  duplicates; the first stored label wins, except that a real label replaces a stored LABEL_UNKNOWN (the
  LLM gave no usable answer): the UNKNOWN row is deleted and the label inserted as a new
  row, so it gets a new, larger id and incremental readers see it after their cursor.
- `append` writes a whole batch in ONE transaction: after a crash (even SIGKILL) or an
  SQLite error a batch is either entirely in the store or not at all. A label whose text
  cannot be stored at all (not encodable as UTF-8, e.g. a lone surrogate) is skipped,
  counted in `skipped_unencodable` and logged; the rest of its batch is stored.
- Rows are never updated; the only deletion is the replacement of an UNKNOWN row above. The
  integer `id` (SQLite rowid, AUTOINCREMENT) only grows, so `cursor()` +
  `iter_preferences(after_rowid=...)` resume an incremental read.
- Each row records its provenance: annotator backend and model, prompt version and a digest
  of the skill's preference text (`preference_digest`; reward training selects rows by it,
  `mmotif.rewards.provenance`).
- Files of older schema versions are migrated on open, in one transaction: version 1
  (NUL-joined keys) gets new keys; versions 1 and 2 (no digest column) get the column, empty
  ("not recorded") in their rows.
- A damaged file (not SQLite, or failing `PRAGMA quick_check` at open) raises
  :class:`StoreDamagedError`, which names the file and what to do.
- Plain SQLite, so `sqlite3 preferences.db 'select skill, label, count(*) from preferences
  group by 1, 2'` works from a shell.

This module is stdlib + contract only (no torch), so light processes can import it.
"""

from __future__ import annotations

import hashlib
import logging
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

log = logging.getLogger(__name__)

# 2: collision-free pair keys (sha256 of a length-prefixed encoding); 3: preference_digest column.
# Older files are migrated on open.
SCHEMA_VERSION = 3
_VALID_LABELS = (LABEL_FIRST, LABEL_SECOND, LABEL_TIE, LABEL_UNKNOWN)
_INTEGRITY_CHECKS = {"quick": "PRAGMA quick_check(5)", "full": "PRAGMA integrity_check(5)", "none": None}
# SQLite primary result codes that mean "this file is damaged" (extended codes share the low byte).
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26


class PreferenceStoreError(RuntimeError):
    """The preference store file cannot be opened or used."""


class StoreDamagedError(PreferenceStoreError):
    """The file is not an SQLite database, or SQLite finds it corrupt."""


def pair_key(skill: str, text_a: str, text_b: str) -> str:
    """Order-insensitive identity of a labelled pair for one skill (hex sha256).

    The hashed string is length-prefixed ("<len>:<skill><len>:<lower text><len>:<higher text>",
    lengths in code points), so it is decodable: no two (skill, texts) share it, whatever
    the texts contain. UTF-8 with surrogatepass is injective too and defined for every str
    (lone surrogates included).
    """
    lo, hi = sorted((text_a, text_b))
    blob = f"{len(skill)}:{skill}{len(lo)}:{lo}{len(hi)}:{hi}"
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


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
    preference_digest   TEXT    NOT NULL DEFAULT '',
    created_at          REAL    NOT NULL,
    stored_at           REAL    NOT NULL,
    UNIQUE (skill, pair_key)
);
CREATE INDEX IF NOT EXISTS preferences_skill_id ON preferences (skill, id);
"""

_COLUMNS = (
    "skill, pair_key, first_text, first_message, first_depth_change, second_text, "
    "second_message, second_depth_change, label, backend, model, prompt_version, preference_digest, "
    "created_at, stored_at"
)
_SELECT = (
    "SELECT id, skill, first_text, first_message, first_depth_change, second_text, second_message, "
    "second_depth_change, label, backend, model, prompt_version, preference_digest, created_at FROM preferences"
)


_STR_FIELDS = ("skill", "first_text", "first_message", "second_text", "second_message",
               "backend", "model", "prompt_version", "preference_digest")
_STR_INDEX = (0, 2, 3, 5, 6, 9, 10, 11, 12)  # positions of _STR_FIELDS in a row
_LABEL_INDEX = 8


def _row_of(pref: Preference, stored_at: float) -> tuple:
    if not isinstance(pref, Preference):
        raise TypeError(f"expected Preference, got {type(pref).__name__}")
    if pref.label not in _VALID_LABELS:
        raise ValueError(f"invalid label {pref.label!r} (expected one of {_VALID_LABELS})")
    p = pref.pair
    a, b = p.first, p.second
    row = (
        p.skill, pair_key(p.skill, a.text, b.text),
        a.text, a.message, int(a.depth_change),
        b.text, b.message, int(b.depth_change),
        int(pref.label), pref.backend, pref.model, pref.prompt_version, pref.preference_digest,
        float(pref.created_at), stored_at,
    )
    for name, i in zip(_STR_FIELDS, _STR_INDEX):
        if not isinstance(row[i], str):
            raise TypeError(f"preference field {name} must be str, got {type(row[i]).__name__}")
    return row


def _unencodable_field(row: tuple) -> str | None:
    """Name of the first text field SQLite cannot store (not encodable as UTF-8), else None."""
    for name, i in zip(_STR_FIELDS, _STR_INDEX):
        try:
            row[i].encode("utf-8")
        except UnicodeEncodeError:
            return name
    return None


def _pref_of(row: tuple) -> Preference:
    (_id, skill, at, am, ad, bt, bm, bd, label, backend, model, pv, digest, created) = row
    pair = CaptionPair(skill, Caption(at, am, int(ad)), Caption(bt, bm, int(bd)))
    return Preference(pair, int(label), backend, model, pv, float(created), preference_digest=digest)


def _is_damage(error: sqlite3.Error) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    text = str(error).lower()
    return "not a database" in text or "malformed" in text


def _damaged(path: Path, detail: str) -> StoreDamagedError:
    return StoreDamagedError(
        f"{path}: the preference store file is damaged ({detail}); the store wrote nothing to it. "
        f"Stop every process that uses it, then either move it aside to start an empty store "
        f"(mv '{path}' '{path}.damaged', and its '-wal'/'-shm' files if any), or try to salvage "
        f"its rows into a new file (sqlite3 '{path}' .recover | sqlite3 '{path}.recovered') "
        f"and use that file instead.")


class PreferenceStore:
    """SQLite preference store (append, plus UNKNOWN-to-label upgrades). Safe to share between
    threads of one process; several processes may open the same file (SQLite serialises
    writers, `busy_timeout`).

    `integrity_check` at open: "quick" (default; `PRAGMA quick_check` reads the whole file:
    0.18 s for 100k labels, a 94 MB file in the page cache), "full" (`PRAGMA integrity_check`,
    also checks indexes against rows: 0.5 s there) or "none" (1 ms). A damaged file raises
    StoreDamagedError, other failures to open PreferenceStoreError.
    """

    def __init__(self, path: str | os.PathLike, *, synchronous: str = "FULL",
                 busy_timeout_s: float = 30.0, integrity_check: str = "quick") -> None:
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError(f"synchronous must be FULL, NORMAL or EXTRA, got {synchronous!r}")
        if integrity_check not in _INTEGRITY_CHECKS:
            raise ValueError(f"integrity_check must be one of {sorted(_INTEGRITY_CHECKS)}, got {integrity_check!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self.skipped_unencodable = 0  # labels `append` could not store (text not UTF-8 encodable)
        try:
            # isolation_level=None: no implicit transactions; we issue BEGIN/COMMIT ourselves.
            self._conn = sqlite3.connect(str(self.path), timeout=busy_timeout_s,
                                         isolation_level=None, check_same_thread=False)
        except sqlite3.Error as error:
            raise PreferenceStoreError(f"{self.path}: cannot open the preference store: {error}") from error
        try:
            self._open(synchronous.upper(), _INTEGRITY_CHECKS[integrity_check])
        except BaseException as error:
            if self._conn.in_transaction:
                try:
                    self._conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            self._conn.close()
            if isinstance(error, sqlite3.Error):
                if _is_damage(error):
                    raise _damaged(self.path, f"SQLite: {error}") from error
                raise PreferenceStoreError(f"{self.path}: cannot open the preference store: {error}") from error
            raise

    def _open(self, synchronous: str, check_sql: str | None) -> None:
        conn = self._conn
        if check_sql is not None:  # before anything writes to the file
            problems = [r[0] for r in conn.execute(check_sql).fetchall()]
            if problems != ["ok"]:
                raise _damaged(self.path, f"{check_sql.split()[1].split('(')[0]}: " + "; ".join(map(str, problems)))
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise PreferenceStoreError(f"{self.path}: could not switch SQLite to WAL mode (got {mode!r})")
        # FULL in WAL mode: each commit is fsynced, so a committed batch survives power loss
        # too; NORMAL survives process crashes only.
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("BEGIN IMMEDIATE")
        existing = {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'").fetchall()}
        for stmt in filter(str.strip, _SCHEMA.split(";")):
            conn.execute(stmt)
        row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            if existing:
                raise PreferenceStoreError(
                    f"{self.path}: an SQLite database, but not a preference store (it has tables "
                    f"{', '.join(sorted(existing))} and no schema version); use another path")
            conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        else:
            version = int(row[0]) if str(row[0]).isdigit() else -1
            if version not in range(1, SCHEMA_VERSION + 1):
                raise PreferenceStoreError(f"{self.path}: preference store schema version {row[0]}, "
                                           f"this code reads versions 1 to {SCHEMA_VERSION}")
            if version == 1:
                self._migrate_from_v1(conn)
            if version < 3:
                self._add_digest_column(conn)
        conn.execute("COMMIT")

    def _migrate_from_v1(self, conn: sqlite3.Connection) -> None:
        """Version 1 keys joined skill and texts with NUL (two pairs could share a key, and the
        second was dropped): recompute every key, inside the caller's transaction."""
        t0 = time.perf_counter()
        rows = conn.execute("SELECT id, skill, first_text, second_text, label FROM preferences "
                            "ORDER BY id").fetchall()
        groups: dict[tuple[str, str], list[tuple[int, int]]] = {}  # (skill, key) -> [(id, label)]
        for rid, skill, a, b, label in rows:
            groups.setdefault((skill, pair_key(skill, a, b)), []).append((rid, label))
        new_keys: list[tuple[str, int]] = []
        drop: list[tuple[int]] = []
        for (_skill, key), members in groups.items():
            # One pair under two v1 keys cannot come from this module; if a hand-edited file
            # has it, keep the first real label (else the first row), as `append` would.
            winner = next((m for m in members if m[1] != LABEL_UNKNOWN), members[0])
            new_keys.append((key, winner[0]))
            drop.extend((rid,) for rid, _ in members if rid != winner[0])
        conn.executemany("DELETE FROM preferences WHERE id=?", drop)
        # Two passes, so no intermediate state can trip UNIQUE (skill, pair_key).
        conn.execute("UPDATE preferences SET pair_key = 'v1-migration-' || id")
        conn.executemany("UPDATE preferences SET pair_key=? WHERE id=?", new_keys)
        conn.execute("UPDATE meta SET value='2' WHERE key='schema_version'")
        log.info("%s: migrated %d labels from schema version 1 to 2 in %.2f s%s", self.path, len(rows),
                 time.perf_counter() - t0, f" ({len(drop)} duplicate rows dropped)" if drop else "")

    def _add_digest_column(self, conn: sqlite3.Connection) -> None:
        """Versions 1 and 2 recorded no preference digest: the column is added, "" (not
        recorded) in every existing row, inside the caller's transaction."""
        conn.execute("ALTER TABLE preferences ADD COLUMN preference_digest TEXT NOT NULL DEFAULT ''")
        conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),))
        log.info("%s: added the preference_digest column (schema version %d); existing rows record none",
                 self.path, SCHEMA_VERSION)

    # ---------------------------------------------------------------- writing
    def append(self, preferences: Iterable[Preference]) -> int:
        """Store a batch of labels atomically; returns how many were new or upgraded.

        A pair already stored (either order) is skipped, unless it is stored as LABEL_UNKNOWN
        and this batch has a real label for it: then the label replaces the UNKNOWN row. Within
        the batch, a pair's first real label wins over its UNKNOWNs. A label whose texts cannot
        be encoded is skipped (counted in `skipped_unencodable`, logged). Invalid labels or
        types raise before anything is written; any error while writing rolls the whole batch
        back.
        """
        now = time.time()
        batch: dict[tuple[str, str], tuple] = {}
        skipped: list[tuple[tuple, str]] = []
        for p in preferences:
            row = _row_of(p, now)  # validate everything before writing
            bad = _unencodable_field(row)
            if bad is not None:
                skipped.append((row, bad))
                continue
            k = (row[0], row[1])
            held = batch.get(k)
            if held is None or (held[_LABEL_INDEX] == LABEL_UNKNOWN and row[_LABEL_INDEX] != LABEL_UNKNOWN):
                batch[k] = row  # a dict keeps the first occurrence's position
        if skipped:
            with self._lock:
                self.skipped_unencodable += len(skipped)
            row, field = skipped[0]
            log.warning("%s: skipped %d label(s) whose text cannot be stored (not encodable as UTF-8); "
                        "first: skill %r, %s %r", self.path, len(skipped), row[0], field,
                        row[_STR_INDEX[_STR_FIELDS.index(field)]][:120])
        if not batch:
            return 0
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                todo = [row for row in batch.values() if self._wanted(conn, row)]
                if todo:
                    self._write_rows(conn, todo)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        return len(todo)

    @staticmethod
    def _wanted(conn: sqlite3.Connection, row: tuple) -> bool:
        """Does `row` add something: its pair is absent, or stored as UNKNOWN and row is real."""
        stored = conn.execute("SELECT label FROM preferences WHERE skill=? AND pair_key=?",
                              (row[0], row[1])).fetchone()
        return stored is None or (stored[0] == LABEL_UNKNOWN and row[_LABEL_INDEX] != LABEL_UNKNOWN)

    def _write_rows(self, conn: sqlite3.Connection, rows: Sequence[tuple]) -> None:
        """Write rows that `_wanted` accepted, inside the caller's open transaction (a seam for
        crash tests): a stored UNKNOWN of the same pair is deleted, then the row inserted."""
        conn.executemany("DELETE FROM preferences WHERE skill=? AND pair_key=? AND label=?",
                         [(r[0], r[1], LABEL_UNKNOWN) for r in rows if r[_LABEL_INDEX] != LABEL_UNKNOWN])
        conn.executemany(f"INSERT INTO preferences ({_COLUMNS}) VALUES ({', '.join('?' * 15)})", rows)

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

    def snapshot(self, dest: str | os.PathLike) -> None:
        """A consistent copy of the store at `dest` (SQLite's online backup), safe while the
        store is in use: what `paths.storage` uploads instead of the live file and its WAL."""
        with self._lock:
            target = sqlite3.connect(str(dest))
            try:
                self._conn.backup(target)
            finally:
                target.close()

    def cursor(self) -> int:
        """Largest row id stored so far (0 when empty): pass it as `after_rowid` to resume."""
        with self._lock:
            return self._conn.execute("SELECT COALESCE(MAX(id), 0) FROM preferences").fetchone()[0]

    def has_pair(self, skill: str, text_a: str, text_b: str) -> bool:
        """Is a real label stored for this pair? (False when stored only as LABEL_UNKNOWN, so a
        sampler may ask again.)"""
        with self._lock:
            return self._conn.execute(
                "SELECT 1 FROM preferences WHERE skill=? AND pair_key=? AND label != ?",
                (skill, pair_key(skill, text_a, text_b), LABEL_UNKNOWN)).fetchone() is not None

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
            self._closed = True

    @property
    def is_open(self) -> bool:
        return not getattr(self, "_closed", False)

    def __enter__(self) -> "PreferenceStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PreferenceStore({str(self.path)!r})"
