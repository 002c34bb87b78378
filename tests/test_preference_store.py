"""The durable, append-only SQLite preference store, including a real SIGKILL crash test."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from mmotif.contract import LABEL_FIRST, LABEL_SECOND, LABEL_TIE, LABEL_UNKNOWN, Caption, CaptionPair, Preference
from mmotif.rewards.store import (
    SCHEMA_VERSION,
    PreferenceStore,
    PreferenceStoreError,
    StoreDamagedError,
    pair_key,
)


def pref(skill: str, a: str, b: str, label: int = 0, batch: str = "v0", depth: int = 0) -> Preference:
    return Preference(CaptionPair(skill, Caption(a, f"msg {a}", depth), Caption(b, f"msg {b}", 0)),
                      label, "test-backend", "test-model", batch, 1234.5)


def test_append_read_back_and_provenance(tmp_path):
    store = PreferenceStore(tmp_path / "p.db")
    p = pref("descender", "a", "b", label=1, depth=1)
    assert store.append([p, pref("descender", "c", "d", 2), pref("merchant", "a", "b", 3)]) == 3
    assert store.count() == 3 and store.count("descender") == 2 and store.count("nobody") == 0
    assert store.counts_by_skill() == {"descender": 2, "merchant": 1}
    got = store.preferences("descender")
    assert got[0] == p  # every field round-trips, including captions and provenance
    assert [x.label for x in got] == [1, 2]
    assert store.skills() == ["descender", "merchant"]
    store.close()
    # durable: a new connection sees the same rows
    with PreferenceStore(tmp_path / "p.db") as again:
        assert again.count() == 3 and again.preferences("descender")[0] == p


def test_idempotent_and_order_insensitive(tmp_path):
    store = PreferenceStore(tmp_path / "p.db")
    assert store.append([pref("s", "a", "b", 0)]) == 1
    assert store.append([pref("s", "a", "b", 0)]) == 0  # same label again: no-op
    assert store.append([pref("s", "b", "a", 1)]) == 0  # same pair reversed: no-op, first label wins
    assert store.append([pref("t", "a", "b", 0)]) == 1  # other skill: a different pair
    assert store.append([pref("s", "x", "y"), pref("s", "y", "x"), pref("s", "a", "b")]) == 1
    assert store.count() == 3 and store.preferences("s")[0].label == 0
    assert store.has_pair("s", "b", "a") and store.has_pair("s", "x", "y")
    assert not store.has_pair("s", "a", "y")
    assert pair_key("s", "a", "b") == pair_key("s", "b", "a") != pair_key("t", "a", "b")


def test_cursor_and_incremental_reads(tmp_path):
    store = PreferenceStore(tmp_path / "p.db")
    assert store.cursor() == 0
    store.append([pref("s", f"a{i}", f"b{i}") for i in range(5)])
    c1 = store.cursor()
    store.append([pref("s", f"c{i}", f"d{i}") for i in range(3)] + [pref("t", "e", "f")])
    new = store.preferences(after_rowid=c1)
    assert [p.pair.first.text for p in new] == ["c0", "c1", "c2", "e"]
    assert [p.pair.first.text for p in store.iter_preferences("s", after_rowid=c1)] == ["c0", "c1", "c2"]
    rows = list(store.iter_rows(after_rowid=0, chunk=2))  # chunked reads keep order
    assert [r for r, _ in rows] == sorted(r for r, _ in rows) and len(rows) == 9
    assert store.cursor() == rows[-1][0]


def test_batch_is_all_or_nothing(tmp_path):
    store = PreferenceStore(tmp_path / "p.db")
    store.append([pref("s", "keep", "me")])
    with pytest.raises(ValueError, match="invalid label"):
        store.append([pref("s", "a", "b"), pref("s", "c", "d", label=7)])

    class Failing(PreferenceStore):
        def _write_rows(self, conn, rows):
            super()._write_rows(conn, rows[: len(rows) // 2])
            raise RuntimeError("disk on fire")

    failing = Failing(tmp_path / "p.db")
    with pytest.raises(RuntimeError, match="disk on fire"):
        failing.append([pref("s", f"x{i}", "y") for i in range(10)])
    assert failing.count() == 1 and store.count() == 1
    assert store.append([pref("s", "x0", "y")]) == 1  # the store still works, x0 was not half-stored


def test_sqlite_error_mid_batch_rolls_back_the_whole_batch(tmp_path):
    """A real SQLite failure inside the transaction (SQLITE_FULL: the file may not grow), not an
    injected exception: nothing of the batch stays, and the store works afterwards."""
    store = PreferenceStore(tmp_path / "p.db")
    store.append([pref("s", "keep", "me")])
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count={pages + 3}")  # room for a few rows only
    big = [pref("s", "a" * 900 + str(i), "b" * 900 + str(i)) for i in range(100)]
    with pytest.raises(sqlite3.OperationalError, match="full"):
        store.append(big)
    assert store.count() == 1 and not store.has_pair("s", big[0].pair.first.text, big[0].pair.second.text)
    store._conn.execute("PRAGMA max_page_count=1073741823")
    assert store.append(big) == 100 and store.count() == 101


def test_unencodable_caption_skips_that_label_not_the_batch(tmp_path, caplog):
    """A lone surrogate cannot be stored as UTF-8: the old code rolled back the whole batch
    (UnicodeEncodeError); now that one label is skipped, counted and logged."""
    store = PreferenceStore(tmp_path / "p.db")
    bad_text = pref("s", "bad \ud800 text", "b")
    bad_message = Preference(CaptionPair("s", Caption("c", "msg \udfff", 0), Caption("d", "m", 0)),
                             0, "test-backend", "test-model", "v0", 1.0)
    batch = [pref("s", "x", "y"), bad_text, pref("s", "z", "w"), bad_message, pref("t", "x", "y")]
    with caplog.at_level(logging.WARNING, logger="mmotif.rewards.store"):
        assert store.append(batch) == 3
    assert store.count() == 3 and store.skipped_unencodable == 2
    assert "skipped 2 label(s)" in caplog.text and "first_text" in caplog.text
    assert not store.has_pair("s", "bad \ud800 text", "b")  # a key exists for any str, no error
    assert [p.pair.first.text for p in store.preferences()] == ["x", "z", "x"]
    assert store.append([bad_text]) == 0 and store.skipped_unencodable == 3
    # invalid labels and wrong types are still programming errors: the whole batch fails
    with pytest.raises(ValueError, match="invalid label"):
        store.append([pref("s", "p", "q"), pref("s", "r", "t", label=9)])
    with pytest.raises(TypeError, match="message must be str"):
        store.append([Preference(CaptionPair("s", Caption("p", None, 0), Caption("q", "m", 0)),
                                 0, "b", "m", "v", 1.0)])
    assert store.count() == 3


# ------------------------------------------------------------------ pair keys
def test_pair_keys_of_different_pairs_cannot_collide(tmp_path):
    """The v1 key joined skill and texts with NUL: ("a\\0b", "c") and ("a", "b\\0c") shared a
    key and the second label was silently dropped."""
    assert _v1_key("s", "a\x00b", "c") == _v1_key("s", "a", "b\x00c")  # the old collision
    assert pair_key("s", "a\x00b", "c") != pair_key("s", "a", "b\x00c")
    assert pair_key("s\x00a", "b", "c") != pair_key("s", "a\x00b", "c")
    assert pair_key("1:a", "", "") != pair_key("1", ":a", "")  # length prefixes are not fooled
    assert pair_key("s", "1:x", "2:yy") != pair_key("s", "1:x2:y", "y")
    store = PreferenceStore(tmp_path / "p.db")
    assert store.append([pref("s", "a\x00b", "c", 1), pref("s", "a", "b\x00c", 2)]) == 2
    assert [(p.pair.first.text, p.label) for p in store.preferences()] == [("a\x00b", 1), ("a", 2)]
    assert store.has_pair("s", "c", "a\x00b") and store.has_pair("s", "b\x00c", "a")


def _v1_key(skill: str, text_a: str, text_b: str) -> str:
    """pair_key of schema version 1, copied from the old code."""
    lo, hi = sorted((text_a, text_b))
    return hashlib.sha256(f"{skill}\x00{lo}\x00{hi}".encode("utf-8", "surrogatepass")).hexdigest()


_V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE preferences (
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
CREATE INDEX preferences_skill_id ON preferences (skill, id);
INSERT INTO meta (key, value) VALUES ('schema_version', '1');
"""


