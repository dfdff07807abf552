"""Identity of a record that appears while streaming (not linked by the bootstrap)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from streams.identity.bootstrap import created_by_sync, records
from streams.identity.match import Index, Record
from streams.mapping.profile import Profile
from streams.settings import Settings
from streams.store import Link, Store

log = logging.getLogger(__name__)


def resolve_new(profile: Profile, settings: Settings, store: Store, system: str, key: str,
                row: Mapping[str, Any]) -> Link:
    """Link a record first seen now: one the sync created, a match on the other system, or itself alone."""
    entity = profile.entity
    created = created_by_sync(profile, settings, system, [key]).get(key)
    if created is not None:
        attached = store.attach(entity, created, system, key, "created")
        if attached is not None:
            return attached
    peer = "erp" if system == "crm" else "crm"
    linked = {x.global_id: x for x in store.links(entity)}
    singles = {getattr(x, f"{peer}_id"): x for x in linked.values()
               if getattr(x, f"{peer}_id") and not getattr(x, f"{system}_id")}
    index = Index()
    for rec in records(profile, settings, peer):
        if rec.source_id in singles:
            index.add(rec)
    identity = profile.identity
    exact = tuple(row.get(getattr(pair, system)) for pair in identity.exact)
    name = row.get(getattr(identity.name, system)) if identity.name else None
    found = index.match(Record(system, key, exact, name), identity.fuzzy_threshold, identity.review_margin)
    if found.target is not None:
        attached = store.attach(entity, singles[found.target.source_id].global_id, system, key, found.kind)
        if attached is not None:
            log.info("linked new %s record %s to %s %s (%s)", system, key, peer, found.target.source_id, found.kind)
            return attached
    if found.kind == "review":
        store.add_review(entity, system, key, [c.source_id for c in found.candidates], found.reason)
    return store.add_link(entity, key if system == "crm" else None, key if system == "erp" else None, "single")
