"""Shared fixtures: one local Ray instance per test module that asks for it."""

import gc
import time

import pytest
import ray


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
