"""The peer: Debezium's JDBC sink, the pipeline a user would assemble instead of ours for one-way sync.

Same run, same services: on the Kafka Connect worker that captures for the sync, Debezium's JDBC
sink connector (Maven Central) copies the CRM's ``accounts`` from Debezium's own topic into
``peer_accounts`` in the ERP database (upsert by key, the table made by the sink). Then:

- steady: the load of ``bench steady`` (half CRM e-mails, half ERP credit limits) at each rate, the
  sync and the sink running side by side; latency per CRM e-mail edit from its commit to the sync's
  write of it in ``customers`` and to the sink's write of it in ``peer_accounts`` (audit triggers,
  one clock), and the sync's ERP → CRM latency;
- backlog: N CRM e-mail edits captured while the worker is stopped and the sink paused; then each
  drains it alone: the worker (until every linked ERP customer holds its account's last e-mail),
  then the sink (resumed, until every copied row does);
- native: the anchor of ``bench all`` (PostgreSQL's own publication + subscription of the same kind
  of edits) at the same rates and for a burst of N edits, on its own services once ours stopped.

The sink's work is lighter by design — one table one way, no identity, policy, conflicts, echoes
or audit — so the ratio says what the sync's two-way machinery costs against the simplest pipeline.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from streams.bench import anchor, drain
from streams.bench.report import latency_summary, write
from streams.bench.steady import (
    TRIGGERS,
    _audit,
    _install_audit,
    _load,
    _target_key,
    aligned_pairs,
    peak_rss_mb,
    warm_up,
)
from streams.capture.connect import ConnectClient
from streams.local import jars
from streams.local.harness import Harness, reached, running, scratch_harness, wait_for
from streams.local.ports import free_port

SINK = "peer-jdbc-sink"
COPY = "peer_accounts"
COPY_AUDIT = """
CREATE OR REPLACE FUNCTION bench.note_copy() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO bench.audit (value) VALUES ('copy:' || NEW.email); RETURN NEW; END $$;
CREATE TRIGGER bench_copy AFTER UPDATE OF email ON public.peer_accounts FOR EACH ROW
  WHEN (NEW.email IS DISTINCT FROM OLD.email) EXECUTE FUNCTION bench.note_copy();
