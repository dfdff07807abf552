"""Link the records both databases already hold, before streaming starts (idempotent)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from streams.apply.sql import CREATED_OF_ENTITY
from streams.identity.match import Record, link_all
from streams.mapping.profile import Profile
from streams.settings import Settings
from streams.store import Store

log = logging.getLogger(__name__)


def records(profile: Profile, settings: Settings, system: str) -> list[Record]:
    """What identity needs of every record of the entity's table on ``system``."""
    identity = profile.identity
    key = profile.key_of(system)
    exact = [getattr(pair, system) for pair in identity.exact]
    name = getattr(identity.name, system) if identity.name else None
    columns = [key, *exact, *([name] if name else [])]
    schema, _, table = profile.table_of(system).partition(".")
    query = sql.SQL("SELECT {} FROM {}.{}").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in columns), sql.Identifier(schema), sql.Identifier(table)
    )
    with psycopg.connect(**settings.database(system).conninfo()) as conn:
        rows = conn.execute(query).fetchall()
    return [
        Record(system, str(r[0]), tuple(r[1 : 1 + len(exact)]), r[-1] if name else None) for r in rows
    ]


def created_by_sync(profile: Profile, settings: Settings, system: str,
                    keys: Sequence[str] | None = None) -> dict[str, str]:
    """Rows the sync's applier created on ``system`` (all, or those with ``keys``): key -> global id."""
    try:
        with psycopg.connect(**settings.database(system).conninfo()) as conn:
            rows = conn.execute(CREATED_OF_ENTITY, {"entity": profile.entity,
                                                    "keys": None if keys is None else list(keys)}).fetchall()
    except psycopg.errors.UndefinedTable:
        return {}  # no applier has written there yet
    return {str(key): str(gid) for key, gid in rows}


def bootstrap(profile: Profile, settings: Settings, store: Store) -> Counter[str]:
    """Link unlinked CRM records to unlinked ERP records; queue ambiguous ones; counts by outcome.

    A row the sync created (a worker stopped before its change event attached it) joins the entity
    it was created for, never a match: else a restart could link it elsewhere or create it back.
    """
    links = store.links(profile.entity)
    linked = {("crm", x.crm_id) for x in links if x.crm_id} | {("erp", x.erp_id) for x in links if x.erp_id}
    counts: Counter[str] = Counter()
    unlinked: dict[str, list[Record]] = {}
    with store.conn.transaction():  # all links or none: a crash half-way leaves nothing to clean up
        for system in ("crm", "erp"):
            created = created_by_sync(profile, settings, system)
            unlinked[system] = []
            for r in records(profile, settings, system):
                if (system, r.source_id) in linked:
                    continue
                if r.source_id in created and store.attach(profile.entity, created[r.source_id], system,
                                                           r.source_id, "created"):
                    counts["created"] += 1
                    continue
                unlinked[system].append(r)
        _link(profile, store, unlinked["crm"], unlinked["erp"], counts)
    log.info("identity bootstrap for %s: %s", profile.entity, dict(counts))
    return counts


def _link(profile: Profile, store: Store, crm: list[Record], erp: list[Record], counts: Counter[str]) -> None:
    taken: set[str] = set()
    for rec, found in link_all(crm, erp, profile.identity.fuzzy_threshold, profile.identity.review_margin):
        counts[found.kind] += 1
        if found.target is not None:
            store.add_link(profile.entity, rec.source_id, found.target.source_id, found.kind, found.score)
            taken.add(found.target.source_id)
        else:
            if found.kind == "review":
                store.add_review(profile.entity, "crm", rec.source_id,
                                 [c.source_id for c in found.candidates], found.reason)
            store.add_link(profile.entity, rec.source_id, None, "single")
    for rec in erp:
        if rec.source_id not in taken:
            store.add_link(profile.entity, None, rec.source_id, "single")


def as_dict(counts: Counter[str]) -> dict[str, Any]:
    """Counts for printing."""
    return dict(sorted(counts.items()))
