"""A person's identity decisions: link two records (from the review queue or by hand), unlink, merge duplicates."""

from __future__ import annotations

from streams.capture.signal import resnapshot
from streams.errors import SyncError
from streams.identity.keys import IdentityKeys
from streams.mapping.profile import Profile
from streams.settings import Settings
from streams.store import Store


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
        IdentityKeys(entity).drop_grams(store.conn, [("crm", crm_id), ("erp", erp_id)])
    for system, key in (("crm", crm_id), ("erp", erp_id)):
        resnapshot(profile, settings, system, [key])
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
        IdentityKeys(entity).reindex(store.conn, [("crm", crm_id), ("erp", found.erp_id)])
    return found.global_id, alone.global_id


def merge(profile: Profile, store: Store, system: str, duplicate: str, into: str) -> str:
    """Two records of one system are one customer: ``duplicate`` is never synced on its own again.

    (Merge the two rows in that system as its users do.) ``into`` leaves identity review and goes
    on: created on the other system after the hold when its create rule says so, or linked to a
    counterpart there with ``identity link``. Returns what happens to ``into``.
    """
    entity = profile.entity
    dup, kept = store.link_of(entity, system, duplicate), store.link_of(entity, system, into)
    for key, found in ((duplicate, dup), (into, kept)):
        if found is None:
            raise SyncError(f"no {system} record {key} is known to the sync", hint="check the id (identity review)")
    assert dup is not None and kept is not None
    peer = "erp" if system == "crm" else "crm"
    if duplicate == into:
        raise SyncError("--into names the record that remains: give two different records")
    if getattr(dup, f"{peer}_id") is not None:
        raise SyncError(f"{system} {duplicate} is linked to {peer} {getattr(dup, f'{peer}_id')}",
                        hint=f"unlink it first: crm-erp-sync identity unlink --crm {dup.crm_id}")
    with store.conn.transaction():
        store.conn.execute("UPDATE sync.xref SET linked_by = 'merged' WHERE entity = %s AND global_id = %s",
                           (entity, dup.global_id))
        store.conn.execute("UPDATE sync.identity_review SET status = 'decided' WHERE entity = %s AND status = 'open'"
                           " AND system = %s AND source_id = ANY(%s)", (entity, system, [duplicate, into]))
        if getattr(kept, f"{peer}_id") is not None:
            return f"{into} stays linked to {peer} {getattr(kept, f'{peer}_id')}"
        if store.reviewing(entity, system, [into]):
            return f"{into} still waits for a decision on other records sharing its keys (identity review)"
        IdentityKeys(entity).pend_creates(store.conn, [(kept.global_id, system, into)], 0)
    return f"{into} goes on alone: created on the {peer} if its create rule says so, or link it there"
