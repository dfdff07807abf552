"""`compare` on a large demo: N CRM accounts and their ERP customers, linked by the identity bootstrap.

Freshly started local services with the seed at N accounts; the identity bootstrap links them (no
capture, no worker: the cross-reference as a running sync would have it); then ``crm-erp-sync
compare --format json`` as its own process: its wall time, rows read per second and peak memory.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from streams.bench.steady import peak_rss_mb
from streams.identity.bootstrap import bootstrap
from streams.local.harness import REPO, Harness
from streams.mapping.profile import load_profile
from streams.settings import load_settings
from streams.store import Store


def run(accounts: int = 100_000, out: Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Run and return the figures (also written as JSON to ``out``)."""
    started = time.monotonic()
    h = Harness(Path(tempfile.mkdtemp(prefix="crm-erp-sync-bench-", dir="/tmp")), seed_accounts=accounts).start()
    try:
        seeded_s = round(time.monotonic() - started, 1)
        settings = load_settings(h.write_config())
        profile = load_profile(REPO / "schemas" / "mappings" / "demo.yaml")
        store = Store(settings.store.conninfo())
        store.migrate()
        if progress:
            print(f"  {accounts} accounts seeded in {seeded_s} s; linking ...", flush=True)
        t0 = time.monotonic()
        bootstrap(profile, settings, store)
        bootstrap_s = round(time.monotonic() - t0, 1)
        store.close()
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
        if proc.returncode != 0:
            raise RuntimeError(f"compare failed: {errors.read_text(encoding='utf-8').strip().splitlines()[-1:]}")
        report = json.loads(output.read_text(encoding="utf-8"))[0]
        rows = sum(report["totals"].values())
        result = {"accounts": accounts, "crm_rows": report["totals"]["crm"], "erp_rows": report["totals"]["erp"],
                  "bootstrap_s": bootstrap_s, "compare_s": round(compare_s, 1),
                  "rows_per_s": round(rows / compare_s), "peak_rss_mb": peak,
                  "categories": report["categories"], "drifted_fields": report["drifted_fields"]}
    finally:
        h.stop()
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


def format_result(result: dict[str, Any]) -> str:
    """One line per figure."""
    return (f"compare of {result['crm_rows']} CRM accounts and {result['erp_rows']} ERP customers (linked by the"
            f" bootstrap in {result['bootstrap_s']} s): {result['compare_s']} s, {result['rows_per_s']} rows/s,"
            f" peak {result['peak_rss_mb']} MiB\n  categories: {result['categories']}")
