"""`compare` on a large demo: N CRM accounts and their ERP customers, linked as a running sync would have them.

Freshly started local services with the seed at N accounts; the cross-reference is filled (no
capture, no worker): by the identity bootstrap, or (``link="tax_id"``, the default) pairs of equal
tax ids linked and every other record on its own — what compare reads and classifies is the same,
and the bootstrap's fuzzy matching, which grows faster than linearly, is not what is measured here.
Then ``crm-erp-sync compare --format json`` as its own process: its wall time, rows read per second,
peak memory, and the databases' work (rows read, blocks read from disk or cache) from their statistics.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from streams.bench.steady import peak_rss_mb
from streams.identity.bootstrap import bootstrap
from streams.local.harness import REPO, scratch_harness
from streams.mapping.profile import load_profile
from streams.settings import load_settings
from streams.store import Store


def link_by_tax_id(profile: Any, settings: Any, store: Store) -> dict[str, int]:
    """Pairs of equal tax ids linked (exact), every other record a single: one COPY."""
    import psycopg

    from streams.identity.match import normalize_key

    ids: dict[str, dict[str, str]] = {}
    for system, key, tax in (("crm", "id", "uscc"), ("erp", "cust_no", "tax_no")):
        with psycopg.connect(**settings.database(system).conninfo()) as conn:
            ids[system] = {str(r[0]): normalize_key(r[1]) for r in conn.execute(
                f"SELECT {key}, {tax} FROM {profile.table_of(system)}")}  # noqa: S608 (the demo's own names)
    by_tax: dict[str, list[str]] = {}
    for cust_no, tax in ids["erp"].items():
        if tax:
            by_tax.setdefault(tax, []).append(cust_no)
    rows: list[tuple[str | None, str | None, str]] = []
    paired: set[str] = set()
    for crm_id, tax in ids["crm"].items():
        found = by_tax.get(tax, []) if tax else []
        if len(found) == 1 and found[0] not in paired:
            paired.add(found[0])
            rows.append((crm_id, found[0], "exact"))
        else:
            rows.append((crm_id, None, "single"))
    rows += [(None, cust_no, "single") for cust_no in ids["erp"] if cust_no not in paired]
    with store.conn.cursor() as cur, cur.copy(
            "COPY sync.xref (entity, global_id, crm_id, erp_id, linked_by) FROM STDIN") as copy:
        for row in rows:
            copy.write_row((profile.entity, str(uuid.uuid4()), *row))
    return {"exact": len(paired), "single": len(rows) - len(paired)}


def database_work(settings: Any) -> dict[str, dict[str, int]]:
    """Per source database: tuples returned and blocks read (from disk, from cache) so far."""
    import psycopg

    out = {}
    for system in ("crm", "erp"):
        with psycopg.connect(**settings.database(system).conninfo()) as conn:
            row = conn.execute("SELECT tup_returned, blks_read, blks_hit FROM pg_stat_database"
                               " WHERE datname = current_database()").fetchone()
        assert row is not None
        out[system] = {"tuples": int(row[0]), "disk_blocks": int(row[1]), "cache_blocks": int(row[2])}
    return out


def run(accounts: int = 100_000, out: Path | None = None, progress: bool = True,
        link: str = "tax_id") -> dict[str, Any]:
    """Run and return the figures (also written as JSON to ``out``)."""
    started = time.monotonic()
    with scratch_harness("bench", seed_accounts=accounts) as h:
        seeded_s = round(time.monotonic() - started, 1)
        settings = load_settings(h.write_config())
        profile = load_profile(REPO / "schemas" / "mappings" / "demo.yaml")
        store = Store(settings.store.conninfo())
        store.migrate()
        if progress:
            print(f"  {accounts} accounts seeded in {seeded_s} s; linking ...", flush=True)
        t0 = time.monotonic()
        if link == "bootstrap":
            bootstrap(profile, settings, store)
        else:
            link_by_tax_id(profile, settings, store)
        bootstrap_s = round(time.monotonic() - t0, 1)
        store.close()
        work_before = database_work(settings)
        if progress:
            print(f"  linked in {bootstrap_s} s; comparing ...", flush=True)
        t0 = time.monotonic()
        output, errors = h.root / "compare.json", h.root / "compare.log"
        with output.open("w") as stdout, errors.open("w") as stderr:  # files: a pipe would fill and block it
            proc = subprocess.Popen(h.cli("compare", "--format", "json"), stdout=stdout, stderr=stderr, cwd=REPO)
            peak = 0.0
            while proc.poll() is None:
                peak = max(peak, peak_rss_mb(proc.pid) or 0.0)
                time.sleep(0.2)
        compare_s = time.monotonic() - t0
        work_after = database_work(settings)
        if proc.returncode != 0:
            raise RuntimeError(f"compare failed: {errors.read_text(encoding='utf-8').strip().splitlines()[-1:]}")
        report = json.loads(output.read_text(encoding="utf-8"))[0]
        rows = sum(report["totals"].values())
        result = {"accounts": accounts, "crm_rows": report["totals"]["crm"], "erp_rows": report["totals"]["erp"],
                  "linked_by": link, "bootstrap_s": bootstrap_s, "compare_s": round(compare_s, 1),
                  "database_work": {s: {k: work_after[s][k] - work_before[s][k] for k in work_after[s]}
                                    for s in work_after},
                  "rows_per_s": round(rows / compare_s), "peak_rss_mb": peak,
                  "categories": report["categories"], "drifted_fields": report["drifted_fields"]}
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


def format_result(result: dict[str, Any]) -> str:
    """One line per figure."""
    how = "the identity bootstrap" if result["linked_by"] == "bootstrap" else "equal tax ids"
    return (f"compare of {result['crm_rows']} CRM accounts and {result['erp_rows']} ERP customers (linked by {how}"
            f" in {result['bootstrap_s']} s): {result['compare_s']} s, {result['rows_per_s']} rows/s,"
            f" peak {result['peak_rss_mb']} MiB\n  databases' work: {result['database_work']}"
            f"\n  categories: {result['categories']}")