"""


def sink_config(h: Harness) -> dict[str, str]:
    """The JDBC sink: Debezium's topic of the CRM's accounts, upserted into the ERP database."""
    info = h.conninfo("erp")
    avro = {"converter": "io.confluent.connect.avro.AvroConverter", "converter.schema.registry.url": h.registry_url}
    return {
        "connector.class": "io.debezium.connector.jdbc.JdbcSinkConnector",
        "tasks.max": "1",
        "topics": "crm.public.accounts",
        "connection.url": f"jdbc:postgresql://{info['host']}:{info['port']}/erp",
        "connection.username": "${env:ERP_DB_USER}",
        "connection.password": "${env:ERP_DB_PASSWORD}",
        "insert.mode": "upsert",
        "delete.enabled": "true",
        "primary.key.mode": "record_key",
        "schema.evolution": "basic",
        "collection.name.format": COPY,
        **{f"key.{k}": v for k, v in avro.items()},
        **{f"value.{k}": v for k, v in avro.items()},
    }


def _copied(h: Harness) -> dict[str, str]:
    with h.connect("erp") as erp:
        return {str(r[0]): r[1] for r in erp.execute("SELECT id, email FROM public.peer_accounts").fetchall()}


def _start_sink(h: Harness, client: ConnectClient) -> None:
    client.put_config(SINK, sink_config(h))
    with h.connect("crm") as crm:
        rows = int(crm.execute("SELECT count(*) FROM accounts").fetchone()[0])  # type: ignore[index]

    def copied() -> bool:
        try:
            return len(_copied(h)) >= rows
        except Exception:  # the sink has not made its table yet
            return False

    wait_for(copied, 300, 1.0, f"the JDBC sink's first copy of the CRM's accounts (see {h.root / 'connect.log'})")
    with h.connect("erp") as erp:
        erp.execute(COPY_AUDIT)


def _arrived(h: Harness, got: dict[str, dict[str, float]], wanted: dict[str, list[str]]) -> bool:
    """Collect both audit tables into ``got``; True once every wanted key is there."""
    for system in got:
        got[system].update(_audit(h, system))
    return all(key in got[system] for system, keys in wanted.items() for key in keys)


def steady(h: Harness, pairs: list[tuple[Any, str]], rates: tuple[float, ...], seconds: float, progress: bool
           ) -> list[dict[str, Any]]:
    """Each rate with the sync and the sink side by side; latencies of both."""
    for system in TRIGGERS:
        _audit(h, system)
    steps = []
    for rate in rates:
        if progress:
            print(f"  {rate:g} edits/s for {seconds:g} s, the sync and the sink side by side ...", flush=True)
        expected, achieved = _load(h, pairs, rate, seconds, f"p{rate:g}", progress)
        emails = [k for k in expected if k.startswith("email:")]
        last_limit = _target_key(next(k for k in reversed(expected) if k.startswith("credit")))
        got: dict[str, dict[str, float]] = {"crm": {}, "erp": {}}
        last = {"crm": [last_limit], "erp": [emails[-1], f"copy:{emails[-1][6:]}"]}
        done = reached(lambda g=got, w=last: _arrived(h, g, w), 120)  # the last edits through the sync and the sink
        ours, sink, back = [], [], []
        for key in emails:
            source, value = got["crm"].get(key), key[6:]
            if source is None:
                continue
            if key in got["erp"]:
                ours.append((got["erp"][key] - source) * 1000)
            if f"copy:{value}" in got["erp"]:
                sink.append((got["erp"][f"copy:{value}"] - source) * 1000)
        for key in expected:
            if key.startswith("credit") and key in got["erp"] and _target_key(key) in got["crm"]:
                back.append((got["crm"][_target_key(key)] - got["erp"][key]) * 1000)
        steps.append({"rate_per_s": rate, "achieved_rate_per_s": round(achieved, 1), "crm_email_edits": len(emails),
                      "all_arrived_within_120s": done,
                      "sync_crm_to_erp": {"applied": len(ours), "latency_ms": latency_summary(ours)},
                      "sync_erp_to_crm": {"applied": len(back), "latency_ms": latency_summary(back)},
                      "jdbc_sink": {"applied": len(sink), "latency_ms": latency_summary(sink)}})
        if not done:
            break
    return steps


def backlog(h: Harness, port: int, client: ConnectClient, edits: int, progress: bool) -> dict[str, Any]:
    """The same backlog drained by the worker alone, then by the sink alone."""
    pairs = drain.linked_pairs(h)
    client.pause(SINK)
    wait_for(lambda: (client.status(SINK) or {}).get("connector", {}).get("state") == "PAUSED", 60, 0.5,
             "the sink paused")
    final = drain.pile(h, edits, progress)
    if progress:
        print("  the worker drains it ...", flush=True)
    ours = drain.drain_by_workers(h, port, 1, pairs, final)
    if progress:
        print("  the JDBC sink drains it ...", flush=True)
    started = time.monotonic()
    client.pause(SINK, paused=False)
    wait_for(lambda: all(_copied(h).get(k) == v for k, v in final.items()), 3600, 0.5,
             "every copied row at its account's last e-mail")
    sink_s = time.monotonic() - started
    return {"edits": edits,
            "sync": {"seconds": ours["drain_s"], "changes_per_s": round(edits / max(ours["drain_s"], 1e-9))},
            "jdbc_sink": {"seconds": round(sink_s, 1), "changes_per_s": round(edits / max(sink_s, 1e-9)),
                          "note": "from the resume, its consumer's start included"}}


def run(rates: tuple[float, ...] = (200, 1000), seconds: float = 60.0, edits: int = 20_000,
        out: Path | None = None, progress: bool = True, warmup_s: float = 0.0) -> dict[str, Any]:
    """Both parts on one freshly started stack (capture through Kafka Connect, where the sink runs too).

    ``warmup_s`` of load at the first rate, both running, comes first, not measured (``steady.warm_up``).
    """
    result: dict[str, Any] = {"benchmark": "peer", "seconds_per_step": seconds, "warmup_s": warmup_s,
                              "jdbc_sink": f"io.debezium:debezium-connector-jdbc:{jars.DEBEZIUM_JDBC_VERSION}"}
    with scratch_harness("bench", seed_accounts=300, capture_mode="connect",
                         connect_plugins=(jars.DEBEZIUM_JDBC,)) as h:
        port = free_port()
        h.write_config(processors={"metrics_port": port})
        _install_audit(h)
        with running(h.spawn("capture")) as capture:
            client = ConnectClient(h.connect_url)
            with running(h.spawn("worker", log_name="worker.log")) as worker:
                pairs = aligned_pairs(h, port, progress)
                _start_sink(h, client)
                warm_up(h, pairs, [port], rates[0], warmup_s, progress)
                result["steady"] = steady(h, pairs, rates, seconds, progress)
                result["peak_rss_mb"] = {"kafka_connect": peak_rss_mb(h.connect_proc.pid) if h.connect_proc else None,
                                         "worker": peak_rss_mb(worker.pid), "capture": peak_rss_mb(capture.pid)}
                write(result, out)
            result["backlog"] = backlog(h, port, client, edits, progress)
    write(result, out)
    result["native"] = anchor.run(rates, seconds, edits, progress)  # its own services, after ours stopped
    return write(result, out)


def _lat(part: dict[str, Any]) -> str:
    lat = part["latency_ms"]
    if lat["p50"] is None:
        return "none arrived"
    return f"{lat['p50']}/{lat['p95']}/{lat['p99']}/{lat['max']} ms ({part['applied']})"


def _ratio(ours: float | None, theirs: float | None) -> str:
    return f"{ours / theirs:.1f}x" if ours and theirs else "-"


def format_result(result: dict[str, Any]) -> str:
    """Side by side, with ratios: the sync, the JDBC sink, native logical replication."""
    native = {s["rate_per_s"]: s for s in result.get("native", {}).get("steps", [])}
    lines = [f"the sync next to Debezium's JDBC sink ({result['jdbc_sink']}) on the same Kafka Connect, and native"
             " logical replication (publication + subscription, its own services):",
             f"  steady, p50/p95/p99/max (edits that arrived; after {result.get('warmup_s', 0):g} s of warm-up):"]
    for s in result.get("steady", []):
        ours, sink = s["sync_crm_to_erp"]["latency_ms"], s["jdbc_sink"]["latency_ms"]
        theirs = native.get(s["rate_per_s"])
        lines.append(f"    {s['rate_per_s']:g}/s (achieved {s['achieved_rate_per_s']:g}): sync CRM->ERP"
                     f" {_lat(s['sync_crm_to_erp'])}, ERP->CRM {_lat(s['sync_erp_to_crm'])};"
                     f" JDBC sink {_lat(s['jdbc_sink'])};"
                     f" native {_lat(theirs) if theirs else 'not run'};"
                     f" p99 sync / sink {_ratio(ours['p99'], sink['p99'])},"
                     f" sync / native {_ratio(ours['p99'], theirs['latency_ms']['p99'] if theirs else None)}")
    if "backlog" in result:
        b = result["backlog"]
        burst = result.get("native", {}).get("burst")
        lines.append(f"  backlog of {b['edits']} CRM edits, each alone: sync {b['sync']['changes_per_s']} changes/s"
                     f" ({b['sync']['seconds']} s), JDBC sink {b['jdbc_sink']['changes_per_s']} changes/s"
                     f" ({b['jdbc_sink']['seconds']} s); sync / sink"
                     f" {b['sync']['changes_per_s'] / max(b['jdbc_sink']['changes_per_s'], 1):.2f}x")
        if burst:
            lines.append(f"  native logical replication applies {burst['edits']} edits at {burst['changes_per_s']}"
                         f" changes/s (as fast as one connection commits them); sync / native"
                         f" {b['sync']['changes_per_s'] / max(burst['changes_per_s'], 1):.2f}x")
    return "\n".join(lines)
