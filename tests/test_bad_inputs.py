"""Bad files handed to the commands end in one clear line naming the file and the problem,
never a traceback: captions files, preference stores, a run folder that is a file, reward
models, and the inputs of eval and replay. (Config files: test_config_cli.)"""

from __future__ import annotations

import json

import pytest

from mmotif import cli


def run_cli(capsys, *argv):
    """(exit status, stderr) of `mmotif argv...` in this process."""
    try:
        rc = cli.main([str(a) for a in argv])
    except SystemExit as exit_:
        rc = exit_.code
    return rc, capsys.readouterr().err


def assert_one_clear_line(rc, err, *words):
    assert rc == 2, (rc, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert str(word) in lines[0], (word, lines[0])


def bad_file(tmp_path, kind: str, name: str):
    path = tmp_path / name
    if kind == "directory":
        path.mkdir()
    elif kind == "not utf-8":
        path.write_bytes(b'{"text": "\xe9\xff"}\n')
    elif kind == "garbage":
        path.write_bytes(b"\x00\x01garbage" * 300)
    return path  # kind "missing": nothing there


@pytest.mark.parametrize("kind, why", [("directory", "directory"), ("not utf-8", "UTF-8")])
def test_a_captions_file_that_cannot_be_read(tmp_path, capsys, kind, why):
    path = bad_file(tmp_path, kind, "captions.jsonl")
    rc, err = run_cli(capsys, "annotate", "--captions", path, "--store", tmp_path / "s.sqlite")
    assert_one_clear_line(rc, err, path, why)


def two_captions(tmp_path):
    path = tmp_path / "captions.jsonl"
    path.write_text("".join(json.dumps({"text": t, "message": t, "depth_change": 0}) + "\n" for t in ("a", "b")))
    return path


@pytest.mark.parametrize("command", ["annotate", "train-rewards"])
def test_a_corrupt_store(tmp_path, capsys, command):
    store = bad_file(tmp_path, "garbage", "preferences.sqlite")
    extra = ["--captions", two_captions(tmp_path)] if command == "annotate" else ["--out", tmp_path / "out"]
    rc, err = run_cli(capsys, command, "--store", store, *extra)
    assert_one_clear_line(rc, err, store, "damaged")


def test_run_with_a_corrupt_store_refuses_before_starting_ray(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    store = bad_file(run_dir, "garbage", "preferences.sqlite")
    rc, err = run_cli(capsys, "run", "--run-dir", run_dir, "--time-limit", 5)
    assert_one_clear_line(rc, err, store, "damaged")


def test_a_run_folder_that_is_a_file(tmp_path, capsys):
    path = tmp_path / "run"
    path.write_text("not a folder")
    rc, err = run_cli(capsys, "run", "--run-dir", path, "--time-limit", 5)
    assert_one_clear_line(rc, err, path, "not a folder")
    assert path.read_text() == "not a folder"


@pytest.mark.parametrize("manifest, why", [(None, "manifest.json"), ("{not json", "manifest.json"),
                                           ("[1, 2]", "manifest.json"), ('{"version": 1, "skills": 7}', "manifest.json"),
                                           ('{"version": 1, "skills": ["x"]}', "reward models are for skills")])
def test_malformed_reward_models_are_refused_before_starting_ray(tmp_path, capsys, manifest, why):
    folder = tmp_path / "v000001"
    folder.mkdir()
    if manifest is not None:
        (folder / "manifest.json").write_text(manifest)
    rc, err = run_cli(capsys, "run", "--run-dir", tmp_path / "run", "--time-limit", 5,
                      "--set", f"reward.models={folder}")
    assert_one_clear_line(rc, err, folder, why)


@pytest.mark.parametrize("kind, why", [("directory", "directory"), ("missing", "not found"),
                                       ("garbage", "not a replay recording")])
def test_replay_of_a_bad_recording(tmp_path, capsys, kind, why):
    path = bad_file(tmp_path, kind, "episode.npz")
    rc, err = run_cli(capsys, "replay", path)
    assert_one_clear_line(rc, err, path, why)


@pytest.mark.parametrize("kind, why", [("directory", "directory"), ("missing", "not found"),
                                       ("not utf-8", "UTF-8")])
def test_eval_with_a_bad_policy_file(tmp_path, capsys, kind, why):
    path = bad_file(tmp_path, kind, "policy.py")
    rc, err = run_cli(capsys, "eval", "--random-init", "--task", "gnomish", "--policy", path, "--episodes", 1)
    assert_one_clear_line(rc, err, path, why)


def test_eval_of_an_unknown_task(tmp_path, capsys):
    rc, err = run_cli(capsys, "eval", "--random-init", "--task", "nosuchtask", "--episodes", 1)
    assert_one_clear_line(rc, err, "nosuchtask", "known: gnomish")


@pytest.mark.parametrize("kind", ["directory", "missing", "file"])
def test_eval_of_a_bad_checkpoint(tmp_path, capsys, kind):
    path = tmp_path / "ckpt"
    if kind == "directory":
        path.mkdir()
    elif kind == "file":
        path.write_text("x")
    rc, err = run_cli(capsys, "eval", "--checkpoint", path, "--task", "gnomish", "--episodes", 1)
    assert_one_clear_line(rc, err, path, "no checkpoint")
