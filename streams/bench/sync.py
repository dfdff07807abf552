"""Customer-sync latency benchmark: single CRM edits at a fixed light rate, source commit -> ERP commit.

Runs on its own local services (PostgreSQL, Apache Kafka, registry, capture, worker). The load generator
runs at a fixed rate (no coordinated omission: a slow sync cannot slow the load). Latency of each
edit is the ERP row's ``modified_on`` (set by the ERP's trigger when the sync's write commits,
Asia/Shanghai wall time) minus the CRM row's ``updated_at`` (set when the edit committed).
"""

from __future__ import annotations

import time
from datetime import UTC
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from streams.bench.report import latency_line, latency_summary, write
from streams.local.harness import running, scratch_harness, wait_for, wait_for_capture, wait_for_identity

SHANGHAI = ZoneInfo("Asia/Shanghai")


def run(rate: float = 5.0, seconds: float = 60.0, out: Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Run and return the figures (also written as JSON to ``out``)."""
    with scratch_harness("bench", seed_accounts=300) as h:
        with running(h.spawn("capture")), running(h.spawn("worker", log_name="worker.log")):
            wait_for_capture(h, timeout=180)
            wait_for_identity(h)
            with h.connect("sync") as conn:
                pairs = conn.execute("SELECT crm_id, erp_id FROM sync.xref WHERE linked_by = 'exact'").fetchall()
            # Settle: the first alignment of the seed is not part of the measurement.
            with h.connect("crm") as crm, h.connect("erp") as erp:
                probe = crm.execute("SELECT phone FROM accounts WHERE id = %s", (pairs[-1][0],)).fetchone()
                wait_for(lambda: erp.execute("SELECT contact_phone FROM customers WHERE cust_no = %s",
                                             (pairs[-1][1],)).fetchone() == probe, 180, 0.5, "the first alignment")
            time.sleep(5)  # let the alignment's tail drain (measurement hygiene, not a correctness wait)
            n = int(rate * seconds)
            sent: dict[str, tuple[str, str]] = {}
            start = time.monotonic()
            with h.connect("crm") as crm:
                for i in range(n):
                    due = start + i / rate
                    time.sleep(max(0.0, due - time.monotonic()))
                    crm_id, erp_id = pairs[i % len(pairs)]
                    email = f"lat{i}@example.com"
                    crm.execute("UPDATE accounts SET email = %s WHERE id = %s", (email, crm_id))
                    sent[erp_id] = (email, crm_id)
                    if progress and i and i % max(1, int(rate * 10)) == 0:
                        print(f"  {i}/{n} edits", flush=True)
            latencies: list[float] = []

            def all_arrived() -> bool:
                latencies.clear()
                with h.connect("crm") as crm, h.connect("erp") as erp:
                    for erp_id, (email, crm_id) in sent.items():
                        row = erp.execute("SELECT email, modified_on FROM customers WHERE cust_no = %s",
                                          (erp_id,)).fetchone()
                        if row is None or row[0] != email:
                            return False
                        src = crm.execute("SELECT updated_at FROM accounts WHERE id = %s", (crm_id,)).fetchone()
                        assert src is not None
                        applied = row[1].replace(tzinfo=SHANGHAI).astimezone(UTC)
                        latencies.append((applied - src[0]).total_seconds())
                return True

            wait_for(all_arrived, 300, 1.0, "every edit in the ERP")
    ms = [x * 1000 for x in latencies]
    result = {"benchmark": "sync-latency", "flow": "customer crm->erp", "rate_per_s": rate, "edits": n,
              "measured": len(ms), "latency_ms": latency_summary(ms)}
    return write(result, out)


def format_result(result: dict[str, Any]) -> str:
    """One line per figure."""
    lat = result["latency_ms"]
    return (f"customer sync latency, CRM edit -> ERP commit, {result['rate_per_s']}/s for {result['edits']} edits "
            f"(last edit per record measured: {result['measured']}):\n"
            f"  {latency_line(lat)}")
