"""Entity states in the sync store, read through a worker's cache: a write by anyone else is seen, and a
batch that changed what it was served and rolled back leaves it out of the cache: it is read again."""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
import pytest

from streams.local.harness import Harness
from streams.reconcile.core import EntityState, FieldState
from streams.store import StateCache, Store

pytestmark = pytest.mark.integration


def test_the_cache_serves_its_own_writes_and_rereads_anyone_elses(harness: Harness) -> None:
    store = Store(harness.conninfo("sync"))
    store.migrate()
    key = ("customer", str(uuid.uuid4()))
    cache = StateCache(100)
    with psycopg.connect(**harness.conninfo("sync")) as worker, psycopg.connect(**harness.conninfo("sync")) as other:
        assert store.lock_states(worker, [key], cache)[key].to_json() == EntityState().to_json()
        mine = EntityState(rows={"crm": "v1"})
        versions = store.save_states(worker, {key: mine})
        worker.commit()
        cache.put({k: (v, mine) for k, v in versions.items()})
        mine.values["crm"] = {"only": "in the cache"}  # so that a state served from it is told apart
        served = store.lock_states(worker, [key], cache)[key]  # current: not read again, but handed over
        assert served is mine and cache.versions([key]) == [-1]
        served.rows["crm"] = "changed by a batch that is rolled back"
        worker.rollback()
        reread = store.lock_states(worker, [key], cache)[key]  # the stored state, not the one changed
        assert reread is not mine and reread.rows == {"crm": "v1"} and reread.values == {}
        worker.rollback()

        theirs = EntityState(rows={"crm": "v2"})  # a person resolving a conflict, another worker
        store.lock_state(other, *key)
        store.save_state(other, *key, theirs)
        other.commit()
        seen = store.lock_states(worker, [key], cache)[key]
        assert seen is not mine and seen.rows == {"crm": "v2"}
        worker.rollback()
    store.close()


def test_a_store_of_an_earlier_version_keeps_its_states_as_json(empty_database: dict[str, Any]) -> None:
    """States were jsonb before: the store's migration turns the column into json, every state as it was."""
    key = ("customer", str(uuid.uuid4()))
    state = EntityState(rows={"crm": "v1"}, values={"crm": {"name": "迁移前的客户", "credit_limit": 12_000_000}})
    state.fields["name"] = FieldState(synced="迁移前的客户", seen={"crm": "迁移前的客户"}, versions={"crm": (7, 0)},
                                      inflight={"erp": ("迁移前的客户", 1_700_000_000_000)})
    with psycopg.connect(**empty_database, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA sync")
        conn.execute("CREATE TABLE sync.entity_state (entity text NOT NULL, global_id uuid NOT NULL,"
                     " state jsonb NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(),"
                     " PRIMARY KEY (entity, global_id))")
        conn.execute("INSERT INTO sync.entity_state (entity, global_id, state) VALUES (%s, %s, %s::jsonb)",
                     (*key, json.dumps(state.to_json())))
    store = Store(empty_database)
    try:
        store.migrate()
        with psycopg.connect(**empty_database) as conn:
            assert conn.execute("SELECT atttypid::regtype::text FROM pg_attribute WHERE attname = 'state'"
                                " AND attrelid = 'sync.entity_state'::regclass").fetchone() == ("json",)
            assert store.lock_states(conn, [key], None)[key].to_json() == state.to_json()
        store.migrate()  # again: nothing left to change
    finally:
        store.close()
