"""The anchor: native PostgreSQL logical replication (publication + subscription) of the same kind of edits.

Same clusters, same machine: a table in the CRM database is published and subscribed to from the
ERP database (the slot is made beforehand, ``create_slot = false``, since both databases share one
server). The same fixed-rate load of single-row edits as ``bench steady``, then a burst, measured
the same way: the source row's commit timestamp against the subscriber's apply time (an ``ALWAYS``
trigger's ``clock_timestamp()``, one server clock).
"""

from __future__ import annotations

import time
from typing import Any

from streams.bench.report import latency_summary
from streams.local.harness import Harness, reached, scratch_harness, wait_for

TABLE = """
CREATE SCHEMA IF NOT EXISTS anchor;
CREATE TABLE IF NOT EXISTS anchor.edits (id int PRIMARY KEY, email text NOT NULL, edited_at timestamptz NOT NULL);
"""
SUBSCRIBER = """
CREATE TABLE IF NOT EXISTS anchor.applied (email text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE OR REPLACE FUNCTION anchor.note() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO anchor.applied (email) VALUES (NEW.email); RETURN NEW; END $$;
DROP TRIGGER IF EXISTS anchor_note ON anchor.edits;
CREATE TRIGGER anchor_note AFTER INSERT OR UPDATE ON anchor.edits FOR EACH ROW EXECUTE FUNCTION anchor.note();
ALTER TABLE anchor.edits ENABLE ALWAYS TRIGGER anchor_note;
"""
ROWS = 300  # as many rows as the demo's accounts: the same spread of edits over rows


def _setup(h: Harness) -> None:
    with h.connect("crm") as crm:
        crm.execute(TABLE)
        crm.execute("INSERT INTO anchor.edits SELECT g, 'seed', now() FROM generate_series(1, %s) g"
                    " ON CONFLICT DO NOTHING", (ROWS,))
        crm.execute("CREATE PUBLICATION anchor_pub FOR TABLE anchor.edits")
        crm.execute("SELECT pg_create_logical_replication_slot('anchor_sub', 'pgoutput')")
    info = h.conninfo("crm")
    dsn = f"host={info['host']} port={info['port']} dbname=crm user={info['user']} password={info['password']}"
    with h.connect("erp") as erp:
        erp.execute(TABLE)
        erp.execute(SUBSCRIBER)
        erp.execute(f"CREATE SUBSCRIPTION anchor_sub CONNECTION '{dsn}' PUBLICATION anchor_pub"
                    " WITH (create_slot = false, slot_name = 'anchor_sub')")
    wait_for(lambda: _applied_count(h) >= ROWS, 120, 0.5, "the subscription's initial copy")


def _applied_count(h: Harness) -> int:
    with h.connect("erp") as erp:
        row = erp.execute("SELECT count(*) FROM anchor.edits WHERE email = 'seed'").fetchone()
    return int(row[0]) if row else 0


def _audit(h: Harness) -> dict[str, float]:
    with h.connect("erp") as erp:
        # One statement, as bench steady's audit read: nothing committed in between is lost.
        rows = erp.execute("DELETE FROM anchor.applied RETURNING email, extract(epoch FROM at)").fetchall()
    return {r[0]: float(r[1]) for r in rows}


def _wait_applied(h: Harness, last: str, timeout: float) -> bool:
    def seen() -> bool:
        with h.connect("erp") as erp:
            return erp.execute("SELECT 1 FROM anchor.applied WHERE email = %s", (last,)).fetchone() is not None

    return reached(seen, timeout, 0.2)


def _step(h: Harness, rate: float, seconds: float, tag: str) -> dict[str, Any]:
    """Fixed-rate single-row edits for ``seconds``; latency of each from its commit to its apply."""
    n = int(rate * seconds)
    committed: dict[str, float] = {}
    start = time.monotonic()
    with h.connect("crm") as crm:
        for i in range(n):
            time.sleep(max(0.0, start + i / rate - time.monotonic()))
            email = f"{tag}-{i}@anchor.example"
            row = crm.execute("UPDATE anchor.edits SET email = %s, edited_at = now() WHERE id = %s"
                              " RETURNING extract(epoch FROM edited_at)", (email, i % ROWS + 1)).fetchone()
            assert row is not None
            committed[email] = float(row[0])
    achieved = n / max(time.monotonic() - start, 1e-9)
    drained = _wait_applied(h, f"{tag}-{n - 1}@anchor.example", 120)
    applied = _audit(h)
    ms = [(applied[e] - t) * 1000 for e, t in committed.items() if e in applied]
    return {"rate_per_s": rate, "achieved_rate_per_s": round(achieved), "edits": n, "applied": len(ms),
            "kept_up": drained and achieved >= 0.95 * rate and bool(ms) and max(ms) <= 5000,
            "latency_ms": latency_summary(ms)}


def _burst(h: Harness, edits: int) -> dict[str, Any]:
    """``edits`` single-row transactions as fast as one connection commits them; the apply rate."""
    with h.connect("crm") as crm:
        started = crm.execute("SELECT extract(epoch FROM clock_timestamp())").fetchone()[0]  # type: ignore[index]
        for i in range(edits):
            crm.execute("UPDATE anchor.edits SET email = %s, edited_at = now() WHERE id = %s",
                        (f"burst-{i}@anchor.example", i % ROWS + 1))
    _wait_applied(h, f"burst-{edits - 1}@anchor.example", 600)
    applied = _audit(h)
    seconds = max(applied.values()) - float(started)
    return {"edits": edits, "applied": len(applied), "seconds": round(seconds, 1),
            "changes_per_s": round(edits / seconds)}


def run(rates: tuple[float, ...], seconds: float, burst: int, progress: bool = True) -> dict[str, Any]:
    """Native logical replication at each rate, then a burst; the figures."""
    with scratch_harness("anchor", seed_accounts=0) as h:
        _setup(h)
        steps = []
        for rate in rates:
            if progress:
                print(f"  anchor: {rate:g} edits/s for {seconds:g} s ...", flush=True)
            steps.append(_step(h, rate, seconds, f"r{rate:g}"))
        if progress:
            print(f"  anchor: burst of {burst} edits ...", flush=True)
        drain = _burst(h, burst)
    return {"benchmark": "anchor", "what": "native logical replication, publication + subscription",
            "steps": steps, "burst": drain}
