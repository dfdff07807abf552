"""Identity for a batch of raw changes, as the normalize stage needs it: each change's link.

Four steps, each a few statements for the whole batch: the links already known (and rows the sync
created itself, attached to the entity they were created for); the match-key index brought up to
date with every record's last state; a decision for each record seen for the first time
(``identity.resolver``, under locks on its keys); and, for a record still without a counterpart
and not waiting for a person, its creation on the other system due after the hold
(``agents.creates`` sends it then).
"""

from __future__ import annotations

from typing import Any

from streams import metrics
from streams.identity.bootstrap import created_by_sync
from streams.identity.keys import IdentityKeys
from streams.identity.resolver import record_of, resolve_new
from streams.mapping.profile import Profile
from streams.settings import Settings
from streams.store import Link, Store

Item = tuple[Profile, str, str, dict[str, Any] | None]  # (profile, system, key, row; None: deleted)
Known = dict[tuple[str, str], dict[str, Link]]  # (entity, system) -> key -> link


class BatchIdentity:
    """Links for batches of changes, over the sync store."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings

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
            for key, gid in created_by_sync(profiles[entity], self.settings, system, new).items():
                link = self.store.attach(entity, gid, system, key, "created")
                if link is not None:
                    found[key] = link
                    created.setdefault(entity, []).append(("crm", link.crm_id) if system == "erp"
                                                          else ("erp", link.erp_id))
                    metrics.IDENTITY.labels(entity, "created").inc()
        return known, created

    def _index(self, profile: Profile, items: list[Item], known: Known, created: list[tuple[str, Any]]) -> None:
        """The match keys of each record's last state in the batch (a deleted record's removed)."""
        latest = {(s, k): row for _, s, k, row in items}
        paired = {(s, k) for (e, s), found in known.items() if e == profile.entity
                  for k, link in found.items() if link.crm_id is not None and link.erp_id is not None}
        keys, conn = IdentityKeys(profile.entity), self.store.conn
        with conn.transaction():
            keys.put(conn, [record_of(profile, s, k, row) for (s, k), row in latest.items() if row is not None],
                     paired)
            keys.drop_grams(conn, created)  # the records the created rows were made for: linked now
            for s, k in (sk for sk, row in latest.items() if row is None):
                keys.remove(conn, s, k)

    def _decide(self, items: list[Item], known: Known) -> tuple[list[Link | None], dict[tuple[str, str], list[int]]]:
        """Links, a new record's decided; and the positions of records still without a counterpart."""
        hold = self.settings.processors.create_hold_s
        out: list[Link | None] = []
        alone: dict[tuple[str, str], list[int]] = {}
        for i, (profile, system, key, row) in enumerate(items):
            link = known[(profile.entity, system)].get(key)
            if link is None and row is not None:
                decision = resolve_new(profile, self.store, system, key, row, hold)
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
