"""Steady-state benchmark: R customer edits per second, half on each system, at a fixed rate.

Each edit writes a value never written before: CRM e-mails (owned by the CRM, synced to the ERP)
and ERP credit limits (owned by the ERP, synced to the CRM). Audit triggers in a schema capture
does not read (``bench``) record when each value was committed on its source and when the sync's
write of it committed on the target, both by the same cluster's clock; latency is their
difference, edit by edit. The load is a fixed schedule (like ``pgbench --rate``): a slow sync
cannot slow the load and hide its latency. A value overwritten on its source before the sync wrote
it is "superseded" (the sync rightly writes only the newer one), not lost.
"""

from __future__ import annotations

import contextlib
import itertools
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from streams.bench import hops
from streams.bench.report import latency_summary, write
from streams.local.harness import (
    Harness,
    reached,
    running,
    scratch_harness,
    wait_for,
    wait_for_capture,
    wait_for_identity,
)
from streams.local.ports import free_port
from streams.local.status import scrape

AUDIT = """
CREATE SCHEMA IF NOT EXISTS bench;
CREATE TABLE IF NOT EXISTS bench.audit (value text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE OR REPLACE FUNCTION bench.note() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO bench.audit (value) VALUES (TG_ARGV[0] || ':' || (to_jsonb(NEW) ->> TG_ARGV[0])); RETURN NEW; END $$;
"""
KEPT_UP_MAX_S = 5.0
# The credit limits the loads write, one serial for all of a process's loads: a value repeated by a later
# load (a rate step, after the warm-up) would be traced (``hops``) to the earlier load's records.
CREDIT_SERIALS = itertools.count()
TRIGGERS = {
    "crm": ("accounts", ["email", "credit_limit"]),
    "erp": ("customers", ["email", "credit_limit_fen"]),
}


def _install_audit(h: Harness) -> None:
    for system, (table, columns) in TRIGGERS.items():
        with h.connect(system) as conn:
            conn.execute(AUDIT)
            for column in columns:
                conn.execute(
                    f"CREATE TRIGGER bench_{column} AFTER UPDATE OF {column} ON public.{table} FOR EACH ROW"
                    f" WHEN (NEW.{column} IS DISTINCT FROM OLD.{column}) EXECUTE FUNCTION bench.note('{column}')"
                )


def _audit(h: Harness, system: str) -> dict[str, float]:
    with h.connect(system) as conn:
        # One statement: a SELECT then a TRUNCATE would drop unseen the rows committed between them.
        rows = conn.execute("DELETE FROM bench.audit RETURNING value, extract(epoch FROM at)").fetchall()
    return {value: float(at) for value, at in rows}


def _audited(h: Harness, system: str, key: str) -> bool:
    with h.connect(system) as conn:
        return conn.execute("SELECT 1 FROM bench.audit WHERE value = %s", (key,)).fetchone() is not None


def worker_idle(port: int) -> bool:
    """The worker has nothing left to read: no consumer lag, every event into a stage out of it."""
    samples = scrape(port)
    if not samples or "sync_consumer_lag_messages" not in samples:
        return False
    time.sleep(5.5)  # the lag gauge is refreshed every 5 s: require it on two refreshes
    again = scrape(port)
    return again is not None and all(
        v == 0 for s in (samples, again) for _, v in s.get("sync_consumer_lag_messages", [])
    )


