"""paths.storage: a run folder's durable copy (fsspec), what it holds, in which order, and a
run resumed from it on a head that lost its disk."""

import json
import shutil
import threading
import time

import fsspec
import pytest

from mmotif.config import ConfigError, load_config
from mmotif.contract import Caption, CaptionPair, Preference
from mmotif.rewards.store import PreferenceStore
from mmotif.storage import LATEST, RunStorage, StorageError


def a_run_folder(root, store_rows=3):
    """A run folder as the driver leaves it: two checkpoints, LATEST, metrics, an open store."""
    for step in ("step_000000001024", "step_000000002048"):
        (root / "checkpoints" / step).mkdir(parents=True)
        for name in ("learner.pt", "driver.json", "config.yaml"):
            (root / "checkpoints" / step / name).write_text(f"{step}/{name}")
    (root / "checkpoints" / "LATEST").write_text("step_000000002048")
    (root / "metrics.jsonl").write_text('{"step": 1}\n')
    store = PreferenceStore(root / "preferences.sqlite")
    store.append([Preference(CaptionPair("discoverer", Caption(f"a{i}", f"m{i}", 0), Caption(f"b{i}", "", 0)),
                             i % 2, "rules", "test", "v", 0.0) for i in range(store_rows)])
    return store


class RecordingFS:
    """The order of uploads, seen through a wrapped fsspec filesystem."""

    def __init__(self, fs):
        self.fs, self.puts = fs, []

    def put_file(self, local, remote):
        self.puts.append(remote)
        return self.fs.put_file(local, remote)

    def pipe_file(self, remote, data):
        self.puts.append(remote)
        return self.fs.pipe_file(remote, data)

    def __getattr__(self, name):
        return getattr(self.fs, name)


def test_copy_holds_the_folder_and_a_consistent_store_and_latest_comes_last(tmp_path):
    run = tmp_path / "run"
    store = a_run_folder(run)
    storage = RunStorage(f"file://{tmp_path}/remote", run)
    storage.fs = RecordingFS(storage.fs)
    sent = storage.upload(store=store)
    remote = tmp_path / "remote"
    assert sent["files"] == 9  # 2 x 3 checkpoint files, LATEST, metrics, the store snapshot
    assert storage.fs.puts[-1].endswith(LATEST), "LATEST must follow the files it names"
    assert storage.fs.puts[-2].endswith("preferences.sqlite"), "the labels go before the pointer"
    assert not (remote / "preferences.sqlite-wal").exists()
    with PreferenceStore(remote / "preferences.sqlite") as copy:  # readable on its own, all rows
        assert copy.count() == 3
    store.close()


