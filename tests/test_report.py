"""The run report: what it says (labels, intervals, provenance, links) and how it looks in a
real browser (headless Chromium; skipped where none is installed)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from mmotif.contract import LABEL_FIRST, LABEL_TIE, LABEL_UNKNOWN
from mmotif.evaluation.intervals import wilson_interval
from mmotif.evaluation.report import write_report

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def test_wilson_interval_matches_known_values():
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)


def _store(path: Path, labels: dict[str, list[int]]) -> None:
    """A minimal table with the columns the report reads (the real store has more)."""
    import sqlite3

    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE preferences (id INTEGER PRIMARY KEY, skill TEXT, label INTEGER)")
    conn.executemany("INSERT INTO preferences (skill, label) VALUES (?, ?)",
                     [(skill, label) for skill, values in labels.items() for label in values])
    conn.commit()
    conn.close()


def fake_run(run_dir: Path) -> dict:
    """A run folder with metrics, labels, a config and one evaluated task; returns its summary."""
    rows = [{"step": s, "learner_loss/loss": 1.0 / s, "learner_loss/entropy": 2.0, "learner_loss/value_loss": 0.1,
             "policy_lag": 1, "env_steps_per_second": 3000.0 + s % 7, "labels_total/descender": s // 10,
             "informative_labels_total": s // 20, "tie_share/descender": 0.25, "tie_share": 0.25,
             "dedup_hit_rate": 0.5, "reward_probe_margin/descender": 0.4, "skill_reward/descender": 0.01}
            for s in range(1000, 20001, 1000)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run_dir / "tensorboard").mkdir()
    (run_dir / "config.yaml").write_text("name: local\nlearner:\n  lr: 0.0003\n")
    _store(run_dir / "preferences.sqlite", {"descender": [LABEL_FIRST] * 6 + [LABEL_TIE] * 3 + [LABEL_UNKNOWN],
                                            "merchant": [LABEL_TIE] * 4})
    folder = run_dir / "eval" / "gnomish"
    folder.mkdir(parents=True)
    results = {"summary": {"episodes": 10, "unit": "rate", "proxy": {"mean": 0.5, "se": 0.16},
                           "exact": {"mean": 0.0, "se": 0.0}, "paper": {"mean": 0.47}}}
    (folder / "results.json").write_text(json.dumps(results))
    return {"status": "finished", "env_steps": 20000, "wall_s": 61.2, "env_steps_per_s": 326.8,
            "episodes": 40, "labels": 14, "reward_model_versions": [1, 2],
            "evaluation": {"gnomish": {"proxy": 0.5, "exact": 0.0, "paper": 0.47, "episodes": 10,
                                       "files": {"json": str(folder / "results.json")}}}}


def test_report_explains_labels_intervals_provenance_and_links(tmp_path):
    index = write_report(tmp_path, fake_run(tmp_path))
    page = index.read_text()
    # informative vs tie labels per skill, from the store: descender 9 known, 3 ties, 1 unknown
    assert "<td>descender</td><td>10</td><td>6</td><td>3</td><td>33%</td>" in page
    assert "<td>merchant</td><td>4</td><td>0</td><td>4</td><td>100%</td>" in page
    assert "0.50 [0.24, 0.76]" in page and "0.00 [0.00, 0.28]" in page  # Wilson, n = 10
    assert 'href="../tensorboard"' in page and "tensorboard --logdir" in page
    assert "name: local" in page and "<th>preset</th><td>local</td>" in page  # the config
    for name in ("torch", "ray", "nle", "transformers", "mmotif", "git revision", "machine: cpus", "machine: ram"):
        assert f"<th>{name}</th>" in page
    for figure in ("learner.png", "tie_share.png", "annotation.png", "throughput.png"):
        assert (tmp_path / "report" / figure).stat().st_size > 1000
    assert "## Labels" in (tmp_path / "report" / "summary.md").read_text()


def test_report_of_an_empty_run_still_renders(tmp_path):
    page = write_report(tmp_path, {"status": "stopped by Ctrl-C"}).read_text()
    assert "No labels" in page and "No evaluation" in page


@pytest.mark.skipif(shutil.which("chromium") is None and shutil.which("chromium-browser") is None,
                    reason="no Chromium (apt-get install chromium)")
def test_report_renders_in_headless_chromium(tmp_path):
    from report_screenshot import screenshot

    index = write_report(tmp_path, fake_run(tmp_path))
    png = screenshot(index, tmp_path / "report.png", width=1200, height=2000)
    from PIL import Image

    with Image.open(png) as image:
        assert image.size == (1200, 2000)
        # not a blank page: the plots and tables put many distinct colours on it
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 50
