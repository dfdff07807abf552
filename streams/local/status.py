"""``crm-erp-sync status``: the health of every part, from the databases, the broker, Kafka Connect and metrics."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

import psycopg

from streams.errors import SyncError
from streams.local.stack import registry_ready, running_pid
from streams.settings import Settings


def status(settings: Settings) -> dict[str, Any]:
    """Health of each part, as a dict (the CLI prints it)."""
    out: dict[str, Any] = {"up_pid": running_pid(settings)}
    for name in ("crm", "erp", "store"):
        db = settings.database(name)
        try:
            with psycopg.connect(**{**db.conninfo(), "connect_timeout": 3}) as conn:
                wal = conn.execute("SHOW wal_level").fetchone()
                slots = conn.execute(
                    "SELECT slot_name, active, pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)"
                    " FROM pg_replication_slots WHERE database = current_database()"
                ).fetchall()
            out[name] = {"reachable": True, "wal_level": wal[0] if wal else None,
                         "slots": {r[0]: {"active": r[1], "retained_wal_bytes": int(r[2] or 0)} for r in slots}}
        except (psycopg.Error, SyncError) as exc:
            out[name] = {"reachable": False, "error": str(exc).strip().splitlines()[0] if str(exc) else ""}
    out["sources"] = _sources(settings)
    out["flows"] = _flows(settings)
    out["broker"] = _broker(settings)
    out["registry"] = {"reachable": registry_ready(settings.registry.url)}
    out["capture"] = _capture(settings)
    return out


def _broker(settings: Settings) -> dict[str, Any]:
    """Reachability, and every planned topic's partitions, replication factor and in-sync replicas."""
    from streams.topics import admin_client, describe, planned, topic_table

    try:
        states = describe(admin_client(settings.kafka), timeout=5.0)
        specs = planned(settings)
    except SyncError as exc:
        return {"reachable": False, "error": exc.message}
    return {"reachable": True, "topics": topic_table(states, specs)}


def _capture(settings: Settings) -> dict[str, Any]:
    """The capture mode and, through Kafka Connect, each source connector's state."""
    out: dict[str, Any] = {"mode": settings.capture.mode}
    if settings.capture.mode != "connect":
        return out
    from streams.capture.connect import ConnectClient, explain, root_cause
    from streams.capture.connector import load_connector

    client = ConnectClient(settings.capture.connect_url, timeout=3.0)
    for source in settings.capture.sources:
        try:
            name = load_connector(settings.capture.connectors_dir / f"{source}-postgres.json")["name"]
            state = client.status(name)
        except SyncError as exc:
            out[source] = {"state": "UNKNOWN", "error": exc.message}
            continue
        if state is None:
            out[source] = {"state": "NOT DEPLOYED"}
            continue
        tasks = state.get("tasks", [])
        failed = [t for t in tasks if t.get("state") == "FAILED"]
        entry: dict[str, Any] = {"connector": name, "state": state.get("connector", {}).get("state", "UNASSIGNED"),
                                 "tasks": [t.get("state") for t in tasks]}
        if failed or entry["state"] == "FAILED":
            entry["error"] = explain(root_cause(failed[0].get("trace") if failed else state["connector"].get("trace")),
                                     settings.registry.url)
        out[source] = entry
    return out


STALLED_AFTER_S = 60.0  # as the SyncSourceStalled alert: an idle source still heartbeats every 5 s


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]] | None:
    """The samples a local /metrics endpoint serves, by name; None when nothing answers."""
    from prometheus_client.parser import text_string_to_metric_families

    if not port:
        return None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode("utf-8")
    except OSError:
        return None
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def _sources(settings: Settings) -> dict[str, Any]:
    """Per source: seconds since the last event and heartbeat, and streaming / idle / STALLED."""
    samples = scrape(settings.capture.metrics_port)
    now = time.time()

    def age(name: str, source: str) -> float | None:
        values = [v for labels, v in (samples or {}).get(name, []) if labels.get("source") == source]
        return round(now - max(values), 1) if values else None

    out: dict[str, Any] = {}
    for source in settings.capture.sources:
        if samples is None:
            out[source] = {"state": "unknown (capture metrics not reachable)"}
            continue
        event = age("sync_capture_last_event_timestamp_seconds", source)
        beat = age("sync_capture_last_heartbeat_timestamp_seconds", source)
        out[source] = {"state": source_state(event, beat), "last_event_s": event, "last_heartbeat_s": beat}
    return out


def source_state(event_age: float | None, heartbeat_age: float | None) -> str:
    """Streaming (recent events), idle (no recent events, heartbeats flow) or STALLED (no heartbeat)."""
    if heartbeat_age is None:
        return "starting"
    if heartbeat_age > STALLED_AFTER_S:
        return "STALLED"
    return "streaming" if event_age is not None and event_age < STALLED_AFTER_S else "idle"


