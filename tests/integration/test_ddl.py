"""The sync's own tables, created by several workers starting at once in an empty database."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from streams.apply.sql import PROGRESS_DDL, PROGRESS_TABLES
from streams.ddl import ensure
from streams.store import Store

pytestmark = pytest.mark.integration


def at_once(work: Callable[[], None], n: int = 8) -> list[BaseException]:
    """Run ``work`` in ``n`` threads released together; the exceptions they raised."""
    start = threading.Barrier(n)
    failures: list[BaseException] = []

    def run() -> None:
        start.wait()
        try:
            work()
        except BaseException as exc:  # collected and asserted on
            failures.append(exc)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return failures


def test_appliers_starting_together_create_their_bookkeeping_once(empty_database: dict[str, Any]) -> None:
    ran: list[bool] = []

    def applier() -> None:
        with psycopg.connect(**empty_database) as conn, conn.transaction():
            ran.append(ensure(conn, PROGRESS_DDL, PROGRESS_TABLES, ["sync_meta.applier_progress.incarnation"]))

    assert at_once(applier) == []
    assert ran.count(True) == 1  # one created the tables; the others found them after waiting


def test_workers_starting_together_migrate_the_store(empty_database: dict[str, Any]) -> None:
    def worker() -> None:
        store = Store(empty_database)
        try:
            store.migrate()
        finally:
            store.close()

    assert at_once(worker) == []
    with psycopg.connect(**empty_database) as conn:
        assert conn.execute("SELECT to_regclass('sync.xref') IS NOT NULL").fetchone() == (True,)


def test_the_audit_outbox_of_a_database_no_applier_wrote_to_yet_is_empty_not_an_error(
        empty_database: dict[str, Any]) -> None:
    """A worker started on a deployment made before the audit trail existed: its audit agent reads first."""
    from streams.apply.audit import Outbox

    outbox = Outbox("crm", empty_database)
    try:
        assert outbox.take() == []
    finally:
        outbox.abort()
        assert outbox.conn is not None
        outbox.conn.close()
