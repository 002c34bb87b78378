"""Shared fixtures: one local Ray instance per test module that asks for it; and, under
pytest-xdist, a lock that runs each `exclusive` test alone."""

import fcntl
import gc
import hashlib
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import ray


@contextmanager
def _suite_lock(config, exclusive: bool):
    """A readers-writer lock shared by the xdist workers of one run: every test holds it
    shared, an `exclusive` one alone, so a test with clusters of its own and wall-clock
    deadlines never shares the two cores with another test. No-op without xdist."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        yield
        return
    tag = hashlib.sha1(str(config.rootpath).encode()).hexdigest()[:10]
    base = Path(tempfile.gettempdir()) / f"mmotif-pytest-{tag}"
    # the turnstile makes it fair: a waiting exclusive test holds it, so no new shared one
    # slips in ahead of it
    with open(f"{base}.turnstile", "a") as turnstile, open(f"{base}.lock", "a") as lock:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        if exclusive:
            fcntl.flock(lock, fcntl.LOCK_EX)
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        else:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
            fcntl.flock(lock, fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Setup, call and teardown of each test (module fixtures included) under the lock."""
    with _suite_lock(item.config, exclusive=item.get_closest_marker("exclusive") is not None):
        yield


def _start_ray() -> None:
    if ray.is_initialized():  # something earlier in the process left one up
        ray.shutdown()
    ray.init(num_cpus=4, include_dashboard=False, logging_level="ERROR")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so a fixture can see whether the test failed."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


@pytest.fixture(scope="module")
def _ray_for_module():
    _start_ray()
    yield
    ray.shutdown()


def _all_cpus_free(within_s: float) -> bool:
    """Every logical CPU is free again: no actor of the test lives on (a Driver keeps its
    learner until its handles are gone)."""
    gc.collect()
    deadline = time.time() + within_s
    while time.time() < deadline:
        if ray.available_resources().get("CPU", 0) >= ray.cluster_resources().get("CPU", 0):
            return True
        time.sleep(0.2)
    return False


@pytest.fixture
def ray_local(_ray_for_module, request):
    """A local Ray instance (4 logical CPUs), shared by the module's tests, since starting one
    costs ~7 s here. A test that failed, or left an actor alive, hands the next test a fresh
    instance, so one test cannot poison the next."""
    if not ray.is_initialized():
        _start_ray()
    yield
    report = getattr(request.node, "report_call", None)
    if report is None or not report.passed or not _all_cpus_free(within_s=10):
        ray.shutdown()