def _write_v1_store(path, rows):
    """A store file as the version-1 code wrote it: its schema, its keys, WAL mode."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(_V1_SCHEMA)
    conn.executemany(
        "INSERT INTO preferences (skill, pair_key, first_text, first_message, first_depth_change, "
        "second_text, second_message, second_depth_change, label, backend, model, prompt_version, "
        "created_at, stored_at) VALUES (?, ?, ?, ?, 0, ?, ?, 0, ?, 'old-backend', 'old-model', 'v1', 1.0, 2.0)",
        [(s, _v1_key(s, a, b), a, f"msg {a}", b, f"msg {b}", label) for s, a, b, label in rows])
    conn.commit()
    conn.close()


def test_version_1_store_is_migrated_on_open(tmp_path):
    path = tmp_path / "old.db"
    rows = [("s", "a\x00b", "c", 1), ("s", "x", "y", 0), ("t", "x", "y", LABEL_UNKNOWN), ("s", "q", "p", 2)]
    _write_v1_store(path, rows)
    with PreferenceStore(path) as store:
        assert store.count() == 4 and store.cursor() == 4  # every row and id kept
        assert [(p.pair.skill, p.pair.first.text, p.label) for p in store.preferences()] == \
            [(s, a, label) for s, a, _, label in rows]
        assert store.has_pair("s", "c", "a\x00b") and store.has_pair("s", "y", "x")
        assert not store.has_pair("t", "x", "y")  # stored only as UNKNOWN
        assert store.append([pref("s", "y", "x"), pref("s", "p", "q")]) == 0  # resends: no-ops
        # the pair that collided with ("a\0b", "c") under the v1 key can be stored now
        assert store.append([pref("s", "a", "b\x00c", 2)]) == 1
        assert store.append([pref("t", "y", "x", LABEL_FIRST)]) == 1  # upgrade of the UNKNOWN
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    for skill, a, b in conn.execute("SELECT skill, first_text, second_text FROM preferences").fetchall():
        key = conn.execute("SELECT pair_key FROM preferences WHERE skill=? AND first_text=? AND second_text=?",
                           (skill, a, b)).fetchone()[0]
        assert key == pair_key(skill, a, b)
    conn.close()
    with PreferenceStore(path) as again:  # a second open finds the current version: nothing to migrate
        assert again.count() == 5 and again.preferences("t")[0].label == LABEL_FIRST


def test_version_2_store_opens_with_no_preference_digest_and_new_rows_record_theirs(tmp_path):
    path = tmp_path / "v2.db"
    _write_v1_store(path, [("s", "x", "y", 0)])  # version 2 had version 1's table, with new keys
    conn = sqlite3.connect(path)
    conn.execute("UPDATE preferences SET pair_key=?", (pair_key("s", "x", "y"),))
    conn.execute("UPDATE meta SET value='2' WHERE key='schema_version'")
    conn.commit()
    conn.close()
    with PreferenceStore(path) as store:
        assert [(p.prompt_version, p.preference_digest) for p in store.preferences()] == [("v1", "")]
        assert store.has_pair("s", "y", "x")
        new = dataclasses.replace(pref("s", "a", "b"), preference_digest="0123456789ab")
        assert store.append([new]) == 1 and store.preferences()[-1] == new
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == "3" == str(SCHEMA_VERSION)
    conn.close()


def test_newer_schema_version_is_refused(tmp_path):
    path = tmp_path / "p.db"
    PreferenceStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(PreferenceStoreError, match="schema version 99"):
        PreferenceStore(path)


# ------------------------------------------------------------------ UNKNOWN labels
def test_real_label_replaces_a_stored_unknown_and_only_an_unknown(tmp_path):
    """The first stored label used to win even when it was UNKNOWN (no usable LLM answer),
    which blocked that pair forever."""
    store = PreferenceStore(tmp_path / "p.db")
    assert store.append([pref("s", "a", "b", LABEL_UNKNOWN)]) == 1
    assert not store.has_pair("s", "a", "b")  # the sampler may ask again
    assert store.append([pref("s", "b", "a", LABEL_UNKNOWN)]) == 0  # UNKNOWN over UNKNOWN: no-op
    cursor = store.cursor()
    assert store.append([pref("s", "b", "a", LABEL_SECOND), pref("s", "c", "d")]) == 2  # upgraded + new
    assert store.has_pair("s", "a", "b") and store.count() == 2
    [upgraded] = [p for p in store.preferences() if p.pair.first.text == "b"]
    assert upgraded.label == LABEL_SECOND
    # the label is a new row after the cursor, so incremental readers see it
    assert [p.pair.first.text for p in store.preferences(after_rowid=cursor)] == ["b", "c"]
    assert store.append([pref("s", "a", "b", LABEL_FIRST)]) == 0  # a real label is never replaced
    assert store.append([pref("s", "a", "b", LABEL_UNKNOWN)]) == 0
    assert store.preferences("s")[0].label == LABEL_SECOND
    # within one batch the first real label wins over UNKNOWNs, whatever the order
    assert store.append([pref("s", "e", "f", LABEL_UNKNOWN), pref("s", "f", "e", LABEL_TIE),
                         pref("s", "e", "f", LABEL_FIRST), pref("s", "g", "h", LABEL_TIE),
                         pref("s", "g", "h", LABEL_UNKNOWN)]) == 2
    labels = {p.pair.first.text: p.label for p in store.preferences()}
    assert labels["f"] == LABEL_TIE and labels["g"] == LABEL_TIE
    assert store.tie_shares() == {"s": (2, 4)}
    store.close()


# ------------------------------------------------------------------ damaged files
def test_file_that_is_not_a_database_gives_one_clear_error(tmp_path):
    path = tmp_path / "p.db"
    path.write_bytes(b"this is a text file, not SQLite\n" * 200)
    with pytest.raises(StoreDamagedError) as error:
        PreferenceStore(path)
    message = str(error.value)
    assert str(path) in message and "not a database" in message and "mv " in message and ".recover" in message
    assert path.read_bytes() == b"this is a text file, not SQLite\n" * 200  # left as it was


def test_corrupt_database_is_caught_by_quick_check_at_open(tmp_path):
    path = tmp_path / "p.db"
    with PreferenceStore(path) as store:
        store.append([pref("s", "a" * 900 + str(i), "b" * 900 + str(i)) for i in range(300)])
        page_size = store._conn.execute("PRAGMA page_size").fetchone()[0]
        pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    data = bytearray(path.read_bytes())  # closed: the WAL is checkpointed into the file
    middle = (pages // 2) * page_size
    data[middle:middle + page_size] = b"\xff" * page_size  # one table page overwritten
    path.write_bytes(bytes(data))
    with pytest.raises(StoreDamagedError, match="damaged") as error:
        PreferenceStore(path)
    assert str(path) in str(error.value)
    with PreferenceStore(path, integrity_check="none") as unchecked:  # opt-out: opens, fails later
        with pytest.raises(sqlite3.DatabaseError):
            unchecked.preferences()


def test_other_sqlite_database_is_not_taken_over(tmp_path):
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE accounts (name TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(PreferenceStoreError, match="not a preference store"):
        PreferenceStore(path)
    conn = sqlite3.connect(path)
    assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")] == ["accounts"]
    conn.close()


def test_wal_mode_and_sqlite_cli(tmp_path):
    path = tmp_path / "p.db"
    store = PreferenceStore(path)
    store.append([pref("s", "a", "b", 1), pref("s", "c", "d", 0)])
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    cli = shutil.which("sqlite3")
    if cli is None:
        pytest.skip("sqlite3 CLI not installed")
    out = subprocess.run([cli, str(path), "SELECT skill, label, first_text FROM preferences ORDER BY id"],
                         capture_output=True, text=True, check=True).stdout
    assert out.split() == ["s|1|a", "s|0|c"]


# ------------------------------------------------------------------ crash safety
CHILD = textwrap.dedent("""
    import sys, time
    from mmotif.contract import Caption, CaptionPair, Preference
    from mmotif.rewards.store import PreferenceStore

    path, mode, size, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

    class Store(PreferenceStore):
        def _write_rows(self, conn, rows):
            if mode == "mid" and self.batch == start + 2:
                super()._write_rows(conn, rows[: len(rows) // 2])
                print("MID", self.batch, flush=True)
                time.sleep(60)  # killed here, half the batch written, not committed
            super()._write_rows(conn, rows)

    def batch(b):
        out = []
        for i in range(size):
            a = Caption(f"b{b} i{i} first", f"m{i % 7}", 0)
            c = Caption(f"b{b} i{i} second", f"m{i % 5}", 1)
            out.append(Preference(CaptionPair("s", a, c), i % 3, "crash", "test", f"batch-{b}", time.time()))
        if b > 0:  # resend one label of the previous batch: must stay a no-op
            out[0] = Preference(CaptionPair("s", Caption(f"b{b-1} i1 second", "m1", 1),
                                            Caption(f"b{b-1} i1 first", "m1", 0)), 0, "crash", "test",
                                f"batch-{b}", time.time())
        return out

    store = Store(path)
    store.batch = start
    print("READY", flush=True)
    while True:
        n = store.append(batch(store.batch))
        print("COMMITTED", store.batch, n, flush=True)
        store.batch += 1
""")


def run_child(tmp_path, path, mode, size, start, stop_when):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.Popen([sys.executable, str(script), str(path), mode, str(size), str(start)],
                            stdout=subprocess.PIPE, text=True, bufsize=1)
    committed = []
    deadline = time.monotonic() + 30
    try:
        for line in proc.stdout:
            parts = line.split()
            if parts[0] == "COMMITTED":
                committed.append(int(parts[1]))
            if stop_when(parts, committed):
                break
            assert time.monotonic() < deadline, "child too slow"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    return committed


def check_store(path, size):
    """Every batch is complete or absent, batches are a prefix, no duplicates; returns batches."""
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    per_batch = dict(conn.execute(
        "SELECT prompt_version, COUNT(*) FROM preferences GROUP BY prompt_version").fetchall())
    n_rows = conn.execute("SELECT COUNT(*) FROM preferences").fetchone()[0]
    n_keys = conn.execute("SELECT COUNT(DISTINCT skill || pair_key) FROM preferences").fetchone()[0]
    n_texts = conn.execute("SELECT COUNT(DISTINCT first_text || '|' || second_text) FROM preferences").fetchone()[0]
    conn.close()
    batches = sorted(int(k.split("-")[1]) for k in per_batch)
    assert batches == list(range(len(batches))), batches
    for b in batches:  # batch 0 has `size` new rows, later batches size - 1 (one resent label)
        assert per_batch[f"batch-{b}"] == (size if b == 0 else size - 1), (b, per_batch)
    assert n_rows == n_keys == n_texts
    return batches


@pytest.mark.parametrize("mode", ["mid", "loop"])
def test_sigkill_mid_append_leaves_only_whole_batches(tmp_path, mode):
    path = tmp_path / "crash.db"
    size = 400

    if mode == "mid":  # deterministic: killed inside the transaction of batch 2
        def stop(parts, committed):
            return parts[0] == "MID"
    else:  # a tight append loop killed at an arbitrary moment
        t_start = []

        def stop(parts, committed):
            if len(committed) == 3 and not t_start:
                t_start.append(time.monotonic())
                time.sleep(0.013)
            return len(committed) >= 3

    committed = run_child(tmp_path, path, mode, size, 0, stop)
    batches = check_store(path, size)
    assert set(committed) <= set(batches)  # everything acknowledged is there
    if mode == "mid":
        assert batches == [0, 1]  # the half-written batch 2 is entirely absent

    # resume: a fresh process appends from where the store stands, resends are no-ops
    with PreferenceStore(path) as store:
        cursor = store.cursor()
        n_before = store.count()
    nxt = batches[-1] + 1
    committed2 = run_child(tmp_path, path, "loop", size, nxt,
                           lambda parts, c: len(c) >= 2)
    assert committed2[:2] == [nxt, nxt + 1]
    batches2 = check_store(path, size)
    assert batches2[: nxt + 2] == list(range(nxt + 2))
    with PreferenceStore(path) as store:
        assert store.count() >= n_before + 2 * (size - 1)
        new = store.preferences("s", after_rowid=cursor)
        assert new[0].prompt_version == f"batch-{nxt}"


def test_tie_shares_count_ties_among_known_labels_per_skill(tmp_path):
    from mmotif.contract import LABEL_TIE, LABEL_UNKNOWN
    from mmotif.runtime.progress import ties_text

    with PreferenceStore(tmp_path / "p.sqlite") as store:
        store.append([pref("descender", "a", "b", LABEL_TIE), pref("descender", "a", "c", LABEL_TIE),
                      pref("descender", "b", "c", 0), pref("descender", "c", "d", LABEL_UNKNOWN),
                      pref("merchant", "a", "b", 1)])
        shares = store.tie_shares()
    assert shares == {"descender": (2, 3), "merchant": (0, 1)}
    assert ties_text(shares) == " (ties 50%, most desc 67%)"
    assert ties_text({}) == ""
