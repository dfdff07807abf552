"""``crm-erp-sync bench``: every benchmark in one run, side by side with native logical replication.

Steady state at each rate, backlog drain, initial sync and the anchor (publication + subscription
of the same kind of edits between the same clusters), each on freshly started local services;
one table, and the same figures as JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from streams.bench import anchor, drain, steady
from streams.bench.report import write

TARGETS = {"p99_ms_at_1000_per_s": 1000, "drain_changes_per_s": 10_000, "initial_100k_s": 60, "worker_rss_mb": 400}


def run(rates: tuple[float, ...], seconds: float, edits: int, accounts: int, out: Path | None,
        progress: bool = True, warmup_s: float = 0.0) -> dict[str, Any]:
    """Run them all; the figures, written as JSON to ``out`` after each part (a stopped run keeps its figures)."""
    result: dict[str, Any] = {"benchmark": "all", "seconds_per_step": seconds, "targets": TARGETS}
    parts: list[tuple[str, str, Any]] = [
        ("steady", "steady state", lambda: steady.run(rates=rates, seconds=seconds, out=None, progress=progress,
                                                      warmup_s=warmup_s)),
        ("anchor", "native logical replication (the anchor)", lambda: anchor.run(rates, seconds, edits, progress)),
        ("backlog", f"backlog drain of {edits} edits", lambda: drain.backlog(edits, progress)),
        ("initial", f"initial sync of {accounts} accounts", lambda: drain.initial(accounts, progress)),
    ]
    for key, what, part in parts:
        if progress:
            print(f"{what} ...", flush=True)
        result[key] = part()
        write(result, out)
    return result


def _lat(step: dict[str, Any] | None) -> str:
    if step is None:
        return "not run (a lower rate fell behind)"
    lat = step["latency_ms"]
    kept = "kept up" if step["kept_up"] else "NOT kept up"
    if lat["p50"] is None:
        return f"none applied before the wait ended, {kept}"
    return "/".join(str(lat[q]) if lat[q] is not None else "-" for q in ("p50", "p95", "p99", "max")) + f" ms, {kept}"


def _ratio(ours: float | None, theirs: float | None) -> str:
    if not ours or not theirs:
        return "-"
    return f"{ours / theirs:.1f}x"


def format_result(result: dict[str, Any]) -> str:
    """The table."""
    ours = {s["target_rate_per_s"]: s for s in result["steady"]["steps"]}
    native = {s["rate_per_s"]: s for s in result["anchor"]["steps"]}
    rows = [("", "crm-erp-sync", "native logical replication", "ours / native")]
    for rate, theirs in native.items():
        mine = ours.get(rate)
        rows.append((f"steady {rate:g} edits/s, p50/p95/p99/max", _lat(mine), _lat(theirs),
                     _ratio(mine["latency_ms"]["p99"] if mine else None, theirs["latency_ms"]["p99"]) + " (p99)"))
    backlog, burst, initial = result["backlog"], result["anchor"]["burst"], result["initial"]
    rows.append((f"backlog of {backlog['edits']} edits, changes/s", f"{backlog['changes_per_s']}",
                 f"{burst['changes_per_s']} (applied as committed)",
                 _ratio(backlog["changes_per_s"], burst["changes_per_s"])))
    rows.append((f"initial sync of {initial['accounts']} accounts", f"{initial['seconds']} s"
                 f" ({initial['accounts_per_s']}/s)", "-", "-"))
    rss = [result["steady"]["peak_rss_mb"], backlog["peak_rss_mb"], initial["peak_rss_mb"]]
    rows.append(("peak RSS, MiB (steady / backlog / initial)",
                 ", ".join(f"{part} {' / '.join(str(r[part]) for r in rss)}" for part in ("capture", "worker")),
                 "-", "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    targets = result["targets"]
    lines.append(f"targets: p99 <= {targets['p99_ms_at_1000_per_s']} ms at 1000 edits/s; drain >="
                 f" {targets['drain_changes_per_s']} changes/s; initial sync of 100000 <="
                 f" {targets['initial_100k_s']} s; worker RSS <= {targets['worker_rss_mb']} MB")
    return "\n".join(lines)