def _flows(settings: Settings) -> dict[str, Any]:
    """Per flow (entity): consumer lag, conflicts waiting for a person, dead letters not replayed."""
    from streams.mapping.profile import load_profiles
    from streams.store import Store
    from streams.topics import raw_topic

    try:
        profiles = load_profiles(settings.processors.profiles)
    except SyncError as exc:
        return {"profiles": {"error": exc.message}}
    entities = [p.entity for p in profiles]
    flow_topics = {p.entity: {f"sync.changes.{p.entity}", *(raw_topic(s, p.table_of(s)) for s in ("crm", "erp"))}
                   for p in profiles}
    samples = scrape(settings.processors.metrics_port)
    lags: dict[str, float] = {}  # per topic, over all its partitions this worker reads
    for labels, value in (samples or {}).get("sync_consumer_lag_messages", []):
        topic = labels.get("topic", "")
        lags[topic] = lags.get(topic, 0.0) + value
    flows: dict[str, Any] = {"worker": worker_state(samples, time.time())}
    if samples is not None:
        flows["consumer_lag"] = {topic: int(v) for topic, v in sorted(lags.items())}
    try:
        store = Store({**settings.store.conninfo(), "connect_timeout": 3})
    except (psycopg.Error, SyncError):
        return {entity: {"store": "not reachable"} for entity in entities}
    try:
        dead = store.dead_letters_pending()
        for entity in entities:
            # The lag on the topics of the flow: its raw topics and its sync.changes.<entity>.
            lag = None if samples is None else int(sum(v for t, v in lags.items() if t in flow_topics[entity]))
            waiting, oldest = store.open_conflicts_summary(entity)
            flows[entity] = {"consumer_lag": lag, "conflicts_waiting": waiting, "oldest_waiting_s": oldest}
        flows["dead_letters"] = sum(dead.values())
        flows["refused_writes"] = {s: dead.get(f"apply-{s}", 0) for s in ("crm", "erp")}
        documents: dict[str, int] = {}
        for (_, state), n in store.documents_summary().items():
            documents[state] = documents.get(state, 0) + n
        flows["documents"] = {state: documents.get(state, 0) for state in ("pending", "diverged")}
    except psycopg.errors.UndefinedTable:
        return {entity: {"store": "holds no sync state yet (no worker has run)"} for entity in entities}
    finally:
        store.close()
    return flows


def worker_state(samples: dict[str, list[tuple[dict[str, str], float]]] | None, now: float) -> str:
    """``progressing`` / ``idle`` / ``STALLED …`` from a worker's metrics (lag, and each stage's last progress)."""
    if samples is None:
        return "unknown (worker metrics not reachable: down, starting or restarting)"
    lag = int(sum(v for _, v in samples.get("sync_consumer_lag_messages", [])))
    progress = [v for _, v in samples.get("sync_stage_last_progress_timestamp_seconds", [])]
    last = now - max(progress) if progress else None
    if lag and (last is None or last > STALLED_AFTER_S):
        since = "never" if last is None else f"{last:.0f}s ago"
        return f"STALLED: {lag} messages behind, last progress {since}"
    return f"progressing, {lag} messages behind" if lag else "idle (nothing behind)"


def format_status(info: dict[str, Any]) -> str:
    """Status for the terminal."""
    lines = [f"up: {'running (pid ' + str(info['up_pid']) + ')' if info['up_pid'] else 'not running'}"]
    for name in ("crm", "erp", "store", "broker", "registry"):
        part = info[name]
        state = "ok" if part.get("reachable") else f"DOWN {part.get('error', '')}".rstrip()
        extra = ""
        if part.get("slots"):
            extra = "  " + ", ".join(
                f"slot {k} {'active' if v['active'] else 'INACTIVE'} retains {v['retained_wal_bytes']} B"
                for k, v in part["slots"].items()
            )
        lines.append(f"  {name:<9} {state}{extra}")
    for topic in info["broker"].get("topics", []):
        if topic["partitions"] is None:
            lines.append(f"    topic {topic['topic']} MISSING")
            continue
        health = "" if topic["min_isr"] >= min(topic["replication_factor"], 2) and not topic["leaderless"] else (
            f"  UNDER-REPLICATED (in-sync {topic['min_isr']}, leaderless partitions {topic['leaderless']})")
        lines.append(f"    topic {topic['topic']:<34} partitions {topic['partitions']}, replication"
                     f" {topic['replication_factor']}, in-sync >= {topic['min_isr']}{health}")
    capture = info.get("capture", {})
    for source, part in capture.items():
        if source == "mode":
            continue
        tasks = ", ".join(part.get("tasks", [])) or "none"
        error = f": {part['error']}" if part.get("error") else ""
        lines.append(f"  capture {source:<5} connector {part['state']}, tasks {tasks}{error}")
    for source, part in info.get("sources", {}).items():
        detail = "".join(f", {k.removesuffix('_s').replace('_', ' ')} {v:.0f}s ago"
                         for k, v in part.items() if k.endswith("_s") and v is not None)
        lines.append(f"  source {source:<6} {part['state']}{detail}")
    for flow, part in info.get("flows", {}).items():
        if flow == "consumer_lag":
            lagging = {t: n for t, n in part.items() if n}
            lines.append(f"  consumer lag {sum(part.values())} over {len(part)} topics"
                         + (": " + ", ".join(f"{t} {n}" for t, n in lagging.items()) if lagging else ""))
            continue
        if flow == "dead_letters":
            lines.append(f"  dead letters {part} not replayed (crm-erp-sync dlq list)")
            continue
        if flow == "refused_writes":
            lines.append(f"  writes refused by the target: crm {part['crm']}, erp {part['erp']}"
                         " (each field is free for its next value; crm-erp-sync dlq list shows why)")
            continue
        if flow == "worker":
            lines.append(f"  worker   {part}")
            continue
        if flow == "documents":
            lines.append(f"  documents {part['pending']} pending, {part['diverged']} diverged"
                         " (crm-erp-sync documents)")
            continue
        if "error" in part or "store" in part:
            lines.append(f"  flow {flow:<8} {part.get('error') or 'sync store ' + part['store']}")
            continue
        lag = "unknown (worker metrics not reachable)" if part["consumer_lag"] is None else part["consumer_lag"]
        lines.append(f"  flow {flow:<8} consumer lag {lag}, conflicts waiting {part['conflicts_waiting']}"
                     f" (oldest {part['oldest_waiting_s']:.0f}s)")
    return "\n".join(lines)


def status_json(info: dict[str, Any]) -> str:
    """Status as JSON."""
    return json.dumps(info, indent=2, default=str)
