"""The benchmarks' audit read loses nothing committed while it reads: an edit that lands between reading
the audit rows and clearing them would otherwise count as never arrived."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from streams.bench.steady import AUDIT, _audit
from streams.local.harness import Harness, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def audit(harness: Harness) -> Iterator[Harness]:
    with harness.connect("crm") as conn:
        conn.execute(AUDIT)
        conn.execute("DELETE FROM bench.audit")
    yield harness
    with harness.connect("crm") as conn:
        conn.execute("DROP SCHEMA bench CASCADE")


def _waiting_on_a_lock(h: Harness) -> bool:
    with h.connect("crm") as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = 'crm'"
                           " AND wait_event_type = 'Lock'").fetchone()
    return bool(row and row[0])


def test_a_row_committed_during_the_read_is_kept_for_the_next_read(audit: Harness) -> None:
    with audit.connect("crm", autocommit=False) as writer:
        writer.execute("INSERT INTO bench.audit (value) VALUES ('email:before')")
        writer.commit()
        writer.execute("INSERT INTO bench.audit (value) VALUES ('email:during')")  # not committed yet
        first: dict[str, float] = {}
        reader = threading.Thread(target=lambda: first.update(_audit(audit, "crm")))
        reader.start()
        # The read has either finished, or (a read that clears in a second statement) waits for the
        # writer's lock with the rows it read already in hand.
        wait_for(lambda: not reader.is_alive() or _waiting_on_a_lock(audit), 30, 0.05, "the audit read")
        writer.commit()
        reader.join(30)
        assert not reader.is_alive()
    second = _audit(audit, "crm")
    assert set(first) == {"email:before"}
    assert set(second) == {"email:during"}
