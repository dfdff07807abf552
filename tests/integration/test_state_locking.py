"""Callers of ``Processors.locked`` (reconcile, refused writes) each run their own transaction.

Reconcile keeps its transaction open while the broker takes what it sends; a refused write's
step runs meanwhile. On one shared connection, the second caller's rollback undid the first
caller's saved states (already sent on), or its commit committed them early.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from streams.app import Processors
from streams.local.harness import Harness
from streams.reconcile.core import EntityState
from streams.store import StateCache, Store

pytestmark = pytest.mark.integration
ENTITY = "locking-test"


@pytest.fixture
def ctx(harness: Harness) -> Iterator[Any]:
    conninfo = harness.store_conninfo()
    store = Store(conninfo)
    store.migrate()
    ns = SimpleNamespace(txs={}, store=store, states=StateCache(10),
                         settings=SimpleNamespace(store=SimpleNamespace(conninfo=lambda: conninfo)))
    yield ns
    for tx in ns.txs.values():
        tx.close()
    with harness.connect("sync") as conn:
        conn.execute("DELETE FROM sync.entity_state WHERE entity = %s", (ENTITY,))


def _set(value: str) -> Any:
    def step(state: EntityState, now_ms: int) -> tuple[EntityState, list[Any], Any]:
        state.values["crm"] = {"name": value}
        return state, [], None
    return step


def test_one_callers_rollback_leaves_the_others_open_transaction_whole(ctx: Any, harness: Harness) -> None:
    kept, dropped = str(uuid.uuid4()), str(uuid.uuid4())
    _, reconcile_tx, _ = Processors.locked(ctx, "reconcile", [(ENTITY, kept, _set("sent on"))])
    _, refused_tx, _ = Processors.locked(ctx, "refused", [(ENTITY, dropped, _set("never sent"))])
    refused_tx.rollback()  # its send failed
    reconcile_tx.commit()  # the broker took reconcile's records
    with harness.connect("sync") as conn:
        rows = dict(conn.execute("SELECT global_id::text, state->'values'->'crm'->>'name' FROM sync.entity_state"
                                 " WHERE entity = %s", (ENTITY,)).fetchall())
    assert rows == {kept: "sent on"}
