"""The durable, append-only SQLite preference store, including a real SIGKILL crash test."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from mmotif.contract import Caption, CaptionPair, Preference
from mmotif.rewards.store import PreferenceStore, pair_key


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
