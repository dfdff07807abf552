"""``crm-erp-sync compare``: both databases read through a profile, every record put in one category.

Read-only. Each side's table is read in key order, in chunks (one ``REPEATABLE READ`` read-only
transaction each, a pause between chunks so production does not feel it), mapped to canonical
values with the profile, and set against the sync store's cross-reference:

* ``linked_equal`` / ``linked_drifted``: a linked pair, its synced fields equal or not (each drifted
  field with both values; a field with an open conflict is counted apart, as ``in_conflict``);
* ``eligible`` / ``not_eligible``: a record without a counterpart that its create rule would (not)
  create on the other system (with the condition that keeps it out);
* ``in_review``: waiting in identity review (ambiguous or a duplicate); ``merged``: merged away;
* ``out_of_scope``: outside the profile's pilot ``scope`` (linked or not): the sync writes nothing for it;
* ``created_unlinked``: a row the sync created whose change event has not attached it to its record yet;
* ``unknown``: a row the sync has never seen (written behind its back, or capture is behind).

Each record of each side is in exactly one category, so the categories add up to both counts.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from streams.mapping.profile import QUERIED, Profile
from streams.settings import Settings
from streams.store import Store


def as_text(value: Any) -> str:
    """A value in a CSV cell: as JSON (a text quoted, a number not, null for none)."""
    return json.dumps(value, ensure_ascii=False, default=str)


CSV_HEADER = ["row", "entity_or_rule", "system", "category", "count", "global_id", "crm_id", "erp_id", "field",
              "crm_value", "erp_value"]
CATEGORIES = ("linked_equal", "linked_drifted", "in_conflict", "eligible", "not_eligible", "in_review", "merged",
              "out_of_scope", "created_unlinked", "unknown")


@dataclass
class Drift:
    """One field a linked pair disagrees on."""

    global_id: str
    crm_id: str
    erp_id: str
    field: str
    crm: Any
    erp: Any


@dataclass
class Report:
    """Counts per side and category, and the details behind them."""

    entity: str
    totals: dict[str, int] = field(default_factory=dict)
    categories: dict[str, Counter[str]] = field(default_factory=lambda: {"crm": Counter(), "erp": Counter()})
    drift: list[Drift] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)  # why one-sided records are not eligible
    eligible: list[tuple[str, str, str]] = field(default_factory=list)  # (global id, system, key)
    unknown: dict[str, list[str]] = field(default_factory=lambda: {"crm": [], "erp": []})

    def adds_up(self) -> bool:
        return all(sum(self.categories[s].values()) == self.totals.get(s, 0) for s in ("crm", "erp"))

    def as_rows(self) -> list[list[Any]]:
        """CSV rows (``CSV_HEADER``): a count per side and category, then each drifted field."""
        rows: list[list[Any]] = [["count", self.entity, s, c, self.categories[s][c], "", "", "", "", "", ""]
                                 for s in ("crm", "erp") for c in CATEGORIES]
        rows += [["drift", self.entity, "", "linked_drifted", "", d.global_id, d.crm_id, d.erp_id, d.field,
                  as_text(d.crm), as_text(d.erp)] for d in self.drift]
        return rows

    def as_dict(self) -> dict[str, Any]:
        return {"entity": self.entity, "totals": self.totals,
                "categories": {s: {c: self.categories[s][c] for c in CATEGORIES} for s in ("crm", "erp")},
                "drifted_fields": dict(Counter(d.field for d in self.drift)),
                "drift": [d.__dict__ for d in self.drift], "not_eligible_because": dict(self.reasons)}


def rows(settings: Settings, profile: Profile, system: str, chunk: int, pause_s: float,
         progress: Any = None) -> Iterator[dict[str, Any]]:
    """Every row of the profile's table on ``system``, in key order, a chunk per read-only snapshot.

    A queried side's value comes with each row, its query run for that row (``QUERIED`` columns).
    """
    schema, _, table = profile.table_of(system).partition(".")
    key = profile.key_of(system)
    row_key = sql.SQL("t.{}").format(sql.Identifier(key))
    queried = [sql.SQL(", ({}) AS {}").format(
        sql.SQL(side.query.replace("%(key)s", row_key.as_string(None))),  # type: ignore[union-attr]
        sql.Identifier(QUERIED.format(name))) for name, side in profile.queried(system).items()]
    after: Any = None
    done = 0
    with psycopg.connect(**settings.database(system).conninfo(), row_factory=dict_row) as conn:
        while True:
            query = sql.SQL("SELECT t.*{} FROM {}.{} AS t {} ORDER BY {} LIMIT %s").format(
                sql.SQL("").join(queried), sql.Identifier(schema), sql.Identifier(table),
                sql.SQL("WHERE {} > %s").format(row_key) if after is not None else sql.SQL(""), row_key)
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            batch = conn.execute(query, ((after, chunk) if after is not None else (chunk,))).fetchall()
            conn.execute("COMMIT")
            yield from batch
            done += len(batch)
            if progress:
                progress(system, done)
            if len(batch) < chunk:
                return
            after = batch[-1][key]
            time.sleep(pause_s)


def compare(settings: Settings, profile: Profile, store: Store, chunk: int = 5000, pause_s: float = 0.0,
            progress: Any = None) -> Report:
    """The report of one entity."""
    entity = profile.entity
    report = Report(entity)
    links = {(s, i): x for x in store.links(entity) for s, i in (("crm", x.crm_id), ("erp", x.erp_id)) if i}
    reviewing: set[tuple[str, str]] = set()  # a review item, and its candidates (of either system)
    for _, system, source_id, candidates, _ in store.open_reviews(entity):
        reviewing.add((system, source_id))
        reviewing.update((s, str(c)) for c in candidates for s in ("crm", "erp"))
    conflicted = {(str(r[0]), r[1]) for r in store.conn.execute(
        "SELECT global_id::text, field FROM sync.conflicts WHERE entity = %s AND status = 'open'", (entity,))}
    values: dict[str, dict[str, dict[str, Any]]] = {"crm": {}, "erp": {}}
    from streams.identity.bootstrap import created_by_sync

    for system in ("crm", "erp"):
        key = profile.key_of(system)
        created = created_by_sync(profile, settings, system)
        count = 0
        for row in rows(settings, profile, system, chunk, pause_s, progress):
            count += 1
            source_id = str(row[key])
            canonical, _ = profile.read_fields(system, row)
            link = links.get((system, source_id))
            peer = None if link is None else (link.erp_id if system == "crm" else link.crm_id)
            if link is not None and peer is not None:
                values[system][link.global_id] = canonical  # categorised once both sides are read
                continue
            category = ("created_unlinked" if link is None and source_id in created
                        else _alone(profile, system, source_id, canonical, link, reviewing, report))
            report.categories[system][category] += 1
            if category == "eligible" and link is not None:
                report.eligible.append((link.global_id, system, source_id))
            elif category == "unknown":
                report.unknown[system].append(source_id)
        report.totals[system] = count
    for x in {x.global_id: x for x in links.values() if x.crm_id and x.erp_id}.values():
        crm, erp = values["crm"].get(x.global_id), values["erp"].get(x.global_id)
        if crm is None or erp is None:  # linked, but the row is gone on one side: counted by the other
            for system, found in (("crm", crm), ("erp", erp)):
                if found is not None:
                    report.categories[system]["linked_drifted"] += 1
            continue
        if not profile.in_scope({"crm": crm, "erp": erp}):
            for system in ("crm", "erp"):
                report.categories[system]["out_of_scope"] += 1
            continue
        drifted = [f for f in profile.synced_fields() if crm.get(f) != erp.get(f)]
        open_ = [f for f in drifted if (x.global_id, f) in conflicted]
        category = "linked_equal" if not drifted else "in_conflict" if len(open_) == len(drifted) else "linked_drifted"
        report.drift += [Drift(x.global_id, str(x.crm_id), str(x.erp_id), f, crm.get(f), erp.get(f))
                         for f in drifted if f not in open_]
        for system in ("crm", "erp"):
            report.categories[system][category] += 1
    return report


def repair(settings: Settings, profile: Profile, store: Store, report: Report) -> dict[str, int]:
    """Turn the findings into ordinary sync events; nothing is written to either system directly.

    Both rows of each drifted pair are read again by Debezium (an incremental snapshot filtered by
    key), so reconcile meets the drifted value as a change and the field's policy decides (a manual
    field becomes a conflict); a row the sync never saw is read the same way and meets identity; an
    eligible one-sided record is due to be created now.
    """
    from streams.capture.signal import resnapshot
    from streams.identity.keys import IdentityKeys

    pairs = sorted({(d.crm_id, d.erp_id) for d in report.drift})
    signals = 0
    for i, system in enumerate(("crm", "erp")):
        signals += resnapshot(profile, settings, system, sorted({p[i] for p in pairs} | set(report.unknown[system])))
    with store.conn.transaction():
        IdentityKeys(profile.entity).pend_creates(store.conn, report.eligible, 0)
    return {"drifted pairs re-read": len(pairs), "unknown rows re-read": sum(map(len, report.unknown.values())),
            "creations due": len(report.eligible), "snapshot signals": signals}


def _alone(profile: Profile, system: str, source_id: str, canonical: dict[str, Any], link: Any,
           reviewing: set[tuple[str, str]], report: Report) -> str:
    """The category of a record without a counterpart."""
    if link is None:
        return "unknown"
    if link.linked_by == "merged":
        return "merged"
    if (system, source_id) in reviewing:
        return "in_review"
    if not profile.in_scope({system: canonical}):
        return "out_of_scope"
    rule = profile.create_rule(system)
    if rule is not None and rule.values_for(canonical) is not None:
        return "eligible"
    if rule is None:
        report.reasons[f"{system}: no create rule to the other system"] += 1
    else:
        failing = [f"{name} in {allowed}" for name, allowed in rule.when.items() if canonical.get(name) not in allowed]
        report.reasons[f"{system}: create rule needs {', '.join(failing)}"] += 1
    return "not_eligible"


def format_table(report: Report) -> str:
    """The report as text: a line per category, then the drifted fields."""
    lines = [f"{report.entity}: crm {report.totals.get('crm', 0)}, erp {report.totals.get('erp', 0)}",
             f"  {'category':<16} {'crm':>8} {'erp':>8}"]
    lines += [f"  {c:<16} {report.categories['crm'][c]:>8} {report.categories['erp'][c]:>8}" for c in CATEGORIES]
    for reason, n in sorted(report.reasons.items()):
        lines.append(f"  not eligible: {reason} ({n})")
    for f, n in sorted(Counter(d.field for d in report.drift).items()):
        lines.append(f"  drifted field {f}: {n} pairs")
    for d in report.drift[:20]:
        lines.append(f"    crm {d.crm_id} / erp {d.erp_id} {d.field}: crm {d.crm!r} erp {d.erp!r}")
    if len(report.drift) > 20:
        lines.append(f"    … and {len(report.drift) - 20} more (--format json lists every one)")
    return "\n".join(lines)
