"""The one-table report of `crm-erp-sync bench`: ours next to native logical replication."""

from __future__ import annotations

from typing import Any

from streams.bench.full import TARGETS, format_result
from streams.bench.report import percentile


def _lat(p50: int, p99: int) -> dict[str, int]:
    return {"p50": p50, "p95": p99, "p99": p99, "max": p99}


def result() -> dict[str, Any]:
    rss = {"capture": 300.0, "worker": 120.0}
    return {
        "steady": {"steps": [{"target_rate_per_s": 200, "kept_up": True, "latency_ms": _lat(150, 400)},
                             {"target_rate_per_s": 1000, "kept_up": False,
                              "latency_ms": {"p50": None, "p95": None, "p99": None, "max": None}}],
                   "peak_rss_mb": rss},
        "anchor": {"steps": [{"rate_per_s": 200, "kept_up": True, "latency_ms": _lat(1, 4)},
                             {"rate_per_s": 1000, "kept_up": True, "latency_ms": _lat(1, 5)},
                             {"rate_per_s": 2000, "kept_up": True, "latency_ms": _lat(1, 6)}],
                   "burst": {"changes_per_s": 2000}},
        "backlog": {"edits": 100000, "changes_per_s": 500, "peak_rss_mb": rss},
        "initial": {"accounts": 20000, "seconds": 250.0, "accounts_per_s": 80, "peak_rss_mb": rss},
        "targets": TARGETS,
    }


def test_the_table_puts_ours_next_to_native_with_ratios() -> None:
    lines = format_result(result()).splitlines()
    steady_200 = next(x for x in lines if x.startswith("steady 200"))
    assert "150/400/400/400 ms, kept up" in steady_200 and "1/4/4/4 ms, kept up" in steady_200
    assert "100.0x (p99)" in steady_200
    steady_1000 = next(x for x in lines if x.startswith("steady 1000"))
    assert "none applied before the wait ended, NOT kept up" in steady_1000 and "- (p99)" in steady_1000
    steady_2000 = next(x for x in lines if x.startswith("steady 2000"))
    assert "not run (a lower rate fell behind)" in steady_2000  # ours stopped after a failed step
    backlog = next(x for x in lines if x.startswith("backlog of 100000 edits"))
    assert "500" in backlog and "2000 (applied as committed)" in backlog and "0.2x" in backlog
    assert any("initial sync of 20000 accounts" in x and "250.0 s (80/s)" in x for x in lines)
    assert lines[-1].startswith("targets: p99 <= 1000 ms at 1000 edits/s")


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 0.5), percentile(values, 0.99), percentile(values, 1.0)) == (51.0, 100.0, 100.0)
    assert percentile([], 0.5) != percentile([], 0.5)  # NaN when nothing was measured


def test_the_peer_table_puts_the_sync_the_jdbc_sink_and_native_side_by_side() -> None:
    from streams.bench.peer import format_result as peer_table

    def part(p50: int, p99: int, applied: int = 100) -> dict[str, Any]:
        return {"applied": applied, "latency_ms": _lat(p50, p99)}

    result = {
        "jdbc_sink": "io.debezium:debezium-connector-jdbc:3.6.0.Final",
        "steady": [{"rate_per_s": 200, "achieved_rate_per_s": 200, "sync_crm_to_erp": part(300, 1200),
                    "sync_erp_to_crm": part(310, 1300), "jdbc_sink": part(30, 100)}],
        "backlog": {"edits": 20000, "sync": {"changes_per_s": 1300, "seconds": 15.4},
                    "jdbc_sink": {"changes_per_s": 5200, "seconds": 3.8}},
        "native": {"steps": [{"rate_per_s": 200, "applied": 100, "latency_ms": _lat(1, 4)}],
                   "burst": {"edits": 20000, "changes_per_s": 3250}},
    }
    lines = peer_table(result).splitlines()
    steady = next(x for x in lines if x.strip().startswith("200/s"))
    assert "300/1200/1200/1200 ms (100)" in steady and "30/100/100/100 ms (100)" in steady
    assert "p99 sync / sink 12.0x" in steady and "sync / native 300.0x" in steady
    assert any("sync / sink 0.25x" in x for x in lines)
    assert any("3250 changes/s" in x and "sync / native 0.40x" in x for x in lines)
