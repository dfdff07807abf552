"""Backlog drain and initial sync (``bench drain``, ``bench initial``): how fast the sync works through a pile.

- backlog: N customer edits committed on the CRM while the worker is stopped (capture running, so
  they wait in the broker), then the worker started: changes per second until every linked ERP
  customer holds its account's last e-mail.
- initial: N active tier-A accounts on the CRM only (none in the ERP), each with a legal name and a
  tax id (identity keys to index and match), then capture and worker started: time until all N
  exist in the ERP.

Each on its own freshly started local services; peak memory (VmHWM) of both processes.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from streams.bench.report import write
from streams.bench.steady import aligned_pairs, peak_rss_mb, spawn_workers, worker_ports
from streams.local.harness import (
    Harness,
    TopicReader,
    running,
    scalar,
    scratch_harness,
    wait_for,
)
from streams.local.ports import free_port
from streams.local.status import scrape


def _normalized(ports: list[int]) -> float:
    return sum(v for port in ports for labels, v in (scrape(port) or {}).get("sync_stage_events_total", [])
               if labels.get("stage") == "normalize" and labels.get("io") == "in")


@contextlib.contextmanager
def _stack(seed_accounts: int) -> Iterator[tuple[Harness, int]]:
    """A started harness whose worker serves its metrics on the port given with it."""
    with scratch_harness("bench", seed_accounts=seed_accounts) as h:
        port = free_port()
        h.write_config(processors={"metrics_port": port})
        yield h, port


def pile(h: Harness, edits: int, progress: bool = True) -> dict[str, str]:
    """Commit ``edits`` CRM e-mail edits and wait until capture put them in the broker; account id -> last e-mail."""
    reader = TopicReader(h.bootstrap, h.registry_url, ["crm.public.accounts"], decode=False)
    try:
        while reader.poll(1.0):
            pass
        before = len(reader.records)
        if progress:
            print(f"  committing {edits} CRM edits ...", flush=True)
        with h.connect("crm") as crm:
            rows = int(scalar(crm, "SELECT count(*) FROM accounts"))
            done, k = 0, 0
            while done < edits:  # one statement per transaction, every row (the last one: fewer)
                take = min(rows, edits - done)
                crm.execute("UPDATE accounts SET email = 'b' || %s || '-' || left(id::text, 8) ||"
                            " '@bench.example' WHERE id IN (SELECT id FROM accounts ORDER BY id LIMIT %s)",
                            (k, take))
                done, k = done + take, k + 1
        reader.wait(lambda rs: len(rs) - before >= edits, 900, "capture of the backlog")
    finally:
        reader.records.clear()
        reader.close()
    with h.connect("crm") as crm:
        return {str(r[0]): r[1] for r in crm.execute("SELECT id, email FROM accounts").fetchall()}


def linked_pairs(h: Harness) -> dict[str, str]:
    """CRM account id -> ERP customer number of every linked customer."""
    with h.connect("sync") as conn:
        return {str(c): e for c, e in conn.execute(
            "SELECT crm_id, erp_id FROM sync.xref WHERE entity = 'customer'"
            " AND crm_id IS NOT NULL AND erp_id IS NOT NULL").fetchall()}


def drain_by_workers(h: Harness, port: int, workers: int, pairs: dict[str, str], final: dict[str, str]
                     ) -> dict[str, Any]:
    """Start ``workers`` workers on the backlog; seconds from their first event until every pair is aligned."""
    ports = worker_ports(port, workers)
    started = time.monotonic()
    procs = spawn_workers(h, ports)
    with contextlib.ExitStack() as stack:
        for proc in procs:
            stack.enter_context(running(proc))
        wait_for(lambda: _normalized(ports) > 0, 300, 0.2, "the worker's first event")
        first = time.monotonic()

        def aligned() -> bool:
            with h.connect("erp") as erp:
                got = dict(erp.execute("SELECT cust_no, email FROM customers").fetchall())
            return all(got.get(erp_id) == final[crm_id] for crm_id, erp_id in pairs.items())

        wait_for(aligned, 3600, 1.0, "every ERP customer at its account's last e-mail")
        end = time.monotonic()
        return {"worker_start_s": round(first - started, 1), "drain_s": round(end - first, 1),
                "worker_peak_rss_mb": max(peak_rss_mb(p.pid) or 0 for p in procs)}


def align_first(h: Harness, port: int) -> None:
    """Run a worker until the seed's first alignment is done, then stop it."""
    with running(h.spawn("worker", log_name="worker.log")):
        aligned_pairs(h, port, progress=False)


