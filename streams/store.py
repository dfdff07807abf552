"""The sync store (PostgreSQL): identity cross-reference, entity state, conflicts, review, dead letters.

Durable state lives here, not only in Kafka: losing the broker costs a re-snapshot, never the
identity map or the last synced values.
"""

from __future__ import annotations

import json
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import set_json_loads

from streams import jsontext
from streams.ddl import locked
from streams.jsontext import dumps as _json
from streams.reconcile.core import Conflict, EntityState

SCHEMA = "sync"
DDL = """
CREATE TABLE IF NOT EXISTS sync.xref (
  entity     text NOT NULL,
  global_id  uuid NOT NULL,
  crm_id     text,
  erp_id     text,
  linked_by  text NOT NULL,           -- exact | name | fuzzy | manual | single | created | merged
  score      real,
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (entity, global_id),
  UNIQUE (entity, crm_id),
  UNIQUE (entity, erp_id)
);
CREATE TABLE IF NOT EXISTS sync.entity_state (
  entity     text NOT NULL,
  global_id  uuid NOT NULL,
  state      json NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (entity, global_id)
);
-- json, not jsonb: a state is written whole (~3 times per entity in an initial sync) and read
-- whole, never searched inside; jsonb's parse on write and re-serialisation on read cost ~30 us each.
DO $$ BEGIN
  IF (SELECT atttypid FROM pg_attribute WHERE attrelid = 'sync.entity_state'::regclass AND attname = 'state')
     = 'jsonb'::regtype THEN
    ALTER TABLE sync.entity_state ALTER COLUMN state TYPE json USING state::json;
  END IF;
END $$;
CREATE SEQUENCE IF NOT EXISTS sync.entity_state_version;
-- A new value on every write: a worker's cached copy is current while the row still has its version.
ALTER TABLE sync.entity_state ADD COLUMN IF NOT EXISTS version bigint NOT NULL
  DEFAULT nextval('sync.entity_state_version');
CREATE TABLE IF NOT EXISTS sync.conflicts (
  id          bigserial PRIMARY KEY,
  entity      text NOT NULL,
  global_id   uuid NOT NULL,
  field       text NOT NULL,
  kind        text NOT NULL,
  policy      text NOT NULL,
  base        jsonb,
  crm_value   jsonb,
  erp_value   jsonb,
  resolution  text,
  value       jsonb,
  status      text NOT NULL,          -- open | resolved
  detected_at timestamptz NOT NULL DEFAULT now(),
  resolved_at timestamptz
);
CREATE INDEX IF NOT EXISTS conflicts_open ON sync.conflicts (status) WHERE status = 'open';
CREATE TABLE IF NOT EXISTS sync.identity_review (
  id          bigserial PRIMARY KEY,
  entity      text NOT NULL,
  system      text NOT NULL,
  source_id   text NOT NULL,
  candidates  jsonb NOT NULL,
  reason      text NOT NULL,
  status      text NOT NULL DEFAULT 'open',
  created_at  timestamptz NOT NULL DEFAULT now(),
  UNIQUE (entity, system, source_id)
);
CREATE TABLE IF NOT EXISTS sync.dead_letters (
  id         bigserial PRIMARY KEY,
  stage      text NOT NULL,
  reason     text NOT NULL,
  topic      text NOT NULL,
  partition  int NOT NULL,
  "offset"   bigint NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  UNIQUE (stage, topic, partition, "offset")
);
ALTER TABLE sync.dead_letters ADD COLUMN IF NOT EXISTS replayed_at timestamptz;
-- A position names a record only within one incarnation of its topic (its id).
ALTER TABLE sync.dead_letters ADD COLUMN IF NOT EXISTS incarnation text NOT NULL DEFAULT '';
ALTER TABLE sync.dead_letters DROP CONSTRAINT IF EXISTS dead_letters_stage_topic_partition_offset_key;
-- An item of a batch record (streams.batching) is named by its index in the record at that offset.
ALTER TABLE sync.dead_letters ADD COLUMN IF NOT EXISTS item int NOT NULL DEFAULT 0;
DROP INDEX IF EXISTS sync.dead_letters_position;
CREATE UNIQUE INDEX IF NOT EXISTS dead_letters_item_position
  ON sync.dead_letters (stage, topic, incarnation, partition, "offset", item);
-- A row's bad field (and its value) is one dead letter, not one per later change of the row.
ALTER TABLE sync.dead_letters ADD COLUMN IF NOT EXISTS fingerprint text;
CREATE UNIQUE INDEX IF NOT EXISTS dead_letters_fingerprint ON sync.dead_letters (fingerprint)
  WHERE fingerprint IS NOT NULL;
CREATE TABLE IF NOT EXISTS sync.documents (
  rule       text NOT NULL,           -- the document profile's create rule
  global_id  uuid NOT NULL,
  source_id  text NOT NULL,
  state      text NOT NULL,           -- pending | sent | linked | diverged
  reason     text,
  digest     text,                    -- of the document as created (or first linked)
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (rule, global_id)
);
CREATE INDEX IF NOT EXISTS documents_waiting ON sync.documents (state) WHERE state IN ('pending', 'diverged');
-- What the digest was taken of (mapped header and lines): a later edit is named column by column.
ALTER TABLE sync.documents ADD COLUMN IF NOT EXISTS content jsonb;
"""

