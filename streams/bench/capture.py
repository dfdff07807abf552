"""Capture benchmark: N single-row updates on the CRM, commit -> acknowledged in the broker, per capture mode.

For each capture mode (Debezium in Kafka Connect, Debezium's embedded engine) it starts its own
real services (PostgreSQL, Apache Kafka, registry, Kafka Connect or the capture process) under a
temporary folder, waits for the initial snapshot, then commits N single-row UPDATE transactions as fast as
one connection can (pipelined, ``synchronous_commit=off`` for the load session only) and reads
the topic until every update is there. Reports:

* rate: N / (last event in the broker - first commit), in changes per second;
* per-event latency: source commit time (``source.ts_ms``) -> broker timestamp of the record.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from streams.bench.report import percentile, write
from streams.local.harness import TopicReader, running, scratch_harness, wait_for_capture

MODES = ("connect", "embedded")


def run(updates: int = 100_000, rows: int = 1000, out: Path | None = None, progress: bool = True,
        modes: tuple[str, ...] = MODES) -> dict[str, Any]:
    """Run the benchmark in each capture mode and return the figures (also written as JSON to ``out``)."""
    result: dict[str, Any] = {"benchmark": "capture", "updates": updates}
    for mode in modes:
        if progress:
            print(f"capture mode {mode}:", flush=True)
        result[mode] = _run_mode(mode, updates, rows, progress)
        write(result, out)
    return result


def _run_mode(mode: str, updates: int, rows: int, progress: bool) -> dict[str, Any]:
    with scratch_harness("bench", seed_accounts=max(60, rows), capture_mode=mode) as harness:
        with running(harness.spawn("capture")):
            wait_for_capture(harness, ["crm.public.accounts"], timeout=180)
            with harness.connect("crm") as conn:
                ids = [r[0] for r in conn.execute("SELECT id FROM accounts ORDER BY id LIMIT %s", (rows,))]
            reader = TopicReader(harness.bootstrap, harness.registry_url, ["crm.public.accounts"])
            reader.poll(2.0)
            reader.records.clear()
            started = time.time()
            with harness.connect("crm") as conn:
                conn.execute("SET synchronous_commit = off")
                with conn.pipeline():
                    for i in range(updates):
                        conn.execute("UPDATE accounts SET owner = %s WHERE id = %s", (f"b{i}", ids[i % len(ids)]))
                        if progress and i and i % 20000 == 0:
                            print(f"  committed {i:,} updates", flush=True)
            committed = time.time()
            if progress:
                print(f"  committed {updates:,} updates in {committed - started:.1f}s; reading the topic", flush=True)

            seen: set[str] = set()
            lat_ms: list[float] = []
            last_ts = 0.0

            def all_seen(records: list[dict[str, Any]]) -> bool:
                nonlocal last_ts
                for r in records:
                    value = r["value"]
                    if value and value["op"] == "u" and str(value["after"]["owner"]).startswith("b"):
                        seen.add(value["after"]["owner"])
                        lat_ms.append(r["timestamp"] - value["source"]["ts_ms"])
                        last_ts = max(last_ts, r["timestamp"] / 1000)
                records.clear()
                return len(seen) >= updates

            reader.wait(all_seen, 900, f"{updates} updates in the topic")
            reader.close()
    elapsed = last_ts - started
    return {
        "load_seconds": round(committed - started, 2),
        "load_commits_per_second": round(updates / (committed - started)),
        "first_commit_to_last_ack_seconds": round(elapsed, 2),
        "changes_per_second": round(updates / elapsed),
        "commit_to_broker_ms": {
            "p50": percentile(lat_ms, 0.50), "p95": percentile(lat_ms, 0.95),
            "p99": percentile(lat_ms, 0.99), "max": max(lat_ms), "mean": round(statistics.fmean(lat_ms), 1),
        },
    }


def format_result(result: dict[str, Any]) -> str:
    """A small table for the terminal: one block per capture mode."""
    lines = [f"capture benchmark: {result['updates']:,} single-row updates on crm.accounts"]
    for mode in MODES:
        if mode not in result:
            continue
        r, lat = result[mode], result[mode]["commit_to_broker_ms"]
        lines += [
            f"  {mode}:",
            f"    load generator        {r['load_commits_per_second']:>10,} commits/s ({r['load_seconds']} s)",
            f"    capture rate          {r['changes_per_second']:>10,} changes/s "
            f"(first commit -> last ack {r['first_commit_to_last_ack_seconds']} s)",
            f"    commit -> broker (ms) p50 {lat['p50']:.0f}  p95 {lat['p95']:.0f}  p99 {lat['p99']:.0f}"
            f"  max {lat['max']:.0f}",
        ]
    return "\n".join(lines)
