"""Session-scoped real services: PostgreSQL, Apache Kafka, schema registry (see tests/README.md)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.local.harness import Harness


@pytest.fixture(scope="session")
def harness() -> Iterator[Harness]:
    # Under /tmp so the postgres user can reach the data dir when tests run as root.
    root = Path(tempfile.mkdtemp(prefix="crm-erp-sync-test-", dir="/tmp"))
    h = Harness(root).start()
    try:
        yield h
    finally:
        h.stop()