MISSING_JSON = {"missing": True}


@dataclass(frozen=True)
class Link:
    """One row of the cross-reference."""

    global_id: str
    crm_id: str | None
    erp_id: str | None
    linked_by: str


set_json_loads(jsontext.loads)  # every connection of the process


class StateCache:
    """The entity states one worker wrote last, with the version each got; at most ``limit`` (oldest go first).

    Valid only while the row keeps that version: anyone else's write (another worker after a
    rebalance, a person resolving a conflict) gives the row a new one, and it is read again.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        # Oldest first. An OrderedDict drops its first entry in O(1); a dict's first key is found by
        # scanning past the slots of the entries deleted before it (3.4 vs 0.5 µs per put at 5,000).
        self._states: OrderedDict[tuple[str, str], tuple[int, EntityState]] = OrderedDict()

    def versions(self, keys: Sequence[tuple[str, str]]) -> list[int]:
        """The cached version of each key (-1 when not cached)."""
        return [self._states[k][0] if k in self._states else -1 for k in keys]

    def get(self, key: tuple[str, str]) -> EntityState:
        """The cached state (callers never change it in place)."""
        return self._states[key][1]

    def take(self, key: tuple[str, str]) -> EntityState:
        """The cached state, handed over: no longer cached until a commit puts it back (:meth:`put`).

        The taker may change it in place; a batch that fails or rolls back never puts it back, so the
        next one reads the state as stored.
        """
        return self._states.pop(key)[1]

    def put(self, saved: dict[tuple[str, str], tuple[int, EntityState]]) -> None:
        """Remember states committed at their versions."""
        for key, entry in saved.items():
            self._states[key] = entry
            self._states.move_to_end(key)  # the most recently written go last
        while len(self._states) > self.limit:
            self._states.popitem(last=False)


class Store:
    """Sync-store access over one connection (each worker process has its own)."""

    def __init__(self, conninfo: dict[str, Any], dry_run: bool = False) -> None:
        self.conninfo = conninfo
        self.dry_run = dry_run  # entity states, documents and conflicts in a dry run's own copies
        self._conn = psycopg.connect(**conninfo, autocommit=True)

    def _q(self, query: str) -> str:
        """``query`` on the state tables of this store's run (a dry run has its own: ``streams.plan``)."""
        from streams.plan import shadowed

        return shadowed(query) if self.dry_run else query

    @property
    def conn(self) -> psycopg.Connection[Any]:
        """The connection; one that broke (the server restarted, the network dropped) is replaced.

        The call that found it broken failed with ``psycopg.OperationalError`` (transient: retried);
        the retry gets a new connection.
        """
        if self._conn.closed:
            self._conn = psycopg.connect(**self.conninfo, autocommit=True)
        return self._conn

    def migrate(self) -> None:
        """Create the tables (idempotent)."""
        from streams.audit import DDL as AUDIT_DDL
        from streams.drift import DDL as DRIFT_DDL
        from streams.identity.keys import DDL as IDENTITY_DDL
        from streams.plan import DDL as PLAN_DDL

        for ddl in (DDL, IDENTITY_DDL, AUDIT_DDL, DRIFT_DDL, PLAN_DDL):
            locked(self.conn, ddl, SCHEMA)

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    # -- identity ---------------------------------------------------------------------------
    def links(self, entity: str) -> list[Link]:
        """Every cross-reference row of ``entity``."""
        rows = self.conn.execute(
            "SELECT global_id::text, crm_id, erp_id, linked_by FROM sync.xref WHERE entity = %s", (entity,)
        ).fetchall()
        return [Link(*r) for r in rows]

    def link_of(self, entity: str, system: str, source_id: str) -> Link | None:
        """The cross-reference row holding ``system``'s ``source_id``."""
        query = sql.SQL("SELECT global_id::text, crm_id, erp_id, linked_by FROM sync.xref"
                        " WHERE entity = %s AND {} = %s").format(sql.Identifier(f"{system}_id"))
        row = self.conn.execute(query, (entity, source_id)).fetchone()
        return Link(*row) if row else None

    def links_of(self, entity: str, system: str, source_ids: list[str]) -> dict[str, Link]:
        """The cross-reference rows holding ``system``'s ``source_ids`` (one round trip)."""
        column = sql.Identifier(f"{system}_id")
        query = sql.SQL("SELECT global_id::text, crm_id, erp_id, linked_by, {} FROM sync.xref"
                        " WHERE entity = %s AND {} = ANY(%s)").format(column, column)
        return {str(r[4]): Link(*r[:4]) for r in self.conn.execute(query, (entity, source_ids)).fetchall()}

    def add_link(self, entity: str, crm_id: str | None, erp_id: str | None, linked_by: str,
                 score: float | None = None) -> Link:
        """Insert a cross-reference row (a new global id); an existing one for either id wins."""
        self.add_links(entity, [(crm_id, erp_id, linked_by, score)])
        found = self.link_of(entity, "crm", crm_id) if crm_id else self.link_of(entity, "erp", erp_id or "")
        assert found is not None
        return found

    def add_links(self, entity: str, rows: Sequence[tuple[str | None, str | None, str, float | None]]) -> None:
        """:meth:`add_link` for each ``(crm id, erp id, linked_by, score)``, in one statement."""
        if rows:
            crm, erp, by, score = map(list, zip(*rows, strict=True))
            self.conn.execute(
                "INSERT INTO sync.xref (entity, global_id, crm_id, erp_id, linked_by, score) SELECT %s, g, c, e, b, s"
                " FROM unnest(%b::uuid[], %b::text[], %b::text[], %b::text[], %b::real[]) AS r(g, c, e, b, s)"
                " ON CONFLICT DO NOTHING", (entity, [uuid.uuid4() for _ in rows], crm, erp, by, score))

    def add_alone(self, entity: str, system: str, source_ids: Sequence[str]) -> dict[str, Link]:
        """A cross-reference row of its own (``single``) for each of ``system``'s records; an existing one wins."""
        self.add_links(entity, [(i, None, "single", None) if system == "crm" else (None, i, "single", None)
                                for i in source_ids])
        return self.links_of(entity, system, list(source_ids)) if source_ids else {}

    def attach_all(self, entity: str, system: str, global_ids: Mapping[str, str], linked_by: str) -> dict[str, Link]:
        """:meth:`attach` for each ``source id -> global id`` in one statement: the links given a record."""
        if not global_ids:
            return {}
        column = sql.Identifier(f"{system}_id")
        rows = self.conn.execute(sql.SQL(
            "UPDATE sync.xref x SET {} = r.i, linked_by = %s FROM unnest(%s::text[], %s::uuid[]) AS r(i, g)"
            " WHERE x.entity = %s AND x.global_id = r.g AND x.{} IS NULL"
            " RETURNING x.global_id::text, x.crm_id, x.erp_id, x.linked_by").format(column, column),
            (linked_by, list(global_ids), list(global_ids.values()), entity)).fetchall()
        links = [Link(*r) for r in rows]
        return {str(link.crm_id if system == "crm" else link.erp_id): link for link in links}

    def attach(self, entity: str, global_id: str, system: str, source_id: str, linked_by: str) -> Link | None:
        """Give an entity known on one system its record on ``system``; None if it already has one."""
        return self.attach_all(entity, system, {source_id: global_id}, linked_by).get(source_id)

    def link_pair(self, entity: str, crm_id: str, erp_id: str, linked_by: str) -> Link:
        """The link of a CRM and an ERP record known to be the same (a document naming its counterpart)."""
        crm, erp = self.link_of(entity, "crm", crm_id), self.link_of(entity, "erp", erp_id)
        if crm is not None and crm.erp_id is None and erp is None:
            return self.attach(entity, crm.global_id, "erp", erp_id, linked_by) or crm
        if erp is not None and erp.crm_id is None and crm is None:
            return self.attach(entity, erp.global_id, "crm", crm_id, linked_by) or erp
        return crm or erp or self.add_link(entity, crm_id, erp_id, linked_by)

    def reviewing(self, entity: str, system: str, source_ids: Sequence[str]) -> set[str]:
        """Which of ``system``'s ``source_ids`` wait for a person to decide what they link to (one round trip)."""
        rows = self.conn.execute(
            "SELECT s.id FROM unnest(%s::text[]) AS s(id) WHERE EXISTS (SELECT 1 FROM sync.identity_review r"
            " WHERE r.entity = %s AND r.status = 'open'"
            " AND ((r.system = %s AND r.source_id = s.id) OR (r.system <> %s AND r.candidates ? s.id)))",
            (list(source_ids), entity, system, system),
        ).fetchall()
        return {str(r[0]) for r in rows}

    def add_review(self, entity: str, system: str, source_id: str, candidates: Sequence[str], reason: str) -> None:
        """Queue an ambiguous record for a person (once)."""
        self.conn.execute(
            "INSERT INTO sync.identity_review (entity, system, source_id, candidates, reason)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (entity, system, source_id, _json(list(candidates)), reason),
        )

    def open_reviews(self, entity: str) -> list[tuple[int, str, str, list[str], str]]:
        """Open review items."""
        rows = self.conn.execute(
            "SELECT id, system, source_id, candidates, reason FROM sync.identity_review"
            " WHERE entity = %s AND status = 'open' ORDER BY id",
            (entity,),
        ).fetchall()
        return [(r[0], r[1], r[2], list(r[3]), r[4]) for r in rows]

    # -- entity state -----------------------------------------------------------------------
    def lock_state(self, conn: psycopg.Connection[Any], entity: str, global_id: str) -> EntityState:
        """The entity's state, row-locked until ``conn``'s transaction ends (serialises workers)."""
        return self.lock_states(conn, [(entity, global_id)])[(entity, global_id)]

    def values_of(self, entity: str, global_id: str) -> dict[str, dict[str, Any]]:
        """Each side's canonical values the sync last saw of the entity ({} when it saw none)."""
        row = self.conn.execute(self._q("SELECT state FROM sync.entity_state WHERE entity = %s AND global_id = %s"),
                                (entity, global_id)).fetchone()
        return EntityState.from_json(row[0]).values if row else {}

    def save_state(self, conn: psycopg.Connection[Any], entity: str, global_id: str, state: EntityState) -> None:
        """Write the entity's state (inside the locking transaction)."""
        self.save_states(conn, {(entity, global_id): state})

    def lock_states(self, conn: psycopg.Connection[Any], keys: Sequence[tuple[str, str]],
                    cache: StateCache | None = None) -> dict[tuple[str, str], EntityState]:
        """Several entities' states, row-locked (in key order) until ``conn``'s transaction ends; two queries.

        A state ``cache`` holds at the row's current version is not read again (nor parsed), but
        taken out of it: each state returned is the caller's own, to change in place, and only the
        caller's commit puts it back (a rolled-back batch leaves it out, so it is read again).
        """
        entities, gids = [k[0] for k in keys], [k[1] for k in keys]
        conn.execute(self._q(
            "INSERT INTO sync.entity_state (entity, global_id, state)"
            " SELECT e, g, '{}' FROM unnest(%s::text[], %s::uuid[]) AS k(e, g) ORDER BY e, g ON CONFLICT DO NOTHING"),
            (entities, gids),
        )
        known = cache.versions(keys) if cache is not None else [-1] * len(keys)
        rows = conn.execute(self._q(
            "SELECT s.entity, s.global_id::text, CASE WHEN s.version = k.v THEN NULL ELSE s.state END"
            " FROM sync.entity_state s"
            " JOIN unnest(%s::text[], %s::uuid[], %s::bigint[]) AS k(e, g, v) ON s.entity = k.e AND s.global_id = k.g"
            " ORDER BY s.entity, s.global_id FOR UPDATE OF s"),
            (entities, gids, known),
        ).fetchall()
        return {(r[0], r[1]): cache.take((r[0], r[1])) if r[2] is None and cache is not None
                else EntityState.from_json(r[2]) for r in rows}

    def save_states(self, conn: psycopg.Connection[Any], states: dict[tuple[str, str], EntityState]
                    ) -> dict[tuple[str, str], int]:
        """Write several entities' states (inside the locking transaction) in one statement; their new versions.

        The arrays go in binary: psycopg's text-format array quoting costs ~0.7 ms per state.
        """
        keys = list(states)
        with conn.cursor(binary=True) as cur:
            rows = cur.execute(self._q(
                "UPDATE sync.entity_state s SET state = k.state::json, updated_at = now(),"
                " version = nextval('sync.entity_state_version')"
                " FROM unnest(%b::text[], %b::uuid[], %b::text[]) AS k(e, g, state)"
                " WHERE s.entity = k.e AND s.global_id = k.g RETURNING s.entity, s.global_id::text, s.version"),
                ([k[0] for k in keys], [k[1] for k in keys], [_json(states[k].to_json()) for k in keys]),
            ).fetchall()
        return {(r[0], r[1]): int(r[2]) for r in rows}

    def add_conflicts(self, conn: psycopg.Connection[Any], entity: str, global_id: str,
                      conflicts: Iterable[Conflict]) -> list[int]:
        """Record conflicts (inside the locking transaction); their ids."""
        ids = []
        for c in conflicts:
            row = conn.execute(self._q(
                "INSERT INTO sync.conflicts (entity, global_id, field, kind, policy, base, crm_value, erp_value,"
                " resolution, value, status, resolved_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
                " CASE WHEN %s THEN now() END) RETURNING id"),
                (entity, global_id, c.field, c.kind, c.policy, _json(c.base), _json(c.crm), _json(c.erp),
                 c.resolution, _json(c.value), "open" if c.resolution is None else "resolved",
                 c.resolution is not None),
            ).fetchone()
            assert row is not None
            ids.append(int(row[0]))
        return ids

    def open_conflicts_summary(self, entity: str) -> tuple[int, float]:
        """How many conflicts of ``entity`` wait for a person, and the oldest one's age in seconds."""
        row = self.conn.execute(
            "SELECT count(*), coalesce(extract(epoch FROM now() - min(detected_at)), 0) FROM sync.conflicts"
            " WHERE entity = %s AND status = 'open'", (entity,)).fetchone()
        assert row is not None
        return int(row[0]), float(row[1])

    def conflicts(self, only_open: bool = True, limit: int = 100) -> list[dict[str, Any]]:
        """Conflicts, newest first."""
        return self._dicts(
            "SELECT c.id, c.entity, c.global_id::text AS global_id, x.crm_id, x.erp_id, c.field, c.kind, c.policy,"
            " c.base, c.crm_value, c.erp_value, c.resolution, c.value, c.status, c.detected_at, c.resolved_at"
            " FROM sync.conflicts c LEFT JOIN sync.xref x ON x.entity = c.entity AND x.global_id = c.global_id"
            " WHERE %s OR c.status = 'open' ORDER BY c.id DESC LIMIT %s",
            (not only_open, limit),
        )

    def conflict(self, conflict_id: int) -> dict[str, Any] | None:
        """One conflict with the ids of the records it concerns."""
        rows = self._dicts(
            "SELECT c.id, c.entity, c.global_id::text AS global_id, x.crm_id, x.erp_id, c.field, c.kind, c.policy,"
            " c.base, c.crm_value, c.erp_value, c.resolution, c.value, c.status, c.detected_at, c.resolved_at"
            " FROM sync.conflicts c LEFT JOIN sync.xref x ON x.entity = c.entity AND x.global_id = c.global_id"
            " WHERE c.id = %s",
            (conflict_id,),
        )
        return rows[0] if rows else None

    def mark_resolved(self, conn: psycopg.Connection[Any], conflict_id: int, resolution: str, value: Any) -> None:
        """Close a conflict (inside the transaction that applied the decision)."""
        conn.execute(
            "UPDATE sync.conflicts SET status = 'resolved', resolution = %s, value = %s, resolved_at = now()"
            " WHERE id = %s",
            (resolution, _json(value), conflict_id),
        )

    def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        """Dead letters, newest first."""
        return self._dicts(
            'SELECT id, stage, reason, topic, partition, "offset", item, created_at, replayed_at FROM sync.dead_letters'
            " ORDER BY id DESC LIMIT %s",
            (limit,),
        )

    def mark_replayed(self, ids: list[int]) -> None:
        """Note that these dead letters were sent back to their topics."""
        self.conn.execute("UPDATE sync.dead_letters SET replayed_at = now() WHERE id = ANY(%s)", (ids,))

    def _dicts(self, query: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        cur = self.conn.execute(query, params)
        names = [d.name for d in cur.description or []]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    # -- documents --------------------------------------------------------------------------
    def document(self, rule: str, global_id: str) -> dict[str, Any] | None:
        """The state of one created document."""
        rows = self._dicts(self._q("SELECT state, reason, digest, content FROM sync.documents WHERE rule = %s"
                                   " AND global_id = %s"), (rule, global_id))
        return rows[0] if rows else None

    def save_document(self, rule: str, global_id: str, source_id: str, state: str, reason: str | None,
                      digest: str | None, content: dict[str, Any] | None = None) -> None:
        """Record where a document stands (a digest of None keeps the stored one, and its content)."""
        self.conn.execute(self._q(
            "INSERT INTO sync.documents AS d (rule, global_id, source_id, state, reason, digest, content)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (rule, global_id) DO UPDATE SET state = EXCLUDED.state,"
            " reason = EXCLUDED.reason, digest = coalesce(EXCLUDED.digest, d.digest),"
            " content = CASE WHEN EXCLUDED.digest IS NULL THEN d.content ELSE EXCLUDED.content END, updated_at = now()"
            " WHERE (d.state, d.reason, d.digest)"
            " IS DISTINCT FROM (EXCLUDED.state, EXCLUDED.reason, coalesce(EXCLUDED.digest, d.digest))"),
            (rule, global_id, source_id, state, reason, digest, None if content is None else json.dumps(content)),
        )

    def forget_document(self, rule: str, global_id: str) -> None:
        """A document no longer waiting to be created (e.g. a pending deal reopened)."""
        self.conn.execute(self._q("DELETE FROM sync.documents WHERE rule = %s AND global_id = %s"
                                  " AND state = 'pending'"), (rule, global_id))

    def documents(self, states: Sequence[str], limit: int = 100, global_id: str | None = None
                  ) -> list[dict[str, Any]]:
        """Documents in ``states`` (of one global id, if given), oldest first, with their target ids."""
        return self._dicts(self._q(
            "SELECT d.rule, d.global_id::text AS global_id, d.source_id, x.crm_id, x.erp_id, d.state, d.reason,"
            " d.updated_at FROM sync.documents d LEFT JOIN sync.xref x ON x.global_id = d.global_id"
            " WHERE d.state = ANY(%s) AND (%s::uuid IS NULL OR d.global_id = %s::uuid) ORDER BY d.updated_at LIMIT %s"),
            (list(states), global_id, global_id, limit),
        )

    def documents_summary(self) -> dict[tuple[str, str], int]:
        """How many documents each rule has in each state."""
        rows = self.conn.execute(self._q("SELECT rule, state, count(*) FROM sync.documents GROUP BY rule, state")
                                 ).fetchall()
        return {(r[0], r[1]): int(r[2]) for r in rows}

    # -- dead letters -----------------------------------------------------------------------
    def dead_letters_pending(self) -> dict[str, int]:
        """Dead letters not replayed yet, per stage (``apply-crm`` / ``apply-erp``: writes a target refused)."""
        rows = self.conn.execute("SELECT stage, count(*) FROM sync.dead_letters WHERE replayed_at IS NULL"
                                 " GROUP BY stage").fetchall()
        return {str(r[0]): int(r[1]) for r in rows}

    def add_dead_letter(self, stage: str, reason: str, topic: str, partition: int, offset: int,
                        incarnation: str = "", fingerprint: str | None = None, item: int = 0) -> None:
        """Index a dead letter (the bytes are in the dead-letter topic), once per position of a topic incarnation."""
        self.conn.execute(
            'INSERT INTO sync.dead_letters (stage, reason, topic, partition, "offset", incarnation, fingerprint, item)'
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (stage, reason, topic, partition, offset, incarnation, fingerprint, item),
        )

    def has_dead_letter(self, fingerprint: str) -> bool:
        """A dead letter with this fingerprint (a row's bad field and value) is known and not replayed."""
        return self.conn.execute("SELECT 1 FROM sync.dead_letters WHERE fingerprint = %s AND replayed_at IS NULL",
                                 (fingerprint,)).fetchone() is not None
