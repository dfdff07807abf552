"""Link the records both databases already hold, before streaming starts (idempotent)."""

from __future__ import annotations

import hashlib
import itertools
import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from streams.apply.sql import CREATED_OF_ENTITY, CREATED_OF_KEYS
from streams.identity.keys import IdentityKeys
from streams.identity.match import Record, duplicate_groups, link_all
from streams.identity.resolver import review_duplicates
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
                    keys: Sequence[str] | None = None, conn: psycopg.Connection[Any] | None = None) -> dict[str, str]:
    """Rows the sync's applier created on ``system`` (all, or those with ``keys``): key -> global id.

    On ``conn`` (an autocommit connection to ``system``) if given, else on a connection of its own.
    """
    query, params = ((CREATED_OF_ENTITY, {"entity": profile.entity}) if keys is None
                     else (CREATED_OF_KEYS, {"entity": profile.entity, "keys": list(keys)}))
    try:
        if conn is not None:
            rows = conn.execute(query, params).fetchall()
        else:
            with psycopg.connect(**settings.database(system).conninfo()) as own:
                rows = own.execute(query, params).fetchall()
    except psycopg.errors.UndefinedTable:
        return {}  # no applier has written there yet
    return {str(key): str(gid) for key, gid in rows}


def bootstrap(profile: Profile, settings: Settings, store: Store) -> Counter[str]:
    """Index every record's match keys; link unlinked CRM records to unlinked ERP records; counts by outcome.

    A row the sync created (a worker stopped before its change event attached it) joins the entity
    it was created for, never a match: else a restart could link it elsewhere or create it back.
    Records of one system sharing a tax id or name are duplicates: the group (and the other
    system's records sharing that key) goes to review, neither linked nor created.
    """
    started = time.monotonic()
    counts: Counter[str] = Counter()
    unlinked: dict[str, list[Record]] = {}
    keys = IdentityKeys(profile.entity)
    with store.conn.transaction():  # all links or none: a crash half-way leaves nothing to clean up
        one_at_a_time(store.conn, profile.entity)
        links = store.links(profile.entity)
        linked = {("crm", x.crm_id) for x in links if x.crm_id} | {("erp", x.erp_id) for x in links if x.erp_id}
        everything: dict[str, list[Record]] = {s: records(profile, settings, s) for s in ("crm", "erp")}
        indexed = keys.indexed(store.conn)  # the others follow their change events; a restart adds none
        fresh = [r for recs in everything.values() for r in recs if (r.system, r.source_id) not in indexed]
        keys.put(store.conn, fresh, linked={(r.system, r.source_id) for r in fresh})  # bigrams: once free
        for system, recs in everything.items():
            created = created_by_sync(profile, settings, system)
            free = [r for r in recs if (system, r.source_id) not in linked]
            attached = store.attach_all(profile.entity, system, {r.source_id: created[r.source_id] for r in free
                                                                 if r.source_id in created}, "created")
            if attached:
                counts["created"] += len(attached)
            unlinked[system] = [r for r in free if r.source_id not in attached]
        grouped: set[tuple[str, str]] = set()
        for system, recs in everything.items():
            for group in duplicate_groups(recs):
                counts["duplicate"] += len(group)
                first = group[0]
                review_duplicates(store, keys, store.conn, first, [r.source_id for r in group[1:]])
                grouped |= {(system, r.source_id) for r in group}
        for system in ("crm", "erp"):
            for r in unlinked[system]:
                if (system, r.source_id) in grouped:
                    crm_id, erp_id = (r.source_id, None) if system == "crm" else (None, r.source_id)
                    store.add_link(profile.entity, crm_id, erp_id, "single")
            unlinked[system] = [r for r in unlinked[system] if (system, r.source_id) not in grouped]
        _link(profile, store, unlinked["crm"], unlinked["erp"], counts)
        paired = {(s, i) for x in store.links(profile.entity) if x.crm_id and x.erp_id
                  for s, i in (("crm", x.crm_id), ("erp", x.erp_id))}
        keys.add_grams(store.conn, [r for r in fresh if (r.system, r.source_id) not in paired])  # the free ones
        # Records indexed before and paired now are no fuzzy candidates. Named, not found by a join
        # of every bigram with the cross-reference: that took 5 s on 100,000 records with nothing to drop.
        keys.drop_grams(store.conn, sorted(paired & indexed))
    log.info("identity bootstrap for %s: %s (%d records indexed, %.1f s)", profile.entity, dict(counts), len(fresh),
             time.monotonic() - started)
    return counts


def lock_id(entity: str) -> int:
    """The advisory lock an entity's bootstrap holds."""
    digest = hashlib.blake2b(f"bootstrap|{entity}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def one_at_a_time(conn: psycopg.Connection[Any], entity: str) -> None:
    """Wait until no other worker bootstraps the entity, then hold its lock until the transaction ends.

    Workers started together would otherwise index the same records at once, one waiting on the
    other's rows; an initial sync's bootstrap (a minute for 100,000 records) outlasts the store's
    ``lock_timeout``, which ended the waiting worker. Polled, so that timeout does not apply; the
    one that waited then finds everything indexed and linked.
    """
    for attempt in itertools.count():
        if conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (lock_id(entity),)).fetchall() == [(True,)]:
            return
        if attempt == 0:
            log.info("identity bootstrap for %s: waiting for another worker's to finish", entity)
        time.sleep(0.5)


def _link(profile: Profile, store: Store, crm: list[Record], erp: list[Record], counts: Counter[str]) -> None:
    taken: set[str] = set()
    links: list[tuple[str | None, str | None, str, float | None]] = []
    for rec, found in link_all(crm, erp, profile.identity.fuzzy_threshold, profile.identity.review_margin):
        counts[found.kind] += 1
        if found.target is not None:
            links.append((rec.source_id, found.target.source_id, found.kind, found.score))
            taken.add(found.target.source_id)
        else:
            if found.kind == "review":
                store.add_review(profile.entity, "crm", rec.source_id,
                                 [c.source_id for c in found.candidates], found.reason)
            links.append((rec.source_id, None, "single", None))
    links += [(None, rec.source_id, "single", None) for rec in erp if rec.source_id not in taken]
    store.add_links(profile.entity, links)


def as_dict(counts: Counter[str]) -> dict[str, Any]:
    """Counts for printing."""
    return dict(sorted(counts.items()))
