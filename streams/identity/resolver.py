"""Identity of a record that appears while streaming (not linked by the bootstrap), decided per match key.

Under advisory locks on the record's exact and name keys (``identity.keys``), in one sync-store
transaction: the record is indexed; records of its own system sharing a key are duplicates, and
the group goes to identity review (never linked, never created); else the other system's free
records sharing a key or name bigrams are matched (exact, name, similarity; ambiguous ones to
review); else the record stands alone, and is created on the other system only after a hold
(``processors.create_hold_s``), so that a twin written at the same time on the other system links
to it instead. A twin processed by another worker waits on the same lock and then sees it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from streams.identity.keys import IdentityKeys
from streams.identity.match import Index, Record
from streams.mapping.profile import Profile
from streams.store import Link, Store

log = logging.getLogger(__name__)
CHUNK = 250  # records decided under one set of advisory locks (each takes a slot of the server's lock table)


@dataclass(frozen=True)
class Decision:
    """A record's link, and whether it waits for a person (then it is neither linked nor created)."""

    link: Link
    reviewed: bool
    kind: str  # exact | name | fuzzy | review | duplicate | single


def record_of(profile: Profile, system: str, key: str, row: Mapping[str, Any]) -> Record:
    """What identity needs of a row: its key, exact keys (profile order) and name."""
    identity = profile.identity
    exact = tuple(_text(row.get(getattr(pair, system))) for pair in identity.exact)
    name = _text(row.get(getattr(identity.name, system))) if identity.name else None
    return Record(system, key, exact, name)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def resolve_new(profile: Profile, store: Store, system: str, key: str, row: Mapping[str, Any],
                hold_s: float) -> Decision:
    """Link a record first seen now (a bounded number of index look-ups, in one locked transaction)."""
    entity = profile.entity
    keys = IdentityKeys(entity)
    rec = record_of(profile, system, key, row)
    conn = store.conn
    with conn.transaction():
        keys.lock(conn, [rec])
        keys.put(conn, [rec])
        known = store.link_of(entity, system, key)  # decided meanwhile by another worker
        if known is not None:
            return Decision(known, bool(store.reviewing(entity, system, [key])), known.linked_by)
        dups = keys.sharing(conn, rec, system)
        if dups:
            review_duplicates(store, keys, conn, rec, dups)
            return Decision(_alone(store, entity, system, key), True, "duplicate")
        index = Index()
        for candidate in keys.candidates(conn, rec):
            index.add(candidate)
        found = index.match(rec, profile.identity.fuzzy_threshold, profile.identity.review_margin)
        if found.target is not None:
            peer = found.target.system
            target = store.link_of(entity, peer, found.target.source_id)
            linked = (store.attach(entity, target.global_id, system, key, found.kind) if target is not None
                      else store.add_link(entity, *((key, found.target.source_id) if system == "crm"
                                                    else (found.target.source_id, key)), found.kind, found.score))
            if linked is not None:
                keys.drop_grams(conn, [(system, key), (peer, found.target.source_id)])
                log.info("linked new %s record %s to %s %s (%s)", system, key, peer, found.target.source_id,
                         found.kind)
                return Decision(linked, False, found.kind)
        if found.kind == "review":
            store.add_review(entity, system, key, [c.source_id for c in found.candidates], found.reason)
            return Decision(_alone(store, entity, system, key), True, "review")
        link = _alone(store, entity, system, key)
        keys.pend_creates(conn, [(link.global_id, system, key)], hold_s)
        return Decision(link, False, "single")


def resolve_many(profile: Profile, store: Store, new: Sequence[tuple[str, str, Mapping[str, Any]]],
                 hold_s: float) -> dict[tuple[str, str], Decision]:
    """Decide records first seen now (``(system, key, row)``), each as :func:`resolve_new` would.

    In chunks, each one locked transaction: the records are indexed; those sharing nothing with
    any other record (``IdentityKeys.alone``: no twin, duplicate or candidate can exist) stand
    alone, decided together in a few statements; the others are decided one by one, in order.
    An initial sync (every record new, the other system empty) is then a few statements per chunk,
    not a dozen per record. Returns ``(system, key) -> decision``.
    """
    entity, keys, conn = profile.entity, IdentityKeys(profile.entity), store.conn
    out: dict[tuple[str, str], Decision] = {}
    for start in range(0, len(new), CHUNK):
        chunk = new[start:start + CHUNK]
        recs = [record_of(profile, system, key, row) for system, key, row in chunk]
        with conn.transaction():
            keys.lock(conn, recs)
            keys.put(conn, keys.changed(conn, recs))  # as the normalize stage indexed them: nothing to do
            for system in dict.fromkeys(r.system for r in recs):
                own = [r for r in recs if r.system == system]
                known = store.links_of(entity, system, [r.source_id for r in own])  # decided by another worker
                waiting = store.reviewing(entity, system, list(known)) if known else set()
                out.update({(system, k): Decision(link, k in waiting, link.linked_by) for k, link in known.items()})
                alone = keys.alone(conn, [r for r in own if r.source_id not in known])
                links = store.add_alone(entity, system, [r.source_id for r in alone])
                keys.pend_creates(conn, [(link.global_id, system, k) for k, link in links.items()], hold_s)
                out.update({(system, k): Decision(link, False, "single") for k, link in links.items()})
            for system, key, row in chunk:  # the rest, in order: each sees the decisions before it
                if (system, key) not in out:
                    out[(system, key)] = resolve_new(profile, store, system, key, row, hold_s)
    return out


def review_duplicates(store: Store, keys: IdentityKeys, conn: Any, rec: Record, dups: list[str]) -> None:
    """A group of records of one system sharing a key, and the other system's records sharing it: all to review.

    None of them is linked or created by the sync; a person merges the duplicates and links what remains.
    """
    peer = "erp" if rec.system == "crm" else "crm"
    group = [rec.source_id, *dups]
    others = keys.sharing(conn, rec, peer)
    reason = (f"{len(group)} {rec.system} records share a tax id or name (duplicates): merge them in the"
              f" {rec.system}, then link what remains")
    for member in group:
        store.add_review(keys.entity, rec.system, member, [*(m for m in group if m != member), *others], reason)
    for other in others:
        store.add_review(keys.entity, peer, other, group, reason)


def _alone(store: Store, entity: str, system: str, key: str) -> Link:
    return store.add_link(entity, key if system == "crm" else None, key if system == "erp" else None, "single")
