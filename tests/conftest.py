"""Session-scoped real services: PostgreSQL, Apache Kafka, schema registry (see tests/README.md)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.local.erps import ERPS, DemoErp
from streams.local.harness import Harness, scratch_harness
from streams.local.scratch import scratch_dir


def failed_since(request: pytest.FixtureRequest) -> Callable[[], bool]:
    """Whether a test has failed since now: a fixture's stack folder is kept for its logs then."""
    session, before = request.session, request.session.testsfailed
    return lambda: session.testsfailed > before


@pytest.fixture(scope="module")
def failures(request: pytest.FixtureRequest) -> Callable[[], bool]:
    """Whether a test of this module has failed (see :func:`failed_since`); for its stacks' fixtures."""
    return failed_since(request)


@pytest.fixture
def scratch_root(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fresh folder under /tmp for the test's own stack (which the postgres user can reach, unlike tmp_path)."""
    with scratch_dir("e2e", failed_since(request)) as root:
        yield root


@pytest.fixture(scope="session")
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    # shared: tests that need the owner's login use it
    with scratch_harness("test", failed_since(request), least_privilege=False) as h:
        yield h


@pytest.fixture(scope="module", params=list(ERPS))
def demo_erp(request: pytest.FixtureRequest) -> DemoErp:
    """Each demo ERP in turn, for a module whose flows run against both (its harness installs that one)."""
    return ERPS[request.param]


@pytest.fixture
def empty_database(harness: Harness) -> Iterator[dict[str, Any]]:
    """A new empty database on the session's PostgreSQL (its connection settings), dropped after the test."""
    name = f"empty_{uuid.uuid4().hex[:8]}"
    with harness.connect("postgres") as admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield harness.conninfo(name)
    with harness.connect("postgres") as admin:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


NOTEWORTHY = ("WARNING", "ERROR", "CRITICAL", "Error:", "Exception")
# Said at every start, never the cause: Kafka Connect's plugin scan of Debezium's CloudEvents
# converter, PostgreSQL answering the sync's look for its own tables before it creates them.
NOISE = ("CloudEventsConverter", "Failed to discover Converter", "Caused by: java.lang.", "does not exist at character",
         "JsonConverter.convertToConnect")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """A failed test's report carries what the processes it ran logged as going wrong meanwhile.

    CI keeps only pytest's output: without this, a worker's dead letter or crash behind a timeout
    is invisible there. The logs of every stack under /tmp written during the test, their warning
    and error lines only, the last few of each.
    """
    report = yield
    if report.failed and call.when == "call":
        found = []
        logs = Path("/tmp").glob("crm-erp-sync-*/**/*.log")
        for log in sorted(logs, key=lambda p: ("worker" in p.name, str(p))):  # the workers' last: kept if cut
            try:
                if log.stem.isdigit() or log.stat().st_mtime < call.start:  # a Kafka segment, or older
                    continue
                lines = [ln for ln in log.read_text(encoding="utf-8", errors="replace").splitlines()
                         if any(word in ln for word in NOTEWORTHY) and not any(word in ln for word in NOISE)]
            except OSError:
                continue
            if lines:
                found.append(f"--- {log}\n" + "\n".join(ln[:400] for ln in lines[-12:]))
        if found:
            report.sections.append(("logs written during the test (warnings and errors)", "\n".join(found)[-12000:]))
    return report
