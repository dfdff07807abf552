"""Where an edit's latency goes: its time in each hop, from the records the hops wrote.

An edit of the steady benchmark is a value written once (a fresh e-mail on the CRM, a fresh credit
limit on the ERP). It crosses four hops, each ending in a record stamped with the time it was
produced (Kafka's ``CreateTime``, set by the producer) or a commit time (the benchmark's audit
triggers), all from this machine's one clock:

- capture: source commit -> Debezium's raw record (Kafka Connect's producer);
- normalize: raw record -> its change record on ``sync.changes.<entity>`` (the worker's send);
- reconcile: change record -> the command it decided on ``sync.commands.<target>``;
- apply: command -> the write committed on the target.

The earliest record of each hop carrying the value from its system is the edit's (a value is
written once; what carries it later is an echo or a change of another field of the row).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from streams.bench.report import latency_summary
from streams.local.harness import Harness, TopicReader
from streams.topics import changes_topic, commands_topic, raw_topic

HOPS = ("capture", "normalize", "reconcile", "apply")
# An edit's (source system, raw table, source column, canonical field) by its audit column.
EDITS = {
    "email": ("crm", "public.accounts", "email", "email"),
    "credit_limit_fen": ("erp", "public.customers", "credit_limit_fen", "credit_limit_fen"),
}


def first_times(records: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str, str, Any], float]:
    """(hop's record kind, system, field, value) -> the earliest time (s) a record of that kind carried it.

    The system is the one a raw or change record comes from, or a command's target: the sync's own
    write of an e-mail comes back in the ERP's raw topic with the same value, later.
    """
    first: dict[tuple[str, str, str, Any], float] = {}

    def note(kind: str, system: str, field: str, value: Any, ms: int) -> None:
        key = (kind, system, field, value)
        first[key] = min(first.get(key, ms / 1000), ms / 1000)

    for r in records:
        value, topic, ms = r["value"], r["topic"], r["timestamp"]
        if not isinstance(value, dict):
            continue
        if topic.startswith("sync.changes."):
            canonical = json.loads(value.get("values_json") or "{}")
            for _, _, _, field in EDITS.values():
                if field in canonical:
                    note("change", value["system"], field, canonical[field], ms)
        elif topic.startswith("sync.commands."):
            if value.get("op") == "set":
                note("command", value["system"], value["field"], json.loads(value["value_json"]), ms)
        else:
            after = value.get("after") or {}
            for _, _, column, _ in EDITS.values():
                if column in after:
                    note("raw", topic.split(".", 1)[0], column, after[column], ms)
    return first


def breakdown(h: Harness, edits: Mapping[str, tuple[float, float]], entity: str = "customer") -> dict[str, Any]:
    """Per hop, p50 / p95 / p99 / max in ms of the applied ``edits`` (audit key -> source and target commit).

    An audit key is ``<column>:<value>`` as the steady benchmark's triggers write it on the source.
    """
    topics = [raw_topic(s, t) for s, t, _, _ in EDITS.values()]
    topics += [changes_topic(entity), commands_topic("crm"), commands_topic("erp")]
    reader = TopicReader(h.bootstrap, h.registry_url, topics)
    try:
        while reader.poll(2.0):
            pass
        first = first_times(reader.records)
    finally:
        reader.close()
    return split(first, edits)


def split(first: Mapping[tuple[str, str, str, Any], float], edits: Mapping[str, tuple[float, float]]) -> dict[str, Any]:
    """Per hop, the latency summary of the ``edits`` traced through every hop's ``first`` record.

    ``all`` of them, and apart by the system they were made on (``crm``: e-mails to the ERP, ``erp``:
    credit limits to the CRM).
    """
    hops: dict[str, dict[str, list[float]]] = {side: {hop: [] for hop in HOPS} for side in ("all", "crm", "erp")}
    for key, (source_at, target_at) in edits.items():
        column, text = key.split(":", 1)
        source, _, raw_column, field = EDITS[column]
        value: Any = text if column == "email" else int(text)
        target = "erp" if source == "crm" else "crm"
        times = [source_at, first.get(("raw", source, raw_column, value)), first.get(("change", source, field, value)),
                 first.get(("command", target, field, value)), target_at]
        if any(t is None for t in times):
            continue
        for hop, start, end in zip(HOPS, times, times[1:], strict=False):
            for side in ("all", source):
                hops[side][hop].append((end - start) * 1000)  # type: ignore[operator]
    return {"traced": len(hops["all"]["apply"]),
            **{side: {hop: latency_summary(ms) for hop, ms in by_hop.items()} for side, by_hop in hops.items()}}
