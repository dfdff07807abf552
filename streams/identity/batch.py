"""Identity for a batch of raw changes, as the normalize stage needs it: each change's link.

Four steps, each a few statements for the whole batch: the links already known (and rows the sync
created itself, attached to the entity they were created for); the match-key index brought up to
date with every record's last state; a decision for each record seen for the first time
(``identity.resolver``, under locks on its keys); and, for a record still without a counterpart
and not waiting for a person, its creation on the other system due after the hold
(``agents.creates`` sends it then).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg

from streams import metrics
from streams.identity.bootstrap import created_by_sync
from streams.identity.keys import IdentityKeys
from streams.identity.resolver import Decision, record_of, resolve_many
from streams.mapping.profile import Profile
from streams.settings import Settings
from streams.store import Link, Store

Item = tuple[Profile, str, str, dict[str, Any] | None]  # (profile, system, key, row; None: deleted)
Known = dict[tuple[str, str], dict[str, Link]]  # (entity, system) -> key -> link


class BatchIdentity:
    """Links for batches of changes, over the sync store."""

    def __init__(self, store: Store, settings: Settings,
                 source: Callable[[str], psycopg.Connection[Any]] | None = None) -> None:
        self.store = store
        self.settings = settings
        self.source = source  # a system's connection for the rows the sync created (else one per look-up)

    def links(self, items: list[Item]) -> list[Link | None]:
        """Each item's link (None: the deletion of a record never linked)."""
        profiles = {p.entity: p for p, _, _, _ in items}
        known, created = self._known(items, profiles)
        for entity, profile in profiles.items():
            self._index(profile, [i for i in items if i[0].entity == entity], known, created.get(entity, []))
        out, alone = self._decide(items, known)
        for (entity, system), positions in alone.items():
            self._pend(entity, system, [(out[i], items[i][2]) for i in positions])
        return out

    def _known(self, items: list[Item], profiles: dict[str, Profile]) -> tuple[Known, dict[str, list[tuple[str, Any]]]]:
        """The links of the batch's records, one look-up per entity and system; rows the sync created attached.

        Also, per entity, the records those created rows were made for (now linked).
        """
        known: Known = {(p.entity, s): {} for p, s, _, _ in items}
        created: dict[str, list[tuple[str, Any]]] = {}
        for (entity, system), found in known.items():
            of_entity = [(k, row) for p, s, k, row in items if (p.entity, s) == (entity, system)]
            found.update(self.store.links_of(entity, system, [k for k, _ in of_entity]))
            new = [k for k, row in of_entity if k not in found and row is not None]
            if not new:
                continue
            mine = created_by_sync(profiles[entity], self.settings, system, new,
                                   self.source(system) if self.source else None)
            attached = self.store.attach_all(entity, system, mine, "created")
            found.update(attached)
            created.setdefault(entity, []).extend(("crm", link.crm_id) if system == "erp" else ("erp", link.erp_id)
                                                  for link in attached.values())
            metrics.IDENTITY.labels(entity, "created").inc(len(attached))
        return known, created

    def _index(self, profile: Profile, items: list[Item], known: Known, created: list[tuple[str, Any]]) -> None:
        """The match keys of each record's last state in the batch (a deleted record's removed)."""
        latest = {(s, k): row for _, s, k, row in items}
        paired = {(s, k) for (e, s), found in known.items() if e == profile.entity
                  for k, link in found.items() if link.crm_id is not None and link.erp_id is not None}
        keys, conn = IdentityKeys(profile.entity), self.store.conn
        with conn.transaction():
            keys.put(conn, keys.changed(conn, [record_of(profile, s, k, row) for (s, k), row in latest.items()
                                               if row is not None]), paired)
            keys.drop_grams(conn, created)  # the records the created rows were made for: linked now
            for s, k in (sk for sk, row in latest.items() if row is None):
                keys.remove(conn, s, k)

    def _decide(self, items: list[Item], known: Known) -> tuple[list[Link | None], dict[tuple[str, str], list[int]]]:
        """Each item's link, and the positions of records still without a counterpart.

        A record new in the batch is decided on its last state in it, as the index holds it.
        """
        new: dict[str, dict[tuple[str, str], tuple[Profile, dict[str, Any]]]] = {}  # entity -> (system, key) -> row
        for profile, system, key, row in items:
            if row is not None and key not in known[(profile.entity, system)]:
                new.setdefault(profile.entity, {})[(system, key)] = (profile, row)
        decisions: dict[tuple[str, str, str], Decision] = {}
        for entity, rows in new.items():
            profile = next(iter(rows.values()))[0]
            decided = resolve_many(profile, self.store, [(s, k, row) for (s, k), (_, row) in rows.items()],
                                   self.settings.processors.create_hold_s)
            decisions.update({(entity, s, k): d for (s, k), d in decided.items()})
        out: list[Link | None] = []
        alone: dict[tuple[str, str], list[int]] = {}
        for i, (profile, system, key, row) in enumerate(items):
            link = known[(profile.entity, system)].get(key)
            if link is None and row is not None:
                decision = decisions[(profile.entity, system, key)]
                link = known[(profile.entity, system)][key] = decision.link  # a later change of it finds it
                metrics.IDENTITY.labels(profile.entity, "review" if decision.reviewed else decision.kind).inc()
            elif (link is not None and row is not None and link.linked_by != "merged"
                  and (link.erp_id if system == "crm" else link.crm_id) is None):
                alone.setdefault((profile.entity, system), []).append(i)
            out.append(link)
        return out, alone

    def _pend(self, entity: str, system: str, records: list[tuple[Link | None, str]]) -> None:
        """Records without a counterpart, not waiting for a person: created after the hold (one look-up, one write)."""
        waiting = self.store.reviewing(entity, system, [key for _, key in records])
        due = [(link.global_id, system, key) for link, key in records if link is not None and key not in waiting]
        with self.store.conn.transaction():
            IdentityKeys(entity).pend_creates(self.store.conn, due, self.settings.processors.create_hold_s)
