"""What every benchmark does with its figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``values``; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def write(result: dict[str, Any], out: Path | None) -> dict[str, Any]:
    """Write ``result`` as JSON to ``out`` (if given) and return it."""
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


def latency_summary(ms: list[float]) -> dict[str, int | None]:
    """p50 / p95 / p99 / max of latencies in milliseconds (None each when nothing was measured)."""
    return {q: round(percentile(ms, v)) if ms else None
            for q, v in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99), ("max", 1.0))}


def latency_line(lat: dict[str, int | None]) -> str:
    """``p50 … ms  p95 … ms  p99 … ms  max … ms``."""
    return "  ".join(f"{q} {lat[q]} ms" for q in ("p50", "p95", "p99", "max"))
