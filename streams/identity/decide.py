"""A person's identity decisions: link two records (from the review queue or by hand), or unlink."""

from __future__ import annotations

import json
import uuid

import psycopg

from streams.errors import SyncError
from streams.mapping.profile import Profile
from streams.settings import Settings
from streams.store import Store


def _resnapshot(profile: Profile, settings: Settings, system: str, key: str) -> None:
    """Ask Debezium to read one row again (an incremental snapshot filtered by its key)."""
    table = profile.table_of(system)
    literal = key.replace("'", "''")
    data = {"data-collections": [table], "type": "incremental",
            "additional-conditions": [{"data-collection": table, "filter": f"{profile.key_of(system)} = '{literal}'"}]}
    with psycopg.connect(**settings.database(system).conninfo(), autocommit=True) as conn:
        conn.execute("INSERT INTO sync_meta.debezium_signal (id, type, data) VALUES (%s, 'execute-snapshot', %s)",
                     (str(uuid.uuid4()), json.dumps(data)))


def link(profile: Profile, settings: Settings, store: Store, crm_id: str, erp_id: str) -> str:
    """Link two records that are each on their own; the global id they now share."""
    entity = profile.entity
    crm, erp = store.link_of(entity, "crm", crm_id), store.link_of(entity, "erp", erp_id)
    for system, key, found in (("crm", crm_id, crm), ("erp", erp_id, erp)):
        if found is None:
            raise SyncError(f"no {system} record {key} is known to the sync", hint="check the id (identity review)")
    assert crm is not None and erp is not None
    if crm.global_id == erp.global_id:
        return crm.global_id
    if crm.erp_id is not None or erp.crm_id is not None:
        raise SyncError(f"crm {crm_id} or erp {erp_id} is already linked to another record",
                        hint=f"unlink it first: crm-erp-sync identity unlink --crm {crm.crm_id or erp.crm_id}")
    with store.conn.transaction():
        store.conn.execute("DELETE FROM sync.entity_state WHERE entity = %s AND global_id = %s",
                           (entity, erp.global_id))
        store.conn.execute("DELETE FROM sync.xref WHERE entity = %s AND global_id = %s", (entity, erp.global_id))
        store.conn.execute("UPDATE sync.xref SET erp_id = %s, linked_by = 'manual' WHERE entity = %s"
                           " AND global_id = %s", (erp_id, entity, crm.global_id))
        store.conn.execute("UPDATE sync.identity_review SET status = 'decided' WHERE entity = %s AND status = 'open'"
                           " AND ((system = 'crm' AND source_id = %s) OR (system = 'erp' AND source_id = %s))",
                           (entity, crm_id, erp_id))
    for system, key in (("crm", crm_id), ("erp", erp_id)):
        _resnapshot(profile, settings, system, key)
    return crm.global_id


def unlink(profile: Profile, settings: Settings, store: Store, crm_id: str) -> tuple[str, str]:
    """Separate a CRM record from its ERP record; each goes on alone (nothing is written to either)."""
    entity = profile.entity
    found = store.link_of(entity, "crm", crm_id)
    if found is None or found.erp_id is None:
        raise SyncError(f"crm {crm_id} is not linked to an ERP record")
    with store.conn.transaction():
        store.conn.execute("UPDATE sync.xref SET erp_id = NULL, linked_by = 'single' WHERE entity = %s"
                           " AND global_id = %s", (entity, found.global_id))
        store.conn.execute("DELETE FROM sync.entity_state WHERE entity = %s AND global_id = %s",
                           (entity, found.global_id))
        alone = store.add_link(entity, None, found.erp_id, "single")
    return found.global_id, alone.global_id
