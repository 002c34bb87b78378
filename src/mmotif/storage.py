"""A run folder's durable copy in `paths.storage`: a folder or a URI that fsspec opens.

The driver writes the run folder on its own node (the head) as always; with `paths.storage`
set (`s3://bucket/runs/x`, `gs://...`, `file:///mnt/nfs/x`, any fsspec protocol whose
package is installed) it mirrors that folder there after every checkpoint and once more
after the report, and `--resume` on a head that has no checkpoint of the run fetches the
copy first. This is Ray Train's `storage_path` model: local staging, then persistence, so a
lost head node loses no more than the steps since the last checkpoint.

fsspec rather than `pyarrow.fs`: fsspec is already installed with torch, and its s3fs/gcsfs
backends are the ones the clouds' Python tooling uses (`pip install mmotif[s3]` / `[gcs]`).

What a copy holds and in which order:
- every file of the run folder that changed since the last upload (size or mtime), except
  the live SQLite preference store, which goes as a consistent snapshot (SQLite's online
  backup) so that a copy never holds a half-written WAL;
- `checkpoints/LATEST` last, so that a reader of the copy never sees it naming a folder not
  fully uploaded; checkpoints pruned locally are then deleted from the copy.

The driver runs uploads in one worker thread (`prepare` in the driver's thread, `send` in
the worker), one at a time: a slow bucket delays the copy, never the training loop; a checkpoint
that comes while an upload still runs is sent by the next one.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import fsspec
from fsspec.core import url_to_fs

log = logging.getLogger("mmotif")

STORE_FILES = ("preferences.sqlite", "preferences.sqlite-wal", "preferences.sqlite-shm")
LATEST = "checkpoints/LATEST"


class StorageError(RuntimeError):
    """`paths.storage` cannot be opened, read or written; the message says what to do."""


def check_storage_uri(uri: str) -> str:
    """The URI back if fsspec can open its protocol here, else a ValueError saying why."""
    protocol = uri.split("://", 1)[0] if "://" in uri else "file"
    try:
        fsspec.get_filesystem_class(protocol)
    except ValueError:
        raise ValueError(f"unknown storage protocol {protocol!r} in {uri!r}; use a folder or a URI "
                         f"such as s3://bucket/path, gs://bucket/path, file:///path") from None
    except ImportError as err:
        extra = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}.get(protocol)
        hint = f" (pip install 'mmotif[{extra}]')" if extra else ""
        raise ValueError(f"storage {uri!r} needs a package that is not installed{hint}: {err}") from None
    return uri


@dataclass
class UploadPlan:
    files: dict[str, tuple[int, int]]  # relative path -> (size, mtime_ns) when listed
    latest: bytes | None  # checkpoints/LATEST's content when listed
    store_snapshot: Path | None
    scratch: str | None = None  # temporary folder of the snapshot, removed after sending


class RunStorage:
    """Mirrors one run folder to `uri` and fetches it back."""

    def __init__(self, uri: str, run_dir: Path):
        check_storage_uri(uri)
        self.uri, self.run_dir = uri, Path(run_dir)
        try:
            self.fs, self.root = url_to_fs(uri)
        except Exception as err:  # credentials, a bad bucket name: the backend's own words
            raise StorageError(f"paths.storage {uri!r}: cannot open: {type(err).__name__}: {err}") from err
        protocols = (self.fs.protocol,) if isinstance(self.fs.protocol, str) else tuple(self.fs.protocol)
        if "file" in protocols:
            inside = Path(self.root).resolve()
            if inside == self.run_dir.resolve() or self.run_dir.resolve() in inside.parents:
                raise StorageError(f"paths.storage {uri!r} is inside the run folder {self.run_dir}; "
                                   f"a copy must live elsewhere (another disk, a bucket)")
        self._sent: dict[str, tuple[int, int]] = {}  # relative path -> (size, mtime_ns) uploaded
        self._sent_latest: bytes | None = None

    def _remote(self, rel: str) -> str:
        return str(PurePosixPath(self.root) / rel)

    def _local_files(self) -> list[str]:
        files = []
        for path in self.run_dir.rglob("*"):
            rel = path.relative_to(self.run_dir).as_posix()
            if path.is_file() and rel not in STORE_FILES and not any(p.startswith(".tmp-") for p in path.parts):
                files.append(rel)
        return sorted(files)

    def _put(self, local: Path, rel: str) -> int:
        remote = self._remote(rel)
        self.fs.makedirs(str(PurePosixPath(remote).parent), exist_ok=True)
        self.fs.put_file(str(local), remote)
        return local.stat().st_size

    def upload(self, store=None) -> dict:
        """Send what changed, now; `store`: the open PreferenceStore to snapshot (None: leave it)."""
        return self.send(self.prepare(store))

    def prepare(self, store=None) -> UploadPlan:
        """What the next upload sends, fixed now in the caller's thread: the changed files, the
        store's snapshot and LATEST's content, so that an upload running beside the training
        loop never sends a LATEST naming a checkpoint written after its listing."""
        changed = {}
        for rel in self._local_files():
            try:
                st = (self.run_dir / rel).stat()
            except FileNotFoundError:  # pruned meanwhile
                continue
            if rel != LATEST and self._sent.get(rel) != (st.st_size, st.st_mtime_ns):
                changed[rel] = (st.st_size, st.st_mtime_ns)
        latest = self.run_dir / LATEST
        plan = UploadPlan(changed, latest.read_bytes() if latest.is_file() else None, None)
        if store is not None:
            plan.scratch = tempfile.mkdtemp(prefix="mmotif-store-")
            plan.store_snapshot = Path(plan.scratch) / STORE_FILES[0]
            store.snapshot(plan.store_snapshot)
        return plan

    def send(self, plan: UploadPlan) -> dict:
        """Upload a prepared plan: files, then the store snapshot, then LATEST; then delete the
        checkpoints pruned locally from the copy. Safe to run in a worker thread."""
        start, sent, size = time.monotonic(), 0, 0
        try:
            for rel, stamp in plan.files.items():
                try:
                    size += self._put(self.run_dir / rel, rel)
                except FileNotFoundError:  # a checkpoint pruned while this upload ran
                    continue
                self._sent[rel] = stamp
                sent += 1
            if plan.store_snapshot is not None:  # the labels before the pointer to their checkpoint
                size += self._put(plan.store_snapshot, STORE_FILES[0])
                sent += 1
            if plan.latest is not None and self._sent_latest != plan.latest:
                self.fs.makedirs(self._remote("checkpoints"), exist_ok=True)
                self.fs.pipe_file(self._remote(LATEST), plan.latest)
                self._sent_latest = plan.latest
                size, sent = size + len(plan.latest), sent + 1
            self._delete_pruned_checkpoints()
        finally:
            if plan.scratch is not None:
                shutil.rmtree(plan.scratch, ignore_errors=True)
        return {"files": sent, "bytes": size, "seconds": round(time.monotonic() - start, 3)}

    def _delete_pruned_checkpoints(self) -> None:
        remote_root = self._remote("checkpoints")
        if not self.fs.exists(remote_root):
            return
        local = {p.name for p in (self.run_dir / "checkpoints").iterdir()} if (self.run_dir / "checkpoints").is_dir() else set()
        for entry in self.fs.ls(remote_root, detail=False):
            name = PurePosixPath(entry).name
            if name not in local:
                self.fs.rm(entry, recursive=True)
                for rel in [r for r in self._sent if r.startswith(f"checkpoints/{name}/")]:
                    del self._sent[rel]

    def has_copy(self) -> bool:
        return self.fs.exists(self._remote(LATEST)) or self.fs.exists(self._remote("checkpoints"))

    def download(self) -> int:
        """Fetch the whole copy into the run folder (a fresh head resuming). Returns files."""
        if not self.has_copy():
            raise StorageError(f"paths.storage {self.uri!r} holds no checkpoint of a run to resume")
        count = 0
        for remote in self.fs.find(self.root):
            rel = PurePosixPath(remote).relative_to(PurePosixPath(self.root))
            local = self.run_dir / rel
            local.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(remote, str(local))
            st = local.stat()
            self._sent[rel.as_posix()] = (st.st_size, st.st_mtime_ns)
            count += 1
        log.info("fetched %d files of the run from %s", count, self.uri)
        return count