def peak_rss_mb(pid: int) -> float | None:
    """Peak resident memory of a process (VmHWM), in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def worker_ports(first: int, workers: int) -> list[int]:
    """Metrics ports for ``workers`` workers: ``first``, then free ones."""
    return [first] + [free_port() for _ in range(workers - 1)]


def spawn_workers(h: Harness, ports: Sequence[int]) -> list[subprocess.Popen[bytes]]:
    """One worker per metrics port, each logging to ``worker-<n>.log``."""
    return [h.spawn("worker", log_name=f"worker-{n}.log", env={"CRM_ERP_SYNC__PROCESSORS__METRICS_PORT": str(p)})
            for n, p in enumerate(ports)]


def aligned_pairs(h: Harness, port: int | Sequence[int], progress: bool) -> list[tuple[Any, str]]:
    """With capture and the workers (metrics on ``port``) running: the exact pairs, once first aligned."""
    ports = [port] if isinstance(port, int) else list(port)
    wait_for_capture(h, timeout=180)
    wait_for_identity(h)
    with h.connect("sync") as conn:
        pairs = conn.execute("SELECT crm_id, erp_id FROM sync.xref WHERE linked_by = 'exact'").fetchall()
    if progress:
        print("  waiting for the first alignment to finish ...", flush=True)
    wait_for(lambda: all(worker_idle(p) and worker_idle(p) for p in ports), 600, 5.0,
             "the worker to finish the first alignment")
    return [(c, e) for c, e in pairs]


def _load(h: Harness, pairs: list[tuple[str, str]], rate: float, seconds: float, tag: str,
          progress: bool) -> tuple[dict[str, str], float]:
    """Commit ``rate`` edits/s for ``seconds``; (value key -> target system, achieved rate)."""
    n = int(rate * seconds)
    expected: dict[str, str] = {}  # audit key on the source -> the system it must reach
    start = time.monotonic()
    with h.connect("crm") as crm, h.connect("erp") as erp:
        for i in range(n):
            due = start + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            crm_id, erp_id = pairs[(i // 2) % len(pairs)]
            if i % 2 == 0:
                email = f"{tag}-{i}@bench.example"
                crm.execute("UPDATE accounts SET email = %s WHERE id = %s", (email, crm_id))
                expected[f"email:{email}"] = "erp"
            else:
                fen = 10_000_000 + next(CREDIT_SERIALS) * 100  # whole yuan, a value not used before in this process
                erp.execute("UPDATE customers SET credit_limit_fen = %s WHERE cust_no = %s", (fen, erp_id))
                expected[f"credit_limit_fen:{fen}"] = "crm"
            if progress and i and i % max(1, int(rate * 10)) == 0:
                print(f"    {i}/{n} edits", flush=True)
    return expected, n / max(1e-9, time.monotonic() - start)


def warm_up(h: Harness, pairs: list[tuple[str, str]], ports: Sequence[int], rate: float, seconds: float,
            progress: bool) -> None:
    """The same load for ``seconds``, not measured, then the workers idle again.

    Kafka's and Kafka Connect's JVMs compile their hot code (the JIT) during the first ~90 s of a
    load on a freshly started stack: their compiler threads then use as much CPU as their work,
    CPU the worker shares on a small machine. A deployment's JVMs run warm; so do the figures.
    """
    if seconds <= 0:
        return
    if progress:
        print(f"  warming up: {rate:g} edits/s for {seconds:g} s, not measured ...", flush=True)
    _load(h, pairs, rate, seconds, "warm", False)
    wait_for(lambda: all(worker_idle(p) for p in ports), 600, 1.0, "the worker to finish the warm-up")


def _target_key(source_key: str) -> str:
    """The audit key of the same value on the other system."""
    column, value = source_key.split(":", 1)
    if column == "email":
        return source_key
    return f"credit_limit:{int(value) // 100}.00"


def run(rates: tuple[float, ...] = (200, 1000, 2000), seconds: float = 60.0, drain_s: float = 60.0,
        out: Path | None = None, progress: bool = True, accounts: int = 300, workers: int = 1,
        warmup_s: float = 0.0) -> dict[str, Any]:
    """Run one steady-state step per rate on one fresh stack of ``accounts`` demo accounts and ``workers`` workers.

    ``warmup_s`` of load at the first rate comes first, not measured (:func:`warm_up`).

    The edits go round the linked pairs: with few of them, a row is edited again before the sync
    wrote its last value, and most edits are superseded (the sync writes only the newest).
    """
    with scratch_harness("bench", seed_accounts=accounts) as h:
        port = free_port()
        h.write_config(processors={"metrics_port": port})
        steps: list[dict[str, Any]] = []
        _install_audit(h)
        ports = worker_ports(port, workers)
        capture = h.spawn("capture")
        procs = spawn_workers(h, ports)
        with contextlib.ExitStack() as stack:
            for proc in [capture, *procs]:
                stack.enter_context(running(proc))
            pairs = aligned_pairs(h, ports, progress)
            warm_up(h, pairs, ports, rates[0], warmup_s, progress)
            for system in TRIGGERS:
                _audit(h, system)  # the alignment's and the warm-up's rows are not the measured edits'
            for rate in rates:
                if progress:
                    print(f"  {rate:g} edits/s for {seconds:g} s ...", flush=True)
                expected, achieved = _load(h, pairs, rate, seconds, f"r{rate:g}", progress)
                load_end = time.time()

                last_email = next(k for k in reversed(expected) if k.startswith("email:"))
                last_limit = _target_key(next(k for k in reversed(expected) if k.startswith("credit")))
                drained = reached(lambda e=last_email, c=last_limit: _audited(h, "erp", e)  # the last edits
                                  and _audited(h, "crm", c), drain_s)
                audits = {"crm": _audit(h, "crm"), "erp": _audit(h, "erp")}  # each holds sources and targets
                timed, missing = {}, 0
                for key, system in expected.items():
                    source = audits["crm" if system == "erp" else "erp"].get(key)
                    applied = audits[system].get(_target_key(key))
                    if applied is None or source is None:
                        missing += 1
                        continue
                    timed[key] = (source, applied)
                latencies = [(applied - source) * 1000 for source, applied in timed.values()]
                targets = [audits["erp"][k] for k in audits["erp"] if k.startswith("email:")]
                targets += [audits["crm"][k] for k in audits["crm"] if k.startswith("credit_limit:")]
                applied_by = max(targets, default=load_end)
                steps.append({
                    "target_rate_per_s": rate, "achieved_load_rate_per_s": round(achieved, 1),
                    "edits": len(expected), "applied": len(latencies), "superseded_or_missing": missing,
                    "drained": drained, "last_applied_after_load_s": round(applied_by - load_end, 2),
                    # Kept up: the load ran at its rate, and no applied edit waited more than KEPT_UP_MAX_S.
                    "kept_up": drained and achieved >= 0.95 * rate and bool(latencies)
                    and max(latencies) <= KEPT_UP_MAX_S * 1000,
                    "latency_ms": latency_summary(latencies),
                    "hops_ms": hops.breakdown(h, timed),
                })
                if not drained:
                    break  # a higher rate cannot do better
            rss = {"capture": peak_rss_mb(capture.pid), "worker": max(peak_rss_mb(p.pid) or 0 for p in procs)}
    return write({"benchmark": "steady-state", "seconds_per_step": seconds, "warmup_s": warmup_s, "workers": workers,
                  "steps": steps, "peak_rss_mb": rss}, out)


def format_result(result: dict[str, Any]) -> str:
    """A table."""
    lines = [f"steady state, customer edits half CRM (e-mail -> ERP) half ERP (credit limit -> CRM),"
             f" {result.get('workers', 1)} worker(s), after {result.get('warmup_s', 0):g} s of warm-up:",
             "  rate/s  achieved  edits  applied  superseded  kept up  p50 ms  p95 ms  p99 ms  max ms"]
    for s in result["steps"]:
        lat = s["latency_ms"]
        lines.append(f"  {s['target_rate_per_s']:>6g}  {s['achieved_load_rate_per_s']:>8g}  {s['edits']:>5}  "
                     f"{s['applied']:>7}  {s['superseded_or_missing']:>10}  {'yes' if s['kept_up'] else 'NO':>7}  "
                     + "  ".join(f"{lat[q] if lat[q] is not None else '-':>6}" for q in ("p50", "p95", "p99", "max")))
    for s in result["steps"]:
        hop = s["hops_ms"]
        lines.append(f"  {s['target_rate_per_s']:g}/s, where the time goes ({hop['traced']} edits traced;"
                     " ms p50 / p95 / p99 per hop):")
        for side, label in (("all", "all"), ("crm", "CRM -> ERP"), ("erp", "ERP -> CRM")):
            lines.append(f"    {label:<10} " + "   ".join(
                f"{name} " + " / ".join(str(hop[side][name][q]) for q in ("p50", "p95", "p99")) for name in hops.HOPS))
    rss = result["peak_rss_mb"]
    lines.append(f"  peak RSS: capture {rss['capture']} MiB (JVM included), worker {rss['worker']} MiB")
    return "\n".join(lines)