def test_second_upload_sends_only_what_changed_and_drops_pruned_checkpoints(tmp_path):
    run = tmp_path / "run"
    store = a_run_folder(run)
    storage = RunStorage(str(tmp_path / "remote"), run)  # a plain folder works as well
    storage.upload(store=store)
    shutil.rmtree(run / "checkpoints" / "step_000000001024")  # pruned (KEEP) locally
    (run / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    storage.fs = RecordingFS(storage.fs)
    storage.upload()
    assert [p.rsplit("/", 1)[1] for p in storage.fs.puts] == ["metrics.jsonl"]
    assert not (tmp_path / "remote" / "checkpoints" / "step_000000001024").exists()
    assert (tmp_path / "remote" / "checkpoints" / "step_000000002048" / "learner.pt").is_file()
    store.close()


def test_an_upload_sends_the_latest_of_its_listing_not_a_checkpoint_written_meanwhile(tmp_path):
    """The driver prepares an upload, then goes on training while a worker thread sends it: a
    checkpoint written in between must not be named by the copy's LATEST before it is there."""
    run = tmp_path / "run"
    store = a_run_folder(run)
    storage = RunStorage(str(tmp_path / "remote"), run)
    plan = storage.prepare(store=store)
    (run / "checkpoints" / "step_000000003072").mkdir()
    (run / "checkpoints" / "step_000000003072" / "learner.pt").write_text("new")
    (run / "checkpoints" / "LATEST").write_text("step_000000003072")
    storage.send(plan)
    remote = tmp_path / "remote" / "checkpoints"
    assert (remote / "LATEST").read_text() == "step_000000002048"
    assert not (remote / "step_000000003072").exists()
    storage.upload()  # the next checkpoint's upload catches up
    assert (remote / "LATEST").read_text() == "step_000000003072"
    assert (remote / "step_000000003072" / "learner.pt").read_text() == "new"
    store.close()


def test_download_restores_the_folder_byte_for_byte(tmp_path):
    run = tmp_path / "run"
    store = a_run_folder(run)
    uri = f"memory://mmotif-test-{tmp_path.name}/run"
    RunStorage(uri, run).upload(store=store)
    store.close()
    fresh = tmp_path / "fresh"
    assert RunStorage(uri, fresh).download() == 9
    for path in run.rglob("*"):
        rel = path.relative_to(run)
        if path.is_file() and not rel.name.startswith("preferences.sqlite"):
            assert (fresh / rel).read_bytes() == path.read_bytes(), rel
    with PreferenceStore(fresh / "preferences.sqlite") as copy:
        assert copy.count() == 3
    with pytest.raises(StorageError, match="holds no checkpoint"):
        RunStorage(f"memory://mmotif-empty-{tmp_path.name}", tmp_path / "other").download()
    fsspec.filesystem("memory").rm(uri.split("://")[1], recursive=True)


def test_a_copy_inside_its_own_run_folder_is_refused(tmp_path):
    with pytest.raises(StorageError, match="inside the run folder"):
        RunStorage(f"file://{tmp_path}/run/backup", tmp_path / "run")


@pytest.mark.parametrize("uri, says", [
    ("s4://bucket/run", "unknown storage protocol 's4'"),
    ("gs://bucket/run", "mmotif\\[gcs\\]"),
])
def test_a_storage_that_cannot_open_here_is_a_config_error(tmp_path, uri, says):
    if uri.startswith("gs://"):
        try:
            import gcsfs  # noqa: F401
            pytest.skip("gcsfs is installed here")
        except ImportError:
            pass
    with pytest.raises(ConfigError, match="paths.storage") as err:
        load_config(preset_name="local", overrides={"paths": {"storage": uri}})
    assert err.match(says)


@pytest.mark.slow
def test_run_resumed_from_its_copy_on_a_head_that_lost_its_disk(tmp_path):
    import ray

    from mmotif.runtime.driver import Driver
    from mmotif.runtime.resume import load_checkpoint

    remote = tmp_path / "bucket"
    cfg = load_config(preset_name="local", overrides={
        "annotator": {"backend": "rules", "num_annotators": 1},
        "actors": {"num_actors": 1, "envs_per_actor": 8},
        "learner": {"batch_size": 256, "rollout": 32},
        "evaluation": {"tasks": []},
        "checkpoint_every_steps": 2048, "time_limit_s": 20,
        "paths": {"run_dir": str(tmp_path / "head" / "run"), "storage": f"file://{remote}"},
    })
    def run_until(driver, done):
        """The run, stopped (Driver.stop) once `done()` holds; the time limit is the backstop."""
        def watch():
            while not done() and not driver._stop_requested:
                time.sleep(0.5)
            driver.stop()
        threading.Thread(target=watch, daemon=True).start()
        return driver.run()

    ray.init(num_cpus=4, include_dashboard=False, logging_level="ERROR")
    try:
        head = Driver(cfg)
        first = run_until(head, lambda: head.counters.labels > 0 and head.counters.env_steps >= 4096)
        assert first["storage_failures"] == 0 and first["labels"] > 0
        saved_learner, saved_driver = load_checkpoint(remote, cfg)
        with PreferenceStore(remote / "preferences.sqlite") as copy:
            assert copy.cursor() >= saved_driver["store_cursor"] > 0, "the copy lost labels"
        shutil.rmtree(tmp_path / "head")  # the head node is gone with its disk
        new_head = Driver(cfg, resume=True)
        second = run_until(new_head, lambda: new_head.counters.env_steps >= saved_learner["env_steps"] + 1024)
    finally:
        ray.shutdown()
    assert second["env_steps"] > saved_learner["env_steps"]
    rows = [json.loads(line) for line in (tmp_path / "head" / "run" / "metrics.jsonl").read_text().splitlines()]
    resumed = [r for r in rows if "policy_version" in r and r["step"] > saved_driver["env_steps"]]
    assert resumed and min(r["policy_version"] for r in resumed) > saved_learner["policy_version"]
    assert load_checkpoint(remote, cfg)[0]["env_steps"] == second["env_steps"], "the copy has the last checkpoint"