def backlog(edits: int, progress: bool = True, workers: int = 1) -> dict[str, Any]:
    """N CRM edits piled up while the worker is stopped, then drained by ``workers`` workers; changes per second."""
    with _stack(300) as (h, port):
        with running(h.spawn("capture")) as capture:
            align_first(h, port)
            pairs = linked_pairs(h)
            final = pile(h, edits, progress)
            if progress:
                print(f"  backlog in the broker; starting {workers} worker(s) ...", flush=True)
            drained = drain_by_workers(h, port, workers, pairs, final)
            rss = {"capture": peak_rss_mb(capture.pid), "worker": drained.pop("worker_peak_rss_mb")}
    return {"benchmark": "backlog-drain", "edits": edits, "workers": workers, "linked_pairs": len(pairs), **drained,
            "changes_per_s": round(edits / max(drained["drain_s"], 1e-9)), "peak_rss_mb": rss}


def run(edits: int, workers: int = 1, out: Path | None = None) -> dict[str, Any]:
    """``bench drain``: the backlog drain alone."""
    return write(backlog(edits, workers=workers), out)


def run_initial(accounts: int, workers: int = 1, out: Path | None = None) -> dict[str, Any]:
    """``bench initial``: the initial sync alone."""
    return write(initial(accounts, workers=workers), out)


def format_result(result: dict[str, Any]) -> str:
    """One line."""
    if result["benchmark"] == "initial-sync":
        return (f"initial sync of {result['accounts']} CRM accounts into the ERP, {result.get('workers', 1)}"
                f" worker(s): {result['seconds']} s ({result['accounts_per_s']} accounts/s;"
                f" worker peak RSS {result['peak_rss_mb']['worker']} MiB)")
    return (f"backlog of {result['edits']} CRM edits, {result['workers']} worker(s): {result['changes_per_s']}"
            f" changes/s ({result['drain_s']} s; worker peak RSS {result['peak_rss_mb']['worker']} MiB)")


def initial(accounts: int, progress: bool = True, workers: int = 1) -> dict[str, Any]:
    """N accounts on the CRM only; time until all exist in the ERP (``workers`` worker processes)."""
    with _stack(0) as (h, port):
        with h.connect("crm", autocommit=False) as crm, crm.cursor() as cur:
            cur.executemany("INSERT INTO accounts (id, name, legal_name, uscc, tier, email, status)"
                            " VALUES (%s, %s, %s, %s, 'A', %s, 'active')",
                            [(uuid.uuid4(), f"初始同步测试{i:06d}号", f"初始同步测试{i:06d}号有限公司",
                              f"91BENCH{i:011d}", f"init{i}@bench.example") for i in range(accounts)])
            crm.commit()
        if progress:
            print(f"  {accounts} CRM accounts, none in the ERP; starting capture and {workers} worker(s) ...",
                  flush=True)
        started = time.monotonic()
        with contextlib.ExitStack() as stack:
            capture = stack.enter_context(running(h.spawn("capture")))
            procs = [stack.enter_context(running(p))
                     for p in spawn_workers(h, worker_ports(port, workers))]

            def created() -> bool:
                with h.connect("erp") as erp:
                    n = int(scalar(erp, "SELECT count(*) FROM customers"))
                if progress and int(time.monotonic() - started) % 30 == 0:
                    print(f"    {n}/{accounts} in the ERP", flush=True)
                return n >= accounts

            wait_for(created, 7200, 1.0, "every account in the ERP")
            end = time.monotonic()
            rss = {"capture": peak_rss_mb(capture.pid), "worker": max(peak_rss_mb(p.pid) or 0 for p in procs)}
    return {"benchmark": "initial-sync", "accounts": accounts, "workers": workers, "seconds": round(end - started, 1),
            "accounts_per_s": round(accounts / (end - started)), "peak_rss_mb": rss}
